/**
 * `npm run fuzz -- TARGET [SECONDS] [-- libFuzzer flags…]`: coverage-guided fuzzing of one target
 * (fuzz/targets/TARGET.ts) with jazzer.js over libFuzzer, for SECONDS (default 60).
 *
 *   npm run fuzz -- --list                     the targets
 *   npm run fuzz -- vring-split 600            ten minutes
 *   npm run fuzz -- ctrl 60 -- -runs=1000000   libFuzzer's own flags after --
 *   npm run fuzz -- ctrl 0 -- crash-…          replay one input (libFuzzer runs the files it is given)
 *   npm run fuzz -- ctrl --save                copy what runs found into the committed seeds
 *
 * Inputs start from the committed seeds (fuzz/corpus/TARGET) and what earlier runs found
 * (.cache/fuzz/TARGET/corpus, where new inputs go). A finding is written to .cache/fuzz/TARGET/ and
 * the run fails; the input goes to fuzz/regressions/TARGET/ once fixed (test/fuzz replays it).
 * The last line says how many inputs ran, and the figures go to .cache/fuzz/TARGET/last-run.json.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const here = import.meta.dirname;
const root = join(here, '..');

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { list: { type: 'boolean' }, save: { type: 'boolean' } },
});
const targets = readdirSync(join(here, 'targets')).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3)).sort();

if (values.list) {
  for (const t of targets) console.log(t);
  process.exit(0);
}
const dash = process.argv.indexOf('--');
const extra = dash >= 0 ? process.argv.slice(dash + 1) : [];
const [name, secondsText = '60'] = positionals.filter((p) => !extra.includes(p));
if (!name || !targets.includes(name)) {
  console.error(`usage: npm run fuzz -- TARGET [SECONDS] [-- libFuzzer flags]; TARGET is one of: ${targets.join(', ')}`);
  process.exit(2);
}
const seconds = Number(secondsText);
if (!Number.isInteger(seconds) || seconds < 0) {
  console.error(`SECONDS must be a whole number ≥ 0 (0: no limit), not '${secondsText}'`);
  process.exit(2);
}

const work = join(root, '.cache', 'fuzz', name);
const corpus = join(work, 'corpus');
const seeds = join(here, 'corpus', name);
mkdirSync(corpus, { recursive: true });
mkdirSync(seeds, { recursive: true });
const replay = extra.some((a) => !a.startsWith('-'));
if (values.save) {
  // libFuzzer names inputs by their SHA-1: a copy adds only what the seeds lack. (Its -merge=1 would
  // minimize, but it re-runs argv[0] as a child, which a Node process is not.)
  let added = 0;
  for (const f of readdirSync(corpus)) {
    if (!existsSync(join(seeds, f))) {
      copyFileSync(join(corpus, f), join(seeds, f));
      added++;
    }
  }
  console.log(`fuzz ${name}: ${added} inputs added; fuzz/corpus/${name} holds ${readdirSync(seeds).length}`);
  process.exit(0);
}
const dirs = replay ? [] : [corpus, seeds];
const args = [
  ...dirs,
  `-max_total_time=${seconds}`,
  `-artifact_prefix=${work}/`,
  '-print_final_stats=1',
  '-rss_limit_mb=4096',
  '-timeout=20',
  ...extra,
];

const t0 = performance.now();
const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', join(here, 'fuzz-one.ts'), name, ...args], {
  cwd: root,
  stdio: ['ignore', 'inherit', 'pipe'],
});
let tail = '';
child.stderr.on('data', (b: Buffer) => {
  process.stderr.write(b);
  tail = (tail + b.toString()).slice(-16_384);
});
const code: number = await new Promise((resolve) => child.on('close', (c, sig) => resolve(c ?? (sig ? 128 : 1))));
const wall = (performance.now() - t0) / 1000;

const stat = (key: string): number | null => {
  const m = new RegExp(`stat::${key}:\\s+(\\d+)`).exec(tail);
  return m ? Number(m[1]) : null;
};
const last = [...tail.matchAll(/cov: (\d+) ft: (\d+) corp: (\d+)/g)].at(-1);
const artifact = /Test unit written to (\S+)/.exec(tail)?.[1] ?? null;
const result = {
  target: name,
  date: new Date().toISOString(),
  seconds: Math.round(wall),
  executions: stat('number_of_executed_units'),
  execPerSec: stat('average_exec_per_sec'),
  coverage: last ? Number(last[1]) : null,
  features: last ? Number(last[2]) : null,
  corpus: last ? Number(last[3]) : null,
  peakRssMb: stat('peak_rss_mb'),
  exitCode: code,
  artifact,
};
if (!replay) writeFileSync(join(work, 'last-run.json'), JSON.stringify(result, null, 2) + '\n');
if (code !== 0) {
  console.error(`fuzz ${name}: FAILED (exit ${code})${artifact ? `; the input is ${artifact}. Fix it, then copy it to fuzz/regressions/${name}/` : ''}`);
  process.exit(1);
}
console.log(`fuzz ${name}: ${result.executions} executions in ${result.seconds} s (${result.execPerSec}/s), coverage ${result.coverage} edges, ${result.features} features, corpus ${result.corpus}; no finding`);
