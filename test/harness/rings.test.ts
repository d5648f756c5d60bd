/**
 * The ring builders themselves (harness/rings.ts): what they write is what virtio 1.2 §2.7 lays out —
 * checked byte by byte at the offsets of vring/layout.ts — and what lgnet's device side (SplitQueue)
 * reads back from it: the chains, the indices, the event fields, and for each hostile recipe the error
 * it was built to provoke. Pure ArrayBuffer memory, plus one run over a GuestRam memfd.
 */
import { describe, expect, it } from 'vitest';
import { GuestRam } from '../../harness/guest-ram.ts';
import { Arena, SplitRingBuilder, hugeAddr, readDescriptor, wrappingAddr, type RingPlacement } from '../../harness/rings.ts';
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  DriverQueue,
  GuestMemory,
  SplitQueue,
  USED_ELEM_ID,
  USED_ELEM_LEN,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_USED_F_NO_NOTIFY,
  availAreaSize,
  availUsedEventOffset,
  descAreaSize,
  splitRingLayout,
  usedAreaSize,
  usedAvailEventOffset,
  type DescriptorChain,
} from '../../vring/index.ts';

const GPA = 0x10_0000;
const SIZE = 1 << 20;
const N = VRING_DESC_F_NEXT;
const W = VRING_DESC_F_WRITE;
const I = VRING_DESC_F_INDIRECT;

interface Bench {
  buf: ArrayBuffer;
  dv: DataView;
  mem: GuestMemory;
  arena: Arena;
  ring: SplitRingBuilder;
  q: SplitQueue;
}

/** Plain memory at GPA, a ring laid out by the builder, and lgnet's device side over the same bytes. */
function bench(p: Partial<RingPlacement> = {}, q: { eventIdx?: boolean; indirect?: boolean } = {}): Bench {
  const buf = new ArrayBuffer(SIZE);
  const mem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: buf }]);
  const arena = new Arena(GPA, GPA + SIZE);
  const ring = SplitRingBuilder.layOut(mem, { size: 16, alloc: arena, ...p });
  const sq = new SplitQueue({ ...ring.config, eventIdx: q.eventIdx ?? false, indirect: q.indirect ?? true });
  sq.attach(mem);
  if (p.startIdx !== undefined) sq.setBase(p.startIdx);
  return { buf, dv: new DataView(buf), mem, arena, ring, q: sq };
}

/** Byte offset in the bench's buffer of a guest address. */
const off = (gpa: number): number => gpa - GPA;

function readable(c: DescriptorChain): number[] {
  const out = new Uint8Array(c.readableLen);
  expect(c.readBytes(0, out, 0, out.length)).toBe(true);
  return Array.from(out);
}

describe('Arena', () => {
  it('hands out aligned, disjoint ranges and refuses to run past its end', () => {
    const a = new Arena(0x1001, 0x1100);
    expect(a.alloc(3)).toBe(0x1010);
    expect(a.alloc(8, 64)).toBe(0x1040);
    expect(a.alloc(1, 1)).toBe(0x1048);
    expect(a.used).toBe(0x1049 - 0x1001);
    expect(() => a.alloc(0x100)).toThrow(RangeError);
    expect(() => a.alloc(1, 3)).toThrow(RangeError);
  });
});

