/**
 * net_input: the backend → the guest's RX queue. The service step of the RX loop (loops.ts), run in
 * the queue's worker thread:
 *
 *   tap / pair ──port.recv──▶ straight into the guest's RX buffers ──▶ num_buffers ──▶ used ring
 *                              (chains popped from the RX ring)          (one flush per burst)
 *
 * Three paths, chosen once per burst:
 *
 * - Batched (no MRG_RXBUF, or MRG_RXBUF without GSO while every chain holds the largest frame, so
 *   each frame takes one buffer with num_buffers 1; the filter passes everything): pop up to `burst` chains, describe each
 *   chain's writable part as one frame slot, and read the whole burst from the backend in one call,
 *   straight into guest memory (a tap: one readv per frame, or one io_uring_enter per round of
 *   READVs). Chains left without a frame are kept (below).
 *
 * - Merged (MRG_RXBUF, or an RX filter to apply, on a port with recvMerged): pop chains, describe
 *   each as one buffer, and let the backend read frame after frame into them in one call, each frame
 *   into as many whole buffers as it needs (one without MRG_RXBUF); it returns each frame's length
 *   and buffer count, and the device writes num_buffers and completes (drawn at merged()). With a
 *   filter, the call stops after any frame its peek list cannot vouch for, so a rejected frame sits in
 *   the last buffers taken and they take the next frame. A port that reads ahead (a tap on io_uring:
 *   rounds of READVs, one io_uring_enter each) takes the whole filter instead and applies it natively,
 *   so the call never stops for it; the device then logs every buffer offered. Chains left over are
 *   kept (below).
 *
 * - Per frame (the same cases on a port without recvMerged): gather popped chains until they can
 *   hold the largest frame the guest may receive, read one frame across them, then complete only the
 *   chains it filled and write num_buffers (the MrgCursor below, drawn there). A frame the filter
 *   rejects is read over by the next one in the same buffers. Chains left over at the end of the burst
 *   are rewound.
 *
 * Chains left over at the end of a batched or merged burst are kept, not rewound: they lead the next
 * burst, so a wake-up for one frame does not pop and translate again the ~43 buffers that a GSO-sized
 * frame may need (a Linux guest's 1536-byte buffers). They stay in flight until used, or until
 * release() gives them back (rewind) before the queue's position is read (stop, pause, exit) or a
 * path that does not keep them runs. While the ring takes up chains from an inflight record, they
 * are rewound as before (DeviceQueue.resubmitting).
 *
 * In both paths the backend's virtio_net_hdr lands in front of the frame as-is and only num_buffers
 * is written by the device (virtio 1.2 §5.1.6.4: 1 without MRG_RXBUF). A chain too short for the header
 * is completed with 0 and counted; a frame larger than the room offered is consumed, counted and not
 * delivered. Without buffers the device stops reading the backend, so frames wait in the kernel.
 * Frame observers (capture, rate-limit accounting; service.ts) see each delivered frame before the
 * burst's used.idx is published. Signalling and sleeping are the loop's.
 */
import { MERGED_STOP, PeekList, RxFilterSpec } from '../native/batch.ts';
import { NativeError } from '../native/errors.ts';
import { IovecTable } from '../native/iovec.ts';
import { DescriptorError, VringErrorCode, type DescriptorChain } from '../vring/index.ts';
import type { RxPort } from './backend.ts';
import { ETH_HLEN, HDR, MAX_FRAME_LEN } from './header.ts';
import { M } from './metrics.ts';
import type { RxFilter } from './rx-filter.ts';
import type { ServiceContext } from './service.ts';

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
const BROADCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

function isBroadcast(m: Uint8Array, o: number): boolean {
  return (m[o]! & m[o + 1]! & m[o + 2]! & m[o + 3]! & m[o + 4]! & m[o + 5]!) === 0xff;
}

export class RxService {
  readonly ctx: ServiceContext<RxPort>;
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
  private readonly cursor: MrgCursor;
  /** The merged path's chain of each buffer in the table (index into chains). */
  private readonly bufChain: Uint16Array;
  /** What the merged path's native call may read past without the filter (rebuilt per burst). */
  private readonly vouched = new PeekList();
  /** The whole filter, for a port that applies it natively (mergedReadsAhead; rebuilt per burst). */
  private readonly spec = new RxFilterSpec();
  /** The port reads frames into gathered buffers itself (recvMerged), and writes the whole header. */
  private readonly canMerge: boolean;
  /** Set with RX.THROTTLED: milliseconds until frames may be read again. */
  throttledMs = 0;
  /**
   * Set with RX.NO_BUFFERS: the ring position at which the last pop found nothing more (lastAvail's
   * form), taken before any chain is rewound. The loop sleeps for buffers past it, not past avail.idx
   * read later: buffers the driver adds after that pop and before the sleep may come without a kick
   * (EVENT_IDX: avail_event was stale then), and a sleep past them would leave them unread.
   */
  dryAt = 0;
  /** A full-size frame (MTU + Ethernet header): what the rate limit assumes before a read. */
  private readonly frameHint: number;
  /** Chains kept from the last burst: chains[0 … held−1], in pop order, popped and not used. */
  private held = 0;
  /**
   * The merged path leaves the kept chains described: table frames 0 … keptBufs−1 are the buffers
   * bufChain[0 … keptBufs−1], keptRoom bytes, so the next burst does not describe them again. 0 when
   * anything else took the table or the chains (the batched or per-frame path, release()).
   */
  private keptBufs = 0;
  private keptRoom = 0;
  /** The port's last merged call said its next one stages (IovecTable.stagedNext): offer one frame's room. */
  private stagedNext = false;
  /**
   * The port's last merged call left frames it read and could not place (IovecTable.stashed): the
   * next burst must be merged, which places them first, whatever path the buffers would pick.
   */
  private portHolds = false;
  /** MRG_RXBUF without GSO: a frame may fit one buffer, and then the batched path serves (below). */
  private readonly mrgInOne: boolean;
  /** The fewest writable bytes a chain must offer (unusable()). */
  private readonly minChain: number;

