/**
 * The connection's vrings: what SET_VRING_NUM/BASE/ADDR/KICK/CALL/ERR/ENABLE said about each queue,
 * the eventfds they carried, and the ring state machine of the spec that turns that into device calls
 * (setupQueue, startQueue, stopQueue).
 *
 *                     SET_VRING_KICK                          SET_VRING_ENABLE 1
 *   stopped ──────────────────────────────▶ started ◀──────────────────────────▶ started
 *      ▲          (fd or NOFD = polling)    disabled        SET_VRING_ENABLE 0    enabled ══▶ worker runs
 *      └──────────── GET_VRING_BASE (returns last_avail; kick and call fds are dropped) ───────┘
 *
 * Rings start disabled when VHOST_USER_F_PROTOCOL_FEATURES was negotiated, enabled otherwise (spec,
 * "Ring states"). lgnet runs a queue's worker while its ring is started and size, addresses and a
 * memory table are known. Enabled, it serves the ring. Started but disabled, the spec asks for no side
 * effects, and for a network device: no new RX, TX consumed and discarded. An RX ring's worker is
 * not started. A TX ring that was enabled and is disabled again (QEMU does this when the guest uses
 * fewer queue pairs) is consumed and its frames discarded, counted as txDropDisabled, never sent, so
 * that a driver still posting there does not stall. A TX ring that has not been enabled since it was
 * started is parked instead, like DPDK's vhost library does: QEMU enables rings right after kicking
 * them, and frames the guest queued meanwhile (say, across a back-end restart, or chains taken up from
 * the inflight record) are sent in a moment rather than dropped. Changing a running ring's size,
 * addresses, base, fds or enable state stops its worker, applies the change and starts it again,
 * except a SET_VRING_ADDR that only changes VHOST_VRING_F_LOG or the log address (QEMU's migration
 * start and end): the running worker just moves its used-ring logging (docs/ARCHITECTURE.md, "Live
 * migration"). GET_VRING_BASE is the hand-over: the worker finishes its burst, publishes and signals,
 * and the index it returns is where another back-end's SET_VRING_BASE resumes.
 *
 * Ring addresses arrive as front-end virtual addresses; they are translated to guest physical through
 * the memory table when the worker starts, and again after a memory change, by vring's
 * ringUaddrToGpa, which also owns the ring sizes and alignment rules (virtio 1.2 §2.7): none are
 * computed here. Spec: vhost-user.rst, "Ring states", SET_VRING_*.
 */
import * as native from '../../native/index.ts';
import type { QueueSetup } from '../../device/net.ts';
import {
  availAreaSize, descAreaSize, EVENT_AREA_SIZE, IOTLB_ACCESS, IotlbMiss, MAX_QUEUE_SIZE, packedDescAreaSize, usedAreaSize, VringError, isQueueSize,
  packedRingUaddrToGpa, ringUaddrToGpa, type GuestMemory, type RingAddresses,
} from '../../vring/index.ts';
import { VhostUserError, VU } from './errors.ts';
import { addrOf, VRING_F_LOG, type VringAddr } from './messages.ts';

/** What the vrings need from the device. */
export interface QueueTarget {
  readonly queueCount: number;
  /** Where guest memory is (null before a table): ring addresses are translated and checked in it. An
   *  address map (GuestMemory.addressMap) will do. */
  readonly memory: GuestMemory | null;
  /** VIRTIO_F_RING_PACKED was negotiated: ring bases are packed encodings, ring areas packed ones. */
  readonly packed?: boolean;
  setupQueue(index: number, setup: QueueSetup): void;
  startQueue(index: number): Promise<void>;
  stopQueue(index: number): Promise<number>;
  /** Where a running queue logs its used ring (null: not logged), changed without stopping it. */
  setUsedLog(index: number, gpa: number | null): Promise<void>;
  /** A running queue's call eventfd, changed without stopping it; resolves once the old one is unused.
   *  Absent: the ring is stopped and started again over the new fd. */
  setCallFd?(index: number, fd: number): Promise<void>;
  /** Whether the queue carries the driver's output (virtio-net: odd indices), which a started but
   *  disabled ring must still consume and discard. Absent: no queue is drained while disabled. */
  isTx?(index: number): boolean;
  /** A ring was enabled or disabled (SET_VRING_ENABLE, or all at once without protocol features). */
  setEnabled?(index: number, enabled: boolean): void;
}

