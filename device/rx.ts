/**
 * net_input: the backend → the guest's RX queue.
 *
 * Two paths, chosen once per burst:
 *
 * - Batched (no MRG_RXBUF, filter passes everything): pop up to `burst` chains, describe each
 *   chain's writable part as one frame slot, and read the whole burst from the backend in one call,
 *   straight into guest memory. Chains left without a frame are rewound.
 *
 * - Per frame (MRG_RXBUF, or an RX filter to apply): gather popped chains until they can hold the
 *   largest frame the guest may receive, read one frame across them, then complete only the chains
 *   it filled and write num_buffers. A frame the filter rejects is read over by the next one in the
 *   same buffers. Chains left over at the end of the burst are rewound.
 *
 * In both paths the backend's virtio_net_hdr lands in front of the frame as-is and only num_buffers
 * is written by the device (§5.1.6.4: 1 without MRG_RXBUF). A chain too short for the header is
 * completed with 0 and counted; a frame larger than the room offered is consumed, counted and not
 * delivered. Without buffers the device stops reading the backend, so frames wait in the kernel.
 */
import { NativeError } from '../native/errors.ts';
import { IovecTable } from '../native/iovec.ts';
import { DescriptorError, VringErrorCode, type DescriptorChain, type GuestMemory, type SplitQueue } from '../vring/index.ts';
import type { RxPort } from './backend.ts';
import type { NegotiatedFeatures } from './features.ts';
import { ETH_HLEN, HDR, MAX_FRAME_LEN } from './header.ts';
import type { PcapWriter } from './capture.ts';
import type { PendingUsed } from './interrupt.ts';
import type { RateLimiter } from './rate-limit.ts';
import { M } from './metrics.ts';
import type { RxFilter } from './rx-filter.ts';

/** Outcome of one RX burst. */
export const RX = {
  /** Every slot offered got a frame; the backend may have more. */
  MORE: 1,
  /** The guest has no (or too little) buffer room: wait for a kick. */
  NO_BUFFERS: 2,
  /** The backend has nothing to read: wait for it. */
  BACKEND_EMPTY: 3,
  /** The rate limit stopped the burst: wait `throttledMs`. */
  THROTTLED: 4,
} as const;

/** Most iovecs one RX chain may bring; a chain in more pieces is completed with 0 and counted. */
export const MAX_IOV_PER_CHAIN = 256;
/** Most iovecs one RX frame may span with MRG_RXBUF (one readv: Linux's UIO_MAXIOV). */
const MAX_IOV_PER_FRAME = 1024;
/** Bytes of a frame the filter looks at: two MACs, TPID, TCI. */
const FILTER_BYTES = 16;
/** Room for a VLAN tag on top of the MTU. */
const VLAN_HLEN = 4;

export class RxService {
  private readonly queue: SplitQueue;
  private readonly mem: GuestMemory;
  private readonly f: NegotiatedFeatures;
  private readonly port: RxPort;
  private readonly c: Float64Array;
  private readonly pending: PendingUsed;
  private readonly burst: number;
  /** The filter programmed by the control queue (shared with whoever updates it). */
  readonly filter: RxFilter;
  private readonly chains: DescriptorChain[] = [];
  private readonly table: IovecTable;
  private readonly slotChain: Uint16Array;
  /** Bytes of virtio_net_hdr the device writes itself (backend without a vnet header). */
  private readonly skip: number;
  /** The largest frame plus header the guest may receive (readv returns header + frame). */
  private readonly maxRx: number;
  private readonly zeroHdr = new Uint8Array(HDR.LEN_V1);
  private readonly peek = new Uint8Array(FILTER_BYTES);
  private readonly included: number[] = [];
  private readonly capture: PcapWriter | undefined;
  private readonly limiter: RateLimiter | undefined;
  /** Set with RX.THROTTLED: milliseconds until frames may be read again. */
  throttledMs = 0;
  /** A full-size frame (MTU + Ethernet header): what the rate limit assumes before a read. */
  private readonly frameHint: number;

