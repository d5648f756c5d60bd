/**
 * Behind an IOMMU: what a queue asks the owner for when its next chain has no mapping, and when it asks
 * again (docs/ARCHITECTURE.md, "Behind an IOMMU"). One per queue: a data queue's loop (loops.ts) and the
 * control queue's (ctrl-loop.ts) each hold one.
 *
 * It asks for every page of the buffer the walk stopped in that has no mapping, not the first alone: a
 * 64 KiB segment spans 17 pages, and one at a time made that 17 round trips to the front-end. Pages
 * beyond the buffer are never asked for: the guest may not have mapped them, and a vIOMMU reports a
 * fault to the guest for each.
 *
 * A page already asked for is asked again only after IOTLB_RETRY_MS, while its answer may still be on
 * the way: an answer meant for another page or queue wakes every waiting queue and must not bring more
 * questions. The slate is clean again once the ring has moved on (a guest that unmaps each buffer after
 * use hands the same IOVA out again at once) or the table lost mappings since (Iotlb.drops: a guest's
 * lazy flush empties the table every few milliseconds, between the answers for one chain's
 * descriptors). Neither is brought about by an answer, so answers cannot breed questions.
 *
 * While it waits, a queue says what for (IotlbWait, shared with the owner's thread): the owner wakes it
 * once every page of that buffer is mapped, or once the table lost mappings, not at every answer. A
 * front-end answers one MISS at a time, and a worker woken by each answer walked its ring again only to
 * stop at the next page, on CPUs the front-end's answers need.
 */
import * as native from '../native/index.ts';
import type { Iotlb } from '../vring/index.ts';

/** How long a queue waits for an IOTLB mapping before it asks again (a miss message may be lost with a front-end that restarts). */
export const IOTLB_RETRY_MS = 200;
/** The IOTLB's page: what a miss names and a vIOMMU answers at the least. */
const PAGE = 4096;
/** Pages of one buffer asked for together at most (1 MiB): a bound on one miss's messages. */
const MAX_ASK_PAGES = 256;
/** Asks remembered at one ring position at most, before the memory is dropped. */
const MAX_ASKED = 4096;

/** What a queue's asks cover: [the address it missed, the end of its buffer), at most MAX_ASK_PAGES pages. */
function askedRange(t: Iotlb): { from: number; to: number } {
  const first = Math.floor(t.missIova / PAGE);
  return { from: t.missIova, to: Math.min(t.missEnd, (first + MAX_ASK_PAGES) * PAGE) };
}

/** Bytes of the SharedArrayBuffer one IotlbWait needs. */
export const IOTLB_WAIT_BYTES = 32;
const W_STATE = 0; // Int32 index: 1 while the queue waits
const W_FROM = 1; // Float64 indexes: the range waited for, and the table's drops when it began
const W_TO = 2;
const W_DROPS = 3;

/**
 * What a waiting queue waits for, in shared memory: written by its worker (wait/done), read by the
 * owner's thread after the table changed (ready). The worker publishes before it asks and checks again
 * before it sleeps, and the owner checks after it changed the table, so one of the two always sees the
 * other (sequentially consistent Atomics on the state word).
 */
export class IotlbWait {
  readonly buffer: SharedArrayBuffer;
  private readonly state: Int32Array;
  private readonly f: Float64Array;

  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(IOTLB_WAIT_BYTES)) {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < IOTLB_WAIT_BYTES) throw new RangeError('IotlbWait: needs a SharedArrayBuffer of IOTLB_WAIT_BYTES');
    this.buffer = buffer;
    this.state = new Int32Array(buffer, 0, 2);
    this.f = new Float64Array(buffer, 0, 4);
  }

  /** Worker: from now on it waits for the buffer `t` missed in (its miss* fields). */
  wait(t: Iotlb): void {
    const r = askedRange(t);
    this.f[W_FROM] = r.from;
    this.f[W_TO] = r.to;
    this.f[W_DROPS] = t.drops;
    Atomics.store(this.state, W_STATE, 1);
  }

  /** Worker: it no longer waits. */
  done(): void {
    Atomics.store(this.state, W_STATE, 0);
  }

  /**
   * The owner, after changing `t` (or the worker, before it sleeps): true when the queue waits and has
   * something to do now: every page it waits for is mapped, or the table lost mappings since it asked.
   */
  ready(t: Iotlb): boolean {
    if (Atomics.load(this.state, W_STATE) !== 1) return false;
    if (t.drops !== this.f[W_DROPS]) return true;
    const to = this.f[W_TO]!;
    // The address missed, then each later page of the buffer from its start.
    for (let a = this.f[W_FROM]!; a < to; a = (Math.floor(a / PAGE) + 1) * PAGE) if (!t.has(a)) return false;
    return true;
  }
}