  constructor(ctx: ServiceContext<RxPort>, filter: RxFilter, opts: { mtu: number }) {
    this.ctx = ctx;
    this.filter = filter;
    const f = ctx.f;
    this.frameHint = opts.mtu + ETH_HLEN;
    this.skip = ctx.port.vnetHdrLen === 0 ? f.hdrLen : 0;
    const gso = f.guestTso4 || f.guestTso6 || f.guestUfo;
    this.maxRx = f.hdrLen + (gso ? MAX_FRAME_LEN : opts.mtu + ETH_HLEN + VLAN_HLEN);
    this.mrgInOne = f.mrgRxbuf && !gso;
    this.minChain = f.mrgRxbuf ? f.hdrLen : f.hdrLen + ETH_HLEN - this.skip;
    // Frames (batched) or buffers (merged): a burst, plus room for one frame over MAX_IOV_PER_FRAME
    // single-piece buffers. Entries: a burst of chains in their most pieces, or two frames' worth.
    const slots = ctx.burst + MAX_IOV_PER_FRAME;
    this.table = IovecTable.take(Math.max(ctx.burst * MAX_IOV_PER_CHAIN, 2 * MAX_IOV_PER_FRAME, slots), slots);
    this.slotChain = new Uint16Array(ctx.burst);
    this.bufChain = new Uint16Array(slots);
    this.canMerge = typeof ctx.port.recvMerged === 'function' && this.skip === 0;
    this.cursor = new MrgCursor(this, this.chains, this.table, this.skip);
  }

  /** One burst. Returns an {@link RX} outcome. */
  processRx(): number {
    const ctx = this.ctx;
    ctx.observer?.beginBurst();
    let max = ctx.burst;
    const limiter = ctx.limiter;
    if (limiter !== null) {
      max = limiter.allowance(max, this.frameHint);
      if (max === 0) {
        this.throttledMs = Math.max(1, limiter.waitMs());
        return RX.THROTTLED; // frames wait in the backend
      }
    }
    if (this.filter.passAll && !this.portHolds) {
      if (!ctx.f.mrgRxbuf) return this.batched(max, false);
      if (this.mrgInOne) {
        const r = this.batched(max, true);
        if (r !== 0) return r;
      }
    }
    if (this.canMerge) return this.merged(max);
    this.release(); // the per-frame path pops its own
    return this.perFrame(max);
  }

  /** Gives the service's iovec table back for the next queue this thread starts; the service is done. */
  dispose(): void {
    this.table.giveBack();
  }

  /** Whether the device has buffers to read into: chains kept from the last burst, or more in the ring. */
  hasBuffers(): boolean {
    return this.held > 0 || this.ctx.queue.availPending() > 0;
  }

  /**
   * Gives the chains kept from the last burst back to the ring (rewound, the last ones popped), so
   * that the queue's position counts them as not taken. Before a stop, pause or exit reads it.
   */
  release(): void {
    const n = this.held;
    this.keptBufs = 0;
    if (n === 0) return;
    this.held = 0;
    this.ctx.c[M.rxKept] = 0;
    this.ctx.queue.rewind(n);
  }

  /** The burst's chains[from … to−1] were popped and not used: keep them for the next burst. */
  private keep(from: number, to: number): void {
    let n = to - from;
    if (n > 0 && this.ctx.queue.resubmitting) {
      this.ctx.queue.rewind(n); // a later rewind could not reach back past this burst's flush
      n = 0;
    }
    const chains = this.chains;
    if (from > 0) for (let k = 0; k < n; k++) chains[k] = chains[from + k]!; // (copyWithin takes V8's slow path here)
    this.held = n;
    this.ctx.c[M.rxKept] = n;
  }

