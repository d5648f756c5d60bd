/**
 * The RX service (device/rx.ts) on a split or a packed ring, in all three of its paths: batched (one frame per
 * chain), merged (a port with recvMerged: MRG_RXBUF frames over several buffers in one call) and per
 * frame (MRG_RXBUF on a port without it). The guest's chains come from the input: 1–3 writable pieces
 * of any size, some too short for a header, some with a readable piece in front; so do the features,
 * the RX filter (VLAN filtering too, with a quarter of the frames tagged), whether the backend writes the virtio_net_hdr, and the frames the backend offers (any
 * length, including longer than the guest may receive). The backend may stop short of a burst or fail
 * on a run of up to 4 frames, each lost (as io_uring's rounds lose one per failed READV), and says how
 * many in the status word beyond the one its exception or ERROR stop stands for. recvMerged here keeps readvMerged's contract (native/batch.ts) with a peek list that
 * vouches for nothing, so the filter judges every frame the merged path reads; or, reading ahead as
 * uringReadvMerged does, it applies the filter itself. (How io_uring reads ahead, its rounds and
 * stage, is not modelled: test/native/merged.test.ts holds that to the contract on a real tap.)
 * Properties:
 *   - the chains completed are a prefix of the ring, each once; the rest go back (release()), so the
 *     queue's position is exactly what was completed;
 *   - every frame taken from the backend is delivered or counted (too big, filtered, backend error);
 *   - each delivered frame reaches the guest whole, in order: num_buffers consecutive used entries,
 *     the first with the header, and the used lengths add up to header + frame;
 *   - with the filter on, every delivered frame is one it accepts.
 */
import { F, decode } from '../../device/features.ts';
import { HDR } from '../../device/header.ts';
import { PendingUsed } from '../../device/interrupt.ts';
import { M } from '../../device/metrics.ts';
import { RX, RxService } from '../../device/rx.ts';
import { RxFilter } from '../../device/rx-filter.ts';
import { ServiceContext, createQueue } from '../../device/service.ts';
import type { RxPort } from '../../device/backend.ts';
import { MERGED_STOP, type PeekList, type RxFilterSpec } from '../../native/batch.ts';
import { NativeError } from '../../native/errors.ts';
import { MappingViews, type IovecTable } from '../../native/iovec.ts';
import { DescriptorError, GuestMemory, VringError, createDriverQueue, driverRingLayout } from '../../vring/index.ts';
import { Input, bytesEqual as equal, type FuzzTarget } from '../target.ts';

const SIZE = 64;
const RAM = 0x40000;
const HALF = RAM / 2;
const DATA = 0x2000; // buffers after the rings, in region 0 and across into region 1
// Two regions back to back in gpa, two mappings: a buffer may straddle them.
const halves = [new ArrayBuffer(HALF), new ArrayBuffer(HALF)];
const mem = new GuestMemory(halves.map((buffer, i) => ({ gpa: i * HALF, size: HALF, buffer, bufferOffset: 0, mappingId: i, mappingOffset: 0 })));
const views = new MappingViews((id) => halves[id]!);

/** Guest bytes [gpa, gpa+len) (across the two regions). */
function guest(gpa: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let o = 0; o < len; ) {
    const a = gpa + o;
    const h = a < HALF ? 0 : 1;
    const off = a - h * HALF;
    const n = Math.min(len - o, HALF - off);
    out.set(new Uint8Array(halves[h]!, off, n), o);
    o += n;
  }
  return out;
}
/** The ring in either format, below DATA. */
const LAYOUT = { split: driverRingLayout('split', SIZE, 0), packed: driverRingLayout('packed', SIZE, 0) };
const FEATURE_BITS = [F.VERSION_1, F.MRG_RXBUF, F.GUEST_TSO4, F.CSUM, F.GUEST_CSUM];
const MAC = new Uint8Array([0x52, 0x54, 0, 0, 0, 1]);
const OTHER = new Uint8Array([0x52, 0x54, 0, 0, 0, 2]);
const BCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
/** Base virtio_net_hdr bytes a backend writes (flags … csum_offset); num_buffers is the device's. */
const BASE_HDR = 10;

interface Posted { head: number; pieces: Array<{ addr: number; len: number }>; writableLen: number }

/** The frames a backend offers, each as the bytes it writes into guest buffers (its header first, if any). */
class Source {
  readonly frames: Uint8Array[] = [];
  taken = 0;
  failOn = -1;
  /** Frames lost from failOn on, as io_uring's rounds lose one per failed READV and each after it. */
  failRun = 1;

  /** Takes the run of frames that fail from here, at most `room` of them (one read each); returns how many. */
  fail(room: number): number {
    let lost = 0;
    while (lost < this.failRun && lost < room && this.next() !== null) {
      this.taken++;
      lost++;
    }
    return lost;
  }

