// Regression: guest addresses outside guest memory (CVE-2018-1059: vhost-user ring/buffer addresses not
// range-checked; CVE-2020-10725: descriptor ranges crossing the end of a region). Every byte of every
// buffer, ring and indirect table must be inside a region; ranges crossing into a hole or past the end,
// and huge or wrapping addresses, are refused before any byte is touched.

import { describe, expect, it } from 'vitest';
import { Arena, SplitRingBuilder } from '../../harness/rings.ts';
import { DESC_SIZE, GuestMemory, MemoryError, RingLayoutError, SplitQueue, VRING_DESC_F_NEXT, descAreaSize } from '../../vring/index.ts';
import { expectBreaks } from './helpers.ts';

function twoRegions(): { mem: GuestMemory; buf: ArrayBuffer; ring: SplitRingBuilder; q: SplitQueue } {
  // [0x0, 0x10000) and [0x20000, 0x30000), a hole between, all inside one buffer with a guard between.
  const buf = new ArrayBuffer(0x21000);
  const mem = new GuestMemory([
    { gpa: 0, size: 0x10000, buffer: buf },
    { gpa: 0x20000, size: 0x10000, buffer: buf, bufferOffset: 0x11000 },
  ]);
  const ring = SplitRingBuilder.layOut(mem, { size: 8, base: 0, alloc: new Arena(0x2000, 0x10000) });
  const q = new SplitQueue({ ...ring.config, indirect: true });
  q.attach(mem);
  return { mem, buf, ring, q };
}

describe('regression-unmapped-range', () => {
  const bad: [string, number, number][] = [
    ['ends one byte into the hole', 0x10000 - 16, 17],
    ['starts in the hole', 0x18000, 16],
    ['crosses the whole hole', 0xff00, 0x20000],
    ['runs past the end of memory', 0x2fff0, 32],
    ['starts beyond all memory', 0x1_0000_0000, 16],
  ];
  for (const [name, addr, len] of bad) {
    for (const dir of ['readable', 'writable'] as const) {
      it(`refuses a ${dir} buffer that ${name}`, () => {
        const { buf, ring, q } = twoRegions();
        const guard = new Uint8Array(buf, 0x10000, 0x1000).fill(0xee);
        ring.addChain([{ addr, len, write: dir === 'writable' }]);
        expectBreaks(q, () => q.pop(), MemoryError, 'VRING_UNMAPPED');
        expect(guard.every((x) => x === 0xee)).toBe(true);
      });
    }
  }

  it('refuses an indirect table that crosses into the hole', () => {
    const { ring, q } = twoRegions();
    // One valid entry at the end of region 0; the table claims two, the second would lie in the hole.
    const at = 0x10000 - DESC_SIZE;
    ring.writeTable(at, [{ addr: 0x8000, len: 4, flags: VRING_DESC_F_NEXT, next: 1 }]);
    ring.addIndirectRef({ addr: at, len: 2 * DESC_SIZE });
    expectBreaks(q, () => q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('refuses rings whose frontend address range leaves its region', () => {
    const buf = new ArrayBuffer(0x10000);
    const mem = new GuestMemory([{ gpa: 0x100000, size: 0x10000, buffer: buf, uaddr: 0x7f0000000000 }]);
    expect(() => mem.uaddrToGpa(0x7f0000000000 + 0xfff0, 0x20)).toThrow(MemoryError);
    // Half of the descriptor table lies past the end of the region.
    const q = new SplitQueue({ size: 256, desc: 0x100000 + 0x10000 - descAreaSize(256) / 2, avail: 0x100000, used: 0x100000 + 0x2000 });
    expectBreaks(q, () => q.attach(mem), RingLayoutError, 'VRING_RING_UNMAPPED');
  });
});
