// test/vring/packed-fuzz-case.ts — one fuzz case for the device side of a packed ring, the packed
// counterpart of fuzz-case.ts (same regions, guards and PRNG).
//
//   ArrayBuffer: [guard][ R0 64 KiB: ring + data ][guard][ R1 32 KiB ][guard][ R2 32 KiB ][guard]
//   gpa:                 0x00000                          0x10000 (adjacent)   0x30000 (after a hole)
//
// The ring (random size, not only powers of 2; random start position and lap; EVENT_IDX and INDIRECT
// random) is filled with noise, or with plausible lists laid from the start position under the right
// wrap counters, then mutated at the edges: addresses at boundaries, in the hole, past the end or
// wrapping 2^64; huge and zero lengths; flag bits (AVAIL, USED, NEXT, INDIRECT, WRITE) flipped; ids out
// of range or repeated; indirect tables with odd lengths and nested entries. The device then pops,
// reads, writes, completes, rewinds and toggles notifications at random. Pass: only VringError is ever
// thrown, every piece stays inside its region, and the guards are untouched.

import {
  DescriptorChain,
  GuestMemory,
  PACKED_DESC_SIZE,
  PackedQueue,
  VringError,
  packedRingLayout,
} from '../../vring/index.ts';
import { rng } from './fuzz-case.ts';

const GUARD = 4096;
const GUARD_BYTE = 0xa5;
const R = [
  { gpa: 0x00000, size: 0x10000 },
  { gpa: 0x10000, size: 0x8000 },
  { gpa: 0x30000, size: 0x8000 },
];
const TOTAL = GUARD + R.reduce((a, r) => a + r.size + GUARD, 0);
const AVAIL = 1 << 7;
const USED = 1 << 15;

export interface PackedFuzzResult {
  chains: number;
  error: string | null;
}

/** Run one case. Throws (a plain Error) if a property is violated. */
export function packedFuzzCase(seed: number): PackedFuzzResult {
  return packedFuzzCaseWith(rng(seed));
}

