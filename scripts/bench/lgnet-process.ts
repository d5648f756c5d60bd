/**
 * Starts `bin/lgnet serve --metrics-socket PATH` inside a network namespace, for the guest and DPDK
 * benchmarks, and reads its counters from the metrics socket (a filesystem unix socket, reachable from
 * outside the namespace). Killed by pid; registered with the cleanup registry so that Ctrl-C does not
 * leave it behind. Profiling: nodeOptions (NODE_OPTIONS), e.g. '--cpu-prof --cpu-prof-dir=DIR'.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { killPid, onCleanup, ROOT } from './common.ts';
import type { QueueMetrics } from '../../device/metrics.ts';
import { readMetrics } from '../../sandbox/metrics-endpoint.ts';

/** The newest mtime (ms) of the files under `dir` whose names end in one of `exts`; 0 if none. */
function newest(dir: string, exts: string[]): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && exts.some((x) => e.name.endsWith(x)) && !e.name.endsWith('.test.ts')) t = Math.max(t, statSync(join(e.parentPath, e.name)).mtimeMs);
  }
  return t;
}

/**
 * `lgnet serve` runs the compiled dist/ and build/Release/lgnet.node, not the sources the tsx-run
 * benches use: a source edited since the last build would be measured as its old self, or worse, old
 * JS against a new addon (session 14 measured a spinning RX worker that way). Throws when either is
 * older than what it is built from.
 */
function checkBuilt(): void {
  const dirs = ['device', 'native', 'sandbox', 'vring', 'harness', 'errors'].map((d) => join(ROOT, d));
  const src = Math.max(statSync(join(ROOT, 'index.ts')).mtimeMs, ...dirs.map((d) => newest(d, ['.ts'])));
  const cc = newest(join(ROOT, 'native'), ['.cc', '.h']);
  const dist = newest(join(ROOT, 'dist'), ['.js']);
  // No local build: the loader takes a prebuild, which matches the sources it shipped with.
  const addon = statSync(join(ROOT, 'build/Release/lgnet.node'), { throwIfNoEntry: false })?.mtimeMs ?? Infinity;
  if (dist < src) throw new Error('dist/ is older than the TypeScript sources: run `npm run build:ts` before a bench that starts lgnet serve');
  if (addon < cc) throw new Error('build/Release/lgnet.node is older than native/*.cc: run `npm run build:native` before a bench that starts lgnet serve');
}

export interface LgnetSnapshot {
  ts_ms: number;
  queues: Array<QueueMetrics & { index: number; role: string }>;
}

export interface LgnetProcess {
  pid: number;
  argv: string[];
  child: ChildProcess;
  /** Reads the metrics socket (undefined when it does not answer). */
  metrics(): Promise<LgnetSnapshot | undefined>;
  /** SIGTERM, then SIGKILL; resolves with the exit code. */
  stop(): Promise<number | null>;
  log(): string;
}

