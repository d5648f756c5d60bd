/**
 * PackedRingBuilder (harness/rings.ts): what it writes is what virtio 1.2 §2.8 lays out — checked
 * byte by byte at the offsets of vring/packed-layout.ts — and what lgnet's device side (PackedQueue)
 * reads back from it: chains under the right wrap counters, ids, indirect tables, the event areas,
 * used descriptors, and for each hostile recipe the error it was built to provoke. Pure ArrayBuffer
 * memory, plus one run over a GuestRam memfd.
 */
import { describe, expect, it } from 'vitest';
import { GuestRam } from '../../harness/guest-ram.ts';
import { Arena, PackedRingBuilder, hugeAddr, packedAvailFlags, packedUsedFlags, wrappingAddr, type PackedRingPlacement } from '../../harness/rings.ts';
import {
  EVENT_AREA_SIZE,
  EVENT_FLAGS,
  EVENT_OFF_WRAP,
  GuestMemory,
  PACKED_DESC_ADDR,
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_LEN,
  PACKED_DESC_SIZE,
  PACKED_POS_START,
  PACKED_RING_BASE_START,
  PackedDriverQueue,
  PackedQueue,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  encodePackedRingBase,
  packedDescAreaSize,
  packedPos,
  packedRingLayout,
  type DescriptorChain,
} from '../../vring/index.ts';

const GPA = 0x10_0000;
const SIZE = 1 << 20;
const N = VRING_DESC_F_NEXT;
const W = VRING_DESC_F_WRITE;
const I = VRING_DESC_F_INDIRECT;
const A = VRING_PACKED_DESC_F_AVAIL;
const U = VRING_PACKED_DESC_F_USED;

interface Bench {
  buf: ArrayBuffer;
  dv: DataView;
  mem: GuestMemory;
  ring: PackedRingBuilder;
  q: PackedQueue;
}

/** Plain memory at GPA, a packed ring laid out by the builder, and lgnet's device side over the same bytes. */
function bench(p: Partial<PackedRingPlacement> = {}, q: { eventIdx?: boolean; indirect?: boolean } = {}): Bench {
  const buf = new ArrayBuffer(SIZE);
  const mem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: buf }]);
  const ring = PackedRingBuilder.layOut(mem, { size: 8, alloc: new Arena(GPA, GPA + SIZE), ...p });
  const pq = new PackedQueue({ ...ring.config, eventIdx: q.eventIdx ?? false, indirect: q.indirect ?? true });
  pq.attach(mem);
  pq.setBase(ring.base);
  return { buf, dv: new DataView(buf), mem, ring, q: pq };
}

const off = (gpa: number): number => gpa - GPA;

function readable(c: DescriptorChain): number[] {
  const out = new Uint8Array(c.readableLen);
  expect(c.readBytes(0, out, 0, out.length)).toBe(true);
  return Array.from(out);
}