describe('layOut', () => {
  it('places the three areas as §2.7.2 does and zeroes exactly them, event fields included', () => {
    const buf = new ArrayBuffer(SIZE);
    new Uint8Array(buf).fill(0xaa);
    const mem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: buf }]);
    const ring = SplitRingBuilder.layOut(mem, { size: 256, base: GPA + 0x1000 });
    const L = splitRingLayout(256, GPA + 0x1000);
    expect(ring.layout).toEqual(L);
    const u8 = new Uint8Array(buf);
    const zero = (from: number, len: number) => u8.subarray(off(from), off(from) + len).every((b) => b === 0);
    const untouched = (from: number, len: number) => u8.subarray(off(from), off(from) + len).every((b) => b === 0xaa);
    expect(zero(L.desc, descAreaSize(256))).toBe(true);
    expect(zero(L.avail, availAreaSize(256))).toBe(true);
    expect(zero(L.used, usedAreaSize(256))).toBe(true);
    expect(untouched(L.desc - 16, 16)).toBe(true);
    expect(untouched(L.avail + availAreaSize(256), L.used - L.avail - availAreaSize(256))).toBe(true); // legacy padding
    expect(untouched(L.end, 16)).toBe(true);
  });

  it('takes a page-aligned base from the allocator; usedAlign 4 packs the used ring tight', () => {
    const { ring, arena } = bench({ size: 64, usedAlign: 4, alloc: new Arena(GPA + 123, GPA + SIZE) });
    expect(ring.layout.desc % 4096).toBe(0);
    expect(ring.layout.avail).toBe(ring.layout.desc + descAreaSize(64));
    expect(ring.layout.used).toBe(Math.ceil((ring.layout.avail + availAreaSize(64)) / 4) * 4);
    expect(arena.used).toBe(0); // the bench's own arena was not the one used
  });

  it('sets every index to startIdx, at the offsets the device reads', () => {
    const { ring, dv, q } = bench({ startIdx: 0xfffe }, { eventIdx: true });
    const { avail, used } = ring.layout;
    expect(dv.getUint16(off(avail + AVAIL_IDX), true)).toBe(0xfffe);
    expect(dv.getUint16(off(used + USED_IDX), true)).toBe(0xfffe);
    expect(dv.getUint16(off(avail + availUsedEventOffset(16)), true)).toBe(0xfffe);
    expect(dv.getUint16(off(used + usedAvailEventOffset(16)), true)).toBe(0xfffe);
    expect(q.availPending()).toBe(0);
    ring.addChain([{ len: 4 }]);
    ring.addChain([{ len: 4 }]);
    ring.addChain([{ len: 4 }]);
    expect(ring.availIdx).toBe(1); // wrapped
    expect(q.popBurst(8, [])).toBe(3);
  });

  it('places explicit addresses as given, even ones the device must refuse', () => {
    const buf = new ArrayBuffer(SIZE);
    const mem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: buf }]);
    const ring = SplitRingBuilder.layOut(mem, { size: 16, desc: GPA + 8, avail: GPA + 0x1001, used: GPA + 0x2000 });
    expect(ring.config).toEqual({ size: 16, desc: GPA + 8, avail: GPA + 0x1001, used: GPA + 0x2000 });
    ring.setAvailIdx(3); // a misaligned avail.idx is still written (without Atomics)
    expect(ring.availIdx).toBe(3);
    expect(() => new SplitQueue(ring.config).attach(mem)).toThrow(expect.objectContaining({ code: 'VRING_MISALIGNED' }));
  });

  it('refuses sizes that are not a power of 2 and half-given placements', () => {
    const mem = new GuestMemory([{ gpa: 0, size: 0x10000, buffer: new ArrayBuffer(0x10000) }]);
    expect(() => SplitRingBuilder.layOut(mem, { size: 12, base: 0 })).toThrow(RangeError);
    expect(() => SplitRingBuilder.layOut(mem, { size: 16, desc: 0 })).toThrow(RangeError);
    expect(() => SplitRingBuilder.layOut(mem, { size: 16 })).toThrow(RangeError);
  });
});

