/**
 * Hardening primitives (native/hardening.cc) for sandbox/jail.ts: no_new_privs, not dumpable,
 * seccomp, credentials, rlimits, chroot.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { MAX_CPUS, UINT32_MAX, checkInt, checkString, checkBytes } from './checks.ts';

export { MAX_CPUS } from './checks.ts';
import { binding as b } from './load.ts';

/** prctl(PR_SET_NO_NEW_PRIVS, 1). */
export function setNoNewPrivs(): void {
  b.setNoNewPrivs();
}

/** Names the calling thread (1–15 bytes), for top -H, perf and /proc/<pid>/task/<tid>/comm. */
export function setThreadName(name: string): void {
  checkString(name, 'name');
  if (name.length === 0 || Buffer.byteLength(name) > 15) throw new RangeError('a thread name is 1 to 15 bytes');
  b.setThreadName(name);
}

/**
 * sched_setaffinity for the calling thread alone: it runs only on `cpus` from now on. A CPU this
 * process may not use (outside its cpuset, or offline) throws NativeError EINVAL.
 */
export function setThreadAffinity(cpus: readonly number[]): void {
  if (!Array.isArray(cpus) || cpus.length === 0) throw new RangeError('cpus: a non-empty array of CPU numbers');
  for (const c of cpus) checkInt(c, 'cpu', 0, MAX_CPUS - 1);
  b.setThreadAffinity(Uint32Array.from(cpus));
}

/** sched_getaffinity for the calling thread: the CPUs it may run on, ascending. */
export function threadAffinity(): number[] {
  return b.threadAffinity();
}

/**
 * prctl(PR_SET_DUMPABLE, 0): the process leaves no core dump, and other processes of the same uid can
 * neither ptrace it nor read /proc/<pid>/mem (where guest memory is mapped).
 */
export function setNotDumpable(): void {
  b.setNotDumpable();
}

/** Bytes per classic BPF instruction (struct sock_filter). */
export const SOCK_FILTER_BYTES = 8;

/**
 * seccomp(SECCOMP_SET_MODE_FILTER) with a classic BPF program (struct sock_filter[], 8 bytes each,
 * ≤ 4096). With tsync (default) every thread of the process gets the filter or none does; the error
 * then has `tid`, the thread that could not synchronize.
 */
export function seccompInstall(filter: Uint8Array, opts: { tsync?: boolean } = {}): void {
  checkBytes(filter, 'filter');
  if (filter.length === 0 || filter.length % SOCK_FILTER_BYTES !== 0 || filter.length / SOCK_FILTER_BYTES > 4096) {
    throw new RangeError('filter must be 1..4096 instructions of 8 bytes');
  }
  b.seccompInstall(filter, opts.tsync !== false);
}

/** -1 leaves an id unchanged. Applies to every thread (glibc). */
export function setresuid(r: number, e: number, s: number): void {
  for (const v of [r, e, s]) checkInt(v, 'uid', -1, UINT32_MAX - 1);
  b.setresuid(r, e, s);
}

export function setresgid(r: number, e: number, s: number): void {
  for (const v of [r, e, s]) checkInt(v, 'gid', -1, UINT32_MAX - 1);
  b.setresgid(r, e, s);
}

export function setgroups(gids: readonly number[]): void {
  if (!Array.isArray(gids)) throw new TypeError('gids must be an array');
  for (const g of gids) checkInt(g, 'gid', 0, UINT32_MAX - 1);
  b.setgroups(Uint32Array.from(gids));
}

/** RLIMIT_* numbers (asm-generic, used by x86-64 and arm64). */
export const RLIMIT = { fsize: 1, core: 4, nproc: 6, nofile: 7, memlock: 8 } as const;
export type RlimitResource = keyof typeof RLIMIT;

function resourceOf(resource: RlimitResource): number {
  const n = RLIMIT[resource];
  if (n === undefined) throw new RangeError(`unknown rlimit resource '${String(resource)}'`);
  return n;
}

function checkLimit(v: number, what: string): void {
  if (typeof v !== 'number') throw new TypeError(`${what} must be a number`);
  if (v !== Infinity && (!Number.isSafeInteger(v) || v < 0)) throw new RangeError(`${what} must be a non-negative integer or Infinity`);
}

/** setrlimit; Infinity means RLIM_INFINITY. */
export function setrlimit(resource: RlimitResource, soft: number, hard: number): void {
  const n = resourceOf(resource);
  checkLimit(soft, 'soft');
  checkLimit(hard, 'hard');
  b.setrlimit(n, soft, hard);
}

/** getrlimit; Infinity for RLIM_INFINITY. */
export function getrlimit(resource: RlimitResource): { soft: number; hard: number } {
  return b.getrlimit(resourceOf(resource));
}

/** chroot(path) then chdir('/'). */
export function chroot(path: string): void {
  checkString(path, 'path');
  b.chroot(path);
}
