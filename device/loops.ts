/**
 * The service loops: lguest's do_thread around net_output and net_input. A queue's worker (worker.ts)
 * calls `pass()` over and over; each pass serves one burst, then signals, then sleeps if there was
 * nothing to do:
 *
 *   TX:  processTx ─▶ moved some? ──yes──▶ signal if ¼ ring pending ─▶ (next pass)
 *                      │ no
 *                      ▼
 *        rate limit? ─▶ sleep until the buckets refill
 *        bounded busy poll on avail.idx ─▶ re-enable kicks ─▶ waitKick: signal, fence, re-check, sleep on kick
 *
 *   RX:  processRx ─▶ MORE ─▶ signal if ¼ ring pending ─▶ (next pass)
 *                    THROTTLED ─▶ sleep until the buckets refill
 *                    BACKEND_EMPTY ─▶ bounded busy poll on the backend ─▶ waitKick on the backend fd
 *                    NO_BUFFERS ─▶ bounded busy poll on avail.idx ─▶ re-enable kicks ─▶ waitKick on the kick
 *
 * Every sleep is one native call (native/wait.cc waitKick) that raises the pending interrupt, fences,
 * re-reads avail.idx and blocks: the race between "nothing to do" and "sleep" closes there. On RX the
 * interrupt goes out before a backend read would block (lguest's rule), so the guest hears about its
 * frames before the device waits for more. Sleeps also wake for the control eventfd; `pass()` returns
 * true then, and the worker reads its commands.
 *
 * A busy queue may hold its interrupt instead (coalesce.ts, PendingUsed.takeOrHold): it then sleeps no
 * longer than the hold's deadline and signals when it wakes past it, so the interrupt goes out on time
 * whether or not more work came. RX holds only while the guest has buffers left; without, the guest
 * must hear at once to refill.
 */
import * as native from '../native/index.ts';
import type { QueueWatch } from '../vring/index.ts';
import type { RxPort, TxPort } from './backend.ts';
import { IOTLB_RETRY_MS, IotlbAsks, type IotlbWait } from './iotlb-asks.ts';
import { M } from './metrics.ts';
import { RX, type RxService } from './rx.ts';
import type { ServiceContext } from './service.ts';
import type { SleepReason } from './worker-protocol.ts';
import type { TxService } from './tx.ts';

/** How long one sleep lasts at most; the loop re-checks after it, so a lost wake-up costs this, not a hang. */
export const SLEEP_MS = 1000;

/** What a loop needs besides its service: the queue's fds and the worker's control channel. */
export interface LoopFds {
  /** The driver's kick eventfd (-1: none; the loop then wakes on SLEEP_MS). */
  kickFd: number;
  /** The worker's control eventfd. */
  ctlFd: number;
  /** Set by the main thread with each command (looked at during busy polls). */
  ctlFlag: Int32Array;
  /** Microseconds of busy polling before sleeping (0: off). */
  busyPoll: number;
  /** Behind an IOMMU: asks for a page without a mapping (on the owner's channel, or through the main thread: MissReporter). */
  reportMiss?: (iova: number, access: number) => void;
  /** Behind an IOMMU: what the queue waits for, where the owner sees it (iotlb-asks.ts); else none. */
  iotlbWait?: IotlbWait;
}

/** What both loops share: where avail.idx is, the bounded busy poll, the throttle sleep and waitKick. */
abstract class ServiceLoop<P> {
  protected readonly ctx: ServiceContext<P>;
  protected readonly fds: LoopFds;
  /** The control eventfd alone, as waitKick's extra fd. */
  protected readonly ctlOnly: Int32Array;

  constructor(ctx: ServiceContext<P>, fds: LoopFds) {
    this.ctx = ctx;
    this.fds = fds;
    this.ctlOnly = Int32Array.of(fds.ctlFd);
  }

  /** What the last sleep waited on (null before the first) and how long it lasted, for NetDevice.inspect.
   *  Two fields, not an object: set at every sleep, so no allocation. */
  lastSleepOn: SleepReason | null = null;
  lastSleepMs = 0;

  /** A sleep that began at `t0` ended: counts the time blocked and remembers it. Returns the time now. */
  private slept(on: SleepReason, t0: number): number {
    const t1 = performance.now();
    this.ctx.c[M.blockedNs]! += (t1 - t0) * 1e6;
    this.lastSleepOn = on;
    this.lastSleepMs = t1 - t0;
    return t1;
  }

  /** One pass: service, signal, sleep. True when the control eventfd woke it. */
  abstract pass(): boolean;

  /** Gives back what the service holds of the ring beyond a pass (RX: kept chains), so that the queue's position is exact. */
  release(): void {}

