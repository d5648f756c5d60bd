/**
 * scripts/harness-example.ts, the walk-through of docs/HARNESS.md, runs as a user would run it against
 * a real `lgnet serve` in the namespace it creates: a frame from the harness guest reaches the tap, a
 * frame written to the tap reaches the guest, and the back-end exits 0. Afterwards neither the
 * namespace nor the back-end is left behind; if the script failed to clean up, the test does it by
 * pid and name, and fails.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

import { netnsPrerequisites } from '../../harness/netns.ts';

const SCRIPT = fileURLToPath(new URL('../../scripts/harness-example.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const pre = netnsPrerequisites();

it.skipIf(!pre.ok)('the harness example drives lgnet serve: guest → tap, tap → guest, clean exit', async () => {
  const child = spawn(process.execPath, ['--import', 'tsx', SCRIPT], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const timer = setTimeout(() => killPid(child.pid, 'SIGKILL'), 60_000);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  clearTimeout(timer);

  const started = /^netns=(\S+) backend pid=(\d+) /m.exec(out);
  const nsName = started?.[1];
  const pid = started ? Number(started[2]) : undefined;
  const leftovers: string[] = [];
  if (pid !== undefined && existsSync(`/proc/${pid}`) && !isZombie(pid)) {
    leftovers.push(`back-end pid ${pid}`);
    killPid(pid, 'SIGKILL');
  }
  if (nsName !== undefined && spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').some((l) => l.split(' ')[0] === nsName)) {
    leftovers.push(`namespace ${nsName}`);
    spawnSync('ip', ['netns', 'del', nsName]);
  }

  expect(code, `${out}\n${err}`).toBe(0);
  expect(nsName).toMatch(/^lgex-[0-9a-f]{8}$/);
  expect(out).toMatch(/^negotiated features 0x[0-9a-f]+, protocol features 0x[0-9a-f]+$/m);
  expect(out).toContain('guest → tap: 34 bytes, payload "hello from the guest"');
  expect(out).toContain('tap → guest: 38 bytes after a 12-byte header, payload "hello from the namespace"');
  expect(out).toContain('backend exited: 0');
  expect(leftovers).toEqual([]);
}, 90_000);

function killPid(pid: number | undefined, sig: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** Exited but not yet reaped (state Z or X in /proc/<pid>/stat), or gone. */
function isZombie(pid: number): boolean {
  try {
    return /\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}
