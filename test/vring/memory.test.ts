// GuestMemory and PieceList: region-table validation, translation across regions, holes, wrap-around,
// frontend addresses, and the bounds-checked helpers. Plus the ring layout arithmetic.

import { describe, expect, it } from 'vitest';
import { DescriptorError, GuestMemory, MemoryError, PieceList, SplitQueue, ringUaddrToGpa, splitRingLayout, availAreaSize, usedAreaSize } from '../../vring/index.ts';

const buf = (n: number): ArrayBuffer => new ArrayBuffer(n);

describe('region table validation', () => {
  const bad: [string, () => GuestMemory][] = [
    ['no regions', () => new GuestMemory([])],
    ['zero size', () => new GuestMemory([{ gpa: 0, size: 0, buffer: buf(16) }])],
    ['outside its buffer', () => new GuestMemory([{ gpa: 0, size: 32, buffer: buf(16) }])],
    ['offset outside its buffer', () => new GuestMemory([{ gpa: 0, size: 16, buffer: buf(16), bufferOffset: 1 }])],
    ['gpa overflow', () => new GuestMemory([{ gpa: 2 ** 53 - 8, size: 16, buffer: buf(16) }])],
    ['gpa overlap', () => new GuestMemory([{ gpa: 0, size: 16, buffer: buf(16) }, { gpa: 8, size: 16, buffer: buf(16) }])],
    ['uaddr overlap', () => new GuestMemory([{ gpa: 0, size: 16, buffer: buf(16), uaddr: 100 }, { gpa: 64, size: 16, buffer: buf(16), uaddr: 108 }])],
    ['non-integer gpa', () => new GuestMemory([{ gpa: 0.5, size: 16, buffer: buf(16) }])],
  ];
  for (const [name, f] of bad) {
    it(`rejects ${name}`, () => {
      expect(f).toThrow(MemoryError);
      expect(f).toThrow(expect.objectContaining({ code: 'VRING_BAD_REGION' }));
    });
  }

  it('sorts regions by gpa', () => {
    const m = new GuestMemory([{ gpa: 0x2000, size: 16, buffer: buf(16) }, { gpa: 0x1000, size: 16, buffer: buf(16) }]);
    expect(m.regions.map((r) => r.gpa)).toEqual([0x1000, 0x2000]);
  });
});

describe('translate', () => {
  const b = buf(0x3000);
  const m = new GuestMemory([
    { gpa: 0x1000, size: 0x1000, buffer: b },
    { gpa: 0x2000, size: 0x1000, buffer: b, bufferOffset: 0x1000 },
    { gpa: 0x4000, size: 0x1000, buffer: b, bufferOffset: 0x2000 },
  ]);

  it('splits a range across adjacent regions into pieces', () => {
    const p = new PieceList(4);
    m.translate(0x1ff0, 0x20, p);
    expect(p.count).toBe(2);
    expect([p.region[0], p.offset[0], p.length[0]]).toEqual([0, 0xff0, 0x10]);
    expect([p.region[1], p.offset[1], p.length[1]]).toEqual([1, 0, 0x10]);
  });

  it('rejects bytes in a hole, below and above memory', () => {
    const p = new PieceList(4);
    expect(() => m.translate(0x2ff0, 0x20, p)).toThrow(expect.objectContaining({ code: 'VRING_UNMAPPED' }));
    expect(() => m.translate(0x0, 0x10, p)).toThrow(expect.objectContaining({ code: 'VRING_UNMAPPED' }));
    expect(() => m.translate(0x4ff0, 0x11, p)).toThrow(expect.objectContaining({ code: 'VRING_UNMAPPED' }));
    expect(() => m.translate(2 ** 53 - 1, 2, p)).toThrow(expect.objectContaining({ code: 'VRING_ADDR_WRAP' }));
  });

  it('caps the piece list and grows it up to its cap', () => {
    const p = new PieceList(1, 2);
    m.translate(0x1ff0, 0x20, p);
    expect(p.capacity).toBe(2);
    expect(() => m.translate(0x1000, 0x10, p)).toThrow(DescriptorError);
  });

  it('copies across regions with the helpers and checks bounds', () => {
    m.write(0x1ffe, Uint8Array.from([1, 2, 3, 4]));
    expect(m.readU32(0x1ffe)).toBe(0x04030201);
    m.writeU64(0x4000, 2 ** 40 + 5);
    expect(m.readU64(0x4000)).toBe(2 ** 40 + 5);
    expect(() => m.readU16(0x2fff)).toThrow(MemoryError);
    expect(m.isMapped(0x1000, 0x2000)).toBe(true);
    expect(m.isMapped(0x1000, 0x2001)).toBe(false);
  });

  it('translates frontend virtual addresses', () => {
    const mm = new GuestMemory([{ gpa: 0x1000, size: 0x1000, buffer: b, uaddr: 0x7f00_0000_0000 }]);
    expect(mm.uaddrToGpa(0x7f00_0000_0010, 16)).toBe(0x1010);
    expect(() => mm.uaddrToGpa(0x7f00_0000_0ff8, 16)).toThrow(MemoryError);
    expect(() => mm.uaddrToGpa(0x10, 16)).toThrow(MemoryError);
  });
});