describe('layOut and over', () => {
  it('places the descriptor ring and both event areas as packedRingLayout does and zeroes exactly them', () => {
    const buf = new ArrayBuffer(SIZE);
    new Uint8Array(buf).fill(0xaa);
    const mem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: buf }]);
    const ring = PackedRingBuilder.layOut(mem, { size: 100, base: GPA + 0x1000 });
    const L = packedRingLayout(100, GPA + 0x1000);
    expect(ring.layout).toEqual(L);
    const u8 = new Uint8Array(buf);
    const all = (from: number, len: number, v: number) => u8.subarray(off(from), off(from) + len).every((b) => b === v);
    expect(all(L.desc, packedDescAreaSize(100), 0)).toBe(true);
    expect(all(L.driver, EVENT_AREA_SIZE, 0)).toBe(true);
    expect(all(L.device, EVENT_AREA_SIZE, 0)).toBe(true);
    expect(all(L.desc - 16, 16, 0xaa)).toBe(true);
    expect(all(L.end, 16, 0xaa)).toBe(true);
    expect(ring.config).toEqual({ size: 100, desc: L.desc, driver: L.driver, device: L.device });
    expect(ring.setup).toEqual({ size: 100, desc: L.desc, avail: L.driver, used: L.device, lastAvail: PACKED_RING_BASE_START });
    expect(ring.position).toBe(PACKED_POS_START);
  });

  it('takes a page-aligned base from the allocator, and any size, not only powers of 2', () => {
    const { ring, q } = bench({ size: 7, alloc: new Arena(GPA + 123, GPA + SIZE) });
    expect(ring.layout.desc % 4096).toBe(0);
    expect(ring.layout.driver).toBe(ring.layout.desc + 7 * PACKED_DESC_SIZE);
    expect(q.size).toBe(7);
  });

  it('a start position lays the flags out as PackedDriverQueue.init does, and the device resumes there', () => {
    for (const start of [packedPos(3, 1), packedPos(5, 0), packedPos(0, 0)]) {
      const { ring, q, mem } = bench({ start });
      const drvBuf = new ArrayBuffer(SIZE);
      const drvMem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: drvBuf }]);
      new PackedDriverQueue(drvMem, ring.config).init(start);
      for (let s = 0; s < 8; s++) expect(ring.readDesc(s).flags, `slot ${s}`).toBe(drvMem.readU16(ring.descAddr(s) + PACKED_DESC_FLAGS));
      const idx = start & 0x7fff;
      const w = start >>> 15;
      expect(ring.base).toBe(encodePackedRingBase({ lastAvailIdx: idx, availWrap: w, lastUsedIdx: idx, usedWrap: w }));
      expect(q.availPending()).toBe(0); // nothing looks available, and nothing looks like a used marker of this lap
      const id = ring.addChain([{ data: new Uint8Array([1, 2, 3]) }, { len: 8, write: true }]);
      const c = q.pop()!;
      expect(c.head).toBe(id);
      expect(readable(c)).toEqual([1, 2, 3]);
      expect(q.lastAvail).toBe(ring.position);
      void mem;
    }
  });

  it('over(): appends after a PackedDriverQueue on the same ring, with ids the driver does not hold', () => {
    const buf = new ArrayBuffer(SIZE);
    const mem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: buf }]);
    const L = packedRingLayout(8, GPA);
    const d = new PackedDriverQueue(mem, { size: 8, desc: L.desc, driver: L.driver, device: L.device });
    d.init();
    const arena = new Arena(GPA + 0x1000, GPA + SIZE);
    const b = arena.alloc(64);
    d.add([{ addr: b, len: 4 }, { addr: b, len: 4 }], []);
    d.publish();
    // The VirtioNetDriver naming (avail/used) works as well as the vring one.
    const ring = PackedRingBuilder.over(mem, { size: 8, desc: L.desc, avail: L.driver, used: L.device }, arena, { position: d.availIdx, firstId: 5 });
    expect(ring.position).toBe(packedPos(2, 1));
    expect(ring.addChain([{ len: 4 }])).toBe(5);
    const q = new PackedQueue({ ...ring.config, indirect: true });
    q.attach(mem);
    q.setBase(PACKED_RING_BASE_START);
    expect(q.popBurst(8, []).valueOf()).toBe(2);
    expect(() => PackedRingBuilder.over(mem, { size: 8, desc: L.desc })).toThrow(RangeError);
  });

  it('refuses bad sizes, positions and half-given placements', () => {
    const mem = new GuestMemory([{ gpa: 0, size: 0x10000, buffer: new ArrayBuffer(0x10000) }]);
    expect(() => PackedRingBuilder.layOut(mem, { size: 0, base: 0 })).toThrow(RangeError);
    expect(() => PackedRingBuilder.layOut(mem, { size: 32769, base: 0 })).toThrow(RangeError);
    expect(() => PackedRingBuilder.layOut(mem, { size: 8, base: 0, start: packedPos(8, 1) })).toThrow(RangeError);
    expect(() => PackedRingBuilder.layOut(mem, { size: 8, desc: 0 })).toThrow(RangeError);
    expect(() => PackedRingBuilder.layOut(mem, { size: 8 })).toThrow(RangeError);
  });
});

