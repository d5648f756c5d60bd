/**
 * npm run bench's jail step (also `npx tsx scripts/bench/jail.ts`): what the jail costs, as TX frames/s
 * (harness → NetDevice → tap) with the jail on and off in the same run (target: on/off ≥ 0.97, a
 * cost under 3 %).
 *
 * A jail cannot be left, so the two sides are two child processes (this file with --child), one
 * jailed, each with its own device and tap in the same namespace. The parent asks them in turn over
 * a line on their stdin, `rounds` times per case, off first in one round and on first in the next;
 * the side not measuring sits idle (its workers asleep). Each round's on/off pairs two measurements
 * seconds apart, so the figure is the median of those per-round ratios (drift on this shared machine
 * hits both halves of a pair); the ratio of the medians is kept beside it. TX is the worst case for
 * seccomp: one writev per frame on the readv/writev path, plus eventfd kicks and calls. The harness
 * runs in the child's main thread and is filtered too, so the cost is, if anything, overstated. Each
 * tap I/O path is measured on its own pair of children: io_uring (one io_uring_enter per burst,
 * allowed by the jail on lgnet's own rings only) and readv/writev per frame. Knobs:
 * LGNET_BENCH_JAIL_SECONDS (per measurement, default 1.5), LGNET_BENCH_JAIL_ROUNDS (default 7),
 * LGNET_BENCH_IO (uring, syscall, or both: the default).
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { envNum, isMain, median, progress, ROOT, writeResult } from './common.ts';

import { mask } from '../../device/features.ts';
import { NetDevice } from '../../device/net.ts';
import { TapBackend, type TapIo } from '../../device/tap-backend.ts';
import * as native from '../../native/index.ts';
import { compilePolicy, enterJail } from '../../sandbox/jail.ts';
import { endTranspilerService } from '../transpiler.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns } from '../../harness/netns.ts';

const QSIZE = 256;

/** One case of the jail step: a tap I/O path and a frame length. */
export interface JailCase {
  io: TapIo;
  len: number;
  /** Frames/s of each round, jail off and on (off first in each round). */
  off: number[];
  on: number[];
  /** Each round's on / off. */
  roundRatios: number[];
  /** The figure: the median of roundRatios. */
  ratio: number;
  /** Median on / median off. */
  ratioOfMedians: number;
}

/** What the jail step writes (bench/results/jail.json). */
export interface JailResults {
  seconds: number;
  rounds: number;
  cases: JailCase[];
}

/** What a child prints per measurement, one JSON line. */
interface Measured { jail: boolean; fps: number; io: string; ioUring: number; txDropBackend: number }

/**
 * The child: a device on a tap of its own in the namespace, jailed or not, then one measurement per
 * line on stdin (a frame length), one JSON line back each, until stdin ends.
 */
