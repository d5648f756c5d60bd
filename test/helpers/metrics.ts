/**
 * Counter deltas, the way tests assert what a device did (Firecracker's check_metric_after_block):
 * read the counters, act, read again, and compare the change of each named counter exactly. Counters
 * not named may be required to stay put, so that a drop counted under the wrong reason fails.
 */
import { expect } from 'vitest';

/** The keys of R whose values are numbers (the counters of a metrics snapshot). */
export type NumericKeys<R> = { [P in keyof R]: R[P] extends number ? P : never }[keyof R] & string;

/**
 * Runs `action` and expects each counter in `delta` to have moved by exactly that much. Counters named
 * in `unchanged` must not move. Returns what the action returned.
 */
export async function expectMetricDelta<R extends object, T>(
  read: () => R,
  delta: Partial<Record<NumericKeys<R>, number>>,
  action: () => T | Promise<T>,
  opts: { unchanged?: readonly NumericKeys<R>[]; until?: { timeoutMs: number } } = {},
): Promise<T> {
  type K = NumericKeys<R>;
  const num = (r: R, n: K): number => (r as Record<K, number>)[n];
  const before = read();
  const result = await action();
  const names = [...Object.keys(delta), ...(opts.unchanged ?? [])] as K[];
  const diff = (): Record<string, number> => {
    const now = read();
    return Object.fromEntries(names.map((n) => [n, num(now, n) - num(before, n)]));
  };
  const want = Object.fromEntries(names.map((n) => [n, (delta[n] as number | undefined) ?? 0]));
  // Workers count on their own threads: with `until`, wait for the counters to settle on the target.
  const deadline = performance.now() + (opts.until?.timeoutMs ?? 0);
  let got = diff();
  while (JSON.stringify(got) !== JSON.stringify(want) && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
    got = diff();
  }
  expect(got).toEqual(want);
  return result;
}