  next(): Uint8Array | null {
    return this.taken < this.frames.length ? this.frames[this.taken]! : null;
  }
}

/** Writes `data` across table frames b, b+1, … (each one guest buffer), as readv would; returns the buffers it reached. */
function spill(t: IovecTable, b: number, end: number, data: Uint8Array): number {
  let at = 0;
  let k = b;
  while (at < data.length && k < end) {
    at += t.writeFrame(k, 0, data, at, Math.min(data.length - at, t.frameLength(k)), views);
    k++;
  }
  return Math.max(1, k - b);
}

/**
 * The backend's RX port. `merged`: with recvMerged; `ahead`: it reads ahead as io_uring's does, so it
 * takes the whole filter (judged here by `filter`, as RxFilterSpec is held to RxFilter.accept by
 * test/native/merged.test.ts) and a frame it rejects takes no buffer (used 0, bytes −length).
 */
function port(src: Source, vnetHdrLen: number, merged: boolean, ahead: boolean, filter: RxFilter, shortBursts: boolean): RxPort {
  const p: RxPort = {
    fd: -1,
    vnetHdrLen,
    reportsWritten: true,
    recv(t: IovecTable, frames: number): number {
      let n = 0;
      const max = shortBursts ? Math.min(frames, 1) : frames;
      for (; n < max; n++) {
        const fr = src.next();
        if (fr === null) break;
        if (src.taken === src.failOn) {
          // readvBatch's contract: the frames are gone, as a tap drops a frame it could not copy out. On
          // the first frame the call throws and the status word counts the others; past it, the batch
          // ends there and the status word counts them all.
          const lost = src.fail(max - n);
          if (n === 0) {
            t.setReadFailures(lost - 1, 5);
            throw new NativeError(5, 'readv', 'the backend failed');
          }
          t.setReadFailures(lost, 5);
          break;
        }
        src.taken++;
        // As much as the buffers hold; the whole length is reported, and the device counts a frame that did not fit.
        const w = Math.min(fr.length, t.frameLength(n));
        t.writeFrame(n, 0, fr, 0, w, views);
        t.bytes[n] = fr.length;
        t.written[n] = w;
      }
      return n;
    },
  };
  if (!merged) return p;
  return {
    ...p,
    mergedReadsAhead: ahead,
    recvMerged(t: IovecTable, first: number, buffers: number, frames: number, need: number, maxLen: number, peek: PeekList | null, spec?: RxFilterSpec | null): number {
      if (ahead && peek !== null) throw new Error('a port that reads ahead was given a peek list');
      const end = first + buffers;
      let b = first;
      let n = 0;
      let status: number = MERGED_STOP.FRAMES;
      let unreported = 0; // frames lost beyond the one the ERROR stop stands for
      while (n < frames) {
        const fr = src.next();
        if (fr === null) {
          status = MERGED_STOP.EMPTY;
          break;
        }
        let room = 0;
        let k = b;
        while (k < end && room < need) room += t.frameLength(k++);
        if (room < need) {
          status = MERGED_STOP.NO_ROOM;
          break;
        }
        if (src.taken === src.failOn) {
          const lost = src.fail(frames - n);
          if (n === 0) {
            t.setReadFailures(lost - 1, 5);
            throw new NativeError(5, 'readv', 'the backend failed');
          }
          unreported = lost - 1;
          status = MERGED_STOP.ERROR;
          break;
        }
        src.taken++;
        if (ahead && spec && !filter.accept(fr, vnetHdrLen, fr.length - vnetHdrLen)) {
          t.bytes[n] = -fr.length;
          t.used[n] = 0; // rejected: it takes no buffer
          n++;
          continue;
        }
        const reached = spill(t, b, k, fr);
        if (fr.length > maxLen || fr.length > room || fr.length === 0) {
          t.bytes[n] = fr.length;
          t.used[n] = 0; // the same buffers take the next frame
          n++;
          continue;
        }
        t.bytes[n] = fr.length;
        t.used[n] = reached;
        n++;
        b += reached;
        if (peek !== null) {
          status = MERGED_STOP.PEEK; // vouches for nothing: the caller judges every frame
          break;
        }
      }
      t.setReadFailures(unreported, 5);
      t.words[t.words.length - 1] = (t.words[t.words.length - 1]! | status) >>> 0;
      return n;
    },
  };
}