describe('descriptors', () => {
  it('writes struct pvirtq_desc little-endian at PACKED_DESC_* offsets, any value, flags with Atomics, and reads it back', () => {
    const { ring, dv } = bench();
    ring.writeDesc(3, { addr: [0x89abcdef, 0x01234567], len: 0xfffffffe, id: 0xbeef, flags: 0xffff });
    const at = off(ring.descAddr(3));
    expect(at).toBe(off(ring.layout.desc) + 3 * PACKED_DESC_SIZE);
    expect(dv.getUint32(at + PACKED_DESC_ADDR, true)).toBe(0x89abcdef);
    expect(dv.getUint32(at + PACKED_DESC_ADDR + 4, true)).toBe(0x01234567);
    expect(dv.getUint32(at + PACKED_DESC_LEN, true)).toBe(0xfffffffe);
    expect(dv.getUint16(at + PACKED_DESC_ID, true)).toBe(0xbeef);
    expect(dv.getUint16(at + PACKED_DESC_FLAGS, true)).toBe(0xffff);
    expect(ring.readDesc(3)).toEqual({ len: 0xfffffffe, id: 0xbeef, flags: 0xffff });
    expect(ring.readAddr(3)).toMatchObject({ lo: 0x89abcdef, hi: 0x01234567 });
    ring.writeDesc(4, { addr: hugeAddr(7), len: 1 });
    expect(ring.readAddr(4)).toEqual({ addr: 2 ** 53 + 7, lo: 7, hi: 2 ** 21 });
    expect(() => ring.descAddr(8)).toThrow(RangeError);
  });

  it('packedAvailFlags / packedUsedFlags are §2.8.1’s markers', () => {
    expect([packedAvailFlags(1), packedAvailFlags(0)]).toEqual([A, U]);
    expect([packedUsedFlags(1), packedUsedFlags(0)]).toEqual([A | U, 0]);
  });
});

describe('chains, read back through the device side', () => {
  it('addChain: readable then writable, NEXT-linked slots, the id on each, AVAIL/USED of the lap', () => {
    const { ring, q } = bench();
    const id = ring.addChain([{ data: new Uint8Array([1, 2, 3]) }, { data: new Uint8Array([4]) }, { len: 16, write: true }]);
    expect(id).toBe(0);
    expect([0, 1, 2].map((s) => ring.readDesc(s))).toEqual([
      { len: 3, id: 0, flags: N | A },
      { len: 1, id: 0, flags: N | A },
      { len: 16, id: 0, flags: W | A },
    ]);
    expect(ring.position).toBe(packedPos(3, 1));
    const c = q.pop()!;
    expect(c.head).toBe(0);
    expect(readable(c)).toEqual([1, 2, 3, 4]);
    expect(c.writableLen).toBe(16);
    expect(ring.addChain([{ len: 4 }])).toBe(1); // ids in turn
    expect(ring.addChain([{ len: 4 }], { id: 6 })).toBe(6);
    expect(q.popBurst(8, []).valueOf()).toBe(2);
  });

  it('crosses the end of the ring: each slot carries its own lap’s AVAIL/USED, and ids wrap at size', () => {
    const { ring, q } = bench({ size: 4, start: packedPos(2, 1) });
    ring.addChain([{ len: 4 }, { len: 4 }, { len: 4, write: true }]);
    expect(ring.readDesc(2).flags).toBe(N | A);
    expect(ring.readDesc(3).flags).toBe(N | A);
    expect(ring.readDesc(0).flags).toBe(W | U); // lap 0: AVAIL 0, USED 1
    expect(ring.position).toBe(packedPos(1, 0));
    const c = q.pop()!;
    expect(c.descCount).toBe(3);
    q.addUsed(c.head, 0);
    q.flush();
    for (let k = 0; k < 5; k++) {
      ring.addChain([{ len: 4 }]);
      const x = q.pop()!;
      q.addUsed(x.head, 0);
      q.flush();
    }
    expect(ring.position).toBe(packedPos(2, 1)); // 3 + 5 = 8 slots: two laps on
  });

  it('stages heads until publish(), the first one last', () => {
    const { ring, q } = bench();
    ring.addChain([{ len: 4 }], { publish: false });
    ring.addChain([{ len: 4 }, { len: 4 }], { publish: false });
    expect(q.availPending()).toBe(0);
    expect(q.pop()).toBeNull();
    ring.publish();
    expect(q.availPending()).toBe(2);
    expect(q.popBurst(8, []).valueOf()).toBe(2);
  });

  it('addIndirectChain: one INDIRECT slot to a table of 16-byte entries, WRITE their only flag', () => {
    const { ring, q, mem } = bench();
    const id = ring.addIndirectChain([{ data: new Uint8Array([9, 8]) }, { len: 32, write: true }]);
    expect(ring.readDesc(0)).toEqual({ len: 2 * PACKED_DESC_SIZE, id, flags: I | A });
    const t = ring.readAddr(0).addr;
    expect(mem.readU16(t + PACKED_DESC_FLAGS)).toBe(0);
    expect(mem.readU16(t + PACKED_DESC_SIZE + PACKED_DESC_FLAGS)).toBe(W);
    expect(mem.readU32(t + PACKED_DESC_SIZE + PACKED_DESC_LEN)).toBe(32);
    const c = q.pop()!;
    expect(c.indirect).toBe(true);
    expect(readable(c)).toEqual([9, 8]);
    expect(c.writableLen).toBe(32);
    expect(ring.position).toBe(packedPos(1, 1));
  });

  it('putList lays out any list at any position without moving the builder', () => {
    const { ring, q, mem } = bench({ size: 4, start: packedPos(3, 0) });
    const b = ring.alloc(16);
    mem.write(b, new Uint8Array([5, 6, 7]));
    const after = ring.putList(packedPos(3, 0), [{ addr: b, len: 3, id: 2 }, { addr: b, len: 1, id: 2, extra: W }]);
    expect(after).toBe(packedPos(1, 1));
    expect(ring.position).toBe(packedPos(3, 0));
    expect(ring.readDesc(3).flags).toBe(N | U);
    expect(ring.readDesc(0).flags).toBe(W | A);
    const c = q.pop()!;
    expect(c.head).toBe(2);
    expect(readable(c)).toEqual([5, 6, 7]);
  });

  it('works the same over a GuestRam memfd', () => {
    const ram = new GuestRam(1 << 20);
    try {
      const ring = PackedRingBuilder.layOut(ram.mem, { size: 16, alloc: ram });
      const q = new PackedQueue({ ...ring.config, indirect: true });
      q.attach(ram.mem);
      ring.addChain([{ data: new TextEncoder().encode('packed') }]);
      ring.addIndirectChain([{ data: new Uint8Array([1]) }, { len: 8, write: true }]);
      const [a, b] = [q.pop()!, q.pop()!];
      expect(new TextDecoder().decode(new Uint8Array(readable(a)))).toBe('packed');
      expect(b.indirect).toBe(true);
    } finally {
      ram.close();
    }
  });
});