async function child(jail: boolean, nsPath: string, nsName: string, io: TapIo, seconds: number): Promise<void> {
  const tap = `lgbj${process.pid.toString(16)}`.slice(0, 15);
  const backend = native.withNetns(nsPath, () => new TapBackend({ name: tap, io }));
  const up = spawnSync('ip', ['-n', nsName, 'link', 'set', tap, 'up']);
  if (up.status !== 0) throw new Error('ip link set up failed');
  const dev = new NetDevice({ backend, mac: '52:54:00:00:00:01', maxQueueSize: QSIZE });
  const ram = new GuestRam(64 << 20);
  const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1', 'RING_EVENT_IDX', 'MAC'), queueSize: QSIZE, rxBufferSize: 2048 });
  await drv.attach(dev);
  // stdin is opened before the jail: what libuv does to a pipe on first use need not be allowed after.
  const requests = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  if (jail) {
    // As lgnet serve does: the process-wide filter, then each queue worker's narrower one.
    endTranspilerService(); // this child runs from source under tsx
    enterJail({ user: 'nobody', group: 'nogroup' });
    await dev.restrictWorkers(compilePolicy('worker').program);
  }
  process.stdout.write('ready\n');
  for (let r = await requests.next(); !r.done; r = await requests.next()) {
    const len = Number(r.value);
    const frame = ethernet(new Uint8Array([2, 0, 0, 0, 0, 2]), new Uint8Array([2, 0, 0, 0, 0, 1]), 0x88b5, new Uint8Array(len - 14));
    drv.blastTx(frame, 0.3); // warm up
    const res = drv.blastTx(frame, seconds);
    const q = dev.metrics().queues[1]!;
    const out: Measured = { jail, fps: res.frames / res.seconds, io: backend.io, ioUring: q.ioUring, txDropBackend: q.txDropBackend };
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  await dev.close();
  drv.close();
  ram.close();
}

/** One side's child process, asked for a measurement at a time. */
class Side {
  private readonly proc: ChildProcessWithoutNullStreams;
  private readonly lines: AsyncIterator<string>;
  private stderr = '';
  readonly mode: 'off' | 'on';
  readonly io: TapIo;

  constructor(mode: 'off' | 'on', ns: { path: string; name: string }, io: TapIo, seconds: number) {
    this.mode = mode;
    this.io = io;
    const self = fileURLToPath(import.meta.url);
    this.proc = spawn(process.execPath, ['--import', 'tsx', self, '--child', mode, ns.path, ns.name, io, String(seconds)], { cwd: ROOT });
    this.proc.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.lines = createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
  }

  private async line(what: string): Promise<string> {
    const r = await this.lines.next();
    if (r.done) throw new Error(`jail bench: the ${this.mode} child (${this.io}) ended before ${what} (exit ${this.proc.exitCode}, signal ${this.proc.signalCode}): ${this.stderr.slice(-2000)}`);
    return r.value;
  }

  /** Waits for the child's device, and checks from outside that the jailed side is filtered and the other is not. */
  async ready(): Promise<void> {
    const l = await this.line('it was ready');
    if (l !== 'ready') throw new Error(`jail bench: the ${this.mode} child said ${l}`);
    // /proc/PID/task/TID/status: Seccomp 2 is filter mode; Seccomp_filters counts the stacked filters
    // (2 on a queue worker: the process-wide one and its own).
    let mode = -1;
    let most = 0;
    for (const tid of readdirSync(`/proc/${this.proc.pid}/task`)) {
      const st = readFileSync(`/proc/${this.proc.pid}/task/${tid}/status`, 'utf8');
      const field = (k: string): number => Number(new RegExp(`^${k}:\\s*(\\d+)`, 'm').exec(st)?.[1] ?? NaN);
      if (Number(tid) === this.proc.pid) mode = field('Seccomp');
      most = Math.max(most, field('Seccomp_filters') || 0);
    }
    const want = this.mode === 'on' ? mode === 2 && most >= 2 : mode === 0 && most === 0;
    if (!want) throw new Error(`jail bench: the ${this.mode} child has seccomp mode ${mode} and at most ${most} filters on a thread`);
  }

  async measure(len: number): Promise<number> {
    this.proc.stdin.write(`${len}\n`);
    const r = JSON.parse(await this.line(`measuring ${len} B`)) as Measured;
    // A jail that refused the ring's io_uring_enter would show as backend drops, not as a slow run.
    if (r.io !== this.io || r.ioUring !== (this.io === 'uring' ? 1 : 0) || r.txDropBackend !== 0 || r.jail !== (this.mode === 'on')) {
      throw new Error(`jail bench: the ${this.mode} child ran ${JSON.stringify(r)}`);
    }
    return r.fps;
  }

  /** Ends the child (stdin closed: it closes its device and exits) and waits for it. */
  async close(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const gone = new Promise<void>((res) => this.proc.once('exit', () => res()));
    this.proc.stdin.end();
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
    await gone;
    clearTimeout(t);
  }
}

/** Runs the jail on/off rounds of every case and writes jail.json. */
export async function benchJail(o: { seconds?: number; rounds?: number; ios?: TapIo[]; lens?: number[]; outDir?: string } = {}): Promise<JailResults> {
  const seconds = o.seconds ?? envNum('LGNET_BENCH_JAIL_SECONDS', 1.5);
  const rounds = o.rounds ?? envNum('LGNET_BENCH_JAIL_ROUNDS', 7);
  const ios: TapIo[] = o.ios ?? (process.env['LGNET_BENCH_IO'] ? [process.env['LGNET_BENCH_IO'] as TapIo] : ['uring', 'syscall']);
  const ns = createNetns('lgbjail');
  const results: JailResults = { seconds, rounds, cases: [] };
  try {
    for (const io of ios) {
      const sides = { off: new Side('off', ns, io, seconds), on: new Side('on', ns, io, seconds) };
      try {
        await Promise.all([sides.off.ready(), sides.on.ready()]);
        for (const len of o.lens ?? [64, 1514]) {
          const fps: Record<'on' | 'off', number[]> = { on: [], off: [] };
          for (let i = 0; i < rounds; i++) {
            // The order alternates, so that whatever the second of a pair pays (or gains) falls on both.
            if (i % 2 === 0) {
              fps.off.push(await sides.off.measure(len));
              fps.on.push(await sides.on.measure(len));
            } else {
              fps.on.push(await sides.on.measure(len));
              fps.off.push(await sides.off.measure(len));
            }
          }
          const roundRatios = fps.on.map((v, k) => v / fps.off[k]!);
          const x: JailCase = { io, len, off: fps.off, on: fps.on, roundRatios, ratio: median(roundRatios), ratioOfMedians: median(fps.on) / median(fps.off) };
          results.cases.push(x);
          progress('jail', `${io} tx ${len} B: jail off ${(median(fps.off) / 1e6).toFixed(3)} M/s, on ${(median(fps.on) / 1e6).toFixed(3)} M/s, on/off per round ${x.ratio.toFixed(3)} (${Math.min(...roundRatios).toFixed(3)}–${Math.max(...roundRatios).toFixed(3)}), of the medians ${x.ratioOfMedians.toFixed(3)}`);
        }
      } finally {
        await Promise.all([sides.off.close(), sides.on.close()]);
      }
    }
  } finally {
    ns.destroy();
  }
  writeResult('jail', results, o.outDir);
  return results;
}

const i = process.argv.indexOf('--child');
if (i > 0) {
  const a = process.argv;
  await child(a[i + 1] === 'on', a[i + 2]!, a[i + 3]!, a[i + 4] as TapIo, Number(a[i + 5]));
} else if (isMain(import.meta.url)) {
  await benchJail();
}
