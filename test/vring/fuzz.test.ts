// Fuzz the device side with random rings: only VringError, bounded work, pieces inside regions,
// guard bytes around every region untouched. scripts/fuzz-vring.ts runs the same case ≥ 100,000 times.

import { describe, expect, it } from 'vitest';
import { fuzzCase } from './fuzz-case.ts';

describe('fuzz: random rings', () => {
  it('3000 seeds: valid chains or VringError, never anything else, never outside the regions', () => {
    const codes = new Map<string, number>();
    let chains = 0;
    let slowest = 0;
    for (let seed = 1; seed <= 3000; seed++) {
      const t0 = performance.now();
      let r;
      try {
        r = fuzzCase(seed);
      } catch (e) {
        throw new Error(`fuzz seed ${seed} failed: ${(e as Error).stack}`);
      }
      slowest = Math.max(slowest, performance.now() - t0);
      chains += r.chains;
      if (r.error) codes.set(r.error, (codes.get(r.error) ?? 0) + 1);
    }
    // The generator must reach both outcomes and a spread of rules.
    expect(chains).toBeGreaterThan(1000);
    expect(codes.size).toBeGreaterThan(8);
    expect(slowest).toBeLessThan(1000);
  });
});