describe('hostile recipes provoke the error they are named for', () => {
  const cases: Array<[string, (b: Bench) => void, string, { indirect?: boolean; start?: number }?]> = [
    ['addLongList()', (b) => b.ring.addLongList(), 'VRING_DESC_LOOP'],
    ['addLongList(size - 2): open onto a slot that is not available', (b) => b.ring.addLongList(6), 'VRING_WRAP_ORDER'],
    ['addWrongLapTail', (b) => b.ring.addWrongLapTail(), 'VRING_WRAP_ORDER'],
    ['addWrongLapTail across the ring end', (b) => b.ring.addWrongLapTail(), 'VRING_WRAP_ORDER', { start: packedPos(7, 1) }],
    ['addUsedMarker', (b) => b.ring.addUsedMarker(), 'VRING_BAD_DESC_FLAGS'],
    ['addIdOutOfRange', (b) => b.ring.addIdOutOfRange(), 'VRING_HEAD_OUT_OF_RANGE'],
    ['an id offered again while in flight', (b) => (b.ring.addChain([{ len: 4 }], { id: 3 }), b.q.pop(), b.ring.addChain([{ len: 4 }], { id: 3 })), 'VRING_HEAD_IN_FLIGHT'],
    [
      'more slots held than the ring has',
      (b) => {
        for (let i = 0; i < 8; i++) b.ring.addChain([{ len: 4 }]);
        b.q.popBurst(8, []);
        b.q.addUsed(0, 0); // staged: id 0 is done, but no slot is the driver's again before flush()
        b.ring.addChain([{ len: 4 }], { id: 0 }); // slot 0 again, in the next lap
      },
      'VRING_TOO_MANY_IN_FLIGHT',
    ],
    ['addReadAfterWrite', (b) => b.ring.addReadAfterWrite(), 'VRING_READ_AFTER_WRITE'],
    ['addReadAfterWrite (indirect)', (b) => b.ring.addReadAfterWrite({ indirect: true }), 'VRING_READ_AFTER_WRITE'],
    ['zero-length buffer', (b) => b.ring.addChain([{ len: 0 }]), 'VRING_ZERO_LEN'],
    ['buffer past the end', (b) => b.ring.addChain([{ addr: GPA + SIZE - 4, len: 8 }]), 'VRING_UNMAPPED'],
    ['addr + len wraps 2^64', (b) => b.ring.addChain([{ addr: wrappingAddr(64), len: 64 }]), 'VRING_ADDR_WRAP'],
    ['addIndirectWithNext', (b) => b.ring.addIndirectWithNext(), 'VRING_INDIRECT_WITH_NEXT'],
    ['addIndirectNotHead', (b) => b.ring.addIndirectNotHead(), 'VRING_INDIRECT_NOT_HEAD'],
    ['addNestedIndirect', (b) => b.ring.addNestedIndirect(), 'VRING_INDIRECT_NESTED'],
    ['addIndirectBadLength(0)', (b) => b.ring.addIndirectBadLength(0), 'VRING_INDIRECT_BAD_LEN'],
    ['addIndirectBadLength(24)', (b) => b.ring.addIndirectBadLength(24), 'VRING_INDIRECT_BAD_LEN'],
    ['addIndirectRef to an unmapped table', (b) => b.ring.addIndirectRef({ addr: GPA + SIZE - PACKED_DESC_SIZE, len: 2 * PACKED_DESC_SIZE }), 'VRING_UNMAPPED'],
    ['addIndirectChain without INDIRECT_DESC', (b) => b.ring.addIndirectChain([{ len: 4 }]), 'VRING_INDIRECT_NOT_NEGOTIATED', { indirect: false }],
  ];
  for (const [name, build, code, q] of cases) {
    it(`${name} → ${code}`, () => {
      const b = bench(q?.start !== undefined ? { start: q.start } : {}, q ?? {});
      build(b);
      expect(() => b.q.pop()).toThrow(expect.objectContaining({ code }));
      expect(b.q.broken?.code).toBe(code);
    });
  }

  it('writes the bytes each recipe promises', () => {
    const { ring, mem } = bench({ size: 16 });
    const id1 = ring.addIndirectWithNext();
    expect(ring.readDesc(0)).toEqual({ len: PACKED_DESC_SIZE, id: id1, flags: I | N | A });
    expect(ring.readDesc(1)).toEqual({ len: 16, id: id1, flags: A });
    const id2 = ring.addIndirectNotHead();
    expect([ring.readDesc(2).flags, ring.readDesc(3).flags, ring.readDesc(3).id]).toEqual([N | A, I | A, id2]);
    ring.addNestedIndirect();
    const outer = ring.readAddr(4).addr;
    expect(mem.readU16(outer + PACKED_DESC_FLAGS)).toBe(I);
    ring.addIndirectBadLength(24);
    expect(ring.readDesc(5)).toMatchObject({ len: 24, flags: I | A });
    expect(mem.readU32(ring.readAddr(5).addr + PACKED_DESC_SIZE + PACKED_DESC_LEN)).toBe(16); // valid entries behind it
    ring.addWrongLapTail();
    expect([ring.readDesc(6).flags, ring.readDesc(7).flags]).toEqual([N | A, U]);
    ring.addUsedMarker();
    expect(ring.readDesc(8).flags).toBe(A | U);
    expect(ring.addIdOutOfRange()).toBe(16);
    expect(ring.readDesc(9).id).toBe(16);
    ring.addLongList(3);
    expect([10, 11, 12].map((s) => ring.readDesc(s).flags)).toEqual([N | A, N | A, N | A]);
    expect(ring.position).toBe(packedPos(13, 1));
    expect(() => ring.addLongList(17)).toThrow(RangeError); // it would overwrite its own head
  });
});