  /**
   * 0 when the chain can take a frame or, with MRG_RXBUF, a part of one, else the counter of why not (it
   * is completed with 0). With MRG_RXBUF a buffer need hold only the header (virtio 1.2 §5.1.6.3.1): a
   * frame's first buffer may carry the header alone and the frame continue in the next.
   */
  unusable(ch: DescriptorChain): number {
    if (ch.readableLen !== 0 || ch.writableLen < this.minChain) return M.rxDropShortBuffer;
    return ch.writable.count > MAX_IOV_PER_CHAIN ? M.rxDropTooManyPieces : 0;
  }

  /** Publishes a burst's completions: observers first (the guest may reuse its buffers right after), then used.idx. */
  private publish(completed: number): void {
    if (completed === 0) return;
    const ctx = this.ctx;
    ctx.observer?.endBurst();
    ctx.queue.flush();
    ctx.pending.pending += completed;
    ctx.c[M.bursts]! += 1;
  }

  /** Tells the observers about a frame of `total` bytes (header included) in `count` chains. */
  private observe(total: number, count: number): void {
    const v = this.ctx.frame;
    v.len = total - this.ctx.f.hdrLen;
    v.part = 'writable';
    v.count = count;
    this.ctx.observer!.onFrame(v);
  }

  /** Counts a frame delivered to the guest. */
  private delivered(total: number): void {
    const c = this.ctx.c;
    c[M.frames]! += 1;
    c[M.bytes]! += total - this.ctx.f.hdrLen;
  }

  // ---- the batched path

  /**
   * With `mrg` (MRG_RXBUF, no GSO), only while every chain holds the largest frame: each frame then
   * takes one buffer (num_buffers 1), and the burst goes to the backend in one call like any batched
   * one (one io_uring_enter on that path, where the merged path pays a readv per frame). At the first
   * chain that is smaller it keeps every chain popped and returns 0, for the merged path to serve.
   */
  private batched(max: number, mrg: boolean): number {
    const ctx = this.ctx;
    const q = ctx.queue;
    const c = ctx.c;
    const mem = ctx.mem;
    // Chains kept from the last burst lead; at most `max` of them take part in this one.
    const held = this.held;
    this.held = 0;
    this.keptBufs = 0; // the table is this burst's
    const n = held >= max ? max : held + q.popBurst(max - held, this.chains, held);
    if (n === 0) {
      this.dryAt = q.lastAvail;
      c[M.rxNoBuffers]! += 1;
      return RX.NO_BUFFERS;
    }
    const t = this.table;
    t.reset();
    let slots = 0;
    for (let i = 0; i < n; i++) {
      const ch = this.chains[i]!;
      if (this.unusable(ch)) continue;
      if (mrg && ch.writableLen < this.maxRx) {
        this.held = Math.max(n, held); // with a rate limit, more may be held than this burst took
        return 0;
      }
      t.count = ch.appendIovecs(t.entries, t.count, 'writable', this.skip, ch.writableLen - this.skip, mem);
      t.endFrame();
      this.slotChain[slots++] = i;
    }
    let got = 0;
    const reports = ctx.port.reportsWritten === true;
    if (slots > 0) {
      if (reports) {
        t.written.fill(0, 0, slots); // a call that throws before reading leaves no stale counts
        t.setReadFailures(0, 0);
      }
      try {
        got = ctx.port.recv(t, slots);
      } catch (e) {
        if (!(e instanceof NativeError)) throw e; // a bug, not the backend: the queue breaks
        c[M.rxDropBackend]! += 1;
        ctx.backendFailed(e.errno, this.chains, 0, n);
      }
      if (reports) {
        this.logUnreported(got, slots);
        // Reads that failed past the first frame: the count stops before them, and each lost a frame.
        const failed = t.readFailures;
        if (failed > 0) {
          c[M.rxDropBackend]! += failed;
          ctx.backendFailed(t.readErrno, this.chains, 0, n);
        }
      }
    }
    // Chains before the first slot left empty are settled (filled, or short and completed with 0);
    // that slot's chain and everything after it go back to the ring.
    const settled = got < slots ? this.slotChain[got]! : n;
    let slot = 0;
    for (let i = 0; i < settled; i++) {
      const ch = this.chains[i]!;
      if (slot < got && this.slotChain[slot] === i) {
        const len = t.bytes[slot]!;
        if (len >= 0) {
          this.complete1(ch, len + this.skip);
        } else {
          // io_uring: given back empty so that the frame read after it keeps its place (native/uring.cc).
          q.addUsed(ch.head, 0);
          c[M.rxDropShortBuffer]! += 1;
        }
        slot++;
      } else {
        q.addUsed(ch.head, 0);
        c[this.unusable(ch) || M.rxDropShortBuffer]! += 1;
      }
    }
    this.keep(settled, Math.max(n, held));
    this.publish(settled);
    // Empty only when the backend was read and came up short. A burst whose chains were all too short
    // did not read it (a rate limit may have kept the burst that small while frames wait): had it
    // said empty, the loop would sleep on a backend fd that a port may have drained already (a
    // pair's eventfd is read before the ring is looked at, so frames left behind do not ring it).
    return got < slots ? RX.BACKEND_EMPTY : RX.MORE;
  }