/**
 * Behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM): ring addresses are I/O virtual addresses. toUaddr finds
 * the front-end range one maps to (throws IotlbMiss when the IOTLB has no mapping yet, MemoryError
 * when one forbids the access); miss asks the front-end for it.
 */
export interface RingIommu {
  toUaddr(iova: number, len: number, access: number): number;
  miss(iova: number, access: number): void;
}

/** A ring waits for its IOTLB mappings: it starts when they come (Vrings.iotlbChanged), not an error. */
class RingAwaitsIotlb extends Error {}

/** A ring's region of the inflight buffer, or null when it has none. May throw VhostUserError. */
export type InflightLookup = (index: number, num: number) => { mappingId: number; offset: number } | null;

interface Vring {
  index: number;
  num: number;
  base: number;
  addr: { desc: number; used: number; avail: number; flags: number; log: number } | null;
  /** A SET_VRING_KICK arrived since the last stop (with an fd, or NOFD for polling). */
  kicked: boolean;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
  /** The device's worker for this queue runs. */
  running: boolean;
  /** It runs in discard mode (started, disabled again, TX). */
  discarding: boolean;
  /** It was enabled at some point since it was started (SET_VRING_KICK). */
  servedSinceStart: boolean;
  /** The guest physical addresses the running worker was started with. */
  gpas: RingAddresses | null;
}

/** Where the used ring's writes are logged: log_guest_addr with VHOST_VRING_F_LOG, else nowhere. */
function usedLogOf(a: { flags: number; log: number }): number | null {
  return a.flags & VRING_F_LOG ? a.log : null;
}

function deviceError(e: unknown, what: string): VhostUserError {
  if (e instanceof VhostUserError) return e;
  return new VhostUserError(VU.DEVICE, `${what}: ${(e as Error).message}`, { cause: e });
}

export class Vrings {
  private readonly rings: Vring[] = [];
  /** Behind an IOMMU, how ring addresses are translated (setIommu); null: they are front-end addresses. */
  private iommu: RingIommu | null = null;

  /**
   * @param target the device
   * @param memoryReady whether a memory table was installed on this connection
   */
  private readonly target: QueueTarget;
  private readonly memoryReady: () => boolean;
  private readonly inflightFor: InflightLookup;

  /** @param inflightFor where ring `index` of `num` entries is recorded (vhost-user inflight), or null */
  constructor(target: QueueTarget, memoryReady: () => boolean, inflightFor: InflightLookup = () => null) {
    this.target = target;
    this.memoryReady = memoryReady;
    this.inflightFor = inflightFor;
    for (let i = 0; i < target.queueCount; i++) {
      this.rings.push({ index: i, num: 0, base: 0, addr: null, kicked: false, kickFd: -1, callFd: -1, errFd: -1, enabled: false, running: false, discarding: false, servedSinceStart: false, gpas: null });
      // Rings start disabled (spec, "Ring states"); the device hears it, since a front-end enables only
      // the rings it uses and may never mention the others.
      target.setEnabled?.(i, false);
    }
  }

  get count(): number {
    return this.rings.length;
  }

  /** Throws VU_BAD_QUEUE_INDEX unless index names a queue of this device. */
  ring(index: number): Vring {
    const r = Number.isInteger(index) ? this.rings[index] : undefined;
    if (!r) throw new VhostUserError(VU.BAD_QUEUE_INDEX, `vring index ${index} is out of range; this device has ${this.rings.length} queues`);
    return r;
  }

  /** Read-only view of one ring's state, for tests and logs. */
  state(index: number): { num: number; base: number; enabled: boolean; running: boolean; kicked: boolean; kickFd: number; callFd: number; errFd: number } {
    const r = this.ring(index);
    return { num: r.num, base: r.base, enabled: r.enabled, running: r.running, kicked: r.kicked, kickFd: r.kickFd, callFd: r.callFd, errFd: r.errFd };
  }

  async setNum(index: number, num: number): Promise<void> {
    const r = this.ring(index);
    if (!isQueueSize(num)) {
      throw new VhostUserError(VU.BAD_QUEUE_SIZE, `vring ${index}: size ${num} must be a power of 2 in [1, ${MAX_QUEUE_SIZE}]`);
    }
    await this.park(r);
    r.num = num;
    await this.sync(r);
  }

