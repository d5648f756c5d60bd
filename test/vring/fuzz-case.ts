// test/vring/fuzz-case.ts — one fuzz case for the device side of a split ring, shared by
// test/vring/fuzz.test.ts (a few thousand seeds) and scripts/fuzz-vring.ts (≥ 100,000).
//
// Guest memory is three regions carved out of one larger ArrayBuffer, with guard bytes before, between
// and after them:
//
//   ArrayBuffer: [guard][ R0 64 KiB: rings + data ][guard][ R1 32 KiB ][guard][ R2 32 KiB ][guard]
//   gpa:                 0x00000                          0x10000 (adjacent)   0x30000 (after a hole)
//
// The rings (random size, EVENT_IDX and INDIRECT random) and the data are filled with random bytes, or
// with random-but-plausible descriptors that hit the edges (boundaries, holes, huge lengths, loops,
// indirect tables). The device then pops, reads, writes, completes and rewinds at random. Pass: only
// VringError is ever thrown, every piece stays inside its region, and the guards are untouched.

import { DescriptorChain, GuestMemory, SplitQueue, VringError, splitRingLayout } from '../../vring/index.ts';

/** Deterministic PRNG (mulberry32) for tests that want reproducible randomness without fast-check. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const GUARD = 4096;
const GUARD_BYTE = 0xa5;
const R = [
  { gpa: 0x00000, size: 0x10000 },
  { gpa: 0x10000, size: 0x8000 },
  { gpa: 0x30000, size: 0x8000 },
];
const TOTAL = GUARD + R.reduce((a, r) => a + r.size + GUARD, 0);

export interface FuzzResult {
  chains: number;
  error: string | null;
}

/** Run one case. Throws (a plain Error or an assertion) if a property is violated. */
export function fuzzCase(seed: number): FuzzResult {
  return fuzzCaseWith(rng(seed));
}

