// scripts/fuzz-vring.ts — `npm run fuzz:vring`: run the vring device-side fuzz case (test/vring/fuzz-case.ts)
// over many seeds. Bounded: stops after --cases (default 100,000) or --seconds (default 300). Prints
// cases/s, the outcome spread, the slowest case, and every failing seed (re-run one with --seed N).
//
// Usage: npm run fuzz:vring -- [--cases N] [--seconds S] [--start SEED] [--seed N]

import { fuzzCase } from '../test/vring/fuzz-case.ts';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

const single = arg('seed', -1);
if (single >= 0) {
  console.log(fuzzCase(single));
  process.exit(0);
}

const cases = arg('cases', 100_000);
const seconds = arg('seconds', 300);
const start = arg('start', Date.now() % 1_000_000_000);
const codes = new Map<string, number>();
const failures: { seed: number; error: string }[] = [];
let chains = 0;
let slowest = { seed: 0, ms: 0 };
const t0 = performance.now();
let n = 0;
for (; n < cases && performance.now() - t0 < seconds * 1000; n++) {
  const seed = start + n;
  const t = performance.now();
  try {
    const r = fuzzCase(seed);
    chains += r.chains;
    const k = r.error ?? 'ok';
    codes.set(k, (codes.get(k) ?? 0) + 1);
  } catch (e) {
    failures.push({ seed, error: String((e as Error).stack ?? e) });
    if (failures.length <= 5) console.error(`FAIL seed ${seed}: ${(e as Error).message}`);
  }
  const ms = performance.now() - t;
  if (ms > slowest.ms) slowest = { seed, ms };
}
const secs = (performance.now() - t0) / 1000;
console.log(`vring fuzz: ${n} cases from seed ${start} in ${secs.toFixed(1)} s = ${Math.round(n / secs)} cases/s, ${chains} chains popped`);
console.log(`slowest case: seed ${slowest.seed}, ${slowest.ms.toFixed(2)} ms`);
for (const [k, v] of [...codes.entries()].sort((a, b) => b[1] - a[1])) console.log(`  ${k.padEnd(32)} ${v}`);
if (failures.length > 0) {
  console.log(`${failures.length} FAILING seeds: ${failures.map((f) => f.seed).join(', ')}`);
  process.exit(1);
}
console.log('no failures');
