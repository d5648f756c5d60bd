/**
 * No process of ours runs outside the jail: enterJail refuses while a child it was not told about
 * runs. The compiled `lgnet serve` starts none but its socket reaper (cli.test.ts). Processes that run
 * lgnet from source under tsx, as these fixtures do, end tsx's esbuild service themselves before the
 * jail (scripts/transpiler.ts); libuv then reaps it, possibly after the filter is in place, so wait4
 * stays allowed (denied, libuv aborts the process at exit).
 */
import { readFileSync } from 'node:fs';

import { afterEach, describe, expect, it } from 'vitest';

import { fixture, JailChild } from './child.ts';

const supported = process.arch === 'x64' && process.getuid?.() === 0;
const children: JailChild[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) {
    c.kill();
    await c.exit;
  }
});

/** Child pids of pid that are not zombies, from /proc. */
function liveChildrenOf(pid: number, tasks: Array<Record<string, string>>, read: (p: string) => string): number[] {
  const out: number[] = [];
  for (const t of tasks) {
    for (const c of read(`/proc/${pid}/task/${t['tid']}/children`).split(' ').filter(Boolean).map(Number)) {
      const stat = read(`/proc/${c}/stat`);
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state && state !== 'Z' && state !== 'X') out.push(c);
    }
  }
  return out;
}

describe.runIf(supported)('child processes and the jail', () => {
  it.each([1, 2])('cold transform cache (run %i): the fixture ends the esbuild service, the jailed process serves and exits cleanly', async () => {
    const read = (p: string): string => {
      try {
        return readFileSync(p, 'utf8');
      } catch {
        return '';
      }
    };
    const child = new JailChild(fixture('stacked-worker.ts'), [JSON.stringify({ user: 'nobody', group: 'nogroup' })], { TSX_DISABLE_CACHE: '1' });
    children.push(child);
    const ready = await child.next(30_000);
    expect(ready.ev, child.stderr.join('')).toBe('ready');
    expect(ready.jail.sandboxed).toBe(true);
    expect(ready.endedTranspiler.length, 'tsx transformed modules, so an esbuild service was running').toBeGreaterThan(0);
    expect((await child.next()).ev).toBe('worker-jailed');
    expect(liveChildrenOf(child.pid, child.tasks(), read)).toEqual([]);
    expect(await child.cmd('roundtrip 50')).toEqual({ ev: 'roundtrip', done: 50 });
    expect(await child.cmd('quit')).toEqual({ ev: 'bye' });
    expect(await child.exit, child.stderr.join('')).toEqual({ code: 0, signal: null });
  }, 40_000);

  it('any other live child process makes enterJail refuse, before anything is applied', async () => {
    const child = new JailChild(fixture('other-child.ts'), []);
    children.push(child);
    const r = await child.next(30_000);
    expect(r, child.stderr.join('')).toMatchObject({ ev: 'jail', ok: false, code: 'LGNET_JAIL_CHILDREN', step: 'children' });
    expect(r.message).toContain(`${r.sleeper} (sleep 30)`);
    expect(await child.exit, child.stderr.join('')).toEqual({ code: 0, signal: null });
  }, 40_000);
});
