/**
 * Hardening primitives, each applied inside a child process (never to the test runner): no_new_privs,
 * a seccomp filter synchronized to every thread, rlimits, chroot and the uid/gid drop.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { getrlimit, NativeError, seccompInstall, setrlimit } from '../../native/index.ts';

const child = fileURLToPath(new URL('./children/harden.ts', import.meta.url));
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function run(...args: string[]): Record<string, any> {
  const r = spawnSync(process.execPath, ['--import', 'tsx', child, ...args], { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`child ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, any>;
}

describe('hardening (in child processes)', () => {
  it('setNotDumpable: a same-uid process without capabilities can read /proc/<pid>/environ before, not after (no same-uid ptrace or /proc/<pid>/mem)', () => {
    // The child keeps this uid, so it reads the checkout wherever it is (a 0700 directory included),
    // but runs without capabilities: as root, setpriv empties its bounding set before node starts.
    const node = [process.execPath, '--import', 'tsx', child, 'dumpable'];
    const argv = process.getuid?.() === 0 ? ['setpriv', '--inh-caps=-all', '--bounding-set=-all', '--', ...node] : node;
    const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 20_000 });
    expect(r.error, 'setpriv (util-linux) starts the child without capabilities').toBeUndefined();
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ capEff: '0000000000000000', before: 'read', after: 'EACCES' });
  });

  it('setNoNewPrivs shows NoNewPrivs: 1', () => {
    expect(run('nnp')).toEqual({ before: '0', after: '1' });
  });

  it.runIf(process.arch === 'x64' || process.arch === 'arm64')(
    'seccompInstall with TSYNC: uname fails with EPERM on every thread, Seccomp: 2',
    () => {
      const r = run('seccomp');
      expect(r.unameBefore).toBe(true);
      expect(r.seccompBefore).toBe('0');
      expect(r.seccompAfter).toBe('2');
      expect(r.threads.length).toBeGreaterThan(1); // Node has helper threads; TSYNC covered them
      expect(new Set(r.threads)).toEqual(new Set(['2']));
      expect(r.uname).toMatch(/EPERM|operation not permitted/i);
      expect(r.badFilter).toMatchObject({ native: true, code: 'EINVAL', syscall: 'seccomp' });
    },
  );

  it('setrlimit/getrlimit round trip, Infinity for unlimited', () => {
    const r = run('rlimit');
    expect(r.initialFsize).toEqual({ soft: null, hard: null }); // JSON turns Infinity into null
    expect(r.core).toEqual({ soft: 0, hard: 0 });
    expect(r.nofile).toEqual({ soft: 256, hard: 512 });
    expect(r.fsize).toEqual({ soft: 1 << 30, hard: null });
    expect(r.softAboveHard).toMatchObject({ native: true, code: 'EINVAL', syscall: 'setrlimit' });
  });

  it.runIf(process.getuid?.() === 0)('chroot confines the child to a directory', () => {
    const root = mkdtempSync(join(tmpdir(), 'lgnet-jail-'));
    dirs.push(root);
    mkdirSync(join(root, 'empty'));
    chmodSync(root, 0o755);
    expect(run('chroot', root)).toEqual({ inside: true, outside: false });
  });

  it.runIf(process.getuid?.() === 0)('setgroups, setresgid, setresuid drop every thread for good', () => {
    const r = run('ids');
    expect(r.uid).toMatch(/^65534\s+65534\s+65534\s+65534$/);
    expect(r.gid).toMatch(/^65534\s+65534\s+65534\s+65534$/);
    expect(r.groups).toBe('');
    expect(new Set(r.taskUids.map((u: string) => u.split(/\s+/)[0]))).toEqual(new Set(['65534']));
    expect(r.regain).toMatchObject({ native: true, code: 'EPERM', syscall: 'setresuid' });
  });

  it('argument checks happen in TypeScript, in this process, without applying anything', () => {
    expect(() => seccompInstall(new Uint8Array(7))).toThrow(RangeError);
    expect(() => seccompInstall(new Uint8Array(0))).toThrow(RangeError);
    expect(() => setrlimit('core', -1, 0)).toThrow(RangeError);
    expect(() => setrlimit('bogus' as never, 0, 0)).toThrow(RangeError);
    expect(getrlimit('nofile').soft).toBeGreaterThan(0);
    expect(NativeError).toBeTypeOf('function');
  });
});
