// Fuzz the device side of packed rings with random rings (packed-fuzz-case.ts): exactly 3000 seeded
// cases, not a time budget, so a failure names its seed and reproduces.

import { describe, expect, it } from 'vitest';
import { packedFuzzCase } from './packed-fuzz-case.ts';

describe('fuzz: random packed rings', () => {
  it('3000 seeds: valid chains or VringError, never anything else, never outside the regions', () => {
    const codes = new Map<string, number>();
    let chains = 0;
    let slowest = 0;
    for (let seed = 1; seed <= 3000; seed++) {
      const t0 = performance.now();
      let r;
      try {
        r = packedFuzzCase(seed);
      } catch (e) {
        throw new Error(`packed fuzz seed ${seed} failed: ${(e as Error).stack}`);
      }
      slowest = Math.max(slowest, performance.now() - t0);
      chains += r.chains;
      if (r.error) codes.set(r.error, (codes.get(r.error) ?? 0) + 1);
    }
    // The generator must reach both outcomes and a spread of rules, the packed ones included.
    expect(chains).toBeGreaterThan(3000);
    expect(codes.size).toBeGreaterThan(10);
    for (const code of ['VRING_WRAP_ORDER', 'VRING_BAD_DESC_FLAGS', 'VRING_HEAD_OUT_OF_RANGE', 'VRING_HEAD_IN_FLIGHT', 'VRING_INDIRECT_NOT_HEAD']) {
      expect(codes.get(code) ?? 0, code).toBeGreaterThan(0);
    }
    expect(slowest).toBeLessThan(1000);
  });
});
