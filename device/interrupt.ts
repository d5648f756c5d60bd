/**
 * Pending-used interrupt coalescing (lguest's `pending_used`).
 *
 *   service (tx.ts / rx.ts) ── flush used.idx, pending += n ──▶ PendingUsed ── take() ──▶ call eventfd
 *                                                   loop (loops.ts): before it sleeps, or at 1/4 ring
 *
 * Completions are published once per burst (DeviceQueue.flush) and counted here as pending. The call
 * eventfd is written at most once for all of them, at the last moment: just before the worker
 * sleeps (folded into its native waitKick), or when so many are pending that the driver would starve
 * for buffers. Whether a signal is due at all is the ring's decision (virtio 1.2 §2.7.7: EVENT_IDX
 * used_event, or VRING_AVAIL_F_NO_INTERRUPT). The control queue uses it too, on the main thread.
 */
import * as native from '../native/index.ts';
import type { DeviceQueue } from '../vring/index.ts';
import { M } from './metrics.ts';

export class PendingUsed {
  /** Completions published since the last signal decision. */
  pending = 0;
  private readonly queue: DeviceQueue;
  private readonly callFd: number;
  private readonly c: Float64Array;

  constructor(queue: DeviceQueue, callFd: number, counters: Float64Array) {
    this.queue = queue;
    this.callFd = callFd;
    this.c = counters;
  }

  /**
   * Decides whether the pending completions need an interrupt, and consumes them. Returns the fd to
   * signal (so the caller can fold the write into its blocking call), or -1.
   */
  take(): number {
    if (this.pending === 0) return -1;
    this.pending = 0;
    if (this.callFd >= 0 && this.queue.needsNotification()) {
      this.c[M.interrupts]! += 1;
      return this.callFd;
    }
    this.c[M.interruptsSuppressed]! += 1;
    return -1;
  }

  /** Signals now if due. */
  signal(): void {
    const fd = this.take();
    if (fd >= 0) native.eventfdWrite(fd, 1);
  }
}