  /** What this queue asked the owner for, and when it asks again (iotlb-asks.ts). */
  private readonly asks = new IotlbAsks();
  private readonly reportMiss = (iova: number, access: number): void => this.fds.reportMiss?.(iova, access);

  /**
   * Behind an IOMMU, the ring's next chain has no mapping yet (it stays in the ring, vring/iotlb.ts):
   * what was done goes to the guest, the missing pages go to the owner (IotlbAsks), and the worker
   * sleeps until they are all mapped or the table lost mappings (the owner writes the control eventfd
   * then, IotlbWait), or IOTLB_RETRY_MS pass. True when the control eventfd woke it, so that the worker
   * drains it.
   */
  protected waitIotlb(): boolean {
    const t = this.ctx.mem.iotlb!;
    const c = this.ctx.c;
    const w = this.fds.iotlbWait;
    this.ctx.pending.signal();
    const t0 = performance.now();
    w?.wait(t); // before the asks: their answers find it
    c[M.iotlbMisses]! += this.asks.ask(t, this.ctx.queue.lastAvail, t0, this.reportMiss);
    let woke = 0;
    // Answered meanwhile (by an answer to another queue's ask, say): no sleep.
    if (!w?.ready(t)) {
      c[M.sleeps]! += 1;
      woke = native.poll(this.ctlOnly, IOTLB_RETRY_MS);
      this.slept('iotlb', t0);
    }
    w?.done();
    t.clearMiss();
    return woke !== 0;
  }

  /** True when the ring's next chain waits for an IOTLB mapping (one null check without an IOMMU). */
  protected get iotlbStalled(): boolean {
    const t = this.ctx.mem.iotlb;
    return t !== null && t.stalled;
  }

  /** Many completions pending: signal now rather than starve the driver until the next sleep. */
  protected signalIfMany(): void {
    const p = this.ctx.pending;
    if (p.pending >= this.ctx.queue.size >>> 2) p.signal();
  }

  /**
   * The rate limit stopped the burst: what was done goes to the guest, then the worker sleeps until
   * the buckets refill (a command on the control fd still wakes it). Work stays in the ring or backend.
   */
  protected throttle(ms: number): boolean {
    const c = this.ctx.c;
    this.ctx.pending.signal();
    c[M.throttled]! += 1;
    const t0 = performance.now();
    native.poll(this.ctlOnly, Math.min(Math.ceil(ms), SLEEP_MS));
    this.slept('throttle', t0);
    return false; // a command also set ctlFlag, which the worker looks at on its next pass
  }

  /**
   * Re-checks `ready` for up to the configured number of microseconds before the worker sleeps. The
   * pending interrupt is held meanwhile, so work that arrives in the window shares it, and the driver
   * does not kick (notifications stay off).
   */
  protected busyPoll(ready: () => boolean): boolean {
    const us = this.fds.busyPoll;
    if (us <= 0) return false;
    const end = performance.now() + us / 1000;
    do {
      if (ready()) {
        this.ctx.c[M.busyPollHits]! += 1;
        return true;
      }
    } while (performance.now() < end);
    return false;
  }

  /**
   * The sleep itself: native waitKick (see its comment for the race), timed and counted. `w` is the
   * word the queue said to watch (taken before enableNotification), or null with HAS_BUFFERS.
   */
  protected waitKick(w: QueueWatch | null, signalFd: number, backendFd: number): boolean {
    const c = this.ctx.c;
    const p = this.ctx.pending;
    const t0 = performance.now();
    c[M.sleeps]! += 1;
    const at = w ?? this.ctx.queue.watch();
    const loc = at.location;
    const seen = w ? w.seen : native.HAS_BUFFERS;
    // A held interrupt bounds the sleep: it must go out at its deadline even if nothing else comes.
    const timeout = p.heldUntil > 0 ? Math.max(0, (p.heldUntil - t0 * 1000) / 1000) : SLEEP_MS;
    const woke = native.waitKick(this.fds.kickFd, loc.mappingId, loc.mappingOffset + loc.offset, seen, timeout, this.ctlOnly, signalFd, backendFd);
    const t1 = this.slept(w === null ? 'backend' : backendFd >= 0 ? 'kick+backend' : 'kick', t0);
    if (p.heldUntil > 0 && t1 * 1000 >= p.heldUntil) p.signal();
    if (woke & native.WAKE.KICK) c[M.kicks]! += 1;
    return (woke & native.WAKE.EXTRA0) !== 0;
  }
}

/** net_output's loop: TX waits only for the guest. */
export class TxLoop extends ServiceLoop<TxPort> {
  private readonly tx: TxService;

  constructor(tx: TxService, fds: LoopFds) {
    super(tx.ctx, fds);
    this.tx = tx;
  }