/** The same case drawn from any source of numbers in [0, 1): a PRNG, or a fuzzer's input (fuzz/). */
export function packedFuzzCaseWith(rand: () => number): PackedFuzzResult {
  const int = (n: number): number => Math.floor(rand() * n);
  const u32 = (): number => (rand() * 0x1_0000_0000) >>> 0;
  const buf = new ArrayBuffer(TOTAL);
  const all = new Uint8Array(buf);
  all.fill(GUARD_BYTE);
  const specs = [];
  let off = GUARD;
  for (let i = 0; i < R.length; i++) {
    specs.push({ gpa: R[i]!.gpa, size: R[i]!.size, buffer: buf, bufferOffset: off, mappingId: i, mappingOffset: 0 });
    off += R[i]!.size + GUARD;
  }
  for (const sp of specs) all.fill(0, sp.bufferOffset, sp.bufferOffset + sp.size);
  const mem = new GuestMemory(specs);

  const size = rand() < 0.5 ? 1 << int(9) : 1 + int(256);
  const L = packedRingLayout(size, 0);
  const eventIdx = rand() < 0.5;
  const indirectOk = rand() < 0.7;
  const q = new PackedQueue({ size, desc: L.desc, driver: L.driver, device: L.device, eventIdx, indirect: indirectOk, maxPieces: 1 + int(64) });
  const dv = new DataView(buf, GUARD, R[0]!.size); // region 0 in gpa terms (gpa 0 = offset 0)
  const dataLo = L.end + 16;

  const edgeAddr = (len: number): [number, number] => {
    switch (int(5)) {
      case 0: return [u32(), u32()];
      case 1: return [R[1]!.gpa - int(32), 0];
      case 2: return [R[1]!.gpa + R[1]!.size - int(32), 0];
      case 3: return [R[2]!.gpa + R[2]!.size - len + int(3), 0];
      default: return [0xffff_ffff - int(64), 0xffff_ffff];
    }
  };
  const goodAddr = (len: number): number => {
    const k = int(3);
    const lo = k === 0 ? dataLo : R[k]!.gpa;
    const hi = R[k]!.gpa + R[k]!.size - len;
    return lo + int(Math.max(1, hi - lo));
  };
  const put = (v: DataView, at: number, lo: number, hi: number, len: number, id: number, flags: number): void => {
    v.setUint32(at, lo, true);
    v.setUint32(at + 4, hi, true);
    v.setUint32(at + 8, len, true);
    v.setUint16(at + 12, id, true);
    v.setUint16(at + 14, flags, true);
  };
  /** Corrupt one field of the descriptor at `at` with an edge value. */
  const mutate = (v: DataView, at: number): void => {
    switch (int(7)) {
      case 0: { const len = 1 + int(64); const [lo, hi] = edgeAddr(len); v.setUint32(at, lo, true); v.setUint32(at + 4, hi, true); break; }
      case 1: v.setUint32(at + 8, [0, 0xffff_ffff, 0x8000_0000, 24, u32()][int(5)]!, true); break;
      case 2: v.setUint16(at + 14, v.getUint16(at + 14, true) ^ [AVAIL, USED, AVAIL | USED, 1, 2, 4][int(6)]!, true); break;
      case 3: v.setUint16(at + 12, [size, size - 1, 0xffff, int(size)][int(4)]!, true); break;
      case 4: v.setUint16(at + 14, u32() & 0xffff, true); break;
      case 5: v.setUint16(at + 14, v.getUint16(at + 14, true) | 4, true); break; // INDIRECT out of place
      default: v.setUint8(at + int(16), u32() & 0xff);
    }
  };

  const startIdx = int(size);
  const startWrap = rand() < 0.5 ? 1 : 0;
  if (rand() < 0.2) {
    // Pure noise in the ring and both event areas.
    for (let i = 0; i < L.end; i += 4) dv.setUint32(i, u32(), true);
  } else {
    // Everything before the start was used in this lap, the rest in the previous one (PackedDriverQueue.init).
    for (let j = 0; j < size; j++) dv.setUint16(L.desc + 16 * j + 14, (j < startIdx ? startWrap : startWrap ^ 1) ? AVAIL | USED : 0, true);
    // Plausible lists from the start position, ids mostly unique.
    const ids = Array.from({ length: size }, (_, i) => i).sort(() => rand() - 0.5);
    let idx = startIdx;
    let wrap = startWrap;
    let laid = 0;
    const budget = rand() < 0.3 ? size : int(size + 1);
    if (rand() < 0.03) {
      // One list with NEXT on every descriptor, all the way round the ring.
      for (let e = 0; e < size; e++) {
        put(dv, L.desc + 16 * idx, goodAddr(1), 0, 1, 0, 1 | (wrap ? AVAIL : USED));
        if (++idx === size) { idx = 0; wrap ^= 1; }
      }
      laid = size;
    }
    while (laid < budget) {
      const indirect = rand() < (indirectOk ? 0.2 : 0.01);
      const n = indirect ? 1 : Math.min(1 + int(4), budget - laid);
      const entries = indirect ? 1 + int(6) : n;
      const writableFrom = int(entries + 1);
      const id = rand() < 0.99 ? ids[laid % size]! : int(0x10000);
      if (indirect) {
        const r = specs[1 + int(2)]!;
        const tat = int(r.size - entries * 16);
        const tv = new DataView(buf, r.bufferOffset, r.size);
        for (let e = 0; e < entries; e++) {
          const len = 1 + int(64);
          put(tv, tat + 16 * e, goodAddr(len), 0, len, 0, (e >= writableFrom ? 2 : 0) | (rand() < 0.3 ? 1 : 0));
        }
        if (rand() < 0.1) mutate(tv, tat + 16 * int(entries));
        put(dv, L.desc + 16 * idx, r.gpa + tat, 0, entries * 16, id, 4 | (wrap ? AVAIL : USED));
        if (rand() < 0.05) mutate(dv, L.desc + 16 * idx);
        if (++idx === size) { idx = 0; wrap ^= 1; }
      } else {
        for (let e = 0; e < n; e++) {
          const len = 1 + int(64);
          put(dv, L.desc + 16 * idx, goodAddr(len), 0, len, id, (e < n - 1 ? 1 : 0) | (e >= writableFrom ? 2 : 0) | (wrap ? AVAIL : USED));
          if (rand() < 0.02) mutate(dv, L.desc + 16 * idx);
          if (++idx === size) { idx = 0; wrap ^= 1; }
        }
      }
      laid += n;
    }
    dv.setUint32(L.driver, rand() < 0.7 ? (int(3) << 16) | ((startIdx + int(size)) % size) | (int(2) << 15) : u32(), true);
  }
  const start = startIdx | (startWrap << 15);
  const base = rand() < 0.95 ? (start | (start << 16)) >>> 0 : u32();

  let chains = 0;
  let error: string | null = null;
  const table = new Uint32Array(4 * 256);
  const scratch = new Uint8Array(300);
  const held: DescriptorChain[] = [];
  const open: DescriptorChain[] = []; // popped and not completed, in pop order
  try {
    q.attach(mem);
    q.setBase(base);
    for (let step = 0; step < 2 * size + 4; step++) {
      if (rand() < 0.1) {
        q.availPending();
        const w = q.watch(rand() < 0.5 ? q.lastAvail : q.availIdx());
        if (w.location.mappingOffset + w.location.offset + 2 > R[0]!.size) throw new Error('watch() points outside the ring');
      }
      let c: DescriptorChain | null;
      if (rand() < 0.5) {
        c = q.pop();
        if (c !== null) open.push(c);
      } else {
        const n = q.popBurst(1 + int(8), held, 0);
        for (let i = 0; i < n; i++) open.push(held[i]!);
        c = n > 0 ? held[0]! : null;
      }
      if (c === null) break;
      chains++;
      for (const p of [c.readable, c.writable]) {
        for (let i = 0; i < p.count; i++) {
          const reg = mem.regions[p.region[i]!];
          if (reg === undefined || p.length[i]! === 0 || p.offset[i]! + p.length[i]! > reg.size) throw new Error(`piece ${i} outside its region`);
        }
      }
      if (c.head >= size || !q.isInFlight(c.head)) throw new Error(`popped id ${c.head} is not in flight`);
      if (c.readableLen > 0) {
        const o = int(c.readableLen);
        const n = Math.min(int(40), c.readableLen - o);
        if (!c.locate(o, n)) throw new Error('locate failed inside the readable length');
        if (n > 0 && c.pos + n > c.u8.length) throw new Error('locate points outside its view');
        c.readBytes(o, scratch, 0, n);
      }
      if (c.writableLen > 0) {
        const o = int(c.writableLen);
        c.writeBytes(o, scratch, 0, Math.min(int(300), c.writableLen - o));
        c.setU16(c.writableLen - 1, 0xffff); // straddles the end: refused, never written
      }
      if (c.readable.count + 1 <= 256) c.appendIovecs(table, 0, 'readable', int(8), u32(), mem);
      const roll = int(12);
      if (roll < 6) {
        const done = open.splice(int(open.length), 1)[0]!; // any order
        q.addUsed(done.head, int(done.writableLen + 1));
        if (rand() < 0.5) {
          q.flush();
          q.needsNotification();
        }
      } else if (roll === 6) {
        q.rewind(1); // the last popped is still in flight
        open.pop();
      } else if (roll === 7) {
        if (rand() < 0.5) q.disableNotification();
        else q.enableNotification(rand() < 0.5 ? q.lastAvail : q.availIdx());
      } else if (roll === 8 && rand() < 0.2) {
        q.addUsed(int(size + 2), 0); // maybe not in flight
      } else if (roll === 9 && rand() < 0.3) {
        // A driver that makes slots available again without waiting for them to be used.
        let pos = q.lastAvail;
        for (let k = 1 + int(size); k > 0; k--) {
          const slot = pos & 0x7fff;
          const w = pos >>> 15;
          put(dv, L.desc + 16 * slot, goodAddr(8), 0, 8, int(size), w ? AVAIL : USED);
          pos = slot + 1 === size ? (w ^ 1) << 15 : pos + 1;
        }
      }
    }
    q.flush();
  } catch (e) {
    if (!(e instanceof VringError)) throw e;
    error = e.code;
    if (q.broken !== null && q.broken !== e) throw new Error('queue broken with a different error than thrown');
    if (q.broken === null) throw new Error(`${e.code} thrown without breaking the queue`);
  }

  let at = 0;
  for (let g = 0; g <= R.length; g++) {
    for (let i = 0; i < GUARD; i++) if (all[at + i] !== GUARD_BYTE) throw new Error(`guard ${g} byte ${i} was written`);
    at += GUARD + (R[g]?.size ?? 0);
  }
  // The device writes only the ring and the device area of region 0, and the chains' writable pieces.
  if (L.end > R[0]!.size || PACKED_DESC_SIZE * size > L.driver) throw new Error('ring layout outside region 0');
  return { chains, error };
}
