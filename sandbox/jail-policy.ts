/**
 * The jail's glue to the seccomp policy: compiles a role's allowlist (seccomp-policy.ts, data) into a
 * BPF program for this architecture (seccomp-bpf.ts), and prints the policy with its reasons for
 * `lgnet serve --print-policy`. enterJail (jail.ts) compiles before it changes anything, so a policy
 * bug never leaves a half-jailed process.
 * Spec: no vhost-user.rst section (the sandbox is lgnet's own); seccomp(2), SECCOMP_SET_MODE_FILTER.
 * Design: DESIGN.md "The syscall boundary and the jail", STYLE.md §2 (the policy is data).
 */
import { uringFds } from '../native/index.ts';
import { compileFilter, type Action, type ArgPin, type CompiledRule, type SeccompArch } from './seccomp-bpf.ts';
import { OWN_PID, POLICY, ROLES, rulesFor, type PolicyOptions, type Role, type SyscallRule } from './seccomp-policy.ts';
import { JAIL_ERROR, JailError } from './jail-errors.ts';
import { SYSCALLS_AARCH64 } from './syscalls-aarch64.ts';
import { SYSCALLS_X86_64 } from './syscalls-x86_64.ts';

/** The architecture of this process, as seccomp names it. */
export function currentArch(): SeccompArch | null {
  return process.arch === 'x64' ? 'x86_64' : process.arch === 'arm64' ? 'aarch64' : null;
}

export function syscallTable(arch: SeccompArch): Readonly<Record<string, number>> {
  return arch === 'x86_64' ? SYSCALLS_X86_64 : SYSCALLS_AARCH64;
}

export interface CompileContext extends PolicyOptions {
  /**
   * (From PolicyOptions.) Default: the fds of every io_uring ring open in this process now, which are
   * lgnet's own (only native/uring.cc makes rings, each restricted before it is enabled). Pass [] to
   * deny io_uring_enter whatever exists.
   */
  uringFds?: readonly number[];
  arch?: SeccompArch;
  /** Replaces OWN_PID pins. Default process.pid. */
  pid?: number;
  /**
   * What a syscall off the list gets. Default EPERM; `{ kind: 'log' }` allows and logs it to the kernel
   * log (audit type 1326), to find what a policy lacks without breaking the process.
   */
  defaultAction?: Action;
}

export interface CompiledPolicy {
  role: Role;
  arch: SeccompArch;
  /** struct sock_filter[] bytes, for native.seccompInstall. */
  program: Uint8Array;
  /** Syscalls listed for this role that exist on this architecture. */
  syscalls: string[];
  /** Listed names this architecture does not have (e.g. poll, epoll_wait on aarch64). */
  skipped: string[];
}

function resolvePin(p: ArgPin, pid: number): ArgPin {
  if (!('oneOf' in p)) return p;
  const oneOf: Record<string, number> = {};
  for (const [k, v] of Object.entries(p.oneOf)) oneOf[k] = v === OWN_PID ? pid : v;
  return { ...p, oneOf };
}

/** Compiles a role's allowlist for an architecture (default: this process's). */
export function compilePolicy(role: Role, ctx: CompileContext = {}): CompiledPolicy {
  const arch = ctx.arch ?? currentArch();
  if (!arch) throw new JailError(JAIL_ERROR.ARCH, 'seccomp', `jail: no seccomp policy for ${process.arch}; lgnet's filter covers x86_64 and aarch64. Run with --no-sandbox on this architecture.`);
  const table = syscallTable(arch);
  const pid = ctx.pid ?? process.pid;
  const rules: CompiledRule[] = [];
  const syscalls: string[] = [];
  const skipped: string[] = [];
  for (const r of rulesFor(role, { ...ctx, uringFds: ctx.uringFds ?? uringFds() })) {
    const nr = table[r.name];
    if (nr === undefined) {
      skipped.push(r.name);
      continue;
    }
    syscalls.push(r.name);
    const c: CompiledRule = { nr };
    if (r.when) c.when = r.when.map((alt) => alt.map((p) => resolvePin(p, pid)));
    if (r.errno !== undefined) c.errno = r.errno;
    rules.push(c);
  }
  return { role, arch, program: compileFilter(rules, { arch, ...(ctx.defaultAction ? { defaultAction: ctx.defaultAction } : {}) }), syscalls, skipped };
}

// ---- printing the policy -------------------------------------------------------------------------------

function hex(v: number): string {
  return v === OWN_PID ? 'own pid' : v < 16 ? String(v) : `0x${(v >>> 0).toString(16)}`;
}

function describePin(p: ArgPin): string {
  const a = `arg${p.arg}`;
  if ('notOneOf' in p) return `${a} not in {${Object.keys(p.notOneOf).join(', ')}}`;
  if ('noneOf' in p) return `${a} has none of ${Object.keys(p.noneOf).join('|')}`;
  if ('allOf' in p) return `${a} has all of ${Object.keys(p.allOf).join('|')}`;
  const vals = Object.entries(p.oneOf).map(([k, v]) => (k === String(v) ? k : `${k} (${hex(v)})`)).join(', ');
  if ('mask' in p) return `${a} & ${p.maskName} in {${vals}}`;
  return `${a}${p.wide ? ' (64-bit)' : ''} in {${vals}}`;
}

function describeRule(r: SyscallRule): string {
  if (r.errno !== undefined) return `→ errno ${r.errno}`;
  if (!r.when) return 'any arguments';
  return r.when.map((alt) => alt.map(describePin).join(' and ')).join('  OR  ');
}

/**
 * The policy, human-readable, with reasons: what `lgnet serve --print-policy` prints. Lists every
 * role (or the given ones) for the given architecture (default: this process's).
 */
export function formatPolicy(opts: { roles?: readonly Role[]; arch?: SeccompArch; options?: PolicyOptions } = {}): string {
  const arch = opts.arch ?? currentArch() ?? 'x86_64';
  const table = syscallTable(arch);
  const lines: string[] = [
    `lgnet seccomp policy (${arch}): default for anything not listed, or whose pinned arguments do not match: EPERM.`,
    `Other ABIs (another audit arch${arch === 'x86_64' ? ', x32' : ''}): EPERM. Stacking: 'main' on every thread (TSYNC); 'worker' also on queue workers.`,
  ];
  for (const role of opts.roles ?? ROLES) {
    const rules = rulesFor(role, opts.options ?? {});
    lines.push('', `[${role}] ${rules.length} syscalls`);
    const width = Math.max(...rules.map((r) => r.name.length));
    for (const r of rules) {
      const nr = table[r.name];
      const num = nr === undefined ? '  -' : String(nr).padStart(3);
      lines.push(`  ${num} ${r.name.padEnd(width)}  ${r.reason}`);
      const how = describeRule(r);
      if (how !== 'any arguments') lines.push(`      ${''.padEnd(width)}  only: ${how}`);
      if (nr === undefined) lines.push(`      ${''.padEnd(width)}  (not a syscall on ${arch}; skipped)`);
    }
  }
  const off = ROLES.flatMap((role) => POLICY[role].filter((r) => r.option).map((r) => `${r.name} (${role}, needs ${r.option})`));
  if (off.length && !opts.options) lines.push('', `Optional: ${[...new Set(off)].join(', ')}`);
  if (!opts.options?.uringFds?.length) {
    lines.push('', "io_uring_enter (both roles): only when lgnet made io_uring rings (tap I/O 'uring'), with arg0 one of their fds; each ring is restricted to READV/WRITEV on its tap before the jail.");
  }
  return lines.join('\n');
}