describe('descriptors', () => {
  it('writes struct virtq_desc little-endian at DESC_* offsets, any value, and reads it back', () => {
    const { ring, dv } = bench();
    ring.writeDesc(3, { addr: 0x1_2345_6789, len: 0xdead_beef, flags: N | W, next: 0xffff });
    const at = off(ring.descAddr(3));
    expect(ring.descAddr(3)).toBe(ring.layout.desc + 3 * DESC_SIZE);
    expect(dv.getUint32(at + DESC_ADDR, true)).toBe(0x2345_6789);
    expect(dv.getUint32(at + DESC_ADDR + 4, true)).toBe(1);
    expect(dv.getUint32(at + DESC_LEN, true)).toBe(0xdead_beef);
    expect(dv.getUint16(at + DESC_FLAGS, true)).toBe(N | W);
    expect(dv.getUint16(at + DESC_NEXT, true)).toBe(0xffff);
    ring.writeDesc(4, { addr: [0xffff_fff0, 0xffff_ffff], len: 1 });
    expect(ring.readDesc(4)).toMatchObject({ lo: 0xffff_fff0, hi: 0xffff_ffff, len: 1, flags: 0, next: 0 });
    expect(ring.readDesc(3)).toEqual({ addr: 0x1_2345_6789, lo: 0x2345_6789, hi: 1, len: 0xdead_beef, flags: N | W, next: 0xffff });
    expect(() => ring.writeDesc(16, { addr: GPA, len: 1 })).toThrow(RangeError);
    expect(() => ring.writeDesc(0, { addr: -1, len: 1 })).toThrow(RangeError);
  });

  it('wrappingAddr and hugeAddr are the addresses their names say', () => {
    const [lo, hi] = wrappingAddr(0x20);
    const addr = (BigInt(hi) << 32n) | BigInt(lo);
    expect(addr + 0x20n).toBeGreaterThan(2n ** 64n);
    expect(addr).toBeLessThan(2n ** 64n);
    expect(hugeAddr(5)).toEqual([5, 2 ** 21]);
    expect(2 ** 21 * 2 ** 32).toBe(2 ** 53);
  });
});

