/**
 * net_output: the guest's TX queue → the backend. The service step of the TX loop (loops.ts), run in
 * the queue's worker thread:
 *
 *   guest TX ring ──popBurst──▶ header checks ──iovec table──▶ port.send (one call) ──▶ tap / pair
 *                                    │ bad: completed with 0, counted          │
 *                                    ▼                                         ▼
 *                               used ring ◀──────── addUsed(head, 0) ◀─── every chain, then one flush
 *
 * One call of {@link TxService.processTx} is one burst: pop up to `burst` chains (reading avail.idx
 * once), check each header, describe every good chain as one frame in a preallocated IovecTable
 * (header and frame exactly as the guest laid them out, no copy), hand the whole burst to the backend
 * in one call, complete every chain with length 0, and publish used.idx once. Signalling and sleeping
 * are the loop's.
 *
 * A malformed chain is completed and counted under its reason, never sent; the next chain still goes.
 * A frame the backend refuses (the kernel validates the vnet header again) is counted the same way.
 * Frame observers (capture, rate-limit accounting; service.ts) see each good frame as it is described.
 */
import { NativeError } from '../native/errors.ts';
import { IovecTable } from '../native/iovec.ts';
import type { DescriptorChain } from '../vring/index.ts';
import type { TxPort } from './backend.ts';
import { checkTxHeader, ETH_HLEN, TX_DROP } from './header.ts';
import { M, TX_DROP_COUNTER } from './metrics.ts';
import type { ServiceContext } from './service.ts';

/** Most iovecs one TX frame may use (a 64 KiB GSO frame in 4 KiB pages, plus header pieces). A chain
 *  in more pieces is legal but not worth a table that size: it is completed and counted. */
export const MAX_IOV_PER_FRAME = 64;

export class TxService {
  readonly ctx: ServiceContext<TxPort>;
  private readonly chains: DescriptorChain[] = [];
  private readonly table: IovecTable;
  private readonly lens: Uint32Array;
  /** Header bytes to skip when the backend does not take a virtio_net_hdr. */
  private readonly skip: number;
  /** A started-but-disabled ring (vhost-user "Ring states"): chains are consumed, never sent. */
  private readonly discard: boolean;
  /** Set when the last burst stopped for the rate limit: milliseconds until frames may go again. */
  throttledMs = 0;

  constructor(ctx: ServiceContext<TxPort>, opts: { backendHdrLen: number; discard?: boolean }) {
    this.ctx = ctx;
    this.discard = opts.discard === true;
    this.skip = opts.backendHdrLen === 0 ? ctx.f.hdrLen : 0;
    this.table = IovecTable.take(ctx.burst * MAX_IOV_PER_FRAME, ctx.burst);
    this.lens = new Uint32Array(ctx.burst);
  }

  /** Gives the service's iovec table back for the next queue this thread starts; the service is done. */
  dispose(): void {
    this.table.giveBack();
  }

  /** One burst. Returns the number of chains consumed (0: the ring was empty, or the rate limit said wait). */
  processTx(): number {
    const ctx = this.ctx;
    const q = ctx.queue;
    if (this.discard) return this.discardBurst();
    let max = ctx.burst;
    this.throttledMs = 0;
    const limiter = ctx.limiter;
    if (limiter !== null) {
      max = limiter.allowance(max);
      if (max === 0) {
        // Leave the frames in the ring; the loop sleeps until the buckets refill.
        if (q.availPending() > 0) this.throttledMs = Math.max(1, limiter.waitMs());
        return 0;
      }
    }
    const n = q.popBurst(max, this.chains);
    if (n === 0) return 0;
    const obs = ctx.observer;
    obs?.beginBurst();
    this.send(n);
    obs?.endBurst();
    this.publish(n);
    return n;
  }

  /** A disabled ring's burst: every chain completed with 0 and counted, nothing sent or observed. */
  private discardBurst(): number {
    const q = this.ctx.queue;
    const n = q.popBurst(this.ctx.burst, this.chains);
    if (n === 0) return 0;
    for (let i = 0; i < n; i++) q.addUsed(this.chains[i]!.head, 0);
    this.ctx.c[M.txDropDisabled]! += n;
    this.publish(n);
    return n;
  }

  /** Publishes the burst's completions (one used.idx store) and leaves the interrupt to the loop. */
  private publish(n: number): void {
    this.ctx.queue.flush();
    this.ctx.pending.pending += n;
    this.ctx.c[M.bursts]! += 1;
  }

  /**
   * Checks and sends the n chains just popped, then completes each (none is left in flight), in the
   * order they were popped: a malformed chain is not completed ahead of the frames before it, so that
   * the ring is used in the order it was made available (VIRTIO_F_IN_ORDER). Every TX completion
   * writes 0 bytes, whatever became of the frame.
   */
  private send(n: number): void {
    const ctx = this.ctx;
    const q = ctx.queue;
    const c = ctx.c;
    const f = ctx.f;
    const mem = ctx.mem;
    const obs = ctx.observer;
    const hdrLen = f.hdrLen;
    const t = this.table;
    t.reset();
    let frames = 0;
    for (let i = 0; i < n; i++) {
      const ch = this.chains[i]!;
      let code: number = TX_DROP.OK;
      if (ch.writableLen !== 0) code = TX_DROP.WRITABLE;
      else if (ch.readable.count > MAX_IOV_PER_FRAME) code = TX_DROP.TOO_MANY_PIECES;
      else if (ch.readableLen < hdrLen + ETH_HLEN) code = TX_DROP.SHORT;
      else if (!ch.locate(0, hdrLen)) code = TX_DROP.SHORT;
      else code = checkTxHeader(ch.dv, ch.pos, ch.readableLen - hdrLen, f);
      if (code !== TX_DROP.OK) {
        c[TX_DROP_COUNTER[code]!]! += 1;
        continue;
      }
      t.count = ch.appendIovecs(t.entries, t.count, 'readable', this.skip, ch.readableLen - this.skip, mem);
      t.endFrame();
      if (obs !== null) {
        const v = ctx.frame;
        v.len = ch.readableLen - hdrLen;
        v.part = 'readable';
        v.chains[0] = ch;
        v.count = 1;
        obs.onFrame(v);
      }
      this.lens[frames] = ch.readableLen - hdrLen;
      frames++;
    }
    let first = 0;
    while (first < frames) {
      let sent: number;
      try {
        sent = ctx.port.send(t, first);
      } catch (e) {
        // The backend refused frame `first` (e.g. EINVAL for a vnet header the kernel rejects). Only
        // a failed system call is the backend's; anything else is a bug and breaks the queue.
        if (!(e instanceof NativeError)) throw e;
        c[M.txDropBackend]! += 1;
        ctx.backendFailed(e.errno, this.chains, 0, n);
        first++;
        continue;
      }
      if (sent === 0) {
        // The backend would block. A tap's write does not (the kernel drops instead), but the pair
        // backend's frame ring can be full. Waiting would hold the guest's chains and stall its TX, so
        // the rest are completed and counted as the backend's drops, as a full NIC queue drops.
        c[M.txDropBackend]! += frames - first;
        break;
      }
      // Frames the port took but did not send are counted by the port, under their reason.
      const refused = ctx.port.refused;
      let moved = 0;
      for (let k = first; k < first + sent; k++) {
        if (refused !== undefined && refused[k] === 1) continue;
        c[M.bytes]! += this.lens[k]!;
        moved++;
      }
      c[M.frames]! += moved;
      first += sent;
    }
    for (let i = 0; i < n; i++) q.addUsed(this.chains[i]!.head, 0);
  }
}
