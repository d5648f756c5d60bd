// Happy paths of the split queue, driven from the driver side: direct and indirect chains, ANY_LAYOUT
// headers, rewind, notifications with and without EVENT_IDX, setBase, u16 wrap-around, iovec tables.

import { describe, expect, it } from 'vitest';
import { DescriptorChain, GuestMemory, MemoryError, SplitQueue, VRING_USED_F_NO_NOTIFY, splitRingLayout, DriverQueue } from '../../vring/index.ts';
import { RAM_GPA, makeRig } from './helpers.ts';

const bytes = (...v: number[]): Uint8Array => Uint8Array.from(v);

describe('direct chains', () => {
  it('round-trips a readable + writable chain', () => {
    const r = makeRig();
    const out = r.alloc(32);
    const inp = r.alloc(64);
    r.mem.write(out, bytes(1, 2, 3, 4, 5, 6, 7, 8));
    const h = r.d.add([{ addr: out, len: 8 }], [{ addr: inp, len: 64 }]);
    expect(r.q.pop()).toBeNull(); // not published yet
    r.d.publish();
    const c = r.q.pop()!;
    expect(c.head).toBe(h);
    expect(c.readableLen).toBe(8);
    expect(c.writableLen).toBe(64);
    expect(c.descCount).toBe(2);
    expect(c.indirect).toBe(false);
    const got = new Uint8Array(8);
    expect(c.readBytes(0, got, 0, 8)).toBe(true);
    expect(got).toEqual(bytes(1, 2, 3, 4, 5, 6, 7, 8));
    expect(c.readBytes(4, got, 0, 8)).toBe(false);
    expect(c.writeBytes(10, bytes(9, 9, 9), 0, 3)).toBe(true);
    expect(c.setU16(20, 0xbeef)).toBe(true);
    expect(c.setU32(64, 1)).toBe(false);
    r.q.addUsed(c.head, 22);
    expect(r.d.getUsed()).toBeNull(); // not flushed yet
    r.q.flush();
    expect(r.d.getUsed()).toEqual({ head: h, len: 22 });
    expect(r.mem.readU16(inp + 20)).toBe(0xbeef);
    expect(new Uint8Array(r.buf)[inp - RAM_GPA + 10]).toBe(9);
    expect(r.d.freeCount).toBe(r.size);
    expect(r.q.inFlight).toBe(0);
  });

  it('setU16 stores in the first writable piece, across two pieces, and in a later one, refuses past the end, and throws for a negative offset', () => {
    const r = makeRig();
    const a = r.alloc(3);
    const b = r.alloc(8);
    r.d.add([], [{ addr: a, len: 3 }, { addr: b, len: 8 }]);
    r.d.publish();
    const c = r.q.pop()!;
    expect(c.setU16(0, 0x1122)).toBe(true); // in place, first piece
    expect(c.setU16(2, 0x3344)).toBe(true); // byte 2 of the first piece, byte 0 of the second
    expect(c.setU16(5, 0x5566)).toBe(true); // second piece only
    expect(c.setU16(10, 0x7788)).toBe(false); // straddles the end
    expect(() => c.setU16(-1, 0x99aa)).toThrow(RangeError);
    const u8 = new Uint8Array(r.buf);
    expect([...u8.subarray(a - RAM_GPA, a - RAM_GPA + 3)]).toEqual([0x22, 0x11, 0x44]);
    expect([...u8.subarray(b - RAM_GPA, b - RAM_GPA + 8)]).toEqual([0x33, 0, 0x66, 0x55, 0, 0, 0, 0]);
  });

  it('pops bursts, reading avail.idx once, and reuses chain objects per head', () => {
    const r = makeRig({ size: 8 });
    const b = r.alloc(16);
    for (let i = 0; i < 5; i++) r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    const out: DescriptorChain[] = [];
    expect(r.q.popBurst(3, out)).toBe(3);
    expect(r.q.popBurst(32, out, 3)).toBe(2);
    expect(r.q.popBurst(32, out)).toBe(0);
    const heads = out.map((c) => c.head);
    expect(new Set(heads).size).toBe(5);
    for (const c of out) r.q.addUsed(c.head, 0);
    r.q.flush();
    while (r.d.getUsed()) { /* drain */ }
    const first = out[0]!;
    for (let i = 0; i < 5; i++) r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    const again: DescriptorChain[] = [];
    r.q.popBurst(32, again);
    expect(again.find((c) => c.head === first.head)).toBe(first);
  });
});

