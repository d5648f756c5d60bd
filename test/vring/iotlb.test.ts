// Behind an IOMMU: the IOTLB table itself, GuestMemory translating I/O virtual addresses through it, and
// both ring formats leaving a chain in the ring when its mapping is missing.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DriverQueue, GuestMemory, Iotlb, IotlbMiss, IOTLB_ACCESS, MemoryError, PackedDriverQueue, PackedQueue, PieceList, SplitQueue,
  packedRingLayout, splitRingLayout, VringErrorCode,
} from '../../vring/index.ts';

const GPA = 0x10_0000;
const SIZE = 1 << 20;
const UADDR = 0x7f12_3400_0000;
const { READ, WRITE, RW } = IOTLB_ACCESS;

function memories(): { buf: ArrayBuffer; driver: GuestMemory; device: GuestMemory; iotlb: Iotlb } {
  const buf = new ArrayBuffer(SIZE);
  const spec = { gpa: GPA, size: SIZE, buffer: buf, mappingId: 1, mappingOffset: 0, uaddr: UADDR };
  const iotlb = new Iotlb();
  const device = new GuestMemory([spec]);
  device.setIotlb(iotlb);
  return { buf, driver: new GuestMemory([spec]), device, iotlb };
}

describe('Iotlb', () => {
  it('looks up, checks permissions, replaces overlapping mappings and invalidates whole ones', () => {
    const t = new Iotlb();
    expect(() => t.lookup(0x1000, READ)).toThrow(IotlbMiss);
    expect(t.missIova).toBe(0x1000);
    expect(t.stalled).toBe(true);
    t.update(0x1000, 0x2000, UADDR + 0x5000, READ);
    expect(t.stalled).toBe(false); // the table moved: retry
    t.lookup(0x2fff, READ);
    expect(t.hitUaddr + (0x2fff - t.hitIova)).toBe(UADDR + 0x6fff);
    expect(() => t.lookup(0x1000, WRITE)).toThrow(expect.objectContaining({ code: VringErrorCode.IOMMU_DENIED }));
    expect(() => t.lookup(0x3000, READ)).toThrow(IotlbMiss);
    // An update over part of a mapping drops the whole old one.
    t.update(0x2000, 0x1000, UADDR, RW);
    expect(t.entries()).toEqual([{ iova: 0x2000, size: 0x1000, uaddr: UADDR, perm: RW }]);
    expect(() => t.lookup(0x1000, READ)).toThrow(IotlbMiss);
    t.update(0x8000, 0x1000, UADDR, WRITE);
    expect(t.invalidate(0x2800, 0x10)).toBe(1);
    expect(t.entries().map((e) => e.iova)).toEqual([0x8000]);
    t.clear();
    expect(t.size).toBe(0);
  });

  it('refuses updates that are empty, wrap, or carry a bad permission', () => {
    const t = new Iotlb();
    expect(() => t.update(0x1000, 0, UADDR, RW)).toThrow(RangeError);
    expect(() => t.update(2 ** 53 - 10, 0x1000, UADDR, RW)).toThrow(RangeError);
    expect(() => t.update(0x1000, 0x1000, UADDR, 0)).toThrow(RangeError);
    expect(() => t.update(0x1000, 0x1000, UADDR, 4)).toThrow(RangeError);
    expect(t.size).toBe(0);
  });

  it('empties itself when full rather than refusing the mapping', () => {
    const t = new Iotlb(new SharedArrayBuffer(16 + 32 * 2)); // 2 mappings
    expect(t.capacity).toBe(2);
    t.update(0x1000, 0x1000, UADDR, RW);
    t.update(0x2000, 0x1000, UADDR, RW);
    t.update(0x3000, 0x1000, UADDR, RW);
    expect(t.entries().map((e) => e.iova)).toEqual([0x3000]);
  });

  it('counts the changes that took mappings away (drops), not an answer that came twice', () => {
    const t = new Iotlb(new SharedArrayBuffer(16 + 32 * 3)); // 3 mappings
    let d = t.drops;
    const moved = (): boolean => {
      const now = t.drops;
      const m = now !== d;
      d = now;
      return m;
    };
    t.update(0x1000, 0x1000, UADDR, RW);
    expect(moved(), 'a new mapping').toBe(false);
    t.update(0x1000, 0x1000, UADDR, RW);
    expect(moved(), 'the same answer again').toBe(false);
    t.update(0x1000, 0x1000, UADDR + 0x1000, READ);
    expect(moved(), 'the same page, another answer: still mapped').toBe(false);
    t.update(0x1800, 0x1000, UADDR, RW);
    expect(moved(), 'an update over part of a mapping drops the rest of it').toBe(true);
    expect(t.invalidate(0x8000, 0x1000)).toBe(0);
    expect(moved(), 'an invalidation that drops nothing').toBe(false);
    expect(t.invalidate(0x1000, 0x1000)).toBe(1);
    expect(moved(), 'an invalidation that drops').toBe(true);
    t.update(0x4000, 0x1000, UADDR, RW);
    t.update(0x5000, 0x1000, UADDR, RW);
    t.update(0x6000, 0x1000, UADDR, RW);
    expect(moved()).toBe(false);
    t.update(0x7000, 0x1000, UADDR, RW); // full: emptied first
    expect(moved(), 'a full table that starts again').toBe(true);
    t.clear();
    expect(moved(), 'clear').toBe(true);
  });

  it('has() probes without leaving a hit behind; a miss records where its range ends', () => {
    const t = new Iotlb();
    t.update(0x1000, 0x1000, UADDR, RW);
    t.lookup(0x1000, READ);
    expect(t.has(0x5000)).toBe(false);
    expect(t.has(0x1fff)).toBe(true);
    t.update(0x9000, 0x1000, UADDR + 0x9000, RW);
    expect(t.has(0x9000)).toBe(true);
    t.lookup(0x1800, READ); // a lookup after a probe finds its own mapping
    expect(t.hitUaddr).toBe(UADDR);
    const { device, iotlb } = memories();
    iotlb.update(0xa000, 0x1000, UADDR, RW);
    expect(() => device.translate(0xa800, 0x3000, new PieceList(4), READ)).toThrow(IotlbMiss);
    expect([iotlb.missIova, iotlb.missEnd]).toEqual([0xb000, 0xd800]);
  });

  it('property: against a model, lookups and has() agree with the mappings, and drops moves exactly when pages lost their mapping (updates) or at least then (all changes)', () => {
    type Op = { kind: 'update'; page: number; pages: number; perm: number } | { kind: 'invalidate'; page: number; pages: number } | { kind: 'clear' };
    const P = 0x1000;
    const opArb: fc.Arbitrary<Op> = fc.oneof(
      { weight: 6, arbitrary: fc.record({ kind: fc.constant('update' as const), page: fc.integer({ min: 0, max: 31 }), pages: fc.integer({ min: 1, max: 4 }), perm: fc.constantFrom(READ, WRITE, RW) }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant('invalidate' as const), page: fc.integer({ min: 0, max: 31 }), pages: fc.integer({ min: 1, max: 8 }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('clear' as const) }) },
    );
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), (ops) => {
        const t = new Iotlb(new SharedArrayBuffer(16 + 32 * 6)); // 6 mappings: full tables happen
        let model: Array<{ iova: number; size: number; uaddr: number; perm: number }> = [];
        const covered = (m: typeof model, a: number) => m.find((x) => a >= x.iova && a < x.iova + x.size);
        for (const op of ops) {
          const before = model;
          const d0 = t.drops;
          if (op.kind === 'update') {
            const iova = op.page * P;
            const size = op.pages * P;
            const uaddr = UADDR + op.page * 0x10_000;
            let keep = model.filter((x) => x.iova + x.size <= iova || x.iova >= iova + size);
            if (keep.length >= t.capacity) keep = [];
            model = [...keep, { iova, size, uaddr, perm: op.perm }].sort((a, b) => a.iova - b.iova);
            t.update(iova, size, uaddr, op.perm);
          } else if (op.kind === 'invalidate') {
            const iova = op.page * P;
            const size = op.pages * P;
            model = model.filter((x) => x.iova + x.size <= iova || x.iova >= iova + size);
            t.invalidate(iova, size);
          } else {
            model = [];
            t.clear();
          }
          expect(t.entries()).toEqual(model);
          let lost = false;
          for (let a = 0; a < 40 * P; a += P / 2) {
            const m = covered(model, a);
            if (covered(before, a) && !m) lost = true;
            expect(t.has(a)).toBe(m !== undefined);
            for (const access of [READ, WRITE]) {
              if (!m) {
                expect(() => t.lookup(a, access)).toThrow(IotlbMiss);
              } else if ((m.perm & access) !== access) {
                expect(() => t.lookup(a, access)).toThrow(MemoryError);
              } else {
                t.lookup(a, access);
                expect(t.hitUaddr + (a - t.hitIova)).toBe(m.uaddr + (a - m.iova));
              }
            }
          }
          const moved = t.drops !== d0;
          if (lost) expect(moved, `${JSON.stringify(op)} took mappings away`).toBe(true);
          if (op.kind === 'update') expect(moved, `${JSON.stringify(op)}: drops moves for an update only when pages lost their mapping`).toBe(lost);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('is shared: a second view over the same buffer sees the writer', () => {
    const a = new Iotlb();
    const b = new Iotlb(a.buffer);
    a.update(0x4000, 0x1000, UADDR, READ);
    b.lookup(0x4800, READ);
    expect(b.hitUaddr).toBe(UADDR);
    a.invalidate(0, 2 ** 40);
    expect(() => b.lookup(0x4800, READ)).toThrow(IotlbMiss); // the cached hit is not used past a change
  });
});

describe('GuestMemory behind an IOMMU', () => {
  it('translates through the IOTLB to the region holding each front-end address, piece by piece', () => {
    const { device, iotlb } = memories();
    // Two IOVA pages mapped to front-end pages out of order.
    iotlb.update(0xfee0_0000, 0x1000, UADDR + 0x9000, RW);
    iotlb.update(0xfee0_1000, 0x1000, UADDR + 0x3000, RW);
    const out = new PieceList(4);
    device.translate(0xfee0_0f00, 0x200, out, WRITE);
    expect(out.count).toBe(2);
    expect([out.offset[0], out.length[0], out.offset[1], out.length[1]]).toEqual([0x9f00, 0x100, 0x3000, 0x100]);
  });

  it('refuses a mapping whose front-end address lies outside guest memory', () => {
    const { device, iotlb } = memories();
    iotlb.update(0x1000, 0x1000, UADDR + SIZE, RW); // just past the region
    expect(() => device.translate(0x1000, 16, new PieceList(2), READ)).toThrow(MemoryError);
    iotlb.update(0x2000, 0x2000, UADDR + SIZE - 0x1000, RW); // straddles its end
    expect(() => device.translate(0x2000, 0x2000, new PieceList(4), READ)).toThrow(/in no memory region/);
  });

  it('translates a ring area to one contiguous front-end range, or refuses (Iotlb.toUaddr)', () => {
    const { iotlb } = memories();
    iotlb.update(0x10000, 0x1000, UADDR + 0x4000, RW);
    iotlb.update(0x11000, 0x1000, UADDR + 0x5000, RW);
    expect(iotlb.toUaddr(0x10800, 0x1000, READ)).toBe(UADDR + 0x4800);
    iotlb.update(0x11000, 0x1000, UADDR + 0x7000, RW);
    expect(() => iotlb.toUaddr(0x10800, 0x1000, READ)).toThrow(/not one contiguous/);
    expect(() => iotlb.toUaddr(0x11800, 0x1000, READ)).toThrow(IotlbMiss); // runs into a page not mapped yet
  });
});

describe('rings behind an IOMMU', () => {
  const IOVA = 0xc000_0000;
  const setups = {
    split: () => {
      const m = memories();
      const l = splitRingLayout(8, GPA);
      const d = new DriverQueue(m.driver, { size: 8, desc: l.desc, avail: l.avail, used: l.used });
      d.init(0);
      const q = new SplitQueue({ size: 8, desc: l.desc, avail: l.avail, used: l.used });
      q.attach(m.device);
      return { ...m, d, q, publish: () => d.publish() };
    },
    packed: () => {
      const m = memories();
      const l = packedRingLayout(8, GPA);
      const d = new PackedDriverQueue(m.driver, { size: 8, desc: l.desc, driver: l.driver, device: l.device });
      const q = new PackedQueue({ size: 8, desc: l.desc, driver: l.driver, device: l.device });
      q.attach(m.device);
      return { ...m, d, q, publish: () => d.publish() };
    },
  };

  for (const [format, setup] of Object.entries(setups)) {
    it(`${format}: a chain without its mapping stays in the ring; the update lets it pop`, () => {
      const r = setup();
      const data = new Uint8Array([1, 2, 3, 4]);
      r.driver.write(GPA + 0x8000, data);
      r.iotlb.update(IOVA, 0x1000, UADDR + 0x8000, READ);
      r.d.add([{ addr: IOVA, len: 4 }], []);
      r.d.add([], [{ addr: IOVA + 0x1000, len: 64 }]); // mapped later
      r.publish();
      const chains = [r.q.pop()!];
      expect(chains[0]!.readableLen).toBe(4);
      const got = new Uint8Array(4);
      chains[0]!.readBytes(0, got, 0, 4);
      expect(got).toEqual(data);
      expect(r.q.pop()).toBeNull(); // missing: not popped, the queue is not broken
      expect(r.iotlb.stalled).toBe(true);
      expect(r.iotlb.missIova).toBe(IOVA + 0x1000);
      expect(r.iotlb.missAccess).toBe(WRITE);
      expect(r.q.broken).toBeNull();
      r.iotlb.update(IOVA + 0x1000, 0x1000, UADDR + 0x2000, RW);
      const c = r.q.pop()!;
      expect(c.writableLen).toBe(64);
      expect(c.writeBytes(0, data, 0, 4)).toBe(true);
      expect(new Uint8Array(r.buf, 0x2000, 4)).toEqual(data); // where the mapping points, not at the IOVA
    });

    it(`${format}: a write through a read-only mapping breaks the queue (VRING_IOMMU_DENIED)`, () => {
      const r = setup();
      r.iotlb.update(IOVA, 0x1000, UADDR + 0x8000, READ);
      r.d.add([], [{ addr: IOVA, len: 64 }]);
      r.publish();
      expect(() => r.q.pop()).toThrow(expect.objectContaining({ code: VringErrorCode.IOMMU_DENIED }));
      expect(r.q.broken?.code).toBe(VringErrorCode.IOMMU_DENIED);
    });

    it(`${format}: a burst stops at the first chain that misses and keeps what it popped`, () => {
      const r = setup();
      r.iotlb.update(IOVA, 0x2000, UADDR + 0x8000, RW);
      r.d.add([{ addr: IOVA, len: 8 }], []);
      r.d.add([{ addr: IOVA + 0x1000, len: 8 }], []);
      r.d.add([{ addr: IOVA + 0x2000, len: 8 }], []);
      r.d.add([{ addr: IOVA, len: 8 }], []);
      r.publish();
      const out: never[] = [];
      expect(r.q.popBurst(8, out)).toBe(2);
      expect(r.q.inFlight).toBe(2);
      r.iotlb.update(IOVA + 0x2000, 0x1000, UADDR, READ);
      expect(r.q.popBurst(8, out)).toBe(2);
    });
  }
});