export async function startLgnet(o: {
  ns: string;
  socket: string;
  tap: string;
  queues?: number;
  /** NODE_OPTIONS for lgnet's node, e.g. '--perf-basic-prof'. */
  nodeOptions?: string;
  /**
   * Node flags NODE_OPTIONS refuses (e.g. ['--cpu-prof', '--cpu-prof-dir=DIR']): node is then started
   * directly on bin/lgnet (which runs the compiled CLI in dist/).
   */
  nodeArgs?: string[];
  /** Path of the metrics socket. */
  metricsPath: string;
  /** Run under another program first, e.g. ['taskset', '-c', '1']. */
  wrap?: string[];
  /** More `lgnet serve` flags, e.g. ['--worker-cpus', '1']. */
  extraArgs?: string[];
}): Promise<LgnetProcess> {
  checkBuilt();
  const launcher = o.nodeArgs
    ? [process.execPath, ...o.nodeArgs, join(ROOT, 'bin/lgnet')]
    : [join(ROOT, 'bin/lgnet')];
  // LGNET_BENCH_SERVE_WRAP runs every lgnet serve the benches start under a program, e.g. 'taskset -c 1'.
  const wrap = o.wrap ?? (process.env['LGNET_BENCH_SERVE_WRAP'] ?? '').split(/\s+/).filter(Boolean);
  const argv = [
    ...wrap,
    ...launcher, 'serve', '--socket', o.socket, '--tap', o.tap, '--queues', String(o.queues ?? 1),
    '--metrics-socket', o.metricsPath, '--log-level', 'warn',
    // LGNET_BENCH_SERVE_ARGS adds flags to every lgnet serve the benches start, e.g. '--busy-poll 50'.
    ...(process.env['LGNET_BENCH_SERVE_ARGS'] ?? '').split(/\s+/).filter(Boolean),
    ...(o.extraArgs ?? []),
  ];
  rmSync(o.metricsPath, { force: true });
  // `ip netns exec` execs in place: the pid is node's own (or the wrapper's, which execs too).
  const child = spawn('ip', ['netns', 'exec', o.ns, ...argv], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(o.nodeOptions ? { NODE_OPTIONS: o.nodeOptions } : {}) },
  });
  let log = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (log.length < 200_000) log += d;
  });
  const pid = child.pid!;
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  const unregister = onCleanup(`lgnet ${pid}`, () => killPid(pid, 'SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`lgnet did not get ready: ${out}\n${log}`)), 30_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes('lgnet ready')) {
        clearTimeout(t);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(t);
      reject(new Error(`lgnet exited (${code}) before ready: ${log}`));
    });
  }).catch(async (e) => {
    killPid(pid, 'SIGKILL');
    await unregister();
    throw e;
  });
  return {
    pid,
    argv,
    child,
    async metrics() {
      try {
        return (await readMetrics(o.metricsPath, 2000)) as unknown as LgnetSnapshot;
      } catch {
        return undefined;
      }
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) {
        await unregister();
        return child.exitCode;
      }
      killPid(pid, 'SIGTERM');
      const k = setTimeout(() => killPid(pid, 'SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(k);
      await unregister();
      return code;
    },
    log: () => log,
  };
}

/** Frames, interrupts (sent and held) and kicks summed over queues by role, between two snapshots. */
export function metricsDelta(a: LgnetSnapshot | undefined, b: LgnetSnapshot | undefined): {
  rxFrames: number; txFrames: number; rxInterrupts: number; txInterrupts: number; txKicks: number; rxKicks: number;
  interruptsPerFrame: number; kicksPerTxFrame: number; kicksPerFrame: number; rxNoBuffers: number; interruptsHeld: number;
} {
  const sum = (s: LgnetSnapshot | undefined, role: string, k: keyof QueueMetrics) =>
    (s?.queues ?? []).filter((q) => q.role === role).reduce((acc, q) => acc + (q[k] ?? 0), 0);
  const d = (role: string, k: keyof QueueMetrics) => sum(b, role, k) - sum(a, role, k);
  const rxFrames = d('rx', 'frames');
  const txFrames = d('tx', 'frames');
  const rxInterrupts = d('rx', 'interrupts');
  const txInterrupts = d('tx', 'interrupts');
  const txKicks = d('tx', 'kicks');
  const rxKicks = d('rx', 'kicks');
  return {
    rxFrames, txFrames, rxInterrupts, txInterrupts, txKicks, rxKicks,
    interruptsPerFrame: (rxInterrupts + txInterrupts) / Math.max(1, rxFrames + txFrames),
    kicksPerTxFrame: txKicks / Math.max(1, txFrames),
    kicksPerFrame: (txKicks + rxKicks) / Math.max(1, rxFrames + txFrames),
    interruptsHeld: d('rx', 'interruptsHeld') + d('tx', 'interruptsHeld'),
    rxNoBuffers: d('rx', 'rxNoBuffers'),
  };
}
