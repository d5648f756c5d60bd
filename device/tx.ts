/**
 * net_output: the guest's TX queue → the backend.
 *
 * One call of {@link TxService.processTx} is one burst: pop up to `burst` chains (reading avail.idx
 * once), check each header, describe every good chain as one frame in a preallocated IovecTable
 * (header and frame exactly as the guest laid them out, no copy), hand the whole burst to the backend
 * in one call, complete every chain with length 0, and publish used.idx once.
 *
 * A malformed chain is completed and counted under its reason, never sent; the next chain still goes.
 * A frame the backend refuses (the kernel validates the vnet header again) is counted the same way.
 */
import { NativeError } from '../native/errors.ts';
import { IovecTable } from '../native/iovec.ts';
import type { DescriptorChain, GuestMemory, SplitQueue } from '../vring/index.ts';
import type { TxPort } from './backend.ts';
import type { NegotiatedFeatures } from './features.ts';
import { checkTxHeader, ETH_HLEN, TX_DROP } from './header.ts';
import type { PcapWriter } from './capture.ts';
import type { PendingUsed } from './interrupt.ts';
import type { RateLimiter } from './rate-limit.ts';
import { M, TX_DROP_COUNTER } from './metrics.ts';

/** Most iovecs one TX frame may use (a 64 KiB GSO frame in 4 KiB pages, plus header pieces). A chain
 *  in more pieces is legal but not worth a table that size: it is completed and counted. */
export const MAX_IOV_PER_FRAME = 64;

export class TxService {
  private readonly queue: SplitQueue;
  private readonly mem: GuestMemory;
  private readonly f: NegotiatedFeatures;
  private readonly port: TxPort;
  private readonly c: Float64Array;
  private readonly pending: PendingUsed;
  private readonly burst: number;
  private readonly chains: DescriptorChain[] = [];
  private readonly table: IovecTable;
  private readonly heads: Uint16Array;
  private readonly lens: Uint32Array;
  /** Header bytes to skip when the backend does not take a virtio_net_hdr. */
  private readonly skip: number;
  private readonly discard: boolean;
  private readonly capture: PcapWriter | undefined;
  private readonly limiter: RateLimiter | undefined;
  /** Set when the last burst stopped for the rate limit: milliseconds until frames may go again. */
  throttledMs = 0;

  constructor(queue: SplitQueue, mem: GuestMemory, f: NegotiatedFeatures, port: TxPort, pending: PendingUsed,
    counters: Float64Array, opts: { burst: number; backendHdrLen: number; discard?: boolean; capture?: PcapWriter; limiter?: RateLimiter }) {
    this.queue = queue;
    this.mem = mem;
    this.f = f;
    this.port = port;
    this.pending = pending;
    this.c = counters;
    this.burst = opts.burst;
    this.discard = opts.discard === true;
    this.capture = opts.capture;
    this.limiter = opts.limiter;
    this.skip = opts.backendHdrLen === 0 ? f.hdrLen : 0;
    this.table = new IovecTable(opts.burst * MAX_IOV_PER_FRAME, opts.burst);
    this.heads = new Uint16Array(opts.burst);
    this.lens = new Uint32Array(opts.burst);
  }

  /** One burst. Returns the number of chains consumed (0: the ring was empty). */
  processTx(): number {
    const q = this.queue;
    let max = this.burst;
    this.throttledMs = 0;
    if (this.limiter && !this.discard) {
      max = this.limiter.allowance(max);
      if (max === 0) {
        // Leave the frames in the ring; the worker sleeps until the buckets refill.
        if (q.availPending() > 0) this.throttledMs = Math.max(1, this.limiter.waitMs());
        return 0;
      }
    }
    const n = q.popBurst(max, this.chains);
    if (n === 0) return 0;
    const c = this.c;
    if (this.discard) {
      for (let i = 0; i < n; i++) q.addUsed(this.chains[i]!.head, 0);
      c[M.txDropDisabled]! += n;
    } else {
      this.capture?.begin();
      this.send(n);
      this.capture?.flush();
    }
    q.flush();
    this.pending.pending += n;
    c[M.bursts]! += 1;
    return n;
  }

  /** Checks and sends the n chains just popped, completing each (none is left in flight). */
  private send(n: number): void {
    const q = this.queue;
    const c = this.c;
    const hdrLen = this.f.hdrLen;
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
      else code = checkTxHeader(ch.dv, ch.pos, ch.readableLen - hdrLen, this.f);
      if (code !== TX_DROP.OK) {
        q.addUsed(ch.head, 0);
        c[TX_DROP_COUNTER[code]!]! += 1;
        continue;
      }
      t.count = ch.appendIovecs(t.entries, t.count, 'readable', this.skip, ch.readableLen - this.skip, this.mem);
      t.endFrame();
      const cap = this.capture;
      if (cap) {
        cap.openRecord(ch.readableLen - hdrLen);
        cap.add(ch, 'readable', hdrLen);
        cap.closeRecord();
      }
      this.heads[frames] = ch.head;
      this.lens[frames] = ch.readableLen - hdrLen;
      this.limiter?.charge(ch.readableLen - hdrLen);
      frames++;
    }
    let first = 0;
    while (first < frames) {
      let sent: number;
      try {
        sent = this.port.send(t, first);
      } catch (e) {
        // The backend refused frame `first` (e.g. EINVAL for a vnet header the kernel rejects). Only
        // a failed system call is the backend's; anything else is a bug and breaks the queue.
        if (!(e instanceof NativeError)) throw e;
        q.addUsed(this.heads[first]!, 0);
        c[M.txDropBackend]! += 1;
        c[M.backendErrno] = e.errno;
        first++;
        continue;
      }
      if (sent === 0) {
        // The backend would block; a tap never does on write, so count the rest rather than spin.
        for (; first < frames; first++) {
          q.addUsed(this.heads[first]!, 0);
          c[M.txDropBackend]! += 1;
        }
        break;
      }
      for (let k = first; k < first + sent; k++) {
        q.addUsed(this.heads[k]!, 0);
        c[M.bytes]! += this.lens[k]!;
      }
      c[M.frames]! += sent;
      first += sent;
    }
  }
}