  constructor(queue: SplitQueue, mem: GuestMemory, f: NegotiatedFeatures, port: RxPort, pending: PendingUsed,
    counters: Float64Array, filter: RxFilter, opts: { burst: number; mtu: number; capture?: PcapWriter; limiter?: RateLimiter }) {
    this.queue = queue;
    this.mem = mem;
    this.f = f;
    this.port = port;
    this.pending = pending;
    this.c = counters;
    this.filter = filter;
    this.burst = opts.burst;
    this.capture = opts.capture;
    this.limiter = opts.limiter;
    this.frameHint = opts.mtu + ETH_HLEN;
    this.skip = port.vnetHdrLen === 0 ? f.hdrLen : 0;
    const gso = f.guestTso4 || f.guestTso6 || f.guestUfo;
    this.maxRx = f.hdrLen + (gso ? MAX_FRAME_LEN : opts.mtu + ETH_HLEN + VLAN_HLEN);
    this.table = new IovecTable(Math.max(opts.burst * MAX_IOV_PER_CHAIN, MAX_IOV_PER_FRAME), opts.burst);
    this.slotChain = new Uint16Array(opts.burst);
  }

  /** One burst. Returns an {@link RX} outcome. */
  processRx(): number {
    this.capture?.begin();
    let max = this.burst;
    if (this.limiter) {
      max = this.limiter.allowance(max, this.frameHint);
      if (max === 0) {
        this.throttledMs = Math.max(1, this.limiter.waitMs());
        return RX.THROTTLED; // frames wait in the backend
      }
    }
    return !this.f.mrgRxbuf && this.filter.passAll ? this.batched(max) : this.perFrame(max);
  }

  /** 0 when the chain can take a frame, else the counter of why not (it is completed with 0). */
  private unusable(ch: DescriptorChain): number {
    if (ch.readableLen !== 0 || ch.writableLen < this.f.hdrLen + ETH_HLEN - this.skip) return M.rxDropShortBuffer;
    return ch.writable.count > MAX_IOV_PER_CHAIN ? M.rxDropTooManyPieces : 0;
  }

  private batched(max: number): number {
    const q = this.queue;
    const c = this.c;
    const n = q.popBurst(max, this.chains);
    if (n === 0) {
      c[M.rxNoBuffers]! += 1;
      return RX.NO_BUFFERS;
    }
    const t = this.table;
    t.reset();
    let slots = 0;
    for (let i = 0; i < n; i++) {
      const ch = this.chains[i]!;
      if (this.unusable(ch)) continue;
      t.count = ch.appendIovecs(t.entries, t.count, 'writable', this.skip, ch.writableLen - this.skip, this.mem);
      t.endFrame();
      this.slotChain[slots++] = i;
    }
    let got = 0;
    if (slots > 0) {
      try {
        got = this.port.recv(t, slots);
      } catch (e) {
        if (!(e instanceof NativeError)) throw e; // a bug, not the backend: the queue breaks
        c[M.rxDropBackend]! += 1;
        c[M.backendErrno] = e.errno;
      }
    }
    // Chains before the first slot left empty are settled (filled, or short and completed with 0);
    // that slot's chain and everything after it go back to the ring.
    const settled = got < slots ? this.slotChain[got]! : n;
    let completed = 0;
    let slot = 0;
    for (let i = 0; i < settled; i++) {
      const ch = this.chains[i]!;
      if (slot < got && this.slotChain[slot] === i) {
        this.complete1(ch, t.bytes[slot]! + this.skip);
        slot++;
      } else {
        q.addUsed(ch.head, 0);
        c[this.unusable(ch) || M.rxDropShortBuffer]! += 1;
      }
      completed++;
    }
    if (settled < n) q.rewind(n - settled);
    if (completed > 0) {
      this.capture?.flush(); // before used.idx: the guest may reuse its buffers right after
      q.flush();
      this.pending.pending += completed;
      c[M.bursts]! += 1;
    }
    return got < slots || slots === 0 ? RX.BACKEND_EMPTY : RX.MORE;
  }

  /** Completes a chain that received one whole frame of `total` bytes (header included). */
  private complete1(ch: DescriptorChain, total: number): void {
    const c = this.c;
    if (total > ch.writableLen || total > this.maxRx) {
      // Truncated by the backend: the guest would get a damaged frame.
      this.queue.addUsed(ch.head, 0);
      c[M.rxDropTooBig]! += 1;
      return;
    }
    if (this.skip) ch.writeBytes(0, this.zeroHdr, 0, this.skip);
    if (this.f.hdrLen === HDR.LEN_V1) ch.setU16(HDR.NUM_BUFFERS, 1);
    const cap = this.capture;
    if (cap) {
      cap.openRecord(total - this.f.hdrLen);
      cap.add(ch, 'writable', this.f.hdrLen);
      cap.closeRecord();
    }
    this.queue.addUsed(ch.head, total);
    this.limiter?.charge(total - this.f.hdrLen);
    c[M.frames]! += 1;
    c[M.bytes]! += total - this.f.hdrLen;
  }