  async setBase(index: number, base: number): Promise<void> {
    const r = this.ring(index);
    // A split ring's base is its 16-bit avail index; a packed ring's carries avail and used positions
    // with their wrap counters (QEMU's encoding), which PackedQueue.setBase checks.
    if (base > 0xffff && !this.target.packed) throw new VhostUserError(VU.BAD_VRING_STATE, `vring ${index}: base ${base} does not fit a split ring's 16-bit index`);
    await this.park(r);
    r.base = this.target.packed ? packedBaseOf(base) : base;
    await this.sync(r);
  }

  async setAddr(a: VringAddr): Promise<void> {
    const r = this.ring(a.index);
    const addr = {
      desc: addrOf(a.desc, 'descriptor table address'), used: addrOf(a.used, 'used ring address'), avail: addrOf(a.avail, 'available ring address'),
      // log_guest_addr means something only with VHOST_VRING_F_LOG; otherwise it is ignored, not checked.
      flags: a.flags, log: a.flags & VRING_F_LOG ? addrOf(a.log, 'used ring log address') : 0,
    };
    const old = r.addr;
    if (r.running && old !== null && old.desc === addr.desc && old.used === addr.used && old.avail === addr.avail) {
      // Only the logging changed (QEMU sends this as migration starts and ends): no stop, no stall.
      r.addr = addr;
      await this.target.setUsedLog(r.index, this.usedLog(r, r.gpas));
      return;
    }
    await this.park(r);
    r.addr = addr;
    await this.sync(r);
  }

  /** SET_VRING_KICK: fd (owned from now on) or -1 with NOFD (the worker polls). Starts the ring. */
  async setKick(index: number, fd: number): Promise<void> {
    const r = this.ring(index);
    await this.park(r);
    native.closeQuietly(r.kickFd);
    r.kickFd = fd;
    r.kicked = true;
    await this.sync(r);
  }

  /** SET_VRING_CALL: fd (owned from now on) or -1 with NOFD (the front-end polls the used ring). */
  async setCall(index: number, fd: number): Promise<void> {
    const r = this.ring(index);
    const old = r.callFd;
    if (r.running && this.target.setCallFd) {
      // QEMU sends this right after each ring's KICK, and at every interrupt mask change: a stop and a
      // start would cost a worker round trip each, at every migration's resume.
      try {
        await this.target.setCallFd(r.index, fd);
      } catch (e) {
        r.running = false; // the device ended the worker that did not answer
        throw deviceError(e, `vring ${r.index} could not take its new call fd`);
      } finally {
        r.callFd = fd;
        native.closeQuietly(old);
      }
      return;
    }
    const wasRunning = r.running;
    if (wasRunning) await this.park(r);
    native.closeQuietly(r.callFd);
    r.callFd = fd;
    if (wasRunning) await this.sync(r);
  }

  /** SET_VRING_ERR: fd (owned from now on) or -1; written when the device marks the queue broken. */
  setErr(index: number, fd: number): void {
    const r = this.ring(index);
    native.closeQuietly(r.errFd);
    r.errFd = fd;
  }

  async setEnable(index: number, enabled: boolean): Promise<void> {
    const r = this.ring(index);
    this.enable(r, enabled);
    await this.sync(r);
  }

  /** Without protocol features every ring is enabled (spec, "Ring states"). */
  async enableAll(): Promise<void> {
    for (const r of this.rings) {
      this.enable(r, true);
      await this.sync(r);
    }
  }

  /** RESET_OWNER: every ring disabled (and so stopped); the front-end sets them up again. */
  async disableAll(): Promise<void> {
    for (const r of this.rings) {
      this.enable(r, false);
      await this.sync(r);
    }
  }

  private enable(r: Vring, on: boolean): void {
    if (r.enabled !== on) this.target.setEnabled?.(r.index, on);
    r.enabled = on;
  }

  /** GET_VRING_BASE: stops the ring, drops its kick and call fds, and returns the next avail index. */
  async getBase(index: number): Promise<number> {
    const r = this.ring(index);
    await this.park(r);
    r.kicked = false;
    r.servedSinceStart = false;
    native.closeQuietly(r.kickFd);
    native.closeQuietly(r.callFd);
    r.kickFd = -1;
    r.callFd = -1;
    return r.base;
  }

