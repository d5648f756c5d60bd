/**
 * Shared pieces of the benchmark suite (npm run bench): statistics, per-process CPU and memory from
 * /proc, the machine description, progress lines, result files, and a cleanup registry that runs on
 * normal exit, on an exception and on SIGINT/SIGTERM (namespaces, processes by pid, hugepage settings).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const RESULTS_DIR = process.env['LGNET_BENCH_RESULTS'] ?? join(ROOT, 'bench/results');

/** Env number with a default. */
export function envNum(name: string, def: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${v}`);
  return n;
}

export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
}

/** Median, min and max of the finite values (NaN everywhere when there are none). */
export function stat(xs: readonly number[]): Stat {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return { median: NaN, min: NaN, max: NaN, n: 0 };
  const m = s.length >> 1;
  return { median: s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2, min: s[0]!, max: s[s.length - 1]!, n: s.length };
}

/** The q-quantile (0 ≤ q ≤ 1) of the finite values, nearest rank; NaN when there are none. */
export function percentile(xs: readonly number[], q: number): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]! : NaN;
}

export function median(xs: readonly number[]): number {
  return stat(xs).median;
}

const t0 = Date.now();
/** One progress line on stderr: elapsed time and the step. */
export function progress(step: string, msg: string): void {
  const s = ((Date.now() - t0) / 1000).toFixed(0).padStart(4);
  process.stderr.write(`[bench ${s}s] ${step}: ${msg}\n`);
}

export function writeResult(name: string, data: unknown, dir = RESULTS_DIR): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.json`);
  writeFileSync(path, JSON.stringify(data, null, 2) + '\n');
  return path;
}

export function readResult<T = Record<string, unknown>>(name: string, dir = RESULTS_DIR): T | undefined {
  const path = join(dir, `${name}.json`);
  if (!existsSync(path)) return undefined;
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

// ---- /proc ------------------------------------------------------------------------------------------

const HZ = 100; // USER_HZ on Linux x86_64 and aarch64

/** utime + stime of a process or a thread, in seconds (NaN when gone). */
export function cpuSeconds(pid: number, tid?: number): number {
  try {
    const text = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    // fields after ")" start at field 3 (state); utime is field 14, stime 15.
    return (Number(f[11]) + Number(f[12])) / HZ;
  } catch {
    return NaN;
  }
}

/** The thread ids of `pid` (none once it is gone). */
function taskIds(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
}

/** Per-thread CPU seconds of a process: tid → { comm, cpu }. */
export function threadCpu(pid: number): Map<number, { comm: string; cpu: number }> {
  const out = new Map<number, { comm: string; cpu: number }>();
  for (const t of taskIds(pid)) {
    try {
      const comm = readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
      out.set(Number(t), { comm, cpu: cpuSeconds(pid, Number(t)) });
    } catch {
      /* thread gone */
    }
  }
  return out;
}

/**
 * The scheduler's totals of `pid`'s threads whose name starts with `prefix` (/proc/…/schedstat): ns
 * on a CPU, ns runnable and waiting for one, and times scheduled, summed.
 */
export function threadSchedstat(pid: number, prefix: string): { runNs: number; waitNs: number; slices: number } {
  const sum = { runNs: 0, waitNs: 0, slices: 0 };
  for (const t of taskIds(pid)) {
    try {
      if (!readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').startsWith(prefix)) continue;
      const [run, wait, slices] = readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').trim().split(' ').map(Number);
      sum.runNs += run!;
      sum.waitNs += wait!;
      sum.slices += slices!;
    } catch {
      /* thread gone */
    }
  }
  return sum;
}

/** VmRSS and VmHWM (peak RSS) of a process in MiB. */
export function memory(pid: number): { rssMiB: number; hwmMiB: number } {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
    return { rssMiB: kb('VmRSS') / 1024, hwmMiB: kb('VmHWM') / 1024 };
  } catch {
    return { rssMiB: NaN, hwmMiB: NaN };
  }
}

/** Samples a process's RSS every `everyMs` until stopped; returns the peak and the samples. */
export function rssSampler(pid: number, everyMs = 250): { stop(): { peakMiB: number; samples: number[] } } {
  const samples: number[] = [];
  const tick = () => {
    const m = memory(pid);
    if (Number.isFinite(m.rssMiB)) samples.push(m.rssMiB);
  };
  tick();
  const timer = setInterval(tick, everyMs);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      tick();
      return { peakMiB: samples.length ? Math.max(...samples) : NaN, samples };
    },
  };
}

// ---- machine ----------------------------------------------------------------------------------------

export interface Machine {
  cpu: string;
  cores: number;
  memGiB: number;
  kernel: string;
  os: string;
  node: string;
  qemu: string;
  accel: string;
  loadavg: number[];
  date: string;
}

export function machine(accel?: string): Machine {
  const sh = (argv: string[]) => {
    const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 5000 });
    return (r.stdout ?? '').trim();
  };
  let os = '';
  try {
    os = /^PRETTY_NAME="?([^"\n]*)/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? '';
  } catch {
    /* none */
  }
  const cpuinfo = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '';
  return {
    cpu: cpus()[0]?.model ?? '?',
    cores: cpus().length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    kernel: sh(['uname', '-r']),
    os,
    node: process.version,
    qemu: sh(['qemu-system-x86_64', '--version']).split('\n')[0] ?? '',
    accel: accel ?? (/\b(vmx|svm)\b/.test(flags) && existsSync('/dev/kvm') ? 'kvm' : 'tcg'),
    loadavg: loadavg(),
    date: new Date().toISOString(),
  };
}

