// Regression: descriptor loops (CVE-2019-9547 class, and QEMU's "Looped descriptor"). A chain whose
// `next` fields form a cycle — directly, through a long cycle, or inside an indirect table — must stop
// with VRING_DESC_LOOP after at most `size` (or table-entry-count) descriptors, not spin.

import { describe, expect, it } from 'vitest';
import { DescriptorError, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT } from '../../vring/index.ts';
import { expectBreaks, makeRig, offerHead, rawDesc } from './helpers.ts';

describe('regression-desc-loop', () => {
  for (const size of [1, 2, 256, 32768]) {
    it(`a self-loop and a full-table cycle stop at the TTL (size ${size})`, () => {
      const r = makeRig({ size, maxPieces: 1 << 16 });
      const b = r.alloc(16);
      for (let i = 0; i < size; i++) rawDesc(r.mem, r.layout.desc, i, b, 16, VRING_DESC_F_NEXT, (i + 1) % size);
      offerHead(r, size - 1);
      const t0 = performance.now();
      expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
      expect(performance.now() - t0).toBeLessThan(500);
    });
  }

  it('a cycle inside a maximal indirect table stops at its entry count', () => {
    const r = makeRig({ size: 16, maxPieces: 1 << 16 });
    const entries = 4096;
    const t = r.alloc(entries * 16);
    const b = r.alloc(16);
    for (let i = 0; i < entries; i++) rawDesc(r.mem, t, i, b, 1, VRING_DESC_F_NEXT, (i + 1) % entries);
    rawDesc(r.mem, r.layout.desc, 0, t, entries * 16, VRING_DESC_F_INDIRECT, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
  });
});