describe('chains, read back through the device side', () => {
  it('addChain: readable then writable buffers, linked with NEXT, head offered and published', () => {
    const { ring, q, mem } = bench();
    const head = ring.addChain([{ data: Uint8Array.of(1, 2, 3) }, { data: Uint8Array.of(4, 5), len: 6 }, { len: 64, write: true }]);
    expect(head).toBe(0);
    expect(ring.availIdx).toBe(1);
    expect(ring.availEntry(0)).toBe(0);
    expect(mem.readU16(ring.layout.avail + AVAIL_RING)).toBe(0);
    expect(ring.readDesc(0)).toMatchObject({ len: 3, flags: N, next: 1 });
    expect(ring.readDesc(1)).toMatchObject({ len: 6, flags: N, next: 2 });
    expect(ring.readDesc(2)).toMatchObject({ len: 64, flags: W, next: 0 });
    expect(ring.readDesc(1).addr).toBe(ring.readDesc(0).addr + 3); // one block, back to back
    const c = q.pop()!;
    expect(c.head).toBe(0);
    expect(c.descCount).toBe(3);
    expect(c.readableLen).toBe(9);
    expect(c.writableLen).toBe(64);
    expect(readable(c)).toEqual([1, 2, 3, 4, 5, 0, 0, 0, 0]);
    expect(q.pop()).toBeNull();
  });

  it('uses the descriptor indices given, in chain order', () => {
    const { ring, q } = bench();
    const head = ring.addChain([{ data: Uint8Array.of(0xa) }, { data: Uint8Array.of(0xb) }, { data: Uint8Array.of(0xc) }], { descs: [5, 3, 9] });
    expect(head).toBe(5);
    expect([ring.readDesc(5).next, ring.readDesc(3).next, ring.readDesc(9).flags]).toEqual([3, 9, 0]);
    expect(readable(q.pop()!)).toEqual([0xa, 0xb, 0xc]);
  });

  it('stages offers until publish(), and offer: false leaves the available ring alone', () => {
    const { ring, q } = bench();
    const a = ring.addChain([{ len: 8 }], { publish: false });
    const b = ring.addChain([{ len: 16 }], { publish: false });
    expect([ring.availEntry(0), ring.availEntry(1)]).toEqual([a, b]);
    expect(ring.availIdx).toBe(0);
    expect(q.availPending()).toBe(0);
    ring.publish();
    expect(ring.availIdx).toBe(2);
    ring.addChain([{ len: 8 }], { offer: false });
    expect(ring.availIdx).toBe(2);
    expect(ring.availEntry(2)).toBe(0);
    expect([a, b]).toEqual([0, 1]);
    expect([q.pop()!.readableLen, q.pop()!.readableLen, q.pop()]).toEqual([8, 16, null]);
  });

  it('addIndirectChain: one INDIRECT head pointing at a linked table of 16-byte entries', () => {
    const { ring, q, mem } = bench();
    const head = ring.addIndirectChain([{ data: Uint8Array.of(7) }, { len: 2, data: Uint8Array.of(8, 9) }, { len: 32, write: true }]);
    const d = ring.readDesc(head);
    expect(d.flags).toBe(I);
    expect(d.len).toBe(3 * DESC_SIZE);
    expect(d.addr % DESC_SIZE).toBe(0);
    expect(readDescriptor(mem, d.addr)).toMatchObject({ len: 1, flags: N, next: 1 });
    expect(readDescriptor(mem, d.addr + DESC_SIZE)).toMatchObject({ len: 2, flags: N, next: 2 });
    expect(readDescriptor(mem, d.addr + 2 * DESC_SIZE)).toMatchObject({ len: 32, flags: W, next: 0 });
    const c = q.pop()!;
    expect(c.indirect).toBe(true);
    expect(c.descCount).toBe(3);
    expect(readable(c)).toEqual([7, 8, 9]);
    expect(c.writableLen).toBe(32);
  });

  it('appends after a DriverQueue on the same ring: avail.idx in memory is the shared truth', () => {
    const { ring, mem, q, arena } = bench();
    const d = new DriverQueue(mem, ring.config);
    const b = arena.alloc(16);
    expect(d.add([{ addr: b, len: 1 }], [])).toBe(0);
    expect(d.add([{ addr: b, len: 2 }], [])).toBe(1);
    d.publish();
    const over = SplitRingBuilder.over(mem, ring.config, arena, 8);
    expect(over.addChain([{ len: 3 }])).toBe(8);
    expect(over.availEntry(2)).toBe(8);
    expect(over.availIdx).toBe(3);
    const chains = [q.pop()!, q.pop()!, q.pop()!].map((c) => [c.head, c.readableLen]);
    expect(chains).toEqual([[0, 1], [1, 2], [8, 3]]);
  });

  it('refuses chains longer than the table, mismatched indices, and allocation without an allocator', () => {
    const { ring, mem } = bench();
    expect(() => ring.addChain(Array.from({ length: 17 }, () => ({ len: 1 })))).toThrow(RangeError);
    expect(() => ring.addChain([{ len: 1 }], { descs: [1, 2] })).toThrow(RangeError);
    const bare = SplitRingBuilder.over(mem, ring.config);
    expect(() => bare.addChain([{ len: 1 }])).toThrow(/no allocator/);
    expect(bare.addChain([{ addr: GPA + 0x8000, len: 1 }])).toBe(0);
  });

  it('works the same over a GuestRam memfd', () => {
    const ram = new GuestRam(1 << 20);
    try {
      const ring = SplitRingBuilder.layOut(ram.mem, { size: 8, alloc: ram });
      const q = new SplitQueue(ring.config);
      q.attach(ram.mem);
      ring.addChain([{ data: new TextEncoder().encode('memfd') }, { len: 10, write: true }]);
      const c = q.pop()!;
      expect(Buffer.from(readable(c)).toString()).toBe('memfd');
      expect(c.readable.count).toBe(1);
      expect(ram.mem.regions[c.readable.region[0]!]!.mappingId).toBe(ram.mappingId);
    } finally {
      ram.close();
    }
  });
});

