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
 * The parts: jail-policy.ts (compilePolicy, formatPolicy), jail-ids.ts (step a), jail-children.ts
 * (step 0), jail-errors.ts (JailError); everything is exported from here.
 *
 * Once jailed, the process cannot open files, so:
 * - new TypeScript/JS modules cannot be imported (import them all first);
 * - a Worker started after the jail must not load a file (NetDevice should start its workers before
 *   enterJail, or keep a pool of started ones) — a worker started from eval'd code with no imports does
 *   start, since thread creation stays allowed;
 * - logs go to fds opened before (stdout/stderr or a log fd); touch process.stdout and process.stderr
 *   before the jail so Node sets them up while it still may.
 * Spec: no vhost-user.rst section (the sandbox is lgnet's own). Design: DESIGN.md "The syscall boundary
 * and the jail", docs/SECURITY.md.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { threadId, isMainThread } from 'node:worker_threads';

import * as native from '../native/index.ts';
import type { NativeError } from '../native/index.ts';
import type { Action, SeccompArch } from './seccomp-bpf.ts';
import { rulesFor, type Role } from './seccomp-policy.ts';
import { refuseChildren } from './jail-children.ts';
import { fail, JAIL_ERROR, JailError } from './jail-errors.ts';
import { resolveIds } from './jail-ids.ts';
import { compilePolicy, currentArch, type CompiledPolicy } from './jail-policy.ts';

// Every part stays importable from sandbox/jail.ts (main.ts, index.ts, tests, scripts).
export { liveChildren, type ChildProcessInfo } from './jail-children.ts';
export { JAIL_ERROR, JailError, type JailErrorCode } from './jail-errors.ts';
export { resolveIds } from './jail-ids.ts';
export { compilePolicy, currentArch, formatPolicy, syscallTable, type CompiledPolicy, type CompileContext } from './jail-policy.ts';

// ---- options and report --------------------------------------------------------------------------------

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
   * The io_uring rings io_uring_enter may name (TapBackend.ringFds). Default: every ring open in the
   * process now (native.uringFds(): lgnet's own, all restricted); [] denies io_uring_enter.
   */
  uringFds?: readonly number[];
  /** Postcopy migration: allow the userfaultfd ioctls (seccomp-policy.ts, PolicyOptions.postcopy). */
  postcopy?: boolean;
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
    policy = compilePolicy('main', {
      arch, unixConnect: opts.unixConnect === true, tapReattach: opts.user !== undefined, postcopy: opts.postcopy === true,
      ...(opts.uringFds ? { uringFds: opts.uringFds } : {}),
      ...(opts.seccompDefault ? { defaultAction: opts.seccompDefault } : {}),
    });
  } catch (e) {
    if (e instanceof JailError) throw e;
    return fail(JAIL_ERROR.SECCOMP, 'compile', 'the seccomp policy does not compile', 'This is a bug in sandbox/seccomp-policy.ts; report it.', e);
  }

  // 0. no process of ours may run outside the jail (needs /proc: before the chroot).
  refuseChildren(opts.keepChildren ?? []);
  const caps = effectiveCaps();

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
    warn(opts, caps === 0n
      ? 'lgnet jail: running as uid 0 without --user: no capabilities, but files owned by root stay open to it; seccomp still applies, but prefer --user nobody --group nogroup.'
      : 'lgnet jail: running as root without --user keeps root\'s uid and capabilities; seccomp still applies, but prefer --user nobody --group nogroup.', 'LGNET_JAIL_ROOT');
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

/** This process's effective capabilities (CapEff of /proc/self/status), or null where /proc is not readable. */
function effectiveCaps(): bigint | null {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? BigInt(`0x${m[1]}`) : null;
  } catch {
    return null;
  }
}