  /**
   * Logs (dirty log) what the port wrote into slots beyond what their completions log: a slot past the
   * `got` settled (kept), one given back empty, one holding more than its frame. io_uring leaves
   * these when it copies a frame down into an earlier slot; a read that failed part-way leaves them too.
   */
  private logUnreported(got: number, slots: number): void {
    const t = this.table;
    for (let s = 0; s < slots; s++) {
      const w = t.written[s]!;
      if (w === 0) continue;
      const logged = s < got ? Math.max(t.bytes[s]!, 0) : 0; // complete1 logs bytes[s] (+ skip)
      if (w > logged) this.ctx.queue.logWritten(this.chains[this.slotChain[s]!]!, w + this.skip);
    }
  }

  /** Completes a chain that received one whole frame of `total` bytes (header included). */
  private complete1(ch: DescriptorChain, total: number): void {
    const ctx = this.ctx;
    if (total > ch.writableLen || total > this.maxRx) {
      // Truncated by the backend: the guest would get a damaged frame.
      ctx.queue.logWritten(ch, total);
      ctx.queue.addUsed(ch.head, 0);
      ctx.c[M.rxDropTooBig]! += 1;
      return;
    }
    if (this.skip) ch.writeBytes(0, this.zeroHdr, 0, this.skip);
    if (ctx.f.hdrLen === HDR.LEN_V1) ch.setU16(HDR.NUM_BUFFERS, 1);
    if (ctx.observer !== null) {
      ctx.frame.chains[0] = ch;
      this.observe(total, 1);
    }
    ctx.queue.addUsed(ch.head, total);
    this.delivered(total);
  }

  // ---- the merged path (MRG_RXBUF or a filter, one native call per burst)