describe('used descriptors and event areas', () => {
  it('readUsed reads what the device completes, in the lap it is in', () => {
    const { ring, q } = bench({ size: 2 });
    for (let lap = 0; lap < 3; lap++) {
      const id = ring.addChain([{ len: 8, write: true }]);
      const pos = q.usedIdx;
      expect(ring.readUsed(pos)).toBeNull();
      q.addUsed(q.pop()!.head, 5);
      expect(ring.readUsed(pos)).toBeNull(); // staged: flags not written yet
      q.flush();
      expect(ring.readUsed(pos)).toEqual({ id, len: 5, write: true });
    }
  });

  it('writeUsed forges a device for driver tests: the driver takes it, or refuses an id it never handed over', () => {
    const buf = new ArrayBuffer(SIZE);
    const mem = new GuestMemory([{ gpa: GPA, size: SIZE, buffer: buf }]);
    const ring = PackedRingBuilder.layOut(mem, { size: 4, alloc: new Arena(GPA, GPA + SIZE) });
    const d = new PackedDriverQueue(mem, ring.config);
    d.init();
    const id = d.add([], [{ addr: ring.alloc(16), len: 16 }]);
    d.publish();
    ring.writeUsed(packedPos(0, 1), id, 9);
    expect(d.popUsed()).toBe(id);
    expect(d.lastUsedLen).toBe(9);
    d.add([], [{ addr: ring.alloc(16), len: 16 }]);
    d.publish();
    ring.writeUsed(packedPos(1, 1), 3, 0);
    expect(() => d.popUsed()).toThrow(expect.objectContaining({ code: 'VRING_USED_BAD_ID' }));
  });

  it('the driver event area steers the device’s interrupts (§2.8.14)', () => {
    const { ring, q, dv } = bench({}, { eventIdx: true });
    const complete = () => {
      ring.addChain([{ len: 4 }]);
      q.addUsed(q.pop()!.head, 0);
      q.flush();
      return q.needsNotification();
    };
    expect(complete()).toBe(true); // the first decision always signals
    ring.setDriverEvent(VRING_PACKED_EVENT_FLAG_DISABLE);
    expect(dv.getUint16(off(ring.layout.driver + EVENT_FLAGS), true)).toBe(VRING_PACKED_EVENT_FLAG_DISABLE);
    expect(complete()).toBe(false);
    ring.setDriverEvent(VRING_PACKED_EVENT_FLAG_DESC, packedPos(4, 1)); // slot 2 is next, 4 is two further
    expect(dv.getUint16(off(ring.layout.driver + EVENT_OFF_WRAP), true)).toBe(packedPos(4, 1));
    expect([complete(), complete(), complete()]).toEqual([false, false, true]);
    ring.setDriverEvent(VRING_PACKED_EVENT_FLAG_ENABLE);
    expect(ring.driverEvent).toEqual({ offWrap: 0, flags: VRING_PACKED_EVENT_FLAG_ENABLE });
    expect(complete()).toBe(true);
  });

  it('the device event area is what the device asks for, and a forged one steers a driver’s kicks', () => {
    const { ring, q, mem } = bench({}, { eventIdx: true });
    q.disableNotification();
    expect(ring.deviceEvent.flags).toBe(VRING_PACKED_EVENT_FLAG_DISABLE);
    q.enableNotification(packedPos(0, 1));
    expect(ring.deviceEvent).toEqual({ offWrap: packedPos(0, 1), flags: VRING_PACKED_EVENT_FLAG_DESC });
    // A driver on the same ring kicks as the forged structure says.
    const d = new PackedDriverQueue(mem, { ...ring.config, eventIdx: true });
    d.init();
    const b = ring.alloc(16);
    ring.setDeviceEvent(VRING_PACKED_EVENT_FLAG_DESC, packedPos(1, 1));
    d.add([{ addr: b, len: 4 }], []);
    d.publish();
    expect(d.needsKick()).toBe(false); // slot 0 published; slot 1 asked for
    d.add([{ addr: b, len: 4 }], []);
    d.publish();
    expect(d.needsKick()).toBe(true);
    ring.setDeviceEvent(VRING_PACKED_EVENT_FLAG_DISABLE);
    d.add([{ addr: b, len: 4 }], []);
    d.publish();
    expect(d.needsKick()).toBe(false);
  });
});