describe('hostile recipes provoke the error they are named for', () => {
  const cases: Array<[string, (b: Bench) => void, string, { indirect?: boolean }?]> = [
    ['addDescLoop (self)', (b) => b.ring.addDescLoop(), 'VRING_DESC_LOOP'],
    ['addDescLoop (3-cycle)', (b) => b.ring.addDescLoop([4, 9, 2]), 'VRING_DESC_LOOP'],
    ['addIndirectLoop', (b) => b.ring.addIndirectLoop(3), 'VRING_DESC_LOOP'],
    ['addNextOutOfRange', (b) => b.ring.addNextOutOfRange(), 'VRING_NEXT_OUT_OF_RANGE'],
    ['offer(size)', (b) => b.ring.offer(16), 'VRING_HEAD_OUT_OF_RANGE'],
    ['jumpAvailIdx(size + 1)', (b) => b.ring.jumpAvailIdx(17), 'VRING_AVAIL_IDX_JUMP'],
    ['addReadAfterWrite', (b) => b.ring.addReadAfterWrite(), 'VRING_READ_AFTER_WRITE'],
    ['addReadAfterWrite (indirect)', (b) => b.ring.addReadAfterWrite({ indirect: true }), 'VRING_READ_AFTER_WRITE'],
    ['zero-length buffer', (b) => b.ring.addChain([{ len: 0 }]), 'VRING_ZERO_LEN'],
    ['buffer past the end', (b) => b.ring.addChain([{ addr: GPA + SIZE - 4, len: 8 }]), 'VRING_UNMAPPED'],
    ['buffer at 2^53', (b) => b.ring.addChain([{ addr: hugeAddr(), len: 8 }]), 'VRING_UNMAPPED'],
    ['addr + len wraps 2^64', (b) => b.ring.addChain([{ addr: wrappingAddr(64), len: 64 }]), 'VRING_ADDR_WRAP'],
    ['addIndirectWithNext', (b) => b.ring.addIndirectWithNext(), 'VRING_INDIRECT_WITH_NEXT'],
    ['addNestedIndirect', (b) => b.ring.addNestedIndirect(), 'VRING_INDIRECT_NESTED'],
    ['addIndirectNotHead', (b) => b.ring.addIndirectNotHead(), 'VRING_INDIRECT_NOT_HEAD'],
    ['addIndirectBadLength(0)', (b) => b.ring.addIndirectBadLength(0), 'VRING_INDIRECT_BAD_LEN'],
    ['addIndirectBadLength(24)', (b) => b.ring.addIndirectBadLength(24), 'VRING_INDIRECT_BAD_LEN'],
    ['addIndirectRef to an unmapped table', (b) => b.ring.addIndirectRef({ addr: GPA + SIZE - DESC_SIZE, len: 2 * DESC_SIZE }), 'VRING_UNMAPPED'],
    ['addIndirectChain without INDIRECT_DESC', (b) => b.ring.addIndirectChain([{ len: 4 }]), 'VRING_INDIRECT_NOT_NEGOTIATED', { indirect: false }],
  ];
  for (const [name, build, code, q] of cases) {
    it(`${name} → ${code}`, () => {
      const b = bench({}, q ?? {});
      build(b);
      expect(() => b.q.pop()).toThrow(expect.objectContaining({ code }));
      expect(b.q.broken?.code).toBe(code);
    });
  }

  it('writes the bytes each recipe promises', () => {
    const { ring, mem } = bench();
    const h1 = ring.addIndirectWithNext();
    expect(ring.readDesc(h1)).toMatchObject({ flags: I | N, next: (h1 + 1) % 16 });
    const h2 = ring.addIndirectBadLength(24);
    expect(ring.readDesc(h2)).toMatchObject({ flags: I, len: 24 });
    expect(readDescriptor(mem, ring.readDesc(h2).addr + DESC_SIZE)).toMatchObject({ len: 16, flags: 0 }); // valid entries behind it
    const h3 = ring.addNestedIndirect();
    const outer = readDescriptor(mem, ring.readDesc(h3).addr);
    expect(outer).toMatchObject({ flags: I, len: DESC_SIZE });
    expect(readDescriptor(mem, outer.addr)).toMatchObject({ flags: 0, len: 16 });
    const h4 = ring.addIndirectNotHead();
    expect(ring.readDesc(h4).flags).toBe(N);
    expect(ring.readDesc(ring.readDesc(h4).next).flags).toBe(I);
    const h5 = ring.addDescLoop([7, 8]);
    expect([ring.readDesc(7).next, ring.readDesc(8).next, ring.readDesc(7).addr]).toEqual([8, 7, ring.readDesc(8).addr]);
    expect(h5).toBe(7);
    expect(ring.availIdx).toBe(5);
    expect([0, 1, 2, 3, 4].map((s) => ring.availEntry(s))).toEqual([h1, h2, h3, h4, h5]);
  });
});

