/**
 * The jail of `lgnet serve`: what the process gives up once everything it needs is open.
 *
 *   lgnet serve                                        (sandbox/main.ts, sandbox/cli.ts)
 *     1. open everything: the vhost-user socket, the tap(s), metrics endpoint, logs
 *     2. import every module and start the queue workers        ← nothing below may open a file
 *     3. enterJail(opts)
 *          0. refuse while a child process lives (unless vouched for, like the socket reaper): a child
 *             runs outside the jail, with our uid, and shares fds the jail could write to
 *          a. resolve --user/--group names (reads /etc/passwd and /etc/group: before the chroot)
 *          b. chroot(--chroot DIR), chdir("/")                        optional
 *          c. setgroups([]), setresgid(g,g,g), setresuid(u,u,u)      optional; capabilities go with uid 0
 *          d. RLIMIT_CORE 0 (guest memory never lands on disk), RLIMIT_NOFILE = maxFds
 *          e. PR_SET_NO_NEW_PRIVS
 *          f. seccomp: the `main` role's filter, on every thread at once (TSYNC)
 *     4. each queue worker: enterWorkerJail() stacks the narrower `worker` filter on its own thread
 *
 * lguest's launcher did (b) and (c) after opening the tap; Firecracker's jailer and crosvm's minijail
 * do (b)–(f). Every step that fails throws a JailError (stable `code`, `errno`/`syscall` when a system
 * call failed, and what to do). The jail never exits the process; the caller decides.
 *
 * Once jailed, the process cannot open files, so:
 * - new TypeScript/JS modules cannot be imported (import them all first);
 * - a Worker started after the jail must not load a file (NetDevice should start its workers before
 *   enterJail, or keep a pool of started ones) — a worker started from eval'd code with no imports does
 *   start, since thread creation stays allowed;
 * - logs go to fds opened before (stdout/stderr or a log fd); touch process.stdout and process.stderr
 *   before the jail so Node sets them up while it still may.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { threadId, isMainThread } from 'node:worker_threads';

import { LgnetError } from '../errors/index.ts';
import * as native from '../native/index.ts';
import { NativeError } from '../native/index.ts';
import { compileFilter, type Action, type ArgPin, type CompiledRule, type SeccompArch } from './seccomp-bpf.ts';
import { OWN_PID, POLICY, ROLES, rulesFor, type PolicyOptions, type Role, type SyscallRule } from './seccomp-policy.ts';
import { SYSCALLS_AARCH64 } from './syscalls-aarch64.ts';
import { SYSCALLS_X86_64 } from './syscalls-x86_64.ts';

// ---- options, report, errors ---------------------------------------------------------------------------

/** What `lgnet serve` passes from its flags. */
export interface JailOptions {
  /** --chroot DIR: an empty directory (root-owned, not writable by the --user) to change root to. */
  chroot?: string;
  /** --user: a name from /etc/passwd or a numeric uid. Its primary group is used when group is absent. */
  user?: string | number;
  /** --group: a name from /etc/group or a numeric gid. */
  group?: string | number;
  /** RLIMIT_NOFILE (soft = hard). Default 1024. Must exceed the highest fd open now. */
  maxFds?: number;
  /** --no-sandbox: do none of it, and say so loudly (through onWarning). */
  noSandbox?: boolean;
  /**
   * For diagnosing the policy only: what an unlisted syscall gets instead of EPERM, e.g.
   * `{ kind: 'log' }` (allowed and logged to the kernel log as audit type 1326).
   */
  seccompDefault?: Action;
  /** vhost-user client mode: allow socket(AF_UNIX, SOCK_STREAM) + connect to reconnect (seccomp-policy.ts). */
  unixConnect?: boolean;
  /**
   * Child processes the caller started on purpose and vouches for: they keep running outside the jail
   * (lgnet serve's socket reapers, which only wait for a pipe to close). Any other live child makes
   * enterJail refuse.
   */
  keepChildren?: readonly number[];
  /** Where warnings go. Default: process.emitWarning with code LGNET_NO_SANDBOX / LGNET_JAIL_ROOT. */
  onWarning?: (message: string, code: string) => void;
}

/** What enterJail did, for the startup log. */
export interface JailReport {
  sandboxed: boolean;
  /** Steps in the order they were applied. */
  steps: string[];
  chroot: string | null;
  uid: number;
  gid: number;
  rlimits: { core: number; nofile: number };
  seccomp: { role: Role; arch: SeccompArch; instructions: number; syscalls: number } | null;
}