  pass(): boolean {
    const tx = this.tx;
    const q = this.ctx.queue;
    if (tx.processTx() > 0) {
      this.signalIfMany();
      return false;
    }
    if (this.iotlbStalled) return this.waitIotlb();
    if (tx.throttledMs > 0) return this.throttle(tx.throttledMs);
    if (this.busyPoll(() => q.availPending() > 0)) return false;
    return this.sleepOnKick();
  }

  /**
   * Sleeps until the driver adds chains past lastAvail: take the pending interrupt, re-enable kicks,
   * and let native signal, fence, re-read avail.idx and block, so no kick can fall between check and
   * sleep (virtio 1.2 §2.7.10).
   */
  private sleepOnKick(): boolean {
    const q = this.ctx.queue;
    const seen = q.lastAvail;
    const w = q.watch(seen); // before the re-check: a buffer added after it changes the watched word
    const signalFd = this.ctx.pending.takeOrHold();
    if (q.enableNotification(seen)) {
      q.disableNotification();
      if (signalFd >= 0) native.eventfdWrite(signalFd, 1);
      return false;
    }
    const control = this.waitKick(w, signalFd, -1);
    q.disableNotification();
    return control;
  }
}

/** net_input's loop: RX waits for the backend when the guest has buffers, for the guest when not. */
export class RxLoop extends ServiceLoop<RxPort> {
  private readonly rx: RxService;
  /** The control eventfd and the backend's fd, for the busy poll. */
  private readonly pollFds: Int32Array;

  constructor(rx: RxService, fds: LoopFds) {
    super(rx.ctx, fds);
    this.rx = rx;
    this.pollFds = Int32Array.of(fds.ctlFd, rx.ctx.port.fd);
  }

  override release(): void {
    this.rx.release();
  }

  pass(): boolean {
    const rx = this.rx;
    switch (rx.processRx()) {
      case RX.MORE:
        this.signalIfMany();
        return false;
      case RX.THROTTLED:
        return this.throttle(rx.throttledMs);
      case RX.BACKEND_EMPTY:
        return this.waitForBackend();
      default:
        if (this.iotlbStalled) return this.waitIotlb();
        return this.waitForBuffers();
    }
  }

  /**
   * The backend ran dry. Frames arriving within the busy-poll window join this burst's interrupt; then
   * the interrupt goes out and the worker sleeps on the backend, as long as the guest has buffers.
   */
  private waitForBackend(): boolean {
    const q = this.ctx.queue;
    if (this.busyPoll(() => native.poll(this.pollFds, 0) !== 0 || Atomics.load(this.fds.ctlFlag, 0) !== 0)) return false;
    // Buffers left over (kept from the burst, in the ring, or held for resubmission) stay until the
    // device uses them, so there is nothing to re-check: waitKick sleeps on the backend. None left:
    // wait for the guest instead.
    return this.sleep(this.rx.hasBuffers() ? native.HAS_BUFFERS : q.lastAvail);
  }

  /**
   * The guest has no (or too little) room: wait for buffers past where the burst's last pop found none
   * (RxService.dryAt). Not past avail.idx read now: buffers added since that pop may have come without
   * a kick, and nothing else would wake the worker for them (the guest, out of buffers, waits for
   * frames).
   */
  private waitForBuffers(): boolean {
    const q = this.ctx.queue;
    const seen = this.rx.dryAt;
    if (this.fds.busyPoll > 0) {
      // The guest refills only once it hears about what it got: signal before the window, not after.
      this.ctx.pending.signal();
      if (this.busyPoll(() => q.availIdx() !== seen)) return false;
    }
    return this.sleep(seen);
  }

  /**
   * One native call: raise the pending interrupt, then either sleep on the kick (the guest has nothing
   * past `seen`; kicks re-enabled first, so the re-check in waitKick closes the race) or on the
   * backend (`seen` is HAS_BUFFERS: the guest has buffers). Buffers past `seen` found on re-enabling
   * kicks: signal and serve them at once (a frame may wait in the port already, not in the backend).
   */
  private sleep(seen: number): boolean {
    const q = this.ctx.queue;
    if (seen === native.HAS_BUFFERS) {
      // Hold only while the guest has buffers left for the device; else it must refill.
      return this.waitKick(null, this.ctx.pending.takeOrHold(), this.ctx.port.fd);
    }
    const signalFd = this.ctx.pending.take();
    const w = q.watch(seen);
    if (q.enableNotification(seen)) {
      q.disableNotification();
      if (signalFd >= 0) native.eventfdWrite(signalFd, 1);
      return false;
    }
    const control = this.waitKick(w, signalFd, this.ctx.port.fd);
    q.disableNotification();
    return control;
  }
}
