/**
 * The BPF assembler and seccomp compiler (sandbox/seccomp-bpf.ts) and the policy data
 * (sandbox/seccomp-policy.ts): well-formed programs (forward jumps in range, every path returns),
 * the verdicts the compiled policy gives (evaluated in TypeScript, and installed in a child for the
 * kernel's own verdict), and the policy's own invariants.
 */
import { spawnSync } from 'node:child_process';

import { describe, expect, it } from 'vitest';

import { compilePolicy, formatPolicy, JailError, resolveIds, syscallTable } from '../../sandbox/jail.ts';
import { assemble, AUDIT_ARCH, BpfAssemblyError, compileFilter, decode, disassemble, evaluate, SECCOMP_RET, verify, X32_SYSCALL_BIT, type Item, type SeccompArch } from '../../sandbox/seccomp-bpf.ts';
import { CLONE, IOCTL, MUST_DENY, POLICY, ROLES, rulesFor, UFFD_IOCTL } from '../../sandbox/seccomp-policy.ts';
import { SYSCALLS_X86_64 } from '../../sandbox/syscalls-x86_64.ts';
import { SYSCALLS_AARCH64 } from '../../sandbox/syscalls-aarch64.ts';
import { fixture } from './child.ts';

const ALLOW = SECCOMP_RET.ALLOW;
const EPERM = (SECCOMP_RET.ERRNO | 1) >>> 0;
const ENOSYS = (SECCOMP_RET.ERRNO | 38) >>> 0;
const PID = 4242;

function verdict(role: 'main' | 'worker', name: string, args: Array<number | bigint> = [], arch: SeccompArch = 'x86_64', options: { tapReattach?: boolean; postcopy?: boolean } = {}): number {
  const table = syscallTable(arch);
  const nr = table[name];
  if (nr === undefined) throw new Error(`no ${name} on ${arch}`);
  const prog = compilePolicy(role, { arch, pid: PID, ...options });
  return evaluate(prog.program, { arch: AUDIT_ARCH[arch], nr, args });
}

describe('assembler', () => {
  it('emits 8-byte sock_filter entries and resolves labels forward', () => {
    const p = assemble([
      { op: 'ld', offset: 0 },
      { op: 'jeq', k: 7, jt: 'yes', jf: null },
      { op: 'ret', k: 1 },
      { op: 'label', name: 'yes' },
      { op: 'ret', k: 2 },
    ]);
    expect(p.length).toBe(4 * 8);
    expect(decode(p)[1]).toEqual({ code: 0x15, jt: 1, jf: 0, k: 7 });
    expect(evaluate(p, { arch: 0, nr: 7 })).toBe(2);
    expect(evaluate(p, { arch: 0, nr: 8 })).toBe(1);
  });

  it('relaxes branches farther than 255 instructions into ja trampolines', () => {
    const items: Item[] = [{ op: 'ld', offset: 0 }, { op: 'jeq', k: 1, jt: 'far', jf: 'far2' }];
    for (let i = 0; i < 300; i++) items.push({ op: 'ret', k: 100 + i });
    items.push({ op: 'label', name: 'far' }, { op: 'ret', k: 1 }, { op: 'label', name: 'far2' }, { op: 'ret', k: 2 });
    const p = assemble(items);
    verify(p);
    for (const x of decode(p)) expect(x.jt <= 255 && x.jf <= 255).toBe(true);
    expect(evaluate(p, { arch: 0, nr: 1 })).toBe(1);
    expect(evaluate(p, { arch: 0, nr: 5 })).toBe(2);
  });

  it('rejects backward and undefined labels, and programs without a final return', () => {
    expect(() => assemble([{ op: 'label', name: 'a' }, { op: 'ja', target: 'a' }, { op: 'ret', k: 0 }])).toThrow(BpfAssemblyError);
    expect(() => assemble([{ op: 'ja', target: 'nowhere' }, { op: 'ret', k: 0 }])).toThrow(/undefined label/);
    expect(() => verify(assemble([{ op: 'ld', offset: 0 }]))).toThrow(/does not end in a return/);
    expect(() => verify(assemble([{ op: 'ld', offset: 66 }, { op: 'ret', k: 0 }]))).toThrow(/outside seccomp_data/);
  });
});