/** The same case drawn from any source of numbers in [0, 1): a PRNG, or a fuzzer's input (fuzz/). */
export function fuzzCaseWith(rand: () => number): FuzzResult {
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

  const size = 1 << int(9); // 1 … 256
  const L = splitRingLayout(size, 0, 4);
  const eventIdx = rand() < 0.5;
  const q = new SplitQueue({ size, desc: L.desc, avail: L.avail, used: L.used, eventIdx, indirect: rand() < 0.7, maxPieces: 1 + int(64) });
  const dv = new DataView(buf, GUARD, R[0]!.size); // region 0 in gpa terms (gpa 0 = offset 0)
  const dataLo = L.end + 16; // data lives after the rings in R0, and in R1/R2

  // Edge addresses: random, across R0|R1 (adjacent: fine), into the hole, past the end, wrapping 2^64.
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
  const put = (v: DataView, at: number, lo: number, hi: number, len: number, flags: number, next: number): void => {
    v.setUint32(at, lo, true);
    v.setUint32(at + 4, hi, true);
    v.setUint32(at + 8, len, true);
    v.setUint16(at + 12, flags, true);
    v.setUint16(at + 14, next, true);
  };
  /** Corrupt one field of the descriptor at `at` with an edge value. */
  const mutate = (v: DataView, at: number, entries: number): void => {
    switch (int(6)) {
      case 0: { const len = 1 + int(64); const [lo, hi] = edgeAddr(len); v.setUint32(at, lo, true); v.setUint32(at + 4, hi, true); break; }
      case 1: v.setUint32(at + 8, [0, 0xffff_ffff, 0x8000_0000, u32()][int(4)]!, true); break;
      case 2: v.setUint16(at + 12, int(8) | (rand() < 0.2 ? u32() & 0xfff8 : 0), true); break;
      case 3: v.setUint16(at + 14, int(entries + 3), true); break;
      case 4: v.setUint16(at + 14, Math.max(0, (at >> 4) - int(3)), true); break; // likely loop
      default: v.setUint8(at + int(16), u32() & 0xff);
    }
  };

  let offered = size;
  if (rand() < 0.2) {
    // Pure noise in the ring areas.
    for (let i = 0; i < L.end; i += 4) dv.setUint32(i, u32(), true);
  } else {
    // Valid chains of 1–4 consecutive descriptors (some through indirect tables), then mutations.
    let d = 0;
    let slot = 0;
    while (d < size) {
      const n = Math.min(1 + int(4), size - d);
      const writableFrom = int(n + 1);
      const indirect = rand() < 0.2;
      const entries = indirect ? 1 + int(6) : n;
      let tv = dv;
      let tbase = L.desc + 16 * d;
      if (indirect) {
        const r = specs[1 + int(2)]!;
        const tat = int(r.size - entries * 16);
        tv = new DataView(buf, r.bufferOffset, r.size);
        tbase = tat;
        put(dv, L.desc + 16 * d, r.gpa + tat, 0, entries * 16, 4, 0);
      }
      for (let e = 0; e < entries; e++) {
        const len = 1 + int(64);
        const flags = (e < entries - 1 ? 1 : 0) | (e >= writableFrom ? 2 : 0);
        put(tv, tbase + 16 * e, goodAddr(len), 0, len, flags, indirect ? e + 1 : d + e + 1);
      }
      for (let m = rand() < 0.5 ? 0 : int(3); m > 0; m--) mutate(tv, tbase + 16 * int(entries), entries);
      dv.setUint16(L.avail + 4 + 2 * (slot++ % size), rand() < 0.97 ? d : int(0x10000), true);
      d += indirect ? 1 : n;
    }
    offered = slot;
    // Sometimes offer one head twice (HEAD_IN_FLIGHT).
    if (rand() < 0.1 && offered > 1) dv.setUint16(L.avail + 4 + 2 * (1 + int(offered - 1)), dv.getUint16(L.avail + 4, true), true);
  }
  const base = rand() < 0.3 ? 0xffff - int(8) : int(0x10000);
  // The avail ring is indexed from `base`; write the heads where the device will look for them.
  if (base % size !== 0) {
    const heads = new Uint16Array(size);
    for (let i = 0; i < size; i++) heads[i] = dv.getUint16(L.avail + 4 + 2 * i, true);
    for (let i = 0; i < size; i++) dv.setUint16(L.avail + 4 + 2 * ((base + i) % size), heads[i]!, true);
  }
  dv.setUint16(L.avail + 2, (base + (rand() < 0.9 ? int(offered + 1) : int(0x10000))) & 0xffff, true);

  let chains = 0;
  let error: string | null = null;
  const table = new Uint32Array(4 * 256);
  const scratch = new Uint8Array(300);
  const held: DescriptorChain[] = [];
  try {
    q.attach(mem);
    // Sometimes as a restarted back-end would: resume() may move to used.idx (memory the input wrote).
    if (rand() < 0.25) q.resume(base);
    else q.setBase(base);
    for (let step = 0; step < 2 * size + 4; step++) {
      const c = rand() < 0.5 ? q.pop() : (q.popBurst(1 + int(8), held, 0) > 0 ? held[0]! : null);
      if (c === null) break;
      chains++;
      // Every piece lies inside its region.
      for (const p of [c.readable, c.writable]) {
        for (let i = 0; i < p.count; i++) {
          const reg = mem.regions[p.region[i]!];
          if (reg === undefined || p.length[i]! === 0 || p.offset[i]! + p.length[i]! > reg.size) throw new Error(`piece ${i} outside its region`);
        }
      }
      if (c.readableLen > 0) {
        const o = int(c.readableLen);
        const n = Math.min(int(40), c.readableLen - o);
        if (!c.locate(o, n)) throw new Error('locate failed inside the readable length');
        if (n > 0 && c.pos + n > c.u8.length) throw new Error('locate points outside its view');
        c.readBytes(o, scratch, 0, n);
      }
      if (c.writableLen > 0) {
        const o = int(c.writableLen);
        const n = Math.min(int(300), c.writableLen - o);
        c.writeBytes(o, scratch, 0, n);
        c.setU16(c.writableLen - 1, 0xffff); // straddles the end: refused, never written
      }
      if (c.readable.count + 1 <= 256) c.appendIovecs(table, 0, 'readable', int(8), u32(), mem);
      const roll = int(10);
      if (roll < 6) {
        q.addUsed(c.head, int(c.writableLen + 1));
        if (rand() < 0.5) {
          q.flush();
          q.needsNotification();
        }
      } else if (roll === 6) {
        q.rewind(1); // c is the last popped and still in flight
      } else if (roll === 7) {
        if (rand() < 0.5) q.disableNotification();
        else q.enableNotification();
      }
    }
  } catch (e) {
    if (!(e instanceof VringError)) throw e;
    error = e.code;
    if (q.broken !== null && q.broken !== e) throw new Error('queue broken with a different error than thrown');
  }

  // Guards untouched.
  let at = 0;
  for (let g = 0; g <= R.length; g++) {
    for (let i = 0; i < GUARD; i++) if (all[at + i] !== GUARD_BYTE) throw new Error(`guard ${g} byte ${i} was written`);
    at += GUARD + (R[g]?.size ?? 0);
  }
  return { chains, error };
}
