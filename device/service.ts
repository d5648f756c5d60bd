/**
 * The service context: the one object a queue's service (tx.ts net_output, rx.ts net_input), its loop
 * (loops.ts) and its frame observers (capture.ts, rate-limit.ts) share. worker.ts builds it once per
 * configured queue; a memory change swaps `mem` and nothing else.
 *
 *   ServiceContext ─┬─ queue     the DeviceQueue (vring/: split or packed), bound to mem
 *                   ├─ mem       guest memory, as this thread maps it
 *                   ├─ f, c      negotiated features; the queue's counters (metrics.ts)
 *                   ├─ pending   completions not yet signalled (interrupt.ts)
 *                   ├─ port      the backend's TxPort or RxPort (backend.ts)
 *                   ├─ limiter   the burst gate of a rate limit, or null
 *                   └─ observer  every FrameObserver plugged in, composed into one, or null
 *
 * An observer sees each frame that crosses the device, in guest memory and in place (no copy): TX once
 * its header passed the checks, as it goes to the backend; RX once it is in the guest's buffers and
 * before used.idx is published, so the guest cannot have reused them yet. The services call
 * `observer.onFrame(ctx.frame)` behind one null check: with nothing plugged in, observing costs that.
 */
import { PackedQueue, SplitQueue, type DescriptorChain, type DeviceQueue, type GuestMemory } from '../vring/index.ts';
import type { NegotiatedFeatures } from './features.ts';
import type { PendingUsed } from './interrupt.ts';
import { M } from './metrics.ts';

/** errno EFAULT: the kernel could not reach a buffer. */
const EFAULT = 14;

/**
 * One frame as observers see it, valid only during the call: `len` bytes of Ethernet frame that start
 * `hdrLen` bytes (the virtio_net_hdr) into the `part` of chains[0] and continue through the same part
 * of chains[1..count) (more than one only for an MRG_RXBUF frame).
 */
export interface FrameView {
  len: number;
  hdrLen: number;
  part: 'readable' | 'writable';
  readonly chains: DescriptorChain[];
  count: number;
}

/**
 * What a loop asks of a rate limit before a burst (rate-limit.ts's RateLimiter): how many frames it may
 * take, and how long to sleep when that is none. Declared here so that the service context does not
 * depend on the limiter's module (the limiter, an observer, depends on this one).
 */
export interface BurstGate {
  /** Frames the burst may take, at most `max`, given a typical frame size. */
  allowance(max: number, frameHint?: number): number;
  /** Milliseconds until the buckets allow another frame. */
  waitMs(): number;
}

/** Where a ring lives: split (desc, avail, used) or packed (desc ring, driver area, device area). */
export interface RingSpec {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

/**
 * The device side of a ring in the negotiated format: a PackedQueue with VIRTIO_F_RING_PACKED (its
 * driver and device event areas arrive where a split ring's avail and used rings would), else a
 * SplitQueue.
 */
export function createQueue(f: NegotiatedFeatures, r: RingSpec): DeviceQueue {
  const common = { size: r.size, desc: r.desc, eventIdx: f.eventIdx, indirect: f.indirect };
  return f.packed ? new PackedQueue({ ...common, driver: r.avail, device: r.used }) : new SplitQueue({ ...common, avail: r.avail, used: r.used });
}

/** A per-frame hook on the data path (pcap capture, rate-limit accounting). */
export interface FrameObserver {
  /** A burst starts. */
  beginBurst(): void;
  /** A frame crossed the device (see the file header for when). */
  onFrame(frame: FrameView): void;
  /** The burst's frames are all seen; called before used.idx is published. */
  endBurst(): void;
}

/** Fans one call out to several observers. */
class Observers implements FrameObserver {
  private readonly list: readonly FrameObserver[];
  constructor(list: readonly FrameObserver[]) {
    this.list = list;
  }
  beginBurst(): void {
    for (const o of this.list) o.beginBurst();
  }
  onFrame(frame: FrameView): void {
    for (const o of this.list) o.onFrame(frame);
  }
  endBurst(): void {
    for (const o of this.list) o.endBurst();
  }
}

/** null for none, the observer itself for one, a fan-out for more. */
export function composeObservers(list: readonly FrameObserver[]): FrameObserver | null {
  if (list.length === 0) return null;
  return list.length === 1 ? list[0]! : new Observers(list);
}

/** What ServiceContext is built from. */
export interface ServiceParts<P> {
  queue: DeviceQueue;
  mem: GuestMemory;
  f: NegotiatedFeatures;
  counters: Float64Array;
  pending: PendingUsed;
  port: P;
  /** Chains per burst. */
  burst: number;
}

/** One queue's service context; `P` is the backend port, TxPort or RxPort. */
export class ServiceContext<P> {
  readonly queue: DeviceQueue;
  /** The guest memory chains point into (replaced after a memory change). */
  mem: GuestMemory;
  readonly f: NegotiatedFeatures;
  readonly c: Float64Array;
  readonly pending: PendingUsed;
  readonly port: P;
  readonly burst: number;
  /** The rate limit's gate: how many frames a burst may take. */
  limiter: BurstGate | null = null;
  /** The plugged-in observers, composed (null: none). */
  observer: FrameObserver | null = null;
  /** The services' scratch view for observers, filled per frame. */
  readonly frame: FrameView = { len: 0, hdrLen: 0, part: 'readable', chains: [], count: 0 };
  private readonly observers: FrameObserver[] = [];
  /** The rate limit as an observer (the same object as `limiter`), to unplug it. */
  private limitObserver: FrameObserver | null = null;

  constructor(p: ServiceParts<P>) {
    this.queue = p.queue;
    this.mem = p.mem;
    this.f = p.f;
    this.c = p.counters;
    this.pending = p.pending;
    this.port = p.port;
    this.burst = p.burst;
    this.frame.hdrLen = p.f.hdrLen;
  }

  /**
   * A backend call on this queue's buffers failed: counts nothing (the caller counts the frame), keeps
   * the errno, and after EFAULT (or an errno the call did not say) touches `chains[from…to)`. The
   * device checked those buffers against their mappings, so the kernel's EFAULT says the memory behind
   * one went away; the touch faults under the SIGBUS guard and the worker breaks the queue
   * (NET_GUEST_MEMORY_FAULT) after this pass, instead of failing frame after frame.
   */
  backendFailed(errno: number | undefined, chains: readonly DescriptorChain[], from: number, to: number): void {
    if (errno !== undefined) this.c[M.backendErrno] = errno;
    if (errno !== undefined && errno !== EFAULT) return;
    for (let i = from; i < to; i++) chains[i]!.touch();
  }

  /** Plugs an observer into the frame loops. */
  plug(o: FrameObserver): void {
    this.observers.push(o);
    this.observer = composeObservers(this.observers);
  }

  /** Puts a rate limit on the queue: its gate before each burst, its accounting per frame. */
  limit(l: BurstGate & FrameObserver): void {
    this.unlimit();
    this.limiter = l;
    this.limitObserver = l;
    this.plug(l);
  }

  /** Takes the rate limit off the queue (none: nothing to do). */
  unlimit(): void {
    const l = this.limitObserver;
    if (l === null) return;
    this.limiter = null;
    this.limitObserver = null;
    this.observers.splice(this.observers.indexOf(l), 1);
    this.observer = composeObservers(this.observers);
  }
}
