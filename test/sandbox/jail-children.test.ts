/**
 * No process of ours runs outside the jail. Running from TypeScript sources with a cold transform
 * cache, tsx's loader keeps esbuild's service as a child process: unjailed, with the old uid, and
 * reachable through pipes the jailed process holds. enterJail ends it; and since libuv reaps it on
 * SIGCHLD, possibly after the filter is in place, wait4 stays allowed (denied, libuv aborts: before
 * this, such a process died of SIGABRT at exit about 4 times in 5). Any other child makes enterJail
 * refuse.
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
  it.each([1, 2, 3])('cold transform cache (run %i): the esbuild service is ended, the jailed process serves and exits cleanly', async () => {
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
    expect(ready.jail.endedChildren.length, 'tsx transformed modules, so an esbuild service was running').toBeGreaterThan(0);
    expect(ready.jail.steps[0]).toMatch(/^ended transpiler service pid \d+$/);
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