  /**
   * One burst through the port's recvMerged:
   *
   *   chains[] popped   ┌──────┬───────┬──────┬──────┬──────┬──────┬┄┄┄┄
   *                     │  c0  │ short │  c1  │  c2  │  c3  │  c4  │  …     (short: not a buffer,
   *                     └──────┴───────┴──────┴──────┴──────┴──────┴┄┄┄┄    completed with 0)
   *   table buffers        b0             b1     b2     b3     b4
   *   native reads      f0 → b0 (used 1), f1 → b1 b2 (used 2), then stops (say NO_ROOM: b3 b4 < need)
   *   then              c0 → used (num_buffers 1); short → used 0; c1, c2 → used (num_buffers 2 in c1);
   *                     c3, c4 … kept for the next burst. A short chain between a frame's buffers goes
   *                     to the used ring ahead of them, so that they are num_buffers entries in a row.
   *
   * A frame with used 0 (too big) was read over by the next one in the same buffers: counted, and what
   * it wrote logged. With a filter, the call stops after the first frame the peek list cannot vouch
   * for; if the filter rejects it, it is counted and logged, and the call goes on from its first buffer.
   */
  private merged(max: number): number {
    const ctx = this.ctx;
    const q = ctx.queue;
    const c = ctx.c;
    const mem = ctx.mem;
    const chains = this.chains;
    const t = this.table;
    const mrg = ctx.f.mrgRxbuf;
    // With MRG_RXBUF every frame is offered room for the largest one; without, one buffer each.
    const need = mrg ? this.maxRx : 1;
    // A port that reads ahead takes the whole filter, and room for a burst of frames at once, unless
    // its last call said it stages (IovecTable.stagedNext): then room for one frame will do, and the
    // burst describes, checks and keeps a quarter of the chains it would (a Linux guest's ring).
    const ahead = ctx.port.mergedReadsAhead === true;
    const peek = this.filter.passAll || ahead ? null : this.vouch();
    const spec = ahead && !this.filter.passAll ? this.spec.load(this.filter, ctx.f.hdrLen) : null;
    const roomWanted = ahead && !this.stagedNext ? need * max : need;

    // The chains kept from the last burst, then pop up to `max` chains, and more (with MRG_RXBUF)
    // until they hold one frame's `need` (`max` frames' when the port reads ahead).
    let popped = 0;
    let nbuf = 0;
    let room = 0;
    let dry = false;
    let full = false;
    let end = this.held;
    this.held = 0;
    if (this.keptBufs > 0) {
      // The kept chains are described already (the last burst's table, moved to the front).
      nbuf = this.keptBufs;
      room = this.keptRoom;
      popped = end;
      this.keptBufs = 0;
    } else {
      t.reset();
    }
    for (;;) {
      for (let k = popped; k < end; k++) {
        const ch = chains[k]!;
        if (this.unusable(ch)) continue; // completed with 0 when the burst settles past it
        if (nbuf === t.maxFrames || t.count + ch.writable.count > t.maxEntries) {
          // The table is full: this chain and those after it go back to the ring.
          q.rewind(end - k);
          popped = k;
          full = true;
          break;
        }
        t.count = ch.appendIovecs(t.entries, t.count, 'writable', 0, ch.writableLen, mem);
        t.endFrame();
        this.bufChain[nbuf++] = k;
        room += ch.writableLen;
      }
      if (full) break;
      popped = end;
      if (dry || (popped >= max && room >= roomWanted) || popped >= q.size) break;
      const want = Math.min(popped === 0 ? max : ctx.burst, q.size - popped);
      const got = q.popBurst(want, chains, popped);
      if (got < want || popped + got === q.size) {
        dry = true; // nothing more to pop
        this.dryAt = q.lastAvail;
      }
      end = popped + got;
    }
    if (popped === 0) {
      c[M.rxNoBuffers]! += 1;
      return RX.NO_BUFFERS;
    }
    if (room < need && full) {
      throw new DescriptorError(VringErrorCode.TOO_MANY_PIECES,
        `an RX frame would span more than ${MAX_IOV_PER_FRAME} buffer pieces (MRG_RXBUF with tiny buffers); the queue is marked broken`);
    }

    let buf = 0; // the first buffer no frame took
    let next = 0; // the first chain not completed
    let completed = 0;
    let frames = 0;
    let stop: number = MERGED_STOP.NO_ROOM;
    const port = ctx.port;
    // Each call reads at least one frame or ends the burst; `calls` bounds a flood of filtered frames.
    for (let calls = 0; frames < max && buf < nbuf && room >= need && calls < max; calls++) {
      let got = 0;
      t.setReadFailures(0, 0); // a call that throws before reading leaves no stale count
      try {
        got = port.recvMerged!(t, buf, nbuf - buf, max - frames, need, this.maxRx, peek, spec);
        stop = t.status;
        this.stagedNext = ahead && t.stagedNext;
        // A read failed after the first frame: the frame it was reading may be lost (a tap drops a
        // frame it cannot copy out), so it is counted as a read that throws is.
        if (stop === MERGED_STOP.ERROR) {
          c[M.rxDropBackend]! += 1;
          ctx.backendFailed(undefined, chains, 0, popped);
        }
      } catch (e) {
        if (!(e instanceof NativeError)) throw e; // a bug, not the backend: the queue breaks
        c[M.rxDropBackend]! += 1;
        ctx.backendFailed(e.errno, chains, 0, popped);
        stop = MERGED_STOP.ERROR;
      }
      this.portHolds = ahead && t.stashed;
      // Frames lost that the stop or the exception does not stand for (io_uring's rounds: several
      // READVs failed, or frames came after a failed one).
      const lost = t.readFailures;
      if (lost > 0) {
        c[M.rxDropBackend]! += lost;
        if (stop !== MERGED_STOP.ERROR) ctx.backendFailed(t.readErrno, chains, 0, popped);
      }
      for (let i = 0; i < got; i++) {
        const total = t.bytes[i]!;
        const used = t.used[i]!;
        if (used === 0) {
          // Read ahead: bytes = −length is a frame the filter rejected (it took no buffer).
          c[total < 0 ? M.rxDropFiltered : total > 0 ? M.rxDropTooBig : M.rxDropBackend]! += 1;
          if (!ahead) this.logDropped(buf, nbuf, total);
          continue;
        }
        if (i === got - 1 && stop === MERGED_STOP.PEEK && !this.accepts(this.bufChain, buf, used, total)) {
          // The last frame of the call and of the buffers taken: they take the next frame.
          c[M.rxDropFiltered]! += 1;
          this.logDropped(buf, nbuf, total);
          break;
        }
        completed += this.deliverBuffers(buf, used, total, next);
        next = this.bufChain[buf + used - 1]! + 1;
        buf += used;
        frames++;
      }
      if (stop !== MERGED_STOP.PEEK) break;
    }
    if (ahead) {
      // The port may have written into any buffer offered (dirty log; a no-op while logging is off).
      for (let b = 0; b < nbuf; b++) {
        const ch = chains[this.bufChain[b]!]!;
        q.logWritten(ch, ch.writableLen);
      }
    }
    if (stop === MERGED_STOP.PIECES) {
      throw new DescriptorError(VringErrorCode.TOO_MANY_PIECES,
        `an RX frame would span more than ${MAX_IOV_PER_FRAME} buffer pieces (MRG_RXBUF with tiny buffers); the queue is marked broken`);
    }
    // Chains before the first buffer no frame took are settled (short ones with 0); the rest are kept.
    const settled = buf < nbuf ? this.bufChain[buf]! : popped;
    for (let k = next; k < settled; k++) {
      const ch = chains[k]!;
      q.addUsed(ch.head, 0);
      c[this.unusable(ch) || M.rxDropShortBuffer]! += 1;
      completed++;
    }
    this.keep(settled, popped);
    if (this.held > 0 && buf < nbuf) this.keepDescribed(buf, nbuf, settled);
    this.publish(completed);
    if (stop === MERGED_STOP.EMPTY || stop === MERGED_STOP.ERROR) return RX.BACKEND_EMPTY;
    if (stop === MERGED_STOP.NO_ROOM && dry && frames < max) {
      c[M.rxNoBuffers]! += 1;
      return RX.NO_BUFFERS;
    }
    return RX.MORE;
  }

