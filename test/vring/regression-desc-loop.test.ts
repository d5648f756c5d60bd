// Regression: descriptor loops (CVE-2019-9547 class, and QEMU's "Looped descriptor"). A chain whose
// `next` fields form a cycle — directly, through a long cycle, or inside an indirect table — must stop
// with VRING_DESC_LOOP after at most `size` (or table-entry-count) descriptors, not spin.

import { describe, expect, it } from 'vitest';
import { DescriptorError, VRING_DESC_F_NEXT } from '../../vring/index.ts';
import { expectBreaks, makeRig } from './helpers.ts';

describe('regression-desc-loop', () => {
  for (const size of [1, 2, 256, 32768]) {
    it(`a self-loop and a full-table cycle stop at the TTL (size ${size})`, () => {
      const r = makeRig({ size, maxPieces: 1 << 16 });
      // size-1 → 0 → 1 → … → size-2 → size-1: every descriptor of the table is on the cycle.
      const cycle = [size - 1, ...Array.from({ length: size - 1 }, (_, i) => i)];
      expect(r.ring.addDescLoop(cycle)).toBe(size - 1);
      for (let i = 0; i < size; i++) expect(r.ring.readDesc(i).next).toBe((i + 1) % size);
      const t0 = performance.now();
      expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
      expect(performance.now() - t0).toBeLessThan(500);
    });
  }

  it('a cycle inside a maximal indirect table stops at its entry count', () => {
    const r = makeRig({ size: 16, maxPieces: 1 << 16 });
    const head = r.ring.addIndirectLoop(4096);
    expect(r.ring.readDesc(head).len).toBe(4096 * 16);
    expect(r.ring.readDesc(head).flags & VRING_DESC_F_NEXT).toBe(0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
  });
});
