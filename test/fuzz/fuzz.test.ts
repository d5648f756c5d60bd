/**
 * The coverage-guided fuzz targets (fuzz/targets/) in CI:
 *   - every committed seed and every regression input (fuzz/regressions/TARGET/, one file per
 *     finding once fixed) runs through its target here, without libFuzzer: a finding stays fixed;
 *   - each target runs briefly under libFuzzer (`npm run fuzz -- TARGET 4`), instrumented: it must
 *     execute inputs, gain coverage and end without a finding.
 * Long runs are `npm run fuzz -- TARGET SECONDS`; docs/SECURITY.md has their figures.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import type { FuzzTarget } from '../../fuzz/target.ts';

const root = join(import.meta.dirname, '..', '..');
const targets = readdirSync(join(root, 'fuzz', 'targets')).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3)).sort();
const inputs = (dir: string): string[] => (existsSync(dir) ? readdirSync(dir).map((f) => join(dir, f)) : []);

describe.each(targets)('fuzz target %s', (name) => {
  let target: FuzzTarget | undefined;
  afterAll(async () => {
    await target?.close?.();
  });

  it('replays its seed corpus and regression inputs without a finding', async () => {
    target = ((await import(`../../fuzz/targets/${name}.ts`)) as { default: FuzzTarget }).default;
    const seeds = inputs(join(root, 'fuzz', 'corpus', name));
    const regressions = inputs(join(root, 'fuzz', 'regressions', name));
    expect(seeds.length, `fuzz/corpus/${name} holds the committed seeds`).toBeGreaterThan(0);
    for (const file of [...seeds, ...regressions]) {
      const data = readFileSync(file);
      try {
        await target.run(data);
      } catch (e) {
        throw new Error(`${file}: ${(e as Error).message}`, { cause: e });
      }
    }
  }, 120_000);

  it('runs under libFuzzer with coverage and finds nothing', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'fuzz', 'run.ts'), name, '4'], { cwd: root, encoding: 'utf8', timeout: 90_000 });
    const summary = r.stdout.trim().split('\n').at(-1) ?? '';
    expect(r.status, `${summary}\n${r.stderr.slice(-3000)}`).toBe(0);
    const m = /: (\d+) executions in (\d+) s .* coverage (\d+) edges/.exec(summary);
    expect(m, summary).not.toBeNull();
    console.log(summary);
    expect(Number(m![1]), 'inputs executed').toBeGreaterThan(50);
    expect(Number(m![3]), 'edges covered').toBeGreaterThan(20);
  }, 120_000);
});
