/**
 * Postcopy live migration on the destination (vhost-user protocol feature PAGEFAULT): the guest runs
 * before all of its memory has arrived, and a page still missing is a hole in the shared memory file.
 *
 *   POSTCOPY_ADVISE ─▶ a userfaultfd (from /dev/userfaultfd, opened before the jail), sent to the front-end
 *   POSTCOPY_LISTEN ─▶ listening: the memory table that follows is registered with it
 *   SET_MEM_TABLE / ADD_MEM_REG ─▶ mapped, registered, answered with where each region is mapped here;
 *                      nothing touches the memory until the front-end's acknowledgement (the same
 *                      request again, with a u64 0), after which the rings may run
 *   a worker touches a missing page ─▶ it waits; the front-end reads the fault from its copy of the fd,
 *                      fetches the page into the shared file and wakes the worker
 *   POSTCOPY_END ─▶ unregistered, the fd closed
 *
 * Unregistering wakes every thread waiting on a fault, so a connection that ends mid-postcopy lets its
 * workers go (they then read what the file holds) before they are stopped.
 * Spec: QEMU docs/interop/vhost-user.rst, "Migrating back-end state" (postcopy), SET_MEM_TABLE,
 * POSTCOPY_ADVISE, POSTCOPY_LISTEN, POSTCOPY_END.
 */
import * as native from '../../native/index.ts';
import { VhostUserError, VU } from './errors.ts';

/** One connection's postcopy state, from POSTCOPY_ADVISE to POSTCOPY_END. */
export class Postcopy {
  /** lgnet's copy of the userfaultfd the front-end was given. */
  readonly uffd: number;
  /** POSTCOPY_LISTEN came: memory tables are registered and answered with their bases. */
  listening = false;
  /** A memory table was answered with its bases; the front-end's acknowledgement has not come yet. */
  awaitingAck = false;
  /** Mapping id → its address, for every mapping registered with uffd. */
  private readonly registered = new Map<number, number>();

  private constructor(uffd: number) {
    this.uffd = uffd;
  }

  /** A new userfaultfd from the device fd. */
  static advise(deviceFd: number): Postcopy {
    try {
      return new Postcopy(native.userfaultfdNew(deviceFd));
    } catch (e) {
      throw new VhostUserError(VU.POSTCOPY_FAILED, `POSTCOPY_ADVISE: no userfaultfd: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Registers each region's mapping that is not registered yet, and forgets those gone. Returns each
   * region's base here (its mapping's address), by guest physical address.
   */
  register(regions: ReadonlyArray<{ gpa: number; mappingId: number }>): Map<number, number> {
    const live = new Set(regions.map((r) => r.mappingId));
    for (const id of [...this.registered.keys()]) if (!live.has(id)) this.registered.delete(id);
    const bases = new Map<number, number>();
    for (const r of regions) {
      let base = this.registered.get(r.mappingId);
      if (base === undefined) {
        try {
          base = native.userfaultRegister(this.uffd, r.mappingId);
        } catch (e) {
          throw new VhostUserError(VU.POSTCOPY_FAILED, `region 0x${r.gpa.toString(16)}: ${(e as Error).message}`, { cause: e });
        }
        this.registered.set(r.mappingId, base);
      }
      bases.set(r.gpa, base);
    }
    return bases;
  }

  /** Unregisters every mapping (a thread waiting on a fault retries it) and closes the fd. */
  end(): void {
    for (const id of this.registered.keys()) {
      try {
        native.userfaultUnregister(this.uffd, id);
      } catch {
        // the mapping went with its range: nothing is registered there any more
      }
    }
    this.registered.clear();
    native.closeQuietly(this.uffd);
  }
}
