/**
 * The shape of the library, checked on its sources: no import circle (type-only imports included),
 * and dependencies that point the way docs/ARCHITECTURE.md draws them (vring/ imports neither native/
 * nor node:, device/ does not import sandbox/, errors/ imports nothing, only native/ loads the addon).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const LIBRARY = ['index.ts', 'errors', 'native', 'vring', 'device', 'sandbox', 'harness'];

function sources(path: string): string[] {
  const abs = join(ROOT, path);
  if (statSync(abs).isFile()) return [path];
  return readdirSync(abs).flatMap((n) => (n.endsWith('.ts') || statSync(join(abs, n)).isDirectory() ? sources(join(path, n)) : []));
}

/** file → the files and packages it imports (statements only; comments are not code). */
function graph(): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const file of LIBRARY.flatMap(sources)) {
    const text = readFileSync(join(ROOT, file), 'utf8');
    const deps: string[] = [];
    for (const m of text.matchAll(/^(?:import|export)\s[^;]*?['"]([^'"]+)['"]/gm)) {
      const spec = m[1]!;
      deps.push(spec.startsWith('.') ? relative(ROOT, normalize(join(ROOT, dirname(file), spec))) : spec);
    }
    g.set(file, deps);
  }
  return g;
}

describe('the library\'s imports', () => {
  const g = graph();

  it('read every layer', () => {
    for (const layer of LIBRARY) expect([...g.keys()].some((f) => f === layer || f.startsWith(`${layer}/`)), layer).toBe(true);
  });

  it('form no circle', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const path: string[] = [];
    const visit = (f: string): void => {
      state.set(f, 'open');
      path.push(f);
      for (const d of g.get(f) ?? []) {
        if (!g.has(d)) continue;
        if (state.get(d) === 'open') cycles.push([...path.slice(path.indexOf(d)), d].join(' → '));
        else if (!state.has(d)) visit(d);
      }
      path.pop();
      state.set(f, 'done');
    };
    for (const f of g.keys()) if (!state.has(f)) visit(f);
    expect(cycles).toEqual([]);
  });

  it('point one way: vring/ is pure, and only native/ loads the addon', () => {
    const offenders: string[] = [];
    for (const [file, deps] of g) {
      for (const d of deps) {
        if (file.startsWith('vring/') && (d.startsWith('native/') || d.startsWith('node:') || d.startsWith('device/') || d.startsWith('sandbox/'))) offenders.push(`${file} → ${d}`);
        if (d === 'native/load.ts' && !file.startsWith('native/')) offenders.push(`${file} → ${d}`);
        if (file.startsWith('device/') && d.startsWith('sandbox/')) offenders.push(`${file} → ${d}`);
        if (file.startsWith('errors/') && !d.startsWith('errors/')) offenders.push(`${file} → ${d}`);
      }
    }
    expect(offenders).toEqual([]);
  });
});