describe.each(['x86_64', 'aarch64'] as const)('compiled policy on %s', (arch) => {
  it.each(ROLES)('%s: well formed — in range, forward, ends in a return, under 4096', (role) => {
    const { program, syscalls } = compilePolicy(role, { arch, pid: PID });
    verify(program);
    const insns = decode(program);
    expect(insns.length).toBeLessThan(4096);
    insns.forEach((x, i) => {
      if (x.code === 0x05) expect(i + 1 + x.k).toBeLessThan(insns.length);
      if ((x.code & 0x07) === 0x05 && x.code !== 0x05) {
        expect(i + 1 + x.jt).toBeLessThan(insns.length);
        expect(i + 1 + x.jf).toBeLessThan(insns.length);
      }
    });
    expect(insns[insns.length - 1]!.code).toBe(0x06);
    expect(syscalls.length).toBeGreaterThan(20);
    expect(disassemble(program).split('\n')).toHaveLength(insns.length);
  });

  it('every listed syscall is allowed (with matching arguments) and everything else is EPERM', () => {
    const table = syscallTable(arch);
    for (const role of ROLES) {
      const { program } = compilePolicy(role, { arch, pid: PID });
      const listed = new Map(rulesFor(role).map((r) => [r.name, r]));
      for (const [name, nr] of Object.entries(table)) {
        const r = listed.get(name);
        const v = evaluate(program, { arch: AUDIT_ARCH[arch], nr, args: [] });
        if (!r) expect(v, `${role} ${name}`).toBe(EPERM);
        else if (r.errno) expect(v).toBe((SECCOMP_RET.ERRNO | r.errno) >>> 0);
        else if (!r.when) expect(v, `${role} ${name}`).toBe(ALLOW);
      }
    }
  });

  it('another architecture is refused', () => {
    const { program } = compilePolicy('main', { arch, pid: PID });
    expect(evaluate(program, { arch: 0x4000_0003 /* i386 */, nr: 0 })).toBe(EPERM);
    expect(evaluate(program, { arch: AUDIT_ARCH[arch === 'x86_64' ? 'aarch64' : 'x86_64'], nr: 0 })).toBe(EPERM);
  });
});