describe('layout', () => {
  it('lays out the legacy contiguous ring', () => {
    const L = splitRingLayout(256, 0x10000);
    expect(L).toEqual({ desc: 0x10000, avail: 0x11000, used: 0x12000, end: 0x12000 + usedAreaSize(256) });
    expect(availAreaSize(256)).toBe(518);
    expect(usedAreaSize(256)).toBe(2054);
    expect(splitRingLayout(4, 0, 4)).toEqual({ desc: 0, avail: 64, used: 80, end: 80 + 38 });
  });
});

describe('GuestMemory.addressMap', () => {
  const regions = [
    { gpa: 0, size: 0x10_0000, uaddr: 0x7f00_0000_0000, mappingId: 1, mappingOffset: 0 },
    { gpa: 0x100_0000, size: 0x10_0000, uaddr: 0x7f00_1000_0000, mappingId: 2, mappingOffset: 0 },
  ];

  it('translates and checks ring addresses as a GuestMemory over the same regions does, without any bytes', () => {
    const map = GuestMemory.addressMap(regions);
    const full = new GuestMemory(regions.map((r) => ({ ...r, buffer: new ArrayBuffer(r.size) })));
    expect(map.hasBytes).toBe(false);
    expect(full.hasBytes).toBe(true);
    const L = splitRingLayout(256, 0x100_1000);
    const uaddr = { desc: 0x7f00_1000_1000, avail: 0x7f00_1000_1000 + (L.avail - L.desc), used: 0x7f00_1000_1000 + (L.used - L.desc) };
    expect(ringUaddrToGpa(map, 256, uaddr)).toEqual(ringUaddrToGpa(full, 256, uaddr));
    expect(() => ringUaddrToGpa(map, 256, { ...uaddr, used: 0x7f00_0fff_fff0 })).toThrow();
    expect(map.uaddrToGpa(0x7f00_0000_0010, 16)).toBe(0x10);
    expect(() => map.uaddrToGpa(0x7f00_0000_0000 + 0x10_0000 - 8, 16)).toThrow(MemoryError);
  });

  it('validates as the constructor does, and a queue refuses to attach to it', () => {
    expect(() => GuestMemory.addressMap([])).toThrow(MemoryError);
    expect(() => GuestMemory.addressMap([regions[0]!, { ...regions[1]!, gpa: 0x8_0000 }])).toThrow(MemoryError);
    const L = splitRingLayout(8, 0x1000);
    const q = new SplitQueue({ size: 8, desc: L.desc, avail: L.avail, used: L.used });
    expect(() => q.attach(GuestMemory.addressMap(regions))).toThrow(/address map/);
    // The next GuestMemory built is a whole one again.
    expect(new GuestMemory([{ gpa: 0, size: 4096, buffer: new ArrayBuffer(4096) }]).hasBytes).toBe(true);
  });
});