describe('indirect chains', () => {
  it('walks an indirect table', () => {
    const r = makeRig();
    const a = r.alloc(16);
    const b = r.alloc(100);
    r.mem.write(a, bytes(0xaa, 0xbb));
    const h = r.d.add([{ addr: a, len: 2 }, { addr: a + 2, len: 6 }], [{ addr: b, len: 100 }], { indirectAt: r.alloc(48) });
    expect(r.d.freeCount).toBe(r.size - 1);
    r.d.publish();
    const c = r.q.pop()!;
    expect(c.head).toBe(h);
    expect(c.indirect).toBe(true);
    expect(c.descCount).toBe(3);
    expect(c.readableLen).toBe(8);
    expect(c.writableLen).toBe(100);
    expect(c.locate(0, 2)).toBe(true);
    expect(c.dv.getUint16(c.pos, true)).toBe(0xbbaa);
  });

  it('reads an indirect table that spans two regions', () => {
    const buf = new ArrayBuffer(0x20000);
    const mem = new GuestMemory([
      { gpa: 0, size: 0x10000, buffer: buf },
      { gpa: 0x10000, size: 0x10000, buffer: buf, bufferOffset: 0x10000 },
    ]);
    const L = splitRingLayout(8, 0);
    const d = new DriverQueue(mem, { size: 8, ...L });
    d.init();
    const q = new SplitQueue({ size: 8, ...L, indirect: true });
    q.attach(mem);
    // 3 entries starting 24 bytes before the region boundary: entry 1 straddles it.
    d.add([{ addr: 0x8000, len: 4 }, { addr: 0x8010, len: 5 }], [{ addr: 0x18000, len: 6 }], { indirectAt: 0x10000 - 24 });
    d.publish();
    const c = q.pop()!;
    expect(c.readableLen).toBe(9);
    expect(c.writableLen).toBe(6);
    expect(c.writable.region[0]).toBe(1);
  });
});

