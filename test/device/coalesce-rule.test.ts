/**
 * The coalescing rule (device/coalesce.ts) on a driven clock: the test says what time it is, so every
 * answer is exact and nothing sleeps.
 */
import { describe, expect, it } from 'vitest';
import { checkCoalesce, checkDeviceCoalesce, Coalescer, DEFAULT_COALESCE, MAX_BACKOFF, NOW, queueCoalesce } from '../../device/coalesce.ts';

/**
 * A queue (usecs 500) whose first hold bought nothing, that decided one busy completion at once for
 * it, and now holds again until 1100 with one completion pending.
 */
function holdingAgainAfterOneFruitless(): Coalescer {
  const r = new Coalescer({ usecs: 500, buffers: 32 });
  r.decided(0, 1, true);
  // Busy: held. Nothing joins it, and the driver still wants the interrupt at the deadline.
  expect(r.due(100, 1)).toBe(500);
  r.decided(500, 1, true);
  expect(r.backingOff).toBe(1);
  // Busy again, but backing off: at once, once; then a hold again.
  expect(r.due(600, 1)).toBe(NOW);
  r.decided(600, 1, true);
  expect(r.due(700, 1)).toBe(1_100);
  return r;
}

describe('Coalescer', () => {
  it('an idle queue decides at once, the first time and after a quiet spell of usecs', () => {
    const r = new Coalescer({ usecs: 500, buffers: 32 });
    expect(r.due(1_000, 1)).toBe(NOW);
    r.decided(1_000, 1, true);
    // Quiet for exactly usecs, then longer: both count as idle.
    expect(r.due(1_500, 1)).toBe(NOW);
    expect(r.due(9_000, 1)).toBe(NOW);
  });

  it('a busy queue holds until its last decision + usecs, and no longer', () => {
    const r = new Coalescer({ usecs: 500, buffers: 32 });
    r.decided(1_000, 1, true);
    expect(r.due(1_001, 1)).toBe(1_500);
    // Completions that come during the hold share its deadline: it does not move.
    expect(r.due(1_200, 5)).toBe(1_500);
    expect(r.due(1_499, 9)).toBe(1_500);
    expect(r.due(1_500, 9)).toBe(NOW);
    r.decided(1_500, 9, true); // 9 pending where the hold began with 1: it paid off
    // The next hold is counted from that decision: at most one interrupt per usecs while busy.
    expect(r.due(1_600, 1)).toBe(2_000);
  });

  it('enough used buffers pending end a hold at once', () => {
    const r = new Coalescer({ usecs: 500, buffers: 8 });
    r.decided(0, 1, true);
    expect(r.due(10, 7)).toBe(500);
    expect(r.due(10, 8)).toBe(NOW);
    expect(r.due(10, 200)).toBe(NOW);
  });

  it('usecs 0 turns it off: every decision at once', () => {
    const r = new Coalescer({ usecs: 0, buffers: 32 });
    expect(r.enabled).toBe(false);
    r.decided(100, 1, true);
    expect(r.due(100, 1)).toBe(NOW);
    expect(r.due(101, 1)).toBe(NOW);
  });

  it('a steady stream of one completion every 100 µs gets one interrupt per usecs', () => {
    const r = new Coalescer({ usecs: 500, buffers: 32 });
    let decisions = 0;
    let pending = 0;
    let heldUntil = 0;
    // Each step: a completion at t, then the worker would sleep; it decides when due says so or
    // when it wakes at the deadline (modelled by checking the deadline before the next completion).
    for (let t = 0; t < 100_000; t += 100) {
      if (heldUntil > 0 && t >= heldUntil) {
        r.decided(heldUntil, pending, true);
        decisions++;
        pending = 0;
        heldUntil = 0;
      }
      pending++;
      const at = r.due(t, pending);
      if (at === NOW) {
        r.decided(t, pending, true);
        decisions++;
        pending = 0;
        heldUntil = 0;
      } else {
        heldUntil = at;
      }
    }
    // 1000 completions over 100 ms: one decision per 500 µs, so 200 (±1 for the edges).
    expect(decisions).toBeGreaterThanOrEqual(199);
    expect(decisions).toBeLessThanOrEqual(201);
  });

  it('a hold that bought nothing backs off: the next busy completions are decided at once, 1, 2, 4 … of them', () => {
    const r = holdingAgainAfterOneFruitless();
    r.decided(1_100, 1, true); // fruitless again: 2 at once now
    expect(r.backingOff).toBe(2);
    for (const t of [1_200, 1_300]) {
      expect(r.due(t, 1)).toBe(NOW);
      r.decided(t, 1, true);
    }
    expect(r.due(1_400, 1)).toBe(1_800);
    r.decided(1_800, 1, true);
    expect(r.backingOff).toBe(4);
  });

  it('a hold that pays off (more completions joined it, or the driver stopped wanting it) ends the backoff', () => {
    for (const end of [{ pending: 3, wanted: true }, { pending: 1, wanted: false }]) {
      const r = holdingAgainAfterOneFruitless();
      r.decided(1_100, end.pending, end.wanted);
      expect(r.backingOff).toBe(0);
      // Holds again at once.
      expect(r.due(1_200, 1)).toBe(1_600);
    }
  });

  it('request/response: back-to-back exchanges pay a hold at most once per MAX_BACKOFF + 1 completions', () => {
    const usecs = 2000;
    const r = new Coalescer({ usecs, buffers: 64 });
    // Each exchange: one completion; the driver waits for its interrupt, then answers 300 µs later.
    let t = 0;
    let held = 0;
    let waited = 0;
    const n = 2000;
    for (let i = 0; i < n; i++) {
      const at = r.due(t, 1);
      const when = at === NOW ? t : at;
      if (at !== NOW) held++;
      waited += when - t;
      r.decided(when, 1, true);
      t = when + 300;
    }
    expect(held).toBeGreaterThan(0); // it keeps trying
    expect(held).toBeLessThanOrEqual(Math.ceil(n / (MAX_BACKOFF + 1)) + 7); // + the ramp 1, 2, 4 … 64
    // Without the backoff every exchange would wait ~usecs − 300 µs; with it, a few µs on average.
    expect(waited / n).toBeLessThan(usecs / 20);
  });

  it('checks its options', () => {
    expect(() => checkCoalesce({ usecs: -1, buffers: 32 })).toThrow(RangeError);
    expect(() => checkCoalesce({ usecs: 1.5, buffers: 32 })).toThrow(RangeError);
    expect(() => checkCoalesce({ usecs: 100_001, buffers: 32 })).toThrow(RangeError);
    expect(() => checkCoalesce({ usecs: 100, buffers: 0 })).toThrow(RangeError);
    expect(() => new Coalescer({ usecs: 100, buffers: Number.NaN })).toThrow(RangeError);
    expect(() => checkDeviceCoalesce({ rxUsecs: 0, txUsecs: -5, buffers: 8 })).toThrow(RangeError);
    expect(checkDeviceCoalesce({ ...DEFAULT_COALESCE })).toEqual(DEFAULT_COALESCE);
    expect(queueCoalesce({ rxUsecs: 10, txUsecs: 20, buffers: 8 }, 'tx')).toEqual({ usecs: 20, buffers: 8 });
    expect(queueCoalesce({ rxUsecs: 10, txUsecs: 20, buffers: 8 }, 'rx')).toEqual({ usecs: 10, buffers: 8 });
  });
});
