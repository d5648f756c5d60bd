/**
 * Pending-used interrupt coalescing (lguest's `pending_used`), with a hold for busy queues.
 *
 *   service (tx.ts / rx.ts) ── flush used.idx, pending += n ──▶ PendingUsed ──▶ call eventfd
 *     loop (loops.ts), worker about to sleep: takeOrHold() ── the rule (coalesce.ts) ─┬─ now: take()
 *                                                                                     └─ hold: sleep until heldUntil
 *     ¼ ring pending, throttle, stop, pause, RX out of buffers: signal() ── now
 *
 * Completions are published once per burst (DeviceQueue.flush) and counted here as pending. The call
 * eventfd is written at most once for all of them, at the last moment: when the worker sleeps (folded
 * into its native waitKick), or when so many are pending that the driver would starve for buffers. A
 * busy queue (one that decided an interrupt less than `coalesce.usecs` ago) holds it until that time
 * has passed; the worker's sleep ends at the deadline, so a held interrupt goes out on time even if
 * no more work comes. Whether a signal is due at all is the ring's decision, taken when the interrupt
 * would go (virtio 1.2 §2.7.7: EVENT_IDX used_event, or VRING_AVAIL_F_NO_INTERRUPT). The control
 * queue uses it too, on the main thread, without the hold.
 */
import * as native from '../native/index.ts';
import type { DeviceQueue } from '../vring/index.ts';
import { Coalescer, NOW, type CoalesceOptions } from './coalesce.ts';
import { M } from './metrics.ts';

/** The coalescing clock: microseconds, monotonic. */
export const nowUs = (): number => performance.now() * 1000;

export class PendingUsed {
  /** Completions published since the last signal decision. */
  pending = 0;
  /** Clock time (µs, nowUs) until which the pending completions are held; 0 when none are. */
  heldUntil = 0;
  private readonly queue: DeviceQueue;
  private callFd: number;
  private readonly c: Float64Array;
  private readonly rule: Coalescer | null;

  /** `coalesce` absent or with usecs 0: every decision is taken at once (the control queue). */
  constructor(queue: DeviceQueue, callFd: number, counters: Float64Array, coalesce?: CoalesceOptions) {
    this.queue = queue;
    this.callFd = callFd;
    this.c = counters;
    const rule = coalesce ? new Coalescer(coalesce) : null;
    this.rule = rule?.enabled ? rule : null;
  }

  /**
   * Decides now whether the pending completions need an interrupt, and consumes them. Returns the fd
   * to signal (so the caller can fold the write into its blocking call), or -1.
   */
  take(): number {
    const pending = this.pending;
    if (pending === 0) return -1;
    this.pending = 0;
    this.heldUntil = 0;
    const wanted = this.callFd >= 0 && this.queue.needsNotification();
    this.rule?.decided(nowUs(), pending, wanted);
    if (wanted) {
      this.c[M.interrupts]! += 1;
      return this.callFd;
    }
    this.c[M.interruptsSuppressed]! += 1;
    return -1;
  }

  /**
   * For a worker about to sleep with buffers to spare: take() now, or hold the pending completions
   * (returns -1 and sets heldUntil; the worker sleeps no longer than that and calls signal() then).
   */
  takeOrHold(): number {
    if (this.pending === 0 || this.rule === null) return this.take();
    const at = this.rule.due(nowUs(), this.pending);
    if (at === NOW) return this.take();
    if (this.heldUntil === 0) this.c[M.interruptsHeld]! += 1;
    this.heldUntil = at;
    return -1;
  }

  /**
   * Signals on `fd` from now on (−1: none). Completions still pending or held go there when their
   * time comes, as they would have gone to the old one.
   */
  setCallFd(fd: number): void {
    this.callFd = fd;
  }

  /** Signals now if due. */
  signal(): void {
    const fd = this.take();
    if (fd >= 0) native.eventfdWrite(fd, 1);
  }
}