describe('ANY_LAYOUT: headers across descriptors', () => {
  it('locate() copies only when the range spans pieces', () => {
    const r = makeRig();
    const a = r.alloc(16);
    const b = r.alloc(16);
    const p = r.alloc(64);
    // A 12-byte virtio_net_hdr split 5 + 7, then a payload descriptor.
    r.mem.write(a, bytes(0, 1, 2, 3, 4));
    r.mem.write(b, bytes(5, 6, 7, 8, 9, 10, 11));
    r.mem.write(p, bytes(0x45, 0x00, 0x12, 0x34));
    r.d.add([{ addr: a, len: 5 }, { addr: b, len: 7 }, { addr: p, len: 64 }], []);
    r.d.publish();
    const c = r.q.pop()!;
    const regionU8 = r.mem.regions[0]!.u8;
    expect(c.locate(0, 12)).toBe(true);
    expect(c.u8).not.toBe(regionU8); // spans a|b: copied into scratch
    expect(Array.from(c.u8.subarray(c.pos, c.pos + 12))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(c.dv.getUint16(c.pos + 4, true)).toBe(0x0504);
    expect(c.locate(5, 7)).toBe(true);
    expect(c.u8).toBe(regionU8); // wholly inside b: zero copy
    expect(c.u8[c.pos]).toBe(5);
    expect(c.locate(12, 4)).toBe(true);
    expect(c.u8).toBe(regionU8);
    expect(c.dv.getUint16(c.pos + 2, true)).toBe(0x3412);
    expect(c.locate(69, 7)).toBe(true);
    expect(c.locate(70, 7)).toBe(false); // past the readable length
    expect(c.locate(76, 0)).toBe(true);
  });

  it('writes a value that straddles writable pieces', () => {
    const r = makeRig();
    const a = r.alloc(16);
    const b = r.alloc(16);
    r.d.add([], [{ addr: a, len: 1 }, { addr: b, len: 3 }]);
    r.d.publish();
    const c = r.q.pop()!;
    expect(c.setU32(0, 0x04030201)).toBe(true);
    expect(r.mem.readU16(a) & 0xff).toBe(1);
    expect(Array.from(new Uint8Array(r.buf, b - RAM_GPA, 3))).toEqual([2, 3, 4]);
    const back = new Uint8Array(4);
    expect(c.readWritable(0, back, 0, 4)).toBe(true);
    expect(Array.from(back)).toEqual([1, 2, 3, 4]);
  });
});

describe('touch', () => {
  it('reads one byte of every 4-KiB page of every piece, readable and writable, and nothing outside them', () => {
    const r = makeRig();
    const a = r.alloc(9000 + 100) + 100; // a piece that does not start on a page
    const w = r.alloc(1);
    const ram = new Uint8Array(r.buf);
    ram.fill(1, a - RAM_GPA, a - RAM_GPA + 9000);
    ram[w - RAM_GPA] = 1;
    ram[a - RAM_GPA - 1] = 100; // just outside the pieces: never read
    ram[a - RAM_GPA + 9000] = 100;
    r.d.add([{ addr: a, len: 9000 }], [{ addr: w, len: 1 }]);
    r.d.publish();
    const c = r.q.pop()!;
    const off = a - RAM_GPA;
    const pages = Math.floor((off + 8999) / 4096) - Math.floor(off / 4096) + 1;
    expect(pages).toBeGreaterThanOrEqual(3);
    expect(c.touch()).toBe(pages + 1);
  });
});

describe('rewind', () => {
  it('re-pops the same chains after rewind', () => {
    const r = makeRig();
    const b = r.alloc(16);
    const heads = [0, 1, 2].map(() => r.d.add([], [{ addr: b, len: 16 }]));
    r.d.publish();
    const out: DescriptorChain[] = [];
    expect(r.q.popBurst(8, out)).toBe(3);
    r.q.addUsed(out[0]!.head, 0);
    r.q.rewind(2);
    expect(r.q.inFlight).toBe(0);
    expect(r.q.isInFlight(heads[1]!)).toBe(false);
    expect(r.q.pop()!.head).toBe(heads[1]);
    expect(r.q.pop()!.head).toBe(heads[2]);
    expect(r.q.pop()).toBeNull();
  });
});

describe('notifications without EVENT_IDX', () => {
  it('needsNotification follows NO_INTERRUPT and only signals something new', () => {
    const r = makeRig();
    const b = r.alloc(16);
    r.d.add([], [{ addr: b, len: 16 }]);
    r.d.add([], [{ addr: b, len: 16 }]);
    r.d.publish();
    r.q.addUsed(r.q.pop()!.head, 1);
    r.q.flush();
    expect(r.q.needsNotification()).toBe(true);
    expect(r.q.needsNotification()).toBe(false); // nothing new
    r.d.setInterrupts(false);
    r.q.addUsed(r.q.pop()!.head, 1);
    r.q.flush();
    expect(r.q.needsNotification()).toBe(false);
    r.d.setInterrupts(true);
    expect(r.q.needsNotification()).toBe(true);
  });

  it('needsKick follows NO_NOTIFY; enableNotification reports work that raced in', () => {
    const r = makeRig();
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true);
    expect(r.d.needsKick()).toBe(false); // nothing new published
    r.q.disableNotification();
    expect(r.mem.readU16(r.layout.used) & VRING_USED_F_NO_NOTIFY).toBe(1);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(false);
    expect(r.q.enableNotification()).toBe(true); // two chains sit in the ring
    r.q.pop();
    r.q.pop();
    expect(r.q.enableNotification()).toBe(false);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true);
  });
});

describe('notifications with EVENT_IDX', () => {
  it('needsNotification uses used_event', () => {
    const r = makeRig({ eventIdx: true });
    const b = r.alloc(16);
    for (let i = 0; i < 4; i++) r.d.add([], [{ addr: b, len: 16 }]);
    r.d.publish();
    const out: DescriptorChain[] = [];
    r.q.popBurst(4, out);
    // used_event = 0 (fresh ring): the first publish crosses it.
    r.q.addUsed(out[0]!.head, 1);
    r.q.flush();
    expect(r.q.needsNotification()).toBe(true);
    // The driver has not consumed anything, so used_event is still 0: no more interrupts.
    r.q.addUsed(out[1]!.head, 1);
    r.q.flush();
    expect(r.q.needsNotification()).toBe(false);
    // The driver consumes two entries and asks for the next one (used_event = 2).
    expect(r.d.popUsed()).toBeGreaterThanOrEqual(0);
    expect(r.d.popUsed()).toBeGreaterThanOrEqual(0);
    r.q.addUsed(out[2]!.head, 1);
    r.q.flush();
    expect(r.q.needsNotification()).toBe(true);
    // Interrupts off: used_event parked behind.
    r.d.popUsed();
    r.d.setInterrupts(false);
    r.q.addUsed(out[3]!.head, 1);
    r.q.flush();
    expect(r.q.needsNotification()).toBe(false);
  });

  it('needsKick uses avail_event; enableNotification sets it', () => {
    const r = makeRig({ eventIdx: true });
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true); // avail_event 0 crossed
    r.q.disableNotification();
    r.q.pop();
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(false); // avail_event not advanced while disabled
    expect(r.q.enableNotification()).toBe(true);
    r.q.pop();
    expect(r.q.enableNotification()).toBe(false); // avail_event = 2
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true);
    // While enabled, each pop moves avail_event along.
    r.q.pop();
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true);
  });

  it('enableNotification(seen) waits for buffers newer than seen', () => {
    const r = makeRig({ eventIdx: true });
    const b = r.alloc(16);
    r.d.add([], [{ addr: b, len: 16 }]);
    r.d.publish();
    r.q.pop();
    r.q.rewind(1); // RX: not enough room, put it back
    const seen = r.q.availIdx();
    expect(r.q.enableNotification()).toBe(true);
    expect(r.q.enableNotification(seen)).toBe(false);
    r.d.add([], [{ addr: b, len: 16 }]);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true);
  });
});