export class IotlbAsks {
  /** Pages asked for at ring position `at`, with the table's drops at `drops`: page * 4 + access → when (ms). */
  private readonly asked = new Map<number, number>();
  private at = -1;
  private drops = -1;

  /**
   * After `t` missed (its miss* fields): report each page of the missing buffer to ask for now.
   * `position` is the ring's next position (DeviceQueue.lastAvail), `now` performance.now().
   * Returns how many were reported.
   */
  ask(t: Iotlb, position: number, now: number, report: (iova: number, access: number) => void): number {
    const drops = t.drops;
    if (position !== this.at || drops !== this.drops || this.asked.size > MAX_ASKED) {
      this.asked.clear();
      this.at = position;
      this.drops = drops;
    }
    const access = t.missAccess;
    const first = Math.floor(t.missIova / PAGE);
    const last = Math.ceil(askedRange(t).to / PAGE) - 1;
    let n = 0;
    for (let p = first; p <= last; p++) {
      if (p !== first && t.has(p * PAGE)) continue;
      const key = p * 4 + access;
      const when = this.asked.get(key);
      if (when !== undefined && now - when < IOTLB_RETRY_MS) continue;
      this.asked.set(key, now);
      n++;
      report(p === first ? t.missIova : p * PAGE, access);
    }
    return n;
  }
}

/**
 * Where a queue's worker writes its misses itself, one message per page, instead of posting them to the
 * owner's thread (a thread hop per miss; vhost-user: BACKEND_IOTLB_MSG MISS on the back-end channel).
 */
export interface IotlbMissSink {
  /** A nonblocking stream the owner keeps open while any queue holds it (NetDevice.setIotlbMissSink). */
  fd: number;
  /** The message to write, with the IOVA (u64, little-endian) at `iovaAt` and the access (u8) at `accessAt`. */
  message: Uint8Array;
  iovaAt: number;
  accessAt: number;
}

/**
 * A queue's way to ask for a page: written on the sink when there is one, else handed to `fallback`
 * (the owner's thread). A sink that cannot take a message now drops it (the queue asks again after
 * IOTLB_RETRY_MS); one that fails is given up, and the owner's thread takes the misses from then on.
 */
export class MissReporter {
  private sink: IotlbMissSink | null = null;
  private msg = new Uint8Array(0);
  private dv = new DataView(this.msg.buffer);
  private readonly fallback: (iova: number, access: number) => void;

  constructor(sink: IotlbMissSink | null, fallback: (iova: number, access: number) => void) {
    this.fallback = fallback;
    this.setSink(sink);
  }

  setSink(sink: IotlbMissSink | null): void {
    this.sink = sink;
    if (sink) {
      this.msg = Uint8Array.from(sink.message);
      this.dv = new DataView(this.msg.buffer);
    }
  }

  readonly report = (iova: number, access: number): void => {
    const s = this.sink;
    if (s !== null) {
      this.dv.setUint32(s.iovaAt, iova >>> 0, true);
      this.dv.setUint32(s.iovaAt + 4, Math.floor(iova / 2 ** 32), true);
      this.msg[s.accessAt] = access;
      let n = 0;
      try {
        n = native.fdWrite(s.fd, this.msg);
      } catch {
        n = 0; // the channel failed: the owner's thread judges it from here on
      }
      if (n === this.msg.length || n === -1) return; // written, or full (-1, EAGAIN): dropped, asked again later
      this.sink = null;
    }
    this.fallback(iova, access);
  };
}
