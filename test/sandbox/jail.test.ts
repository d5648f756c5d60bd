/**
 * The jail on a real kernel, in child processes (test/sandbox/fixtures/jailed-device.ts): a NetDevice
 * serving a tap in a namespace this test creates, with its queue workers running, enters the jail;
 * then forbidden operations fail with EPERM (or ENOSYS for clone3), /proc shows the jail, and frames
 * keep flowing both ways afterwards.
 */
import { chmodSync, mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { buildRawsys, fixture, JailChild } from './child.ts';

const pre = netnsPrerequisites();
const x64 = process.arch === 'x64';
const EPERM = 1;
const ENOSYS = 38;

const children: JailChild[] = [];
const dirs: string[] = [];
let ns: Netns;
let rawsys: string | null = null;
let rawsysWhy = '';

async function start(jail: Record<string, unknown> | null): Promise<{ child: JailChild; ready: Record<string, any> }> {
  const args = ['--netns', ns.path, '--nsname', ns.name];
  if (jail) args.push('--jail', JSON.stringify(jail));
  if (rawsys) args.push('--rawsys', rawsys);
  const child = new JailChild(fixture('jailed-device.ts'), args);
  children.push(child);
  const ready = await child.next(30_000);
  if (ready.ev !== 'ready') throw new Error(`child did not start: ${JSON.stringify(ready)}\n${child.stderr.join('')}`);
  return { child, ready };
}

beforeAll(() => {
  if (!pre.ok) return;
  ns = createNetns('lgjail');
  const r = buildRawsys();
  rawsys = r.path;
  rawsysWhy = r.why;
});

afterAll(async () => {
  for (const c of children) c.kill();
  await Promise.all(children.map((c) => c.exit));
  destroyAllNetns();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.runIf(pre.ok && x64)('a jailed device process (nobody/nogroup, maxFds 256)', () => {
  let child: JailChild;
  let ready: Record<string, any>;

  beforeAll(async () => {
    ({ child, ready } = await start({ user: 'nobody', group: 'nogroup', maxFds: 256 }));
  }, 40_000);

  it('reports the steps in order', () => {
    expect(ready.jail.sandboxed).toBe(true);
    expect(ready.jail.steps.map((s: string) => s.split(' ')[0])).toEqual(['setgroups', 'setresgid', 'setresuid', 'rlimit', 'not', 'no_new_privs', 'seccomp']);
    expect(ready.jail.uid).toBe(65534);
    expect(ready.jail.gid).toBe(65534);
  });

  it('/proc shows NoNewPrivs 1, Seccomp 2 on every thread, the ids, no capabilities, no groups', () => {
    const s = child.status();
    expect(s['NoNewPrivs']).toBe('1');
    expect(s['Seccomp']).toBe('2');
    expect(Number(s['Seccomp_filters'])).toBeGreaterThanOrEqual(1);
    expect(s['Uid']!.split(/\s+/)).toEqual(['65534', '65534', '65534', '65534']);
    expect(s['Gid']!.split(/\s+/)).toEqual(['65534', '65534', '65534', '65534']);
    expect(s['Groups']).toBe('');
    expect(BigInt(`0x${s['CapEff']}`)).toBe(0n);
    expect(BigInt(`0x${s['CapPrm']}`)).toBe(0n);
    const tasks = child.tasks();
    expect(tasks.length).toBeGreaterThan(3); // main, V8 platform threads, two queue workers
    for (const t of tasks) {
      expect(t['Seccomp'], `task ${t['tid']} (${t['Name']})`).toBe('2');
      expect(t['NoNewPrivs']).toBe('1');
      expect(t['Uid']!.split(/\s+/)[0]).toBe('65534');
    }
  });

  it('rlimits are in force: no core dumps, 256 fds', async () => {
    const l = child.limits();
    expect(l['Max core file size']).toEqual(['0', '0']);
    expect(l['Max open files']).toEqual(['256', '256']);
    const seen = await child.cmd('limits');
    expect(seen).toMatchObject({ core: { soft: 0, hard: 0 }, nofile: { soft: 256, hard: 256 } });
  });

  it('frames flow both ways inside the jail', async () => {
    expect(await child.cmd('traffic 200')).toEqual({ ev: 'traffic', tx: 200, rx: 200 });
  });

  // What Node surfaces when an attacker with JS execution tries the obvious.
  it.each([
    ['node-spawnSync', 'EPERM'], // fork (clone without CLONE_THREAD) refused before execve is reached
    ['node-spawn', 'EPERM'],
    ['node-open-passwd-write', 'EPERM'],
    ['node-open-new-file-write', 'EPERM'],
    ['node-open-new-file-read', 'EPERM'], // O_RDONLY|O_CREAT
    ['node-open-passwd-read', 'EPERM'], // decision: no opens at all, read-only included (docs/SECURITY.md)
    ['node-readdir', 'EPERM'],
    ['node-tcp-connect', 'EPERM'], // socket(AF_INET) refused
  ])('%s fails with %s', async (op, code) => {
    const r = await child.cmd(`try ${op}`);
    expect(r).toMatchObject({ ev: 'try', op, ok: false, code, errno: EPERM });
  });

  it('a thread can still be created after the jail (clone3 → ENOSYS → clone with CLONE_THREAD)', async () => {
    expect(await child.cmd('try node-new-worker')).toMatchObject({ ok: true, detail: '42' });
  });

  describe('raw system calls (what the filter itself answers)', () => {
    it.for<[string, number]>([
      ['raw-execve', EPERM],
      ['raw-execveat', EPERM],
      ['raw-fork', EPERM],
      ['raw-vfork', EPERM],
      ['raw-clone-process', EPERM], // clone(SIGCHLD): a new process
      ['raw-clone-newns', EPERM],
      ['raw-clone3', ENOSYS], // so that glibc falls back to clone, whose flags are checked
      ['raw-ptrace-traceme', EPERM],
      ['raw-ptrace-attach-parent', EPERM],
      ['raw-process-vm-readv', EPERM],
      ['raw-socket-inet', EPERM],
      ['raw-socket-unix', EPERM],
      ['raw-socket-packet', EPERM],
      ['raw-socketpair', EPERM],
      ['raw-connect', EPERM],
      ['raw-openat-passwd-wronly', EPERM],
      ['raw-openat-passwd-rdwr', EPERM],
      ['raw-openat-new-creat-rdonly', EPERM],
      ['raw-openat-passwd-rdonly', EPERM],
      ['raw-open-passwd-rdonly', EPERM],
      ['raw-mount', EPERM],
      ['raw-bpf', EPERM],
      ['raw-keyctl', EPERM],
      ['raw-unshare', EPERM],
      ['raw-setns', EPERM],
      ['raw-chroot', EPERM],
      ['raw-setuid-0', EPERM],
      // With --user, seccomp lets TUNSETIFF through (to attach a deleted tap again: faults.test.ts);
      // the kernel decides, and refuses this one (a NULL ifreq: EFAULT; an attached fd gets EEXIST,
      // a tap nobody does not own EPERM).
      ['raw-ioctl-tunsetiff', 14],
      ['raw-ioctl-tiocsti', EPERM],
      ['raw-mmap-exec-shared', EPERM], // no executable shared/file mappings
      ['raw-kill-parent', EPERM],
      ['raw-seccomp-tsync', EPERM],
      ['raw-prctl-dumpable', EPERM],
    ])('%s → errno %i', async ([op, errno], ctx) => {
      // gcc and Node's headers come with scripts/install-deps.sh; without them, say so rather than pass.
      if (!rawsys) ctx.skip(`the raw-syscall helper could not be built: ${rawsysWhy}`);
      const r = await child.cmd(`try ${op}`);
      expect(r).toMatchObject({ ev: 'try', op, ok: false, errno });
    });

    it('allowed calls still work (getpid, memfd_create for inflight)', async (ctx) => {
      if (!rawsys) ctx.skip(`the raw-syscall helper could not be built: ${rawsysWhy}`);
      expect(await child.cmd('try raw-getpid')).toMatchObject({ ok: true, result: child.pid });
      expect(await child.cmd('try raw-memfd-create')).toMatchObject({ ok: true });
    });
  });

  it('after every attempt the process still serves traffic', async () => {
    expect(await child.cmd('ping')).toEqual({ ev: 'pong' });
    expect(await child.cmd('traffic 300')).toEqual({ ev: 'traffic', tx: 300, rx: 300 });
  });

  it('a worker that hits a broken ring inside the jail only reports; the other queue keeps serving', async () => {
    const r = await child.cmd('worker-error');
    expect(r.broken).toEqual([{ queue: 1, code: 'VRING_AVAIL_IDX_JUMP' }]);
    const m = await child.cmd('metrics');
    expect(m.queues.find((q: any) => q.index === 1).broken).toMatch(/VRING_AVAIL_IDX_JUMP/);
    expect(m.queues.find((q: any) => q.index === 0).broken).toBeNull();
    expect(await child.cmd('traffic 100 rx')).toEqual({ ev: 'traffic', tx: 0, rx: 100 });
    expect(child.status()['State']).not.toMatch(/zombie|dead/i);
    expect(await child.cmd('quit')).toEqual({ ev: 'bye' });
    // The loop ends on its own: no process.exit, no crash, no core.
    expect(await child.exit).toEqual({ code: 0, signal: null });
  });
});

describe.runIf(pre.ok && x64)('--chroot to an empty directory (as root, no --user)', () => {
  it('changes root, keeps serving, still denies', async () => {
    const root = mkdtempSync(join(tmpdir(), 'lgnet-chroot-'));
    dirs.push(root);
    chmodSync(root, 0o755);
    const warnings: string[] = [];
    const { child, ready } = await start({ chroot: root });
    expect(ready.jail.chroot).toBe(root);
    expect(ready.jail.steps[0]).toBe(`chroot ${root}`);
    expect(readlinkSync(`/proc/${child.pid}/root`)).toBe(root);
    expect(child.status()['Seccomp']).toBe('2');
    expect(child.limits()['Max open files']).toEqual(['1024', '1024']);
    expect(await child.cmd('traffic 100')).toEqual({ ev: 'traffic', tx: 100, rx: 100 });
    expect(await child.cmd('try node-open-passwd-read')).toMatchObject({ ok: false, code: 'EPERM' });
    expect(await child.cmd('quit')).toEqual({ ev: 'bye' });
    expect(await child.exit).toEqual({ code: 0, signal: null });
    // Root without --user is warned about (process.emitWarning → stderr).
    warnings.push(child.stderr.join(''));
    expect(warnings.join('')).toMatch(/LGNET_JAIL_ROOT|keeps root/);
  }, 60_000);
});

describe.runIf(pre.ok && x64)('jail failures are typed errors, not exits', () => {
  it('an unknown user is LGNET_JAIL_USER before anything is applied', async () => {
    const bad = new JailChild(fixture('jailed-device.ts'), ['--netns', ns.path, '--nsname', ns.name, '--jail', JSON.stringify({ user: 'no-such-user-lgnet' })]);
    children.push(bad);
    const exit = await bad.exit;
    expect(exit.code).not.toBe(0);
    expect(bad.stderr.join('')).toMatch(/JailError.*no user 'no-such-user-lgnet'|LGNET_JAIL_USER/s);
  }, 60_000);
});