  /**
   * Ring addresses are I/O virtual addresses from now on (null: front-end virtual ones again). Set at
   * SET_FEATURES, when every ring is stopped.
   */
  setIommu(iommu: RingIommu | null): void {
    this.iommu = iommu;
  }

  /**
   * The IOTLB gained mappings: rings that waited for theirs start. Running rings are left alone,
   * whatever the IOTLB says now: they keep the guest physical addresses they started with, and an
   * invalidation (a guest's lazy IOTLB flush takes back every mapping) does not stop them.
   */
  async iotlbChanged(): Promise<void> {
    for (const r of this.rings) if (!r.running) await this.sync(r);
  }

  /** Signals the error eventfd of a queue the device marked broken. */
  signalError(index: number): void {
    const r = this.rings[index];
    if (r && r.errFd >= 0) {
      try {
        native.eventfdWrite(r.errFd, 1);
      } catch {
        /* the front-end's problem */
      }
    }
  }

  /**
   * After a memory table change (or new features): a running ring whose addresses now translate
   * elsewhere restarts, one whose addresses left the table stops (QEMU removes a region before it adds
   * its replacement), and a ring that only waited for memory starts. Rings whose addresses are not
   * (yet) in the table stay stopped rather than failing the connection: a front-end may update the table
   * in several messages.
   */
  async memoryChanged(): Promise<void> {
    for (const r of this.rings) {
      let g: RingAddresses | null = null;
      if (r.addr !== null && r.num > 0) {
        try {
          g = this.translate(r);
        } catch (e) {
          if (e instanceof RingAwaitsIotlb) {
            if (r.running) continue; // the IOTLB lost the ring's mapping, not the memory: keep running
          } else if (!(e instanceof VhostUserError)) throw e;
        }
      }
      if (r.running && (g === null || g.desc !== r.gpas!.desc || g.avail !== r.gpas!.avail || g.used !== r.gpas!.used)) await this.park(r);
      if (g !== null) await this.sync(r);
    }
  }

  /** Stops every running worker (keeping each ring's base). */
  async stopAll(): Promise<void> {
    for (const r of this.rings) await this.park(r);
  }

  /** Stops everything, closes every fd, forgets all state. */
  async close(): Promise<void> {
    let first: unknown;
    for (const r of this.rings) {
      try {
        await this.park(r);
      } catch (e) {
        first ??= e;
      }
      native.closeQuietly(r.kickFd);
      native.closeQuietly(r.callFd);
      native.closeQuietly(r.errFd);
      Object.assign(r, { num: 0, base: 0, addr: null, kicked: false, kickFd: -1, callFd: -1, errFd: -1, enabled: false, running: false, discarding: false, servedSinceStart: false, gpas: null });
    }
    if (first) throw first;
  }

  /** Number of fds the rings hold (for leak checks). */
  fdCount(): number {
    let n = 0;
    for (const r of this.rings) n += (r.kickFd >= 0 ? 1 : 0) + (r.callFd >= 0 ? 1 : 0) + (r.errFd >= 0 ? 1 : 0);
    return n;
  }

  // ---- the state machine

  /** The ring's guest physical addresses; each area (sized and aligned as vring/ says) inside the table. */
  private translate(r: Vring): RingAddresses {
    const mem = this.target.memory;
    if (!mem || !this.memoryReady()) throw new VhostUserError(VU.NO_MEMORY, `vring ${r.index} cannot start before a memory table`);
    try {
      const a = this.iommu ? this.ringUaddrs(r, this.iommu) : r.addr!;
      if (this.target.packed) {
        const g = packedRingUaddrToGpa(mem, r.num, { desc: a.desc, driver: a.avail, device: a.used });
        return { desc: g.desc, avail: g.driver, used: g.device };
      }
      return ringUaddrToGpa(mem, r.num, a);
    } catch (e) {
      if (e instanceof IotlbMiss) {
        this.iommu!.miss(e.iova, e.access);
        throw new RingAwaitsIotlb(`vring ${r.index} waits for the IOTLB mapping of 0x${e.iova.toString(16)}`);
      }
      if (!(e instanceof VringError)) throw e;
      throw new VhostUserError(VU.BAD_RING_ADDR, `vring ${r.index}: ${e.message}`, { cause: e });
    }
  }

