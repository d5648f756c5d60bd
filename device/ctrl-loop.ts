/**
 * The control queue's service loop (virtio 1.2 §5.1.6.5), on the main thread: the control queue is
 * rare, so it gets no worker. NetDevice starts it when the control queue starts.
 *
 *   guest ──kick eventfd──▶ FdPoller (event loop) ──▶ serve(): pop ─▶ processCtrl (ctrl.ts) ─▶ ack,
 *                                                                addUsed ─▶ flush ─▶ signal (interrupt.ts)
 *
 * Like a data queue's loop, one wake-up drains the ring, then signals once. A ring the guest broke is
 * counted, reported once through `onBroken`, and not touched again.
 */
import * as native from '../native/index.ts';
import { LgnetError } from '../errors/index.ts';
import type { DescriptorChain, DeviceQueue, GuestMemory } from '../vring/index.ts';
import { MAX_CTRL_LEN, processCtrl, type CtrlTarget } from './ctrl.ts';
import { NET_ERROR } from './errors.ts';
import type { NegotiatedFeatures } from './features.ts';
import { PendingUsed } from './interrupt.ts';
import { IOTLB_RETRY_MS, IotlbAsks } from './iotlb-asks.ts';
import { createQueue } from './service.ts';
import { M } from './metrics.ts';

/** What the loop needs from its device. */
export interface CtrlLoopOptions {
  ring: { size: number; desc: number; avail: number; used: number; lastAvail: number };
  kickFd: number;
  callFd: number;
  mem: GuestMemory;
  features: NegotiatedFeatures;
  counters: Float64Array;
  burst: number;
  /** What the commands act on. */
  target: CtrlTarget;
  /** Commands served and refused so far (the device's, kept across restarts). */
  stats: { commands: number; errors: number };
  /** The queue was found broken before (the loop then does nothing). */
  isBroken(): boolean;
  /** A command was refused (answered VIRTIO_NET_ERR). */
  onRefused(error: string): void;
  /** The ring is broken: a typed error's code, or WORKER_ERROR for a bug. */
  onBroken(code: string, message: string): void;
  /** Behind an IOMMU: a command's buffer has no mapping yet (it stays in the ring until the owner serves again). */
  onIotlbMiss?(iova: number, access: number): void;
}

export class CtrlLoop {
  readonly queue: DeviceQueue;
  private readonly opts: CtrlLoopOptions;
  private readonly pending: PendingUsed;
  private readonly poller: native.FdPoller;
  private readonly chains: DescriptorChain[] = [];
  private readonly buf = new Uint8Array(MAX_CTRL_LEN);
  /** Behind an IOMMU: what the queue asked for (iotlb-asks.ts), and the retry when no answer comes. */
  private readonly asks = new IotlbAsks();
  private retry: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(opts: CtrlLoopOptions) {
    this.opts = opts;
    const r = opts.ring;
    this.queue = createQueue(opts.features, r);
    this.queue.attach(opts.mem);
    this.queue.resume(r.lastAvail);
    this.pending = new PendingUsed(this.queue, opts.callFd, opts.counters);
    this.poller = new native.FdPoller(opts.kickFd, () => this.serve());
  }

  /** Starts watching the kick fd, and serves the commands queued before the start. */
  start(): void {
    this.poller.start(native.POLL.READABLE);
    this.serve();
  }

  /** Signals on `fd` from now on (−1: none). */
  setCallFd(fd: number): void {
    this.pending.setCallFd(fd);
  }

  /** Serve again in IOTLB_RETRY_MS, whatever happens meanwhile (one timer at a time; not after stop). */
  private armRetry(): void {
    if (this.retry || this.stopped) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      if (this.stopped) return;
      this.opts.mem.iotlb?.clearMiss();
      this.serve(false);
    }, IOTLB_RETRY_MS);
    this.retry.unref();
  }

  /** Stops watching; returns the next avail index to process. */
  stop(): number {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    this.poller.close();
    return this.queue.base();
  }

  /** One wake-up: drain the ring, then signal once. `kicked` false: no kick to read (an IOTLB retry). */
  serve(kicked = true): void {
    const o = this.opts;
    if (o.isBroken()) return;
    if (kicked) {
      try {
        native.eventfdRead(o.kickFd);
      } catch { /* a blocking kick fd with nothing to read: fine (main thread, not the data path) */ }
    }
    const q = this.queue;
    try {
      for (;;) {
        const n = q.popBurst(o.burst, this.chains);
        if (n === 0) break;
        for (let i = 0; i < n; i++) {
          const ch = this.chains[i]!;
          const r = processCtrl(ch, o.target, this.buf);
          o.stats.commands++;
          if (r.error) {
            o.stats.errors++;
            o.onRefused(r.error);
          }
          q.addUsed(ch.head, ch.writableLen >= 1 ? 1 : 0);
        }
        q.flush();
        this.pending.pending += n;
      }
      this.pending.signal();
      // Behind an IOMMU, a command whose mapping has not come yet: asked for; iotlbChanged serves
      // again, or the retry does when no answer came (a guest's driver spins on its command).
      const t = o.mem.iotlb;
      if (t && t.stalled) {
        o.counters[M.iotlbMisses]! += this.asks.ask(t, q.lastAvail, performance.now(), (iova, access) => o.onIotlbMiss?.(iova, access));
        this.armRetry();
      }
    } catch (e) {
      // As a data queue's worker does: a typed error keeps its code, anything else is a bug.
      o.counters[M.queueBroken]! += 1;
      o.onBroken(e instanceof LgnetError ? e.code : NET_ERROR.WORKER_ERROR, e instanceof Error ? e.message : String(e));
    }
  }
}