  /**
   * After keep(settled, …): moves the table's buffers buf … nbuf−1 (the kept chains' descriptions) to
   * the front for the next burst, and renumbers their chains as keep() did.
   */
  private keepDescribed(buf: number, nbuf: number, settled: number): void {
    const chains = this.chains;
    const bufChain = this.bufChain;
    this.table.dropFrames(buf);
    let room = 0;
    for (let b = buf; b < nbuf; b++) {
      const k = bufChain[b]! - settled;
      bufChain[b - buf] = k;
      room += chains[k]!.writableLen;
    }
    this.keptBufs = nbuf - buf;
    this.keptRoom = room;
  }

  /**
   * Delivers a frame of `total` bytes in buffers buf … buf+used−1: num_buffers, observers, then its
   * chains and the short ones from chain `next` on (completeFrame). Returns the chains completed.
   */
  private deliverBuffers(buf: number, used: number, total: number, next: number): number {
    const ctx = this.ctx;
    const chains = this.chains;
    const bufChain = this.bufChain;
    const first = chains[bufChain[buf]!]!;
    if (ctx.f.hdrLen === HDR.LEN_V1) first.setU16(HDR.NUM_BUFFERS, used);
    if (ctx.observer !== null) {
      for (let u = 0; u < used; u++) ctx.frame.chains[u] = chains[bufChain[buf + u]!]!;
      this.observe(total, used);
    }
    const n = this.completeFrame(bufChain, buf, used, next, total);
    this.delivered(total);
    return n;
  }

  /**
   * Completes the chains from `next` through the last of a frame's `used` buffers, which are
   * chains[idx[from]] … chains[idx[from + used − 1]] in ring order: first the chains the frame skipped
   * (with 0, counted), then the frame's, holding its `total` bytes. So the frame's buffers are `used`
   * used entries in a row, as the driver takes num_buffers (virtio 1.2 §5.1.6.4). Returns the chains
   * completed. Both MRG_RXBUF paths settle frames through it (merged, and MrgCursor).
   */
  completeFrame(idx: ArrayLike<number>, from: number, used: number, next: number, total: number): number {
    const ctx = this.ctx;
    const q = ctx.queue;
    const chains = this.chains;
    const end = from + used;
    const last = idx[end - 1]!;
    let n = 0;
    for (let k = next, u = from; k <= last; k++) {
      if (u < end && idx[u] === k) {
        u++;
        continue;
      }
      if (u > from && ctx.f.inOrder) {
        // Completed here, this chain would come before the frame's first buffer, which the driver
        // made available before it: the ring would not be used in order. Only a driver that broke
        // the spec's rule for RX buffers (device-writable, each at least a header) gets here.
        throw new DescriptorError(VringErrorCode.IN_ORDER_SKIP,
          `RX chain ${chains[k]!.head} among a frame's buffers cannot take data (device-readable, shorter than the header, or in too many pieces); with VIRTIO_F_IN_ORDER it cannot be passed over, so the queue is marked broken`);
      }
      const ch = chains[k]!;
      q.addUsed(ch.head, 0);
      ctx.c[this.unusable(ch) || M.rxDropShortBuffer]! += 1;
      n++;
    }
    let left = total;
    for (let u = from; u < end; u++, n++) {
      const ch = chains[idx[u]!]!;
      const len = Math.min(left, ch.writableLen);
      q.addUsed(ch.head, len);
      left -= len;
    }
    return n;
  }

  /** Logs what a dropped frame of `total` bytes wrote into the buffers from `buf` on (dirty log). */
  private logDropped(buf: number, nbuf: number, total: number): void {
    const q = this.ctx.queue;
    for (let b = buf, left = total; b < nbuf && left > 0; b++) {
      const ch = this.chains[this.bufChain[b]!]!;
      q.logWritten(ch, left);
      left -= ch.writableLen;
    }
  }

  /**
   * The peek list for this burst: the destinations the filter accepts whatever else the frame holds
   * (rx-filter.ts accept()), so the native call reads past them without asking. Everything else ends
   * the call for the filter to judge.
   */
  private vouch(): PeekList {
    const fl = this.filter;
    const p = this.vouched;
    p.reset(this.ctx.f.hdrLen, { anyDest: fl.promisc, stopTagged: fl.vlanFiltering });
    if (fl.promisc) return p;
    if (!fl.nobcast) p.add(BROADCAST);
    if (!fl.nouni) {
      if ((fl.mac[0]! & 1) === 0) p.add(fl.mac);
      for (let e = 0; e < fl.uni.length; e += 6) if ((fl.uni[e]! & 1) === 0 && !p.add(fl.uni, e)) break;
    }
    if (!fl.nomulti) {
      for (let e = 0; e < fl.multi.length; e += 6) {
        if ((fl.multi[e]! & 1) === 1 && !isBroadcast(fl.multi, e) && !p.add(fl.multi, e)) break;
      }
    }
    return p;
  }