export default {
  about: 'RX service: batched, merged and per-frame paths on a split or packed ring of hostile chain shapes',
  maxLen: 1024,
  run(data) {
    const inp = new Input(data);
    let bits = inp.features(FEATURE_BITS);
    const mode = inp.u8();
    // A quarter of the inputs run on a packed ring (mode bits 5–6 = 2: no regression input has them so).
    const packed = (mode & 0x60) === 0x40;
    if (packed) bits |= 1n << BigInt(F.RING_PACKED);
    const f = decode(bits);
    const hdrLen = f.hdrLen;
    const L = LAYOUT[packed ? 'packed' : 'split'];
    const deviceWritesHdr = (mode & 1) === 1; // a backend without vnet header: the device writes it
    const merged = (mode & 2) === 2 && !deviceWritesHdr;
    const ahead = merged && (mode & 16) === 16;
    const shortBursts = (mode & 4) === 4;
    const filtered = (mode & 8) === 8;
    const burst = 1 + (inp.u8() % 16);
    for (const h of halves) new Uint8Array(h).fill(0);
    const drv = createDriverQueue(mem, { format: packed ? 'packed' : 'split', size: SIZE, desc: L.desc, avail: L.avail, used: L.used });
    drv.init();

    // The guest's chains: 1–3 writable pieces, some short, some behind a readable piece.
    const posted: Posted[] = [];
    let at = DATA;
    const chains = 1 + (inp.u8() % (SIZE - 1));
    for (let c = 0; c < chains; c++) {
      const shape = inp.u8();
      const pieces: Array<{ addr: number; len: number }> = [];
      const n = 1 + (shape % 3);
      for (let p = 0; p < n; p++) {
        const len = (shape & 0x30) === 0x30 ? inp.u8() % 40 : 1 + (inp.u16() % 3000);
        if (at + len > RAM) break;
        pieces.push({ addr: at, len });
        at += len;
      }
      if (pieces.length === 0) break;
      const readable = (shape & 0xc0) === 0xc0 ? [{ addr: DATA - 64, len: 16 }] : [];
      const head = drv.add(readable, pieces);
      if (head < 0) break; // the ring's descriptors are all in use
      posted.push({ head, pieces, writableLen: readable.length ? -1 : pieces.reduce((a, p) => a + p.len, 0) });
    }
    drv.publish();

    // The frames the backend offers: Ethernet frames (any length) to our MAC, another, or broadcast.
    const src = new Source();
    const frames = inp.u8() % 24;
    for (let i = 0; i < frames; i++) {
      const kind = inp.u8();
      const len = kind < 32 ? inp.u16() % 9100 : kind < 48 ? inp.u8() % 20 : 14 + (inp.u16() % 1600);
      const hdr = deviceWritesHdr ? 0 : hdrLen;
      const fr = new Uint8Array(hdr + len);
      if (hdr) fr.set(inp.bytes(BASE_HDR).map((v) => v & 0x7f)); // num_buffers is the device's: left 0
      for (let k = hdr; k < fr.length; k++) fr[k] = (k * 7 + i * 13) & 0xff;
      const dst = kind % 3 === 0 ? MAC : kind % 3 === 1 ? OTHER : BCAST;
      fr.set(dst.subarray(0, Math.min(6, len)), hdr);
      // A quarter of the frames carry an 802.1Q tag (its VID from the body's pattern), for VLAN filtering.
      if (kind >= 192 && len >= 14) fr.set([0x81, 0x00], hdr + 12);
      src.frames.push(fr);
    }
    const fails = inp.u8();
    if ((fails & 7) === 0) {
      src.failOn = inp.u8() % Math.max(1, frames);
      src.failRun = 1 + ((fails >> 3) & 3);
    }

    const counters = new Float64Array(M.COUNT);
    const q = createQueue(f, { size: SIZE, desc: L.desc, avail: L.avail, used: L.used });
    q.attach(mem);
    const filter = new RxFilter();
    filter.reset(MAC, false);
    if (filtered) filter.promisc = false; // our MAC and broadcast pass, OTHER is rejected
    if ((mode & 0x80) !== 0) {
      // VLAN filtering: tagged frames pass only for the VIDs in the table (every third one here).
      filter.vlanFiltering = true;
      for (let vid = 0; vid < 4096; vid += 3) filter.vlans[vid >>> 5]! |= 1 << (vid & 31);
    }
    const ctx = new ServiceContext<RxPort>({ queue: q, mem, f, counters, pending: new PendingUsed(q, -1, counters), port: port(src, deviceWritesHdr ? 0 : hdrLen, merged, ahead, filter, shortBursts), burst });
    const rx = new RxService(ctx, filter, { mtu: 1500 });

    // The driver takes completions as they come.
    const used: Array<{ head: number; len: number }> = [];
    const reap = (): void => {
      for (let h = drv.popUsed(); h >= 0; h = drv.popUsed()) used.push({ head: h, len: drv.lastUsedLen });
    };
    let broken = false;
    try {
      for (let guard = 0; ; guard++) {
        if (guard > 4 * (SIZE + frames) + 8) throw new Error('processRx never settled');
        const r = rx.processRx();
        reap();
        if (r === RX.NO_BUFFERS || (r === RX.BACKEND_EMPTY && src.next() === null)) break;
      }
      rx.release();
    } catch (e) {
      if (!(e instanceof VringError) && !(e instanceof DescriptorError)) throw e;
      broken = true; // the queue is marked broken; what was completed must still be sound
    }

    // The used ring: a prefix of the posted chains, in any order, each once.
    reap();
    const byHead = new Map(posted.map((p, i) => [p.head, i]));
    const seen = new Set<number>();
    for (const u of used) {
      const i = byHead.get(u.head);
      if (i === undefined || seen.has(i)) throw new Error(`chain ${u.head} completed twice or never posted`);
      if (i >= used.length) throw new Error(`chain ${i} completed while an earlier one was not: completions are not a prefix`);
      seen.add(i);
      if (u.len > Math.max(0, posted[i]!.writableLen)) throw new Error(`chain ${i} completed with ${u.len} bytes, it holds ${posted[i]!.writableLen}`);
    }
    if (!broken && !packed && q.lastAvail !== used.length) throw new Error(`after release the queue stands at ${q.lastAvail}, ${used.length} chains were completed`);
    if (!broken && (q.inFlight !== 0 || q.availPending() !== posted.length - used.length)) {
      throw new Error(`after release ${q.inFlight} chains are in flight and ${q.availPending()} available; ${posted.length - used.length} were not completed`);
    }

    // Frames taken = delivered + counted.
    const c = counters;
    const counted = c[M.frames]! + c[M.rxDropTooBig]! + c[M.rxDropFiltered]! + c[M.rxDropBackend]!;
    if (!broken && counted !== src.taken) throw new Error(`${src.taken} frames taken from the backend, ${c[M.frames]} delivered + ${counted - c[M.frames]!} counted`);

    // Each delivered frame whole and in order, over num_buffers consecutive used entries.
    const read = (i: number, len: number): Uint8Array => {
      const out = new Uint8Array(len);
      let o = 0;
      for (const p of posted[i]!.pieces) {
        const n = Math.min(p.len, len - o);
        out.set(guest(p.addr, n), o);
        o += n;
        if (o === len) break;
      }
      return out;
    };
    let next = 0; // the next source frame a delivery may be
    let delivered = 0;
    for (let u = 0; u < used.length; ) {
      if (used[u]!.len === 0) {
        u++;
        continue; // a chain given back empty (too short, or a frame it could not take)
      }
      const first = byHead.get(used[u]!.head)!;
      const head = read(first, hdrLen);
      const nb = hdrLen === HDR.LEN_V1 ? head[HDR.NUM_BUFFERS]! | (head[HDR.NUM_BUFFERS + 1]! << 8) : 1;
      if (nb < 1 || u + nb > used.length) throw new Error(`a frame says num_buffers ${nb} with ${used.length - u} used entries left`);
      const parts: Uint8Array[] = [];
      for (let k = 0; k < nb; k++) {
        const e = used[u + k]!;
        if (e.len === 0) throw new Error(`buffer ${k} of a frame of ${nb} buffers was completed empty`);
        parts.push(read(byHead.get(e.head)!, e.len));
      }
      u += nb;
      const got = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) {
        got.set(p, o);
        o += p.length;
      }
      // The next frame offered (later ones may have been dropped) with this body and header: the
      // backend's base header bytes, or zeros when the device writes it; num_buffers is the device's.
      const body = got.subarray(hdrLen);
      const sameHeader = (want: Uint8Array): boolean => {
        for (let h = 0; h < BASE_HDR; h++) if (got[h] !== (deviceWritesHdr ? 0 : want[h]!)) return false;
        return true;
      };
      let k = next;
      for (; k < src.taken; k++) {
        const want = src.frames[k]!;
        if (equal(want.subarray(deviceWritesHdr ? 0 : hdrLen), body) && sameHeader(want)) break;
      }
      if (k === src.taken) throw new Error(`a frame of ${body.length} bytes reached the guest that the backend did not offer, or out of order`);
      if (!filter.passAll && !filter.accept(body, 0, body.length)) throw new Error(`a frame of ${body.length} bytes that the RX filter rejects reached the guest`);
      next = k + 1;
      delivered++;
    }
    if (!broken && delivered !== c[M.frames]) throw new Error(`${delivered} frames in the used ring, ${c[M.frames]} counted delivered`);
  },
} satisfies FuzzTarget;