  /**
   * Behind an IOMMU: the front-end addresses of the ring's areas, each looked up in the IOTLB for the
   * access the device makes there (it reads the descriptors and the driver's area, writes the used
   * ring or device area; a packed ring's descriptors both).
   */
  private ringUaddrs(r: Vring, iommu: RingIommu): { desc: number; avail: number; used: number } {
    const { READ, WRITE, RW } = IOTLB_ACCESS;
    const a = r.addr!;
    if (this.target.packed) {
      return { desc: iommu.toUaddr(a.desc, packedDescAreaSize(r.num), RW), avail: iommu.toUaddr(a.avail, EVENT_AREA_SIZE, READ), used: iommu.toUaddr(a.used, EVENT_AREA_SIZE, WRITE) };
    }
    return { desc: iommu.toUaddr(a.desc, descAreaSize(r.num), READ), avail: iommu.toUaddr(a.avail, availAreaSize(r.num), READ), used: iommu.toUaddr(a.used, usedAreaSize(r.num), WRITE) };
  }

  /**
   * Where the running ring logs its used ring: log_guest_addr with VHOST_VRING_F_LOG, except behind an
   * IOMMU, where QEMU sends the used ring's I/O virtual address there (as DPDK reads it): the guest
   * physical address the ring started at is what the log is indexed by.
   */
  private usedLog(r: Vring, g: RingAddresses | null): number | null {
    const log = usedLogOf(r.addr!);
    return log !== null && this.iommu && g ? g.used : log;
  }

  /** Starts the worker when the ring is started and fully described: serving if enabled, discarding
   *  if disabled and TX. */
  private async sync(r: Vring): Promise<void> {
    const described = r.kicked && r.num > 0 && r.addr !== null && this.memoryReady() && this.target.memory !== null;
    if (r.kicked && r.enabled) r.servedSinceStart = true;
    const discard = !r.enabled && r.servedSinceStart && this.target.isTx?.(r.index) === true;
    const should = described && (r.enabled || discard);
    if (r.running && (!should || r.discarding !== discard)) await this.park(r);
    if (should && !r.running) {
      let g: RingAddresses;
      try {
        g = this.translate(r);
      } catch (e) {
        if (e instanceof RingAwaitsIotlb) return; // asked for: iotlbChanged() starts it
        throw e;
      }
      const inflight = this.target.packed ? null : this.inflightFor(r.index, r.num);
      try {
        this.target.setupQueue(r.index, {
          size: r.num, desc: g.desc, avail: g.avail, used: g.used, kickFd: r.kickFd, callFd: r.callFd, lastAvail: r.base, logUsed: this.usedLog(r, g),
          ...(discard ? { discard } : {}), ...(inflight ? { inflight } : {}),
        });
        await this.target.startQueue(r.index);
      } catch (e) {
        throw deviceError(e, `vring ${r.index} could not start`);
      }
      r.running = true;
      r.discarding = discard;
      r.gpas = g;
    }
  }

  /** Stops the worker (if any) and records where it stopped. */
  private async park(r: Vring): Promise<void> {
    if (!r.running) return;
    r.running = false;
    r.gpas = null;
    try {
      r.base = await this.target.stopQueue(r.index);
    } catch (e) {
      throw deviceError(e, `vring ${r.index} could not stop`);
    }
  }
}

/**
 * A packed ring's SET_VRING_BASE as the device reads it. QEMU sends both halves: avail idx | wrap << 15
 * below, used idx | wrap << 15 above. DPDK's virtio-user (and SPDK's) send the avail half alone, the
 * used half 0, and DPDK's own back-end takes used = avail; read as QEMU's, their fresh start (0x8000)
 * would put the whole ring in flight. A used half of 0 (slot 0, wrap 0) under an avail half with wrap
 * 1 is either that or a whole ring in flight at exactly the lap's end (avail idx 0; any other idx is a
 * base no ring can have), so it is read as the avail half alone.
 */
export function packedBaseOf(num: number): number {
  const lo = num & 0xffff;
  return num >>> 16 === 0 && (lo & 0x8000) !== 0 ? (lo | (lo << 16)) >>> 0 : num;
}