/** Stable codes of JailError, one per step that can fail. */
export const JAIL_ERROR = {
  THREAD: 'LGNET_JAIL_THREAD',
  ARCH: 'LGNET_JAIL_ARCH',
  USER: 'LGNET_JAIL_USER',
  GROUP: 'LGNET_JAIL_GROUP',
  MAXFDS: 'LGNET_JAIL_MAXFDS',
  CHROOT: 'LGNET_JAIL_CHROOT',
  SETGROUPS: 'LGNET_JAIL_SETGROUPS',
  SETGID: 'LGNET_JAIL_SETGID',
  SETUID: 'LGNET_JAIL_SETUID',
  RLIMIT: 'LGNET_JAIL_RLIMIT',
  NO_NEW_PRIVS: 'LGNET_JAIL_NO_NEW_PRIVS',
  SECCOMP: 'LGNET_JAIL_SECCOMP',
  ALREADY: 'LGNET_JAIL_ALREADY',
  CHILDREN: 'LGNET_JAIL_CHILDREN',
} as const;
export type JailErrorCode = (typeof JAIL_ERROR)[keyof typeof JAIL_ERROR];

/** A jail step failed. Nothing after it was applied; what came before stays applied. */
export class JailError extends LgnetError {
  declare readonly code: JailErrorCode;
  /** The step: 'chroot', 'setresuid', 'seccomp', ... */
  readonly step: string;

  constructor(code: JailErrorCode, step: string, message: string, cause?: unknown) {
    const ne = cause instanceof NativeError ? cause : undefined;
    super(code, message, { cause, errno: ne?.errno, syscall: ne?.syscall });
    this.step = step;
  }
}

function fail(code: JailErrorCode, step: string, what: string, todo: string, cause?: unknown): never {
  const detail = cause instanceof Error ? `: ${cause.message}` : '';
  throw new JailError(code, step, `jail: ${what}${detail}. ${todo}`, cause);
}

// ---- compiling the policy ------------------------------------------------------------------------------

/** The architecture of this process, as seccomp names it. */
export function currentArch(): SeccompArch | null {
  return process.arch === 'x64' ? 'x86_64' : process.arch === 'arm64' ? 'aarch64' : null;
}

export function syscallTable(arch: SeccompArch): Readonly<Record<string, number>> {
  return arch === 'x86_64' ? SYSCALLS_X86_64 : SYSCALLS_AARCH64;
}

export interface CompileContext extends PolicyOptions {
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
  for (const r of rulesFor(role, ctx)) {
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
  return lines.join('\n');
}

// ---- users and groups ----------------------------------------------------------------------------------

interface PasswdEntry { name: string; uid: number; gid: number }

function parseDb(path: string): string[][] {
  try {
    return readFileSync(path, 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
  } catch {
    return [];
  }
}

function isNumeric(v: string | number): boolean {
  return typeof v === 'number' || /^\d+$/.test(v);
}

function checkId(v: number, what: string, code: JailErrorCode): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_fffe) fail(code, 'resolve', `${what} ${v} is not a valid id`, 'Give a name or a number in 0..4294967294.');
  return v;
}

/** Resolves --user/--group to ids, reading /etc/passwd and /etc/group (so: before the chroot). */
export function resolveIds(user?: string | number, group?: string | number): { uid?: number; gid?: number } {
  let uid: number | undefined;
  let gid: number | undefined;
  let primary: number | undefined;
  if (user !== undefined) {
    if (isNumeric(user)) {
      uid = checkId(Number(user), 'uid', JAIL_ERROR.USER);
      const e = parseDb('/etc/passwd').find((f) => Number(f[2]) === uid);
      if (e) primary = Number(e[3]);
    } else {
      const e = parseDb('/etc/passwd').find((f) => f[0] === user);
      if (!e) fail(JAIL_ERROR.USER, 'resolve', `no user '${user}' in /etc/passwd`, 'Give an existing user (e.g. nobody) or a numeric uid.');
      const p: PasswdEntry = { name: e[0]!, uid: Number(e[2]), gid: Number(e[3]) };
      uid = checkId(p.uid, 'uid', JAIL_ERROR.USER);
      primary = p.gid;
    }
  }
  if (group !== undefined) {
    if (isNumeric(group)) gid = checkId(Number(group), 'gid', JAIL_ERROR.GROUP);
    else {
      const e = parseDb('/etc/group').find((f) => f[0] === group);
      if (!e) fail(JAIL_ERROR.GROUP, 'resolve', `no group '${group}' in /etc/group`, 'Give an existing group (e.g. nogroup) or a numeric gid.');
      gid = checkId(Number(e[2]), 'gid', JAIL_ERROR.GROUP);
    }
  } else if (uid !== undefined) {
    if (primary === undefined) fail(JAIL_ERROR.GROUP, 'resolve', `uid ${uid} has no /etc/passwd entry to take a primary group from`, 'Give --group as well.');
    gid = checkId(primary, 'gid', JAIL_ERROR.GROUP);
  }
  return { ...(uid !== undefined ? { uid } : {}), ...(gid !== undefined ? { gid } : {}) };
}