// ---- cleanup ----------------------------------------------------------------------------------------

type Cleanup = () => void | Promise<void>;
const cleanups: Array<{ name: string; fn: Cleanup }> = [];
let hooked = false;

/**
 * Registers a cleanup; returns a function that runs it now (once) and unregisters it. Cleanups still
 * registered run in reverse order on SIGINT/SIGTERM (then the process exits 130/143) and, for the
 * synchronous ones, at process exit.
 */
export function onCleanup(name: string, fn: Cleanup): () => Promise<void> {
  const entry = { name, fn };
  cleanups.push(entry);
  hook();
  let done = false;
  return async () => {
    if (done) return;
    done = true;
    const i = cleanups.indexOf(entry);
    if (i >= 0) cleanups.splice(i, 1);
    await fn();
  };
}

async function runAll(): Promise<void> {
  while (cleanups.length) {
    const c = cleanups.pop()!;
    try {
      await c.fn();
    } catch (e) {
      process.stderr.write(`[bench] cleanup ${c.name} failed: ${(e as Error).message}\n`);
    }
  }
}

function hook(): void {
  if (hooked) return;
  hooked = true;
  let signalled = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) return;
    signalled = true;
    process.stderr.write(`[bench] ${sig}: cleaning up (${cleanups.map((c) => c.name).join(', ') || 'nothing'})\n`);
    const hard = setTimeout(() => process.exit(1), 20_000);
    hard.unref();
    void runAll().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => {
    // Last resort: only synchronous work happens here.
    for (const c of cleanups.splice(0).reverse()) {
      try {
        void c.fn();
      } catch {
        /* ignore */
      }
    }
  });
}

/** Sends a signal to a pid, ignoring ESRCH. */
export function killPid(pid: number | undefined, sig: NodeJS.Signals = 'SIGTERM'): void {
  if (!pid || pid <= 0) return;
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

/** Resolves when the pid no longer exists (or after timeoutMs: then SIGKILLs it). */
export async function waitGone(pid: number, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (!existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(safeRead(`/proc/${pid}/status`))) return;
    await sleep(50);
  }
  killPid(pid, 'SIGKILL');
}

function safeRead(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** True when this module's caller file is the process entry (tsx scripts/bench/x.ts). */
export function isMain(metaUrl: string): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  return resolve(arg) === fileURLToPath(metaUrl);
}

/** What a tap-loop run printed: frames moved in `seconds`. */
export interface TapLoopResult {
  mode: string;
  frames: number;
  seconds: number;
  fps: number;
}

/** Compiles scripts/bench/NAME.c to `out` (default .cache/NAME) and returns its path. */
export function buildBenchC(name: string, out = join(ROOT, '.cache', name)): string {
  mkdirSync(dirname(out), { recursive: true });
  const r = spawnSync('cc', ['-O2', '-Wall', '-pthread', '-o', out, join(ROOT, `scripts/bench/${name}.c`)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cc failed on ${name}.c: ${r.error?.message ?? r.stderr}`);
  return out;
}

/** Compiles the C baseline (scripts/bench/tap-loop.c) to `out` (default .cache/tap-loop) and returns its path. */
export const buildTapLoop = (out?: string): string => buildBenchC('tap-loop', out);

/**
 * Runs tap-loop synchronously with `fd` as its fd 3 (no fd when `fd` < 0: the wake mode) and returns
 * its stdout: `args` is the mode and its arguments after the fd (e.g. ['write', '12', '64', '2']).
 * `seconds` bounds the wait; `wrap` runs it under a program first (e.g. ['taskset', '-c', '1']).
 */
export function runTapLoopRaw(bin: string, fd: number, args: string[], seconds: number, wrap: string[] = []): string {
  const argv = fd < 0 ? args : [args[0]!, '3', ...args.slice(1)];
  const [cmd, ...rest] = [...wrap, bin, ...argv];
  const r = spawnSync(cmd!, rest, { stdio: fd < 0 ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe', fd], encoding: 'utf8', timeout: (seconds + 10) * 1000 });
  if (r.status !== 0) throw new Error(`tap-loop ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** runTapLoopRaw for the modes that print a rate. */
export function runTapLoop(bin: string, fd: number, args: string[], seconds: number, wrap: string[] = []): TapLoopResult {
  return JSON.parse(runTapLoopRaw(bin, fd, args, seconds, wrap)) as TapLoopResult;
}

/**
 * Runs `measure` while tap-loop sends `len`-byte frames into the tap from an AF_PACKET socket, under
 * `wrap` if given (e.g. taskset). `seconds` is how long `measure` runs (warm-up included); the sender
 * starts 0.2 s before it and is ended (SIGTERM, on which it reports) as soon as it returns, with
 * `seconds` + 1 as its own limit. `offered` is the sender's rate over the time it ran.
 */
export async function withSender<T>(bin: string, pkt: number, len: number, seconds: number, measure: () => T | Promise<T>, wrap: string[] = []): Promise<{ result: T; offered: number }> {
  const argv = [...wrap, bin, 'send', '3', String(len), String(seconds + 1)];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', pkt] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((res) => child.on('close', () => res()));
  await new Promise((res) => setTimeout(res, 200));
  try {
    const result = await measure();
    if (child.exitCode === null) killPid(child.pid, 'SIGTERM');
    await Promise.race([exited, new Promise((res) => setTimeout(res, 5000))]);
    return { result, offered: out ? (JSON.parse(out) as TapLoopResult).fps : 0 };
  } finally {
    if (child.exitCode === null) killPid(child.pid, 'SIGKILL');
  }
}