describe('setBase and u16 wrap-around', () => {
  it('continues from a base and reads the used index from the ring', () => {
    const r = makeRig();
    const b = r.alloc(16);
    for (let i = 0; i < 3; i++) r.d.add([], [{ addr: b, len: 16 }]);
    r.d.publish();
    for (let i = 0; i < 3; i++) r.q.addUsed(r.q.pop()!.head, i);
    r.q.flush();
    // A new backend takes over at avail index 3 (vhost-user SET_VRING_BASE).
    const q2 = new SplitQueue({ size: r.size, ...r.layout, indirect: true });
    q2.setBase(3);
    q2.attach(r.mem);
    expect(q2.lastAvail).toBe(3);
    expect(q2.usedIdx).toBe(3);
    for (let i = 0; i < 3; i++) expect(r.d.getUsed()).not.toBeNull();
    const h = r.d.add([], [{ addr: b, len: 16 }]);
    r.d.publish();
    expect(q2.pop()!.head).toBe(h);
    q2.addUsed(h, 7);
    q2.flush();
    expect(r.d.getUsed()).toEqual({ head: h, len: 7 });
  });

  /** A ring where the device completed `done` chains, then popped `held` more without completing them, and `more` wait. */
  function ringAfter(done: number, held: number, more: number, startIdx = 0) {
    const r = makeRig({ size: 8, startIdx });
    const b = r.alloc(16);
    for (let i = 0; i < done; i++) {
      r.d.add([], [{ addr: b, len: 16 }]);
      r.d.publish();
      r.q.addUsed(r.q.pop()!.head, 1);
      r.q.flush();
      expect(r.d.getUsed()).not.toBeNull();
    }
    const heads: number[] = [];
    for (let i = 0; i < held + more; i++) heads.push(r.d.add([], [{ addr: b, len: 16 }]));
    r.d.publish();
    for (let i = 0; i < held; i++) r.q.pop();
    return { r, heads, used: (startIdx + done) & 0xffff };
  }

  it('resume() takes a base inside the window from used.idx to avail.idx as given', () => {
    const { r, heads, used } = ringAfter(20, 2, 3, 65530);
    for (const base of [used, (used + 2) & 0xffff, (used + 5) & 0xffff]) {
      const q2 = new SplitQueue({ size: r.size, ...r.layout, indirect: true });
      q2.attach(r.mem);
      expect(q2.resume(base)).toBeNull();
      expect(q2.lastAvail).toBe(base);
    }
    const q2 = new SplitQueue({ size: r.size, ...r.layout, indirect: true });
    q2.attach(r.mem);
    q2.resume((used + 2) & 0xffff); // a hand-over with 2 chains the old back-end keeps
    expect(q2.pop()!.head).toBe(heads[2]);
  });

  it('resume() of a base outside that window (DPDK virtio-user sends 0 when its back-end reconnects) starts at used.idx and takes up the chains not completed', () => {
    for (const stale of [0, 19, 26, 1000]) {
      const { r, heads, used } = ringAfter(20, 2, 3);
      const q2 = new SplitQueue({ size: r.size, ...r.layout, indirect: true });
      q2.attach(r.mem);
      const why = q2.resume(stale);
      expect(why).toMatch(new RegExp(`front-end base ${stale} is outside the ring's window from used.idx ${used} to avail.idx 25`));
      expect(q2.lastAvail).toBe(used);
      const out: DescriptorChain[] = [];
      expect(q2.popBurst(8, out)).toBe(5);
      expect(out.map((c) => c.head)).toEqual(heads); // the 2 popped and never completed come first
      for (const c of out) q2.addUsed(c.head, 3);
      q2.flush();
      expect(q2.broken).toBeNull();
    }
  });

  it('resume() keeps the base of a ring whose indices are further apart than its size (the first pop breaks the queue)', () => {
    const { r } = ringAfter(20, 0, 3);
    r.mem.writeU16(r.layout.avail + 2, 20 + 9); // avail.idx 9 ahead of used.idx on an 8-entry ring
    const q2 = new SplitQueue({ size: r.size, ...r.layout, indirect: true });
    q2.attach(r.mem);
    expect(q2.resume(0)).toBeNull();
    expect(q2.lastAvail).toBe(0);
    expect(() => q2.pop()).toThrow(/ahead of the last consumed index/);
  });

  for (const eventIdx of [false, true]) {
    it(`runs through 65535 → 0 (eventIdx ${eventIdx})`, () => {
      const r = makeRig({ size: 8, startIdx: 65530, eventIdx });
      const b = r.alloc(64);
      let seen = 0;
      for (let round = 0; round < 10; round++) {
        const heads = [0, 1, 2].map((i) => r.d.add([{ addr: b, len: 8 + i }], [{ addr: b + 16, len: 32 }]));
        r.d.publish();
        const out: DescriptorChain[] = [];
        expect(r.q.popBurst(32, out)).toBe(3);
        expect(out.map((c) => c.head)).toEqual(heads);
        for (const c of out) r.q.addUsed(c.head, c.readableLen);
        r.q.flush();
        for (let i = 0; i < 3; i++) {
          const u = r.d.getUsed()!;
          expect(u.len).toBe(8 + heads.indexOf(u.head));
          seen++;
        }
      }
      expect(seen).toBe(30);
      expect(r.q.lastAvail).toBe((65530 + 30) & 0xffff);
    });
  }
});