  // ---- the per-frame path (MRG_RXBUF, or a filter)

  private perFrame(max: number): number {
    const c = this.ctx.c;
    const cur = this.cursor;
    // Without MRG_RXBUF a frame gets one chain, whatever its size (a short read is counted too big).
    const need = this.ctx.f.mrgRxbuf ? this.maxRx : 1;
    cur.start();
    let frames = 0;
    let outcome: number = RX.MORE;
    while (frames < max) {
      const room = cur.gather(need);
      if (room < need) {
        c[M.rxNoBuffers]! += 1;
        outcome = RX.NO_BUFFERS;
        break;
      }
      const total = this.readOne();
      if (total < 0) {
        outcome = RX.BACKEND_EMPTY;
        break;
      }
      if (total > room || total > this.maxRx) {
        c[M.rxDropTooBig]! += 1;
        cur.logWritten(total);
        continue; // the same buffers take the next frame
      }
      if (!cur.accepted(total)) {
        c[M.rxDropFiltered]! += 1;
        cur.logWritten(total);
        continue;
      }
      this.deliverMerged(total);
      frames++;
    }
    this.publish(cur.finish());
    return outcome;
  }

  /** Reads one frame into the gathered chains: its length with the header, or -1 when nothing came. */
  private readOne(): number {
    const t = this.table;
    t.endFrame();
    let got = 0;
    try {
      got = this.ctx.port.recv(t, 1);
    } catch (e) {
      if (!(e instanceof NativeError)) throw e; // a bug, not the backend: the queue breaks
      this.ctx.c[M.rxDropBackend]! += 1;
      this.cursor.readFailed(e.errno);
      return -1;
    }
    return got === 0 ? -1 : t.bytes[0]! + this.skip;
  }

  /**
   * The RX filter's verdict on a frame of `total` bytes (header included) in chains idx[from …
   * from+n−1]. The bytes it judges (destination, VLAN tag) are read across those chains: a first chain
   * may hold little more than the header (MRG_RXBUF asks only that a buffer hold the header).
   */
  accepts(idx: ArrayLike<number>, from: number, n: number, total: number): boolean {
    if (this.filter.passAll) return true;
    const hdrLen = this.ctx.f.hdrLen;
    const len = total - hdrLen;
    let off = hdrLen;
    let at = 0;
    const want = Math.min(FILTER_BYTES, Math.max(0, len));
    for (let u = from; u < from + n && at < want; u++) {
      const ch = this.chains[idx[u]!]!;
      if (off >= ch.writableLen) {
        off -= ch.writableLen;
        continue;
      }
      const k = Math.min(want - at, ch.writableLen - off);
      ch.readWritable(off, this.peek, at, k);
      at += k;
      off = 0;
    }
    return this.filter.accept(this.peek, 0, len); // the frame lies within its chains: at = want
  }

  /** Hands over a frame of `total` bytes that the gathered chains hold: header, num_buffers, completions. */
  private deliverMerged(total: number): void {
    const ctx = this.ctx;
    const cur = this.cursor;
    const used = cur.usedBy(total);
    const first = cur.first();
    if (this.skip) first.writeBytes(0, this.zeroHdr, 0, this.skip);
    if (ctx.f.hdrLen === HDR.LEN_V1) first.setU16(HDR.NUM_BUFFERS, used);
    if (ctx.observer !== null) {
      for (let u = 0; u < used; u++) ctx.frame.chains[u] = cur.chain(u);
      this.observe(total, used);
    }
    cur.settle(used, total);
    this.delivered(total);
  }
}

/**
 * The per-frame path's view of the RX ring during one burst (MRG_RXBUF, virtio 1.2 §5.1.6.4: a frame
 * may fill several chains, and the first chain's num_buffers says how many).
 *
 *   chains[] popped this burst (more popped on demand, at most the queue size)
 *   ┌──────┬──────┬──────┬───────┬──────┬──────┬┄┄┄┄┄┄
 *   │ done │ done │  c0  │ short │  c1  │  c2  │  …        gather(): from `next`, add chains to one
 *   └──────┴──────┴──────┴───────┴──────┴──────┴┄┄┄┄┄┄    frame's iovecs until they hold `need`
 *                  ▲ next                       ▲ popped   bytes (the largest frame the guest may get)
 *
 *   one recv() fills c0, then c1, then c2 …: say the frame needed c0 and c1. Then
 *     num_buffers = 2 (in c0's header), settle(): short → used with 0 (counted), then c0 → used
 *     with its length, c1 → used with the rest; `next` moves past c1. c2 … stay popped for the next
 *     frame.
 *   finish(): chains popped but never settled go back to the ring (rewind), in order.
 *
 * A short chain at `next` is completed with 0 at once; one between gathered chains is skipped by the
 * frame and completed with 0 when the frame settles past it, ahead of the frame's chains: the driver
 * takes a frame's num_buffers as consecutive used entries (virtio 1.2 §5.1.6.4), and the chains
 * completed are still those before `next`.
 */