describe('argument pins (x86_64)', () => {
  const THREAD = CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD | CLONE.SYSVSEM | CLONE.SETTLS | CLONE.PARENT_SETTID | CLONE.CHILD_CLEARTID;

  it('x32 system calls are refused', () => {
    const { program } = compilePolicy('main', { arch: 'x86_64', pid: PID });
    expect(evaluate(program, { arch: AUDIT_ARCH.x86_64, nr: X32_SYSCALL_BIT | 0 })).toBe(EPERM);
    expect(evaluate(program, { arch: AUDIT_ARCH.x86_64, nr: 0 })).toBe(ALLOW);
  });

  it('clone: threads yes; processes, namespaces, vfork, ptrace no; clone3 ENOSYS; fork/vfork EPERM', () => {
    expect(verdict('main', 'clone', [THREAD])).toBe(ALLOW);
    expect(verdict('main', 'clone', [17 /* SIGCHLD */])).toBe(EPERM);
    expect(verdict('main', 'clone', [CLONE.CHILD_CLEARTID | CLONE.CHILD_SETTID | 17])).toBe(EPERM);
    expect(verdict('main', 'clone', [THREAD | CLONE.NEWNET])).toBe(EPERM);
    expect(verdict('main', 'clone', [THREAD | CLONE.NEWUSER])).toBe(EPERM);
    expect(verdict('main', 'clone', [THREAD | CLONE.PTRACE])).toBe(EPERM);
    expect(verdict('main', 'clone', [CLONE.VM | CLONE.VFORK | 17])).toBe(EPERM);
    expect(verdict('main', 'clone', [THREAD & ~CLONE.VM])).toBe(EPERM);
    expect(verdict('main', 'clone3', [0, 88])).toBe(ENOSYS);
    expect(verdict('main', 'fork')).toBe(EPERM);
    expect(verdict('main', 'vfork')).toBe(EPERM);
    expect(verdict('worker', 'clone', [THREAD])).toBe(EPERM); // workers make no threads
  });

  it('ioctl: only the named requests; TUNSETIFF only with --user (tapReattach); never TIOCSTI; none at all in a worker', () => {
    for (const [name, req] of Object.entries(IOCTL)) expect(verdict('main', 'ioctl', [3, req]), name).toBe(ALLOW);
    expect(verdict('main', 'ioctl', [3, 0x400454ca /* TUNSETIFF */])).toBe(EPERM);
    expect(verdict('main', 'ioctl', [0, 0x5412 /* TIOCSTI */])).toBe(EPERM);
    expect(verdict('main', 'ioctl', [3, 0x400454d4 /* TUNSETPERSIST */])).toBe(EPERM);
    // The request is an unsigned int: the high word is ignored by the kernel, and by the pin.
    expect(verdict('main', 'ioctl', [3, 0x1_0000_0000 + IOCTL.TUNSETOFFLOAD])).toBe(ALLOW);
    expect(verdict('worker', 'ioctl', [3, IOCTL.FIONBIO])).toBe(EPERM);
    // With --user (tapReattach), TUNSETIFF joins the named requests, and nothing else does.
    const user = { tapReattach: true };
    expect(verdict('main', 'ioctl', [3, 0x400454ca], 'x86_64', user)).toBe(ALLOW);
    for (const [name, req] of Object.entries(IOCTL)) expect(verdict('main', 'ioctl', [3, req], 'x86_64', user), name).toBe(ALLOW);
    expect(verdict('main', 'ioctl', [3, 0x400454d4 /* TUNSETPERSIST */], 'x86_64', user)).toBe(EPERM);
    expect(verdict('main', 'ioctl', [0, 0x5412 /* TIOCSTI */], 'x86_64', user)).toBe(EPERM);
    expect(verdict('worker', 'ioctl', [3, 0x400454ca], 'x86_64', user)).toBe(EPERM);
  });

  it('userfaultfd: the system call never; its ioctls only with --postcopy (postcopy), and never in a worker', () => {
    expect(verdict('main', 'userfaultfd', [0x80800])).toBe(EPERM);
    expect(verdict('main', 'userfaultfd', [0x80800], 'x86_64', { postcopy: true })).toBe(EPERM);
    for (const [name, req] of Object.entries(UFFD_IOCTL)) {
      expect(verdict('main', 'ioctl', [7, req]), `${name} without --postcopy`).toBe(EPERM);
      expect(verdict('main', 'ioctl', [7, req], 'x86_64', { postcopy: true }), name).toBe(ALLOW);
      expect(verdict('worker', 'ioctl', [7, req], 'x86_64', { postcopy: true }), `${name} in a worker`).toBe(EPERM);
    }
    // UFFDIO_COPY/ZEROPAGE/WAKE place or wake pages: the front-end's job, never lgnet's.
    for (const req of [0xc028aa03, 0xc020aa04, 0x8010aa02]) expect(verdict('main', 'ioctl', [7, req], 'x86_64', { postcopy: true })).toBe(EPERM);
    for (const [name, req] of Object.entries(IOCTL)) expect(verdict('main', 'ioctl', [3, req], 'x86_64', { postcopy: true }), name).toBe(ALLOW);
  });

  it('mmap: shared guest memory RW yes; executable only anonymous+private', () => {
    const RW = 3, RX = 5, RWX = 7, SHARED = 1, PRIVATE = 2, ANON = 0x20, FIXED = 0x10, NORESERVE = 0x4000;
    expect(verdict('main', 'mmap', [0, 4096, RW, SHARED, 9, 0])).toBe(ALLOW);
    expect(verdict('main', 'mmap', [0, 4096, 0, PRIVATE | ANON | NORESERVE, -1, 0])).toBe(ALLOW);
    expect(verdict('main', 'mmap', [0, 4096, RWX, PRIVATE | ANON | FIXED, -1, 0])).toBe(ALLOW);
    expect(verdict('main', 'mmap', [0, 4096, RX, SHARED, 9, 0])).toBe(EPERM);
    expect(verdict('main', 'mmap', [0, 4096, RX, PRIVATE, 9, 0])).toBe(EPERM); // a file as code
    expect(verdict('main', 'mmap', [0, 4096, RX, SHARED | ANON, -1, 0])).toBe(EPERM);
  });

  it('futex: no PI operations', () => {
    expect(verdict('main', 'futex', [0, 128 /* WAIT_PRIVATE */])).toBe(ALLOW);
    expect(verdict('main', 'futex', [0, 1 | 128])).toBe(ALLOW);
    expect(verdict('main', 'futex', [0, 9 | 128 | 256 /* WAIT_BITSET_PRIVATE|CLOCK_REALTIME */])).toBe(ALLOW);
    expect(verdict('main', 'futex', [0, 6 /* LOCK_PI */])).toBe(EPERM);
    expect(verdict('main', 'futex', [0, 11 | 128 /* WAIT_REQUEUE_PI */])).toBe(EPERM);
    expect(verdict('main', 'futex', [0, 12 /* CMP_REQUEUE_PI */])).toBe(EPERM);
  });

  it('tgkill only to ourselves; prlimit64 only to read our own limits; seccomp only to stack', () => {
    expect(verdict('main', 'tgkill', [PID, PID + 1, 6])).toBe(ALLOW);
    expect(verdict('main', 'tgkill', [1, 1, 9])).toBe(EPERM);
    expect(verdict('main', 'tgkill', [PID + 2 ** 32, PID, 6])).toBe(ALLOW); // pid_t: low word
    expect(verdict('main', 'prlimit64', [0, 7, 0, 0x7ff0_0000])).toBe(ALLOW);
    expect(verdict('main', 'prlimit64', [0, 7, 0x7ff0_0000, 0])).toBe(EPERM); // would set
    expect(verdict('main', 'prlimit64', [1, 7, 0, 0x7ff0_0000])).toBe(EPERM); // another process
    expect(verdict('main', 'prlimit64', [2 ** 32, 7, 0, 0])).toBe(EPERM); // wide: high word checked
    expect(verdict('main', 'seccomp', [1, 0, 0x1000])).toBe(ALLOW);
    expect(verdict('main', 'seccomp', [1, 1 /* TSYNC */, 0x1000])).toBe(EPERM);
    expect(verdict('main', 'seccomp', [1, 8 /* NEW_LISTENER */, 0x1000])).toBe(EPERM);
    expect(verdict('worker', 'seccomp', [1, 0, 0x1000])).toBe(EPERM);
  });

  it('prctl: names only; fcntl: flag commands only; newfstatat only on an fd', () => {
    expect(verdict('main', 'prctl', [15 /* PR_SET_NAME */])).toBe(ALLOW);
    expect(verdict('main', 'prctl', [4 /* PR_SET_DUMPABLE */, 1])).toBe(EPERM);
    expect(verdict('main', 'prctl', [38 /* PR_SET_NO_NEW_PRIVS */, 0])).toBe(EPERM);
    expect(verdict('main', 'fcntl', [3, 4 /* F_SETFL */, 0x800])).toBe(ALLOW);
    expect(verdict('main', 'fcntl', [3, 6 /* F_SETLK */, 0])).toBe(EPERM);
    expect(verdict('main', 'newfstatat', [3, 0, 0, 0x1000])).toBe(ALLOW);
    expect(verdict('main', 'newfstatat', [-100, 0, 0, 0])).toBe(EPERM);
  });

  it('with io_uring rings: io_uring_enter only on them, close on anything but them, dup2/dup3/close_range never', () => {
    const a = AUDIT_ARCH.x86_64;
    const n = (name: string) => SYSCALLS_X86_64[name]!;
    const none = compilePolicy('worker', { arch: 'x86_64' }).program;
    expect(evaluate(none, { arch: a, nr: n('close'), args: [7] })).toBe(ALLOW);
    expect(evaluate(none, { arch: a, nr: n('io_uring_enter'), args: [7, 1, 1, 1] })).toBe(EPERM);
    for (const role of ROLES) {
      const prog = compilePolicy(role, { arch: 'x86_64', uringFds: [7, 9] }).program;
      expect(evaluate(prog, { arch: a, nr: n('io_uring_enter'), args: [7, 1, 1, 1] })).toBe(ALLOW);
      expect(evaluate(prog, { arch: a, nr: n('io_uring_enter'), args: [8, 1, 1, 1] })).toBe(EPERM);
      expect(evaluate(prog, { arch: a, nr: n('close'), args: [8] })).toBe(ALLOW);
      expect(evaluate(prog, { arch: a, nr: n('close'), args: [7] })).toBe(EPERM);
      expect(evaluate(prog, { arch: a, nr: n('close'), args: [9] })).toBe(EPERM);
      expect(evaluate(prog, { arch: a, nr: n('close'), args: [2 ** 32 + 9] })).toBe(EPERM); // an unsigned int: low word
      expect(evaluate(prog, { arch: a, nr: n('dup2'), args: [8, 7] })).toBe(EPERM);
      expect(evaluate(prog, { arch: a, nr: n('dup3'), args: [8, 7, 0] })).toBe(EPERM);
      expect(evaluate(prog, { arch: a, nr: n('close_range'), args: [3, 100, 0] })).toBe(EPERM);
    }
    expect(formatPolicy({ options: { uringFds: [7] } })).toContain('arg0 not in {ring fd 7}');
  });

  it('socket and connect only with unixConnect, and then AF_UNIX stream only', () => {
    const nr = SYSCALLS_X86_64['socket']!;
    const off = compilePolicy('main', { arch: 'x86_64' }).program;
    const on = compilePolicy('main', { arch: 'x86_64', unixConnect: true }).program;
    const a = AUDIT_ARCH.x86_64;
    expect(evaluate(off, { arch: a, nr, args: [1, 1] })).toBe(EPERM);
    expect(evaluate(on, { arch: a, nr, args: [1, 1 | 0x80000 /* SOCK_CLOEXEC */] })).toBe(ALLOW);
    expect(evaluate(on, { arch: a, nr, args: [2, 1] })).toBe(EPERM);
    expect(evaluate(on, { arch: a, nr, args: [1, 2 /* DGRAM */] })).toBe(EPERM);
    expect(evaluate(on, { arch: a, nr: SYSCALLS_X86_64['connect']!, args: [3, 0, 110] })).toBe(ALLOW);
    expect(evaluate(off, { arch: a, nr: SYSCALLS_X86_64['connect']!, args: [3, 0, 110] })).toBe(EPERM);
  });
});