describe('indices, flags and event fields', () => {
  it('reads the used ring the device writes: used.idx and {id, len} at USED_* offsets', () => {
    const { ring, q, dv } = bench();
    const h = ring.addChain([{ len: 4 }, { len: 100, write: true }]);
    q.pop();
    q.addUsed(h, 42);
    expect(ring.usedIdx).toBe(0); // staged, not published
    q.flush();
    expect(ring.usedIdx).toBe(1);
    expect(ring.usedElem(0)).toEqual({ id: h, len: 42 });
    const at = off(ring.layout.used);
    expect(dv.getUint16(at + USED_IDX, true)).toBe(1);
    expect(dv.getUint32(at + USED_RING + USED_ELEM_ID, true)).toBe(h);
    expect(dv.getUint32(at + USED_RING + USED_ELEM_LEN, true)).toBe(42);
  });

  it('used_event steers the device’s interrupts (§2.7.7)', () => {
    const { ring, q, dv } = bench({}, { eventIdx: true });
    const heads = [0, 1, 2].map(() => ring.addChain([{ len: 4, write: true }]));
    expect(q.popBurst(8, [])).toBe(3);
    q.addUsed(heads[0]!, 0);
    q.flush();
    expect(q.needsNotification()).toBe(true); // the first is always signalled
    ring.setUsedEvent(5);
    expect(dv.getUint16(off(ring.layout.avail + availUsedEventOffset(16)), true)).toBe(5);
    q.addUsed(heads[1]!, 0);
    q.flush();
    expect(q.needsNotification()).toBe(false); // used.idx 2 has not passed 5
    ring.setUsedEvent(2);
    q.addUsed(heads[2]!, 0);
    q.flush();
    expect(q.needsNotification()).toBe(true); // used.idx 3 passed 2
    expect(ring.usedEvent).toBe(2);
  });

  it('avail_event is what the device asks for, and steers a driver’s kicks (§2.7.10)', () => {
    const { ring, q, mem, dv } = bench({}, { eventIdx: true });
    ring.addChain([{ len: 4 }]);
    q.pop();
    expect(ring.availEvent).toBe(1); // the device wants a kick for the next entry
    expect(dv.getUint16(off(ring.layout.used + usedAvailEventOffset(16)), true)).toBe(1);
    const fresh = SplitRingBuilder.layOut(mem, { size: 16, base: GPA + 0x8_0000 });
    const d = new DriverQueue(mem, { ...fresh.config, eventIdx: true });
    fresh.setAvailEvent(5);
    d.add([{ addr: GPA + 0x1000, len: 4 }], []);
    d.publish();
    expect(d.needsKick()).toBe(false);
    fresh.setAvailEvent(1);
    d.add([{ addr: GPA + 0x1000, len: 4 }], []);
    d.publish();
    expect(d.needsKick()).toBe(true);
  });

  it('avail.flags and used.flags live at their offsets (§2.7.7, §2.7.10)', () => {
    const { ring, q, dv } = bench();
    ring.setAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
    expect(dv.getUint16(off(ring.layout.avail + AVAIL_FLAGS), true)).toBe(VRING_AVAIL_F_NO_INTERRUPT);
    const h = ring.addChain([{ len: 4, write: true }]);
    q.pop();
    q.addUsed(h, 0);
    q.flush();
    expect(q.needsNotification()).toBe(false);
    q.disableNotification();
    expect(ring.usedFlags).toBe(VRING_USED_F_NO_NOTIFY);
    expect(dv.getUint16(off(ring.layout.used + USED_FLAGS), true)).toBe(VRING_USED_F_NO_NOTIFY);
  });

  it('forges a hostile used ring for driver-side tests', () => {
    const { ring, mem } = bench();
    const d = new DriverQueue(mem, ring.config);
    d.add([{ addr: GPA + 0x1000, len: 4 }], []);
    d.publish();
    ring.setUsedElem(0, 7, 0); // a head the driver never made available
    ring.setUsedIdx(1);
    expect(() => d.popUsed()).toThrow(expect.objectContaining({ code: 'VRING_USED_BAD_ID' }));
    ring.setUsedIdx(40);
    expect(() => d.popUsed()).toThrow(expect.objectContaining({ code: 'VRING_USED_IDX_JUMP' }));
  });
});