describe('iovec tables for native batches', () => {
  it('appends [mappingId, offLo, offHi, len] with skip and limit, across regions', () => {
    const buf = new ArrayBuffer(0x20000);
    const mem = new GuestMemory([
      { gpa: 0, size: 0x10000, buffer: buf, mappingId: 3, mappingOffset: 0x1_0000_0000 },
      { gpa: 0x10000, size: 0x10000, buffer: buf, bufferOffset: 0x10000, mappingId: 4, mappingOffset: 0 },
    ]);
    const L = splitRingLayout(8, 0);
    const d = new DriverQueue(mem, { size: 8, ...L });
    d.init();
    const q = new SplitQueue({ size: 8, ...L });
    q.attach(mem);
    // One 32-byte writable buffer straddling the regions (16 + 16), then a second 8-byte one.
    d.add([{ addr: 0x8000, len: 12 }], [{ addr: 0x10000 - 16, len: 32 }, { addr: 0x18000, len: 8 }]);
    d.publish();
    const c = q.pop()!;
    expect(c.writable.count).toBe(3);
    const t = new Uint32Array(64);
    let at = c.appendIovecs(t, 0, 'writable', 4, 30, mem);
    expect(at).toBe(3);
    expect(Array.from(t.subarray(0, 12))).toEqual([3, 0x10000 - 12, 1, 12, 4, 0, 0, 16, 4, 0x8000, 0, 2]);
    at = c.appendIovecs(t, at, 'readable', 0, 12, mem);
    expect(Array.from(t.subarray(12, 16))).toEqual([3, 0x8000, 1, 12]);
    expect(() => c.appendIovecs(new Uint32Array(4), 0, 'writable', 0, 100, mem)).toThrow(RangeError);
  });

  it('refuses regions without a native mapping', () => {
    const r = makeRig();
    const mem = new GuestMemory([{ gpa: RAM_GPA, size: r.mem.regions[0]!.size, buffer: r.buf }]);
    r.q.attach(mem);
    r.d.add([{ addr: r.alloc(16), len: 16 }], []);
    r.d.publish();
    const c = r.q.pop()!;
    expect(() => c.appendIovecs(new Uint32Array(8), 0, 'readable', 0, 16, mem)).toThrow(MemoryError);
  });

  it('locates avail.idx for native waitKick', () => {
    const r = makeRig();
    const loc = r.q.availIdxLocation();
    expect(loc).toEqual({ region: 0, offset: r.layout.avail + 2 - RAM_GPA, mappingId: 7, mappingOffset: 0 });
  });
});

describe('memory changes', () => {
  it('keeps working after re-attaching to a new GuestMemory over the same RAM', () => {
    const r = makeRig();
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    const c = r.q.pop()!;
    r.q.attach(new GuestMemory([{ gpa: RAM_GPA, size: r.mem.regions[0]!.size, buffer: r.buf, mappingId: 9 }]));
    r.q.addUsed(c.head, 0);
    r.q.flush();
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.q.pop()).not.toBeNull();
  });
});