// ---- child processes -------------------------------------------------------------------------------------

/** A child process of this process, as /proc shows it. */
export interface ChildProcessInfo {
  pid: number;
  /** The state letter of /proc/<pid>/stat (R, S, D, Z, ...). */
  state: string;
  argv: string[];
}

/**
 * The child processes of this process that still run (zombies run nothing and are left out), from
 * every thread's /proc/self/task/<tid>/children. Empty when /proc is not mounted.
 */
export function liveChildren(): ChildProcessInfo[] {
  const out: ChildProcessInfo[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync('/proc/self/task');
  } catch {
    return out;
  }
  for (const tid of tasks) {
    let pids: number[];
    try {
      pids = readFileSync(`/proc/self/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
    } catch {
      continue; // the thread ended
    }
    for (const pid of pids) {
      const c = childInfo(pid);
      if (c && c.state !== 'Z' && c.state !== 'X') out.push(c);
    }
  }
  return out;
}

function childInfo(pid: number): ChildProcessInfo | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    return { pid, state, argv };
  } catch {
    return null; // it ended and was reaped
  }
}

/** Refuses to go on while a child process that nobody vouched for runs. */
function refuseChildren(keep: readonly number[]): void {
  const left = liveChildren().filter((c) => !keep.includes(c.pid));
  if (left.length > 0) {
    const list = left.map((c) => `${c.pid} (${c.argv.join(' ').slice(0, 80)})`).join(', ');
    fail(JAIL_ERROR.CHILDREN, 'children', `child process ${list} still runs`,
      'A child runs outside the jail, with this process\'s uid and no seccomp filter, and shares fds with it: end it (or wait for it) before enterJail, or vouch for it with keepChildren.');
  }
}

// ---- entering the jail ---------------------------------------------------------------------------------

let jailed = false;

/** Whether enterJail() has completed in this process (main thread's view). */
export function isJailed(): boolean {
  return jailed;
}

export const DEFAULT_MAX_FDS = 1024;

export const NO_SANDBOX_WARNING =
  '*** lgnet is running WITHOUT its sandbox (--no-sandbox): no seccomp filter, no chroot, no uid drop, ' +
  'no rlimits. A guest that subverts this process gets everything this process can do. Use only for debugging. ***';

function warn(opts: JailOptions, message: string, code: string): void {
  if (opts.onWarning) opts.onWarning(message, code);
  else process.emitWarning(message, { code });
}

function highestOpenFd(): number {
  try {
    return Math.max(-1, ...readdirSync('/proc/self/fd').map(Number).filter(Number.isInteger));
  } catch {
    return -1; // no /proc: cannot check; setrlimit still applies
  }
}

/**
 * Enters the jail, in order: chroot, uid/gid drop, rlimits, no_new_privs, seccomp on every thread.
 * Call it from the main thread, once, after everything is open and every worker is started. Throws
 * JailError; never exits. With noSandbox it does nothing but warn.
 */
export function enterJail(opts: JailOptions = {}): JailReport {
  const report: JailReport = { sandboxed: false, steps: [], chroot: null, uid: process.getuid?.() ?? -1, gid: process.getgid?.() ?? -1, rlimits: { core: -1, nofile: -1 }, seccomp: null };
  if (opts.noSandbox) {
    warn(opts, NO_SANDBOX_WARNING, 'LGNET_NO_SANDBOX');
    return report;
  }
  if (!isMainThread) fail(JAIL_ERROR.THREAD, 'start', `enterJail called from worker thread ${threadId}`, 'Call enterJail from the main thread; workers call enterWorkerJail().');
  if (jailed) fail(JAIL_ERROR.ALREADY, 'start', 'enterJail was already called in this process', 'Call it once.');
  const arch = currentArch();
  if (!arch) fail(JAIL_ERROR.ARCH, 'start', `no seccomp policy for ${process.arch}`, 'lgnet supports x86_64 and aarch64; use --no-sandbox elsewhere.');

  const maxFds = opts.maxFds ?? DEFAULT_MAX_FDS;
  if (!Number.isInteger(maxFds) || maxFds < 16 || maxFds > 1 << 20) fail(JAIL_ERROR.MAXFDS, 'rlimit', `maxFds ${maxFds} is out of range`, 'Give an integer in 16..1048576.');
  const top = highestOpenFd();
  if (top >= maxFds) fail(JAIL_ERROR.MAXFDS, 'rlimit', `fd ${top} is already open, at or above maxFds ${maxFds}`, `Raise maxFds above ${top} (it bounds fds the VMM can make us hold).`);

  // Compile before changing anything: a policy bug must not leave a half-jailed process.
  let policy: CompiledPolicy;
  try {
    policy = compilePolicy('main', { arch, unixConnect: opts.unixConnect === true, ...(opts.seccompDefault ? { defaultAction: opts.seccompDefault } : {}) });
  } catch (e) {
    if (e instanceof JailError) throw e;
    return fail(JAIL_ERROR.SECCOMP, 'compile', 'the seccomp policy does not compile', 'This is a bug in sandbox/seccomp-policy.ts; report it.', e);
  }

  // 0. no process of ours may run outside the jail (needs /proc: before the chroot).
  refuseChildren(opts.keepChildren ?? []);

  // a. names → ids, while /etc is still visible.
  const ids = resolveIds(opts.user, opts.group);

  // b. chroot.
  if (opts.chroot !== undefined) {
    try {
      native.chroot(opts.chroot);
    } catch (e) {
      fail(JAIL_ERROR.CHROOT, 'chroot', `cannot change root to '${opts.chroot}'`, 'Give an existing, empty directory; chroot needs root (CAP_SYS_CHROOT).', e);
    }
    try {
      process.chdir('/'); // native chroot already did chdir("/"); keep Node's cached cwd honest
    } catch { /* cwd cache only */ }
    report.chroot = opts.chroot;
    report.steps.push(`chroot ${opts.chroot}`);
  }

  // c. groups, gid, uid — in that order: after setresuid we could no longer change groups.
  if (ids.gid !== undefined || ids.uid !== undefined) {
    try {
      native.setgroups([]);
    } catch (e) {
      fail(JAIL_ERROR.SETGROUPS, 'setgroups', 'cannot clear supplementary groups', 'Dropping ids needs root (CAP_SETGID); run lgnet serve as root, or without --user/--group.', e);
    }
    report.steps.push('setgroups []');
  }
  if (ids.gid !== undefined) {
    try {
      native.setresgid(ids.gid, ids.gid, ids.gid);
    } catch (e) {
      fail(JAIL_ERROR.SETGID, 'setresgid', `cannot change gid to ${ids.gid}`, 'Dropping ids needs root (CAP_SETGID).', e);
    }
    report.gid = ids.gid;
    report.steps.push(`setresgid ${ids.gid}`);
  }
  if (ids.uid !== undefined) {
    try {
      native.setresuid(ids.uid, ids.uid, ids.uid);
    } catch (e) {
      fail(JAIL_ERROR.SETUID, 'setresuid', `cannot change uid to ${ids.uid}`, 'Dropping ids needs root (CAP_SETUID).', e);
    }
    // Paranoia: the drop must be complete and for good.
    if (process.getuid?.() !== ids.uid || process.geteuid?.() !== ids.uid) {
      fail(JAIL_ERROR.SETUID, 'setresuid', `uid is ${process.getuid?.()}/${process.geteuid?.()} after setresuid(${ids.uid})`, 'Report this: the uid drop did not take.');
    }
    if (ids.uid !== 0) {
      let regained = false;
      try {
        native.setresuid(0, 0, 0);
        regained = true;
      } catch { /* expected: EPERM */ }
      if (regained) fail(JAIL_ERROR.SETUID, 'setresuid', 'uid 0 could be regained after the drop', 'Report this: saved ids were not dropped.');
    }
    report.uid = ids.uid;
    report.steps.push(`setresuid ${ids.uid}`);
  } else if (process.getuid?.() === 0) {
    warn(opts, 'lgnet jail: running as root without --user keeps root\'s uid and capabilities; seccomp still applies, but prefer --user nobody --group nogroup.', 'LGNET_JAIL_ROOT');
  }

  // d. rlimits: no core dumps (guest memory must not land on disk), bounded fds.
  try {
    native.setrlimit('core', 0, 0);
    native.setrlimit('nofile', maxFds, maxFds);
  } catch (e) {
    fail(JAIL_ERROR.RLIMIT, 'setrlimit', 'cannot set RLIMIT_CORE/RLIMIT_NOFILE', 'Lowering limits needs no privilege; check maxFds against the current hard limit.', e);
  }
  report.rlimits = { core: 0, nofile: maxFds };
  report.steps.push(`rlimit core 0, nofile ${maxFds}`);
  // Not dumpable: same-uid processes cannot ptrace lgnet or read guest memory through /proc/<pid>/mem
  // (a uid change does this too, but not running as root without --user).
  try {
    native.setNotDumpable();
  } catch (e) {
    fail(JAIL_ERROR.RLIMIT, 'prctl', 'cannot set PR_SET_DUMPABLE 0', 'This needs no privilege; report it.', e);
  }
  report.steps.push('not dumpable');

  // e. no_new_privs: required for an unprivileged seccomp filter; TSYNC copies it to every thread.
  try {
    native.setNoNewPrivs();
  } catch (e) {
    fail(JAIL_ERROR.NO_NEW_PRIVS, 'prctl', 'cannot set PR_SET_NO_NEW_PRIVS', 'This needs Linux ≥ 3.5.', e);
  }
  report.steps.push('no_new_privs');

  // f. seccomp on every thread.
  try {
    native.seccompInstall(policy.program, { tsync: true });
  } catch (e) {
    const tid = (e as NativeError).tid;
    const todo = tid !== undefined
      ? `Thread ${tid} already runs another filter: workers must call enterWorkerJail() only after enterJail() returned.`
      : 'seccomp needs Linux ≥ 3.17 with CONFIG_SECCOMP_FILTER; inside a container, the runtime may forbid nested filters.';
    fail(JAIL_ERROR.SECCOMP, 'seccomp', 'cannot install the seccomp filter', todo, e);
  }
  report.seccomp = { role: 'main', arch: policy.arch, instructions: policy.program.length / 8, syscalls: policy.syscalls.length };
  report.steps.push(`seccomp main (${policy.syscalls.length} syscalls, ${policy.program.length / 8} instructions, TSYNC)`);
  report.sandboxed = true;
  jailed = true;
  return report;
}

/** What enterWorkerJail() did. */
export interface WorkerJailReport {
  role: 'worker';
  arch: SeccompArch;
  instructions: number;
  syscalls: number;
}

/**
 * Stacks the narrower `worker` filter on the calling thread (no TSYNC: it is this thread's own). Call
 * it inside a queue worker thread, after the main thread's enterJail() returned (the main filter
 * allows exactly this seccomp call; before it, the TSYNC of enterJail would fail on this thread).
 * The compiled program can be passed in (compilePolicy('worker').program, compiled on the main
 * thread) to spare the worker the compile; it is cheap either way.
 */
export function enterWorkerJail(program?: Uint8Array): WorkerJailReport {
  if (isMainThread) fail(JAIL_ERROR.THREAD, 'start', 'enterWorkerJail called on the main thread', 'Workers call enterWorkerJail(); the main thread calls enterJail().');
  const arch = currentArch();
  if (!arch) fail(JAIL_ERROR.ARCH, 'start', `no seccomp policy for ${process.arch}`, 'lgnet supports x86_64 and aarch64.');
  const compiled = program ? null : compilePolicy('worker', { arch });
  const prog = program ?? compiled!.program;
  try {
    native.seccompInstall(prog, { tsync: false });
  } catch (e) {
    const ne = e as NativeError;
    const todo = ne.code === 'EACCES'
      ? 'This thread has no no_new_privs yet: call enterWorkerJail() only after the main thread\'s enterJail() returned.'
      : 'The main filter must allow seccomp(SET_MODE_FILTER, 0); check sandbox/seccomp-policy.ts.';
    fail(JAIL_ERROR.SECCOMP, 'seccomp', `worker thread ${threadId} cannot stack its filter`, todo, e);
  }
  return { role: 'worker', arch, instructions: prog.length / 8, syscalls: compiled?.syscalls.length ?? rulesFor('worker').length };
}
