/**
 * Per-role stacking on a real kernel (child process: fixtures/stacked-worker.ts): the main thread's
 * enterJail puts the `main` filter on every thread; a worker started before it then stacks the
 * narrower `worker` filter on itself with enterWorkerJail. The worker keeps its data path (eventfd
 * round trips through native poll) and loses the control plane (memfd_create, eventfd creation),
 * which the main thread keeps. An error thrown inside the jailed worker is reported, not fatal.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { fixture, JailChild } from './child.ts';

const supported = process.arch === 'x64' && process.getuid?.() === 0;
let child: JailChild;

describe.runIf(supported)('a stacked worker filter', () => {
  beforeAll(async () => {
    child = new JailChild(fixture('stacked-worker.ts'), [JSON.stringify({ user: 'nobody', group: 'nogroup' })]);
    const ready = await child.next(30_000);
    expect(ready.ev, child.stderr.join('')).toBe('ready');
    expect(ready.jail.sandboxed).toBe(true);
  }, 40_000);
  afterAll(async () => {
    child?.kill();
    await child?.exit;
  });

  it('the worker stacks its filter after the main jail', async () => {
    const r = await child.next();
    expect(r).toMatchObject({ ev: 'worker-jailed', ok: true, role: 'worker', arch: 'x86_64' });
    expect(r.instructions).toBeGreaterThan(10);
  });

  it('/proc: every thread runs the main filter; exactly one (the worker) runs two', () => {
    const tasks = child.tasks();
    for (const t of tasks) expect(t['Seccomp'], `task ${t['tid']}`).toBe('2');
    const counts = tasks.map((t) => Number(t['Seccomp_filters']));
    expect(counts.filter((c) => c === 2)).toHaveLength(1);
    expect(counts.filter((c) => c === 1).length).toBe(tasks.length - 1);
  });

  it('eventfd round trips across the threads still work', async () => {
    expect(await child.cmd('roundtrip 200')).toEqual({ ev: 'roundtrip', done: 200 });
  });

  it('the worker loses the control plane; the main thread keeps it', async () => {
    expect(await child.cmd('worker-try memfd')).toMatchObject({ ok: false, code: 'EPERM', syscall: 'memfd_create' });
    expect(await child.cmd('worker-try eventfd')).toMatchObject({ ok: false, code: 'EPERM' });
    expect(await child.cmd('main-try memfd')).toMatchObject({ ok: true });
    expect(await child.cmd('main-try eventfd')).toMatchObject({ ok: true });
  });

  it('an error thrown in the jailed worker is reported and the worker keeps serving', async () => {
    expect(await child.cmd('worker-try throw')).toMatchObject({ ok: false, name: 'RangeError' });
    expect(await child.cmd('roundtrip 50')).toEqual({ ev: 'roundtrip', done: 50 });
  });

  it('stops cleanly inside the jail', async () => {
    expect(await child.cmd('quit'), child.stderr.join('')).toEqual({ ev: 'bye' });
    expect(await child.exit, child.stderr.join('')).toEqual({ code: 0, signal: null });
  });
});