describe('the policy as data', () => {
  it('every entry has a reason, names are unique per role (an optional rule may widen a base one) and exist on x86_64 (or aarch64)', () => {
    for (const role of ROLES) {
      const names = POLICY[role].filter((r) => r.option === undefined).map((r) => r.name);
      expect(new Set(names).size, role).toBe(names.length);
      for (const opt of ['unixConnect', 'tapReattach', 'postcopy'] as const) {
        const on = rulesFor(role, { [opt]: true }).map((r) => r.name);
        expect(new Set(on).size, `${role} with ${opt}`).toBe(on.length);
      }
      for (const r of POLICY[role]) {
        expect(r.reason.length, r.name).toBeGreaterThan(8);
        expect(SYSCALLS_X86_64[r.name] ?? SYSCALLS_AARCH64[r.name], r.name).toBeDefined();
      }
    }
  });

  it('lists nothing the jail exists to stop', () => {
    for (const role of ROLES) for (const bad of MUST_DENY) expect(POLICY[role].map((r) => r.name), `${role} ${bad}`).not.toContain(bad);
  });

  it('the worker list is a subset of the main list (stacked filters can only narrow)', () => {
    const main = new Set(POLICY.main.map((r) => r.name));
    for (const r of POLICY.worker) expect(main.has(r.name), r.name).toBe(true);
  });

  it('formatPolicy prints each role, each syscall with its reason and its pins', () => {
    const text = formatPolicy({ arch: 'x86_64' });
    expect(text).toMatch(/\[main\] \d+ syscalls/);
    expect(text).toMatch(/\[worker\] \d+ syscalls/);
    expect(text).toMatch(/readv\s+RX: frames from the tap/);
    expect(text).toMatch(/TUNSETOFFLOAD \(0x400454d0\)/);
    expect(text).toMatch(/clone3 .*\n.*errno 38/);
    expect(formatPolicy({ arch: 'aarch64' })).toMatch(/poll .*\n.*not a syscall on aarch64/);
  });

  it('resolves users and groups from /etc, and refuses unknown ones with a typed error', () => {
    expect(resolveIds('nobody', 'nogroup')).toEqual({ uid: 65534, gid: 65534 });
    expect(resolveIds('nobody')).toEqual({ uid: 65534, gid: 65534 }); // primary group
    expect(resolveIds(1234, 5678)).toEqual({ uid: 1234, gid: 5678 });
    expect(resolveIds()).toEqual({});
    expect(() => resolveIds('no-such-user-lgnet')).toThrow(JailError);
    try {
      resolveIds(undefined, 'no-such-group-lgnet');
    } catch (e) {
      expect(e).toMatchObject({ name: 'JailError', code: 'LGNET_JAIL_GROUP', step: 'resolve' });
    }
  });

  it('compileFilter refuses duplicate numbers and bad errnos', () => {
    expect(() => compileFilter([{ nr: 1 }, { nr: 1 }], { arch: 'x86_64' })).toThrow(/twice/);
    expect(() => compileFilter([{ nr: 1, errno: 5000 }], { arch: 'x86_64' })).toThrow(RangeError);
  });
});

describe.runIf(process.arch === 'x64')('the kernel agrees (compiled filter installed in a child)', () => {
  it('main: uname and eventfd allowed, open refused with EPERM', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', fixture('filter-child.ts'), 'main'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ uname: 'ok', open: 'EPERM', eventfd: 'ok' });
  });

  it('worker list alone: eventfd creation and uname refused, the data path works', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', fixture('filter-child.ts'), 'worker-only'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ uname: expect.stringMatching(/EPERM|ERR_SYSTEM_ERROR/), open: 'EPERM', eventfd: 'EPERM' });
  });
});