  private perFrame(max: number): number {
    const q = this.queue;
    const c = this.c;
    const t = this.table;
    const hdrLen = this.f.hdrLen;
    const chains = this.chains;
    const included = this.included;
    const need = this.f.mrgRxbuf ? this.maxRx : 1;
    let popped = 0;
    let next = 0; // first chain not yet settled
    let frames = 0;
    let completed = 0;
    let outcome: number = RX.MORE;
    while (frames < max) {
      // Gather chains from `next` until they hold `need` bytes (one chain without MRG_RXBUF).
      t.reset();
      included.length = 0;
      let room = 0;
      let k = next;
      while (room < need) {
        if (k === popped) {
          const got = q.popBurst(Math.min(this.burst, q.size - popped), chains, popped);
          if (got === 0) break;
          popped += got;
        }
        const ch = chains[k]!;
        const bad = this.unusable(ch);
        if (bad) {
          if (k === next) {
            q.addUsed(ch.head, 0);
            c[bad]! += 1;
            completed++;
            next++;
          }
          k++; // a short chain inside the gathered range is completed with 0 when settled
          continue;
        }
        if (t.count + ch.writable.count > MAX_IOV_PER_FRAME) {
          throw new DescriptorError(VringErrorCode.TOO_MANY_PIECES,
            `an RX frame would span more than ${MAX_IOV_PER_FRAME} buffer pieces (MRG_RXBUF with tiny buffers); the queue is marked broken`);
        }
        const skip = included.length === 0 ? this.skip : 0;
        t.count = ch.appendIovecs(t.entries, t.count, 'writable', skip, ch.writableLen - skip, this.mem);
        room += ch.writableLen;
        included.push(k);
        k++;
        if (!this.f.mrgRxbuf) break;
      }
      if (included.length === 0 || room < need) {
        c[M.rxNoBuffers]! += 1;
        outcome = RX.NO_BUFFERS;
        break;
      }
      t.endFrame();
      let got = 0;
      try {
        got = this.port.recv(t, 1);
      } catch (e) {
        if (!(e instanceof NativeError)) throw e; // a bug, not the backend: the queue breaks
        c[M.rxDropBackend]! += 1;
        c[M.backendErrno] = e.errno;
        outcome = RX.BACKEND_EMPTY;
        break;
      }
      if (got === 0) {
        outcome = RX.BACKEND_EMPTY;
        break;
      }
      const total = t.bytes[0]! + this.skip;
      if (total > room || total > this.maxRx) {
        c[M.rxDropTooBig]! += 1;
        continue; // the same buffers take the next frame
      }
      const first = chains[included[0]!]!;
      if (!this.filter.passAll && first.writableLen >= hdrLen + FILTER_BYTES) {
        first.readWritable(hdrLen, this.peek, 0, FILTER_BYTES);
        if (!this.filter.accept(this.peek, 0, total - hdrLen)) {
          c[M.rxDropFiltered]! += 1;
          continue;
        }
      }
      // Settle: chains from `next` up to the last one the frame filled.
      let remaining = total;
      let used = 0;
      while (remaining > 0) remaining -= chains[included[used++]!]!.writableLen;
      const last = included[used - 1]!;
      if (this.skip) first.writeBytes(0, this.zeroHdr, 0, this.skip);
      if (hdrLen === HDR.LEN_V1) first.setU16(HDR.NUM_BUFFERS, used);
      const cap = this.capture;
      if (cap) {
        cap.openRecord(total - hdrLen);
        cap.add(first, 'writable', hdrLen);
        for (let u = 1; u < used; u++) cap.add(chains[included[u]!]!, 'writable', 0);
        cap.closeRecord();
      }
      remaining = total;
      let u = 0;
      for (let i = next; i <= last; i++) {
        const ch = chains[i]!;
        if (u < used && included[u] === i) {
          const len = Math.min(remaining, ch.writableLen);
          q.addUsed(ch.head, len);
          remaining -= len;
          u++;
        } else {
          q.addUsed(ch.head, 0);
          c[this.unusable(ch) || M.rxDropShortBuffer]! += 1;
        }
        completed++;
      }
      next = last + 1;
      frames++;
      this.limiter?.charge(total - hdrLen);
      c[M.frames]! += 1;
      c[M.bytes]! += total - hdrLen;
    }
    if (popped > next) q.rewind(popped - next);
    if (completed > 0) {
      this.capture?.flush();
      q.flush();
      this.pending.pending += completed;
      c[M.bursts]! += 1;
    }
    return outcome;
  }
}