class MrgCursor {
  private readonly rx: RxService;
  /** The service's chain array and iovec table, shared. */
  private readonly chains: DescriptorChain[];
  private readonly table: IovecTable;
  /** Header bytes the device writes itself (skipped in the first chain's iovecs). */
  private readonly skip: number;
  /** Chains popped this burst. */
  private popped = 0;
  /** The first popped chain not yet settled. */
  private next = 0;
  /** Chains completed this burst. */
  private completed = 0;
  /** Indices (into chains) of the chains gathered for the current frame, in order. */
  private readonly gathered: number[] = [];

  constructor(rx: RxService, chains: DescriptorChain[], table: IovecTable, skip: number) {
    this.rx = rx;
    this.chains = chains;
    this.table = table;
    this.skip = skip;
  }

  start(): void {
    this.popped = this.next = this.completed = 0;
  }

  /** The read into the gathered chains failed (ServiceContext.backendFailed: after EFAULT they are touched). */
  readFailed(errno: number): void {
    const g = this.gathered;
    this.rx.ctx.backendFailed(errno, this.chains, g.length > 0 ? g[0]! : 0, g.length > 0 ? g[g.length - 1]! + 1 : 0);
  }

  /**
   * Describes chains from `next` on as one frame in the table until they hold `need` bytes, popping
   * more as needed (one chain only without MRG_RXBUF). Returns the bytes gathered: less than `need`
   * when the ring ran out.
   */
  gather(need: number): number {
    const rx = this.rx;
    const ctx = rx.ctx;
    const q = ctx.queue;
    const chains = this.chains;
    const t = this.table;
    const mrg = ctx.f.mrgRxbuf;
    t.reset();
    this.gathered.length = 0;
    let room = 0;
    for (let k = this.next; room < need; k++) {
      if (k === this.popped) {
        const got = q.popBurst(Math.min(ctx.burst, q.size - this.popped), chains, this.popped);
        if (got === 0) {
          rx.dryAt = q.lastAvail; // before finish() rewinds what this burst popped
          break;
        }
        this.popped += got;
      }
      const ch = chains[k]!;
      const bad = rx.unusable(ch);
      if (bad) {
        if (k === this.next) {
          q.addUsed(ch.head, 0);
          ctx.c[bad]! += 1;
          this.completed++;
          this.next++;
        }
        continue; // one further in is completed with 0 when the frame settles past it
      }
      if (t.count + ch.writable.count > MAX_IOV_PER_FRAME) {
        throw new DescriptorError(VringErrorCode.TOO_MANY_PIECES,
          `an RX frame would span more than ${MAX_IOV_PER_FRAME} buffer pieces (MRG_RXBUF with tiny buffers); the queue is marked broken`);
      }
      // Only the frame's first chain holds the header the device may have to write itself.
      const s = this.gathered.length === 0 ? this.skip : 0;
      t.count = ch.appendIovecs(t.entries, t.count, 'writable', s, ch.writableLen - s, ctx.mem);
      room += ch.writableLen;
      this.gathered.push(k);
      if (!mrg) break;
    }
    return this.gathered.length === 0 ? 0 : room;
  }

  /** The first gathered chain (it holds the header). */
  first(): DescriptorChain {
    return this.chains[this.gathered[0]!]!;
  }

  /** The RX filter's verdict on a frame of `total` bytes in the gathered chains. */
  accepted(total: number): boolean {
    return this.rx.accepts(this.gathered, 0, this.gathered.length, total);
  }

  /** The u-th gathered chain. */
  chain(u: number): DescriptorChain {
    return this.chains[this.gathered[u]!]!;
  }

  /** How many gathered chains a frame of `total` bytes fills. */
  usedBy(total: number): number {
    let used = 0;
    for (let left = total; left > 0; used++) left -= this.chain(used).writableLen;
    return used;
  }

  /** Logs what a dropped frame of `total` bytes wrote into the gathered chains (migration dirty log). */
  logWritten(total: number): void {
    const q = this.rx.ctx.queue;
    for (let u = 0, left = total; u < this.gathered.length && left > 0; u++) {
      const ch = this.chain(u);
      q.logWritten(ch, left);
      left -= ch.writableLen;
    }
  }

  /**
   * Completes the chains from `next` through the frame's last one, and moves `next` past it: first
   * the chains the frame skipped (with 0), then the frame's, so that those are `used` used entries in
   * a row (the driver takes num_buffers consecutive ones).
   */
  settle(used: number, total: number): void {
    this.completed += this.rx.completeFrame(this.gathered, 0, used, this.next, total);
    this.next = this.gathered[used - 1]! + 1;
  }

  /** Ends the burst: rewinds what was popped and not settled; returns the chains completed. */
  finish(): number {
    if (this.popped > this.next) this.rx.ctx.queue.rewind(this.popped - this.next);
    return this.completed;
  }
}
