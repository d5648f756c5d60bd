/**
 * npm run bench's jail step (also `npx tsx scripts/bench/jail.ts`): what the jail costs, as frames/s
 * through an embedded device and a tap with the jail on and off in the same run (target: on/off ≥
 * 0.97, a cost under 3 %), both ways: TX (the harness blasts, lgnet writes the tap) and RX (tap-loop
 * feeds the tap from an AF_PACKET socket, lgnet reads it into the harness's buffers).
 *
 * A jail cannot be left, so the two sides are two child processes (this file with --child), one
 * jailed, each with its own device and tap in the same namespace. The parent asks them in turn over
 * a line on their stdin, `rounds` times per case, off first in one round and on first in the next;
 * the side not measuring sits idle (its workers asleep). Each round's on/off pairs two measurements
 * seconds apart, so the figure is the median of those per-round ratios (drift on this shared machine
 * hits both halves of a pair); the ratio of the medians is kept beside it. TX is the worst case for
 * seccomp on the readv/writev path: one writev per frame, plus eventfd kicks and calls. The harness
 * runs in the child's main thread and is filtered too, so the cost is, if anything, overstated. Each
 * tap I/O path is measured on its own pair of children: io_uring (one io_uring_enter per burst,
 * allowed by the jail on lgnet's own rings only) and readv/writev per frame.
 *
 * On this kind of shared VM single rounds spread far wider than 3 %, so the step also works the cost
 * out from its parts. The jail's only cost on the frame path is the filters' work on each system call
 * (the rest of it, the user, the limits, no_new_privs, is set once). So: what the two filters of a
 * jailed queue worker add to each system call of its frame path, timed in C (seccomp-cost.c), times
 * how many of each lgnet's threads make per frame on the jailed side (counted with ftrace, as root),
 * against the queue workers' CPU per frame (schedstat). Knobs: LGNET_BENCH_JAIL_SECONDS (per
 * measurement, default 1.5), LGNET_BENCH_JAIL_ROUNDS (default 7), LGNET_BENCH_IO (uring, syscall, or
 * both: the default), LGNET_BENCH_JAIL_DIRS (tx, rx, or tx,rx: the default), LGNET_BENCH_JAIL_FILTER_CALLS
 * and _ROUNDS (seccomp-cost: 50,000 calls of each system call per side and round, 10 rounds),
 * LGNET_BENCH_JAIL_TRACE_SECONDS (the counted measurement, 0.25).
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { buildBenchC, buildTapLoop, envNum, isMain, median, progress, ROOT, threadSchedstat, withSender, writeResult } from './common.ts';
import { countSyscalls } from './ftrace.ts';

import { mask } from '../../device/features.ts';
import { NetDevice } from '../../device/net.ts';
import { TapBackend, type TapIo } from '../../device/tap-backend.ts';
import * as native from '../../native/index.ts';
import { compilePolicy, enterJail } from '../../sandbox/jail.ts';
import { currentArch, syscallTable } from '../../sandbox/jail-policy.ts';
import { endTranspilerService } from '../transpiler.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns, openPacketIn, type Netns } from '../../harness/netns.ts';

const QSIZE = 256;

/** Which way frames go: TX (the harness blasts, lgnet writes the tap) or RX (a C sender feeds the tap, lgnet reads it into the harness's buffers). */
export type JailDir = 'tx' | 'rx';

/** One case of the jail step: a direction, a tap I/O path and a frame length. */
export interface JailCase {
  dir: JailDir;
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
  /** CPU time of lgnet's own threads (the queue workers) per frame in each round, ns, jail off and on. */
  workerNsOff: number[];
  workerNsOn: number[];
  /** What the filters add per frame, from the system calls counted on the jailed side (absent: not counted). */
  filter?: FilterShare;
}

/** One system call's cost without and with both filters (a jailed queue worker's), ns per call. */
export interface SyscallCost {
  name: string;
  /** Medians over the rounds. */
  offNs: number;
  onNs: number;
  /** The median of the rounds' on − off. */
  deltaNs: number;
  /** The median of the rounds' differences between two bare threads: the method's noise. */
  noiseNs: number;
}

/** scripts/bench/seccomp-cost.c's figures. */
export interface FilterCost {
  calls: number;
  blocks: number;
  rounds: number;
  syscalls: SyscallCost[];
}

/** The system calls a thread of the jailed side made per frame, and what the filters add to each. */
export interface FilterRow {
  comm: string;
  syscall: string;
  perFrame: number;
  /** The filters' cost of one call; a call seccomp-cost does not time takes the largest it timed. */
  deltaNs: number;
  timed: boolean;
}

/** The filters' share of a frame: their cost summed over the queue workers' calls, against the workers' CPU per frame. */
export interface FilterShare {
  seconds: number;
  frames: number;
  /** False when the trace buffer overflowed (the counts are then short, and the figure left out). */
  complete: boolean;
  rows: FilterRow[];
  /** Σ perFrame × deltaNs over lgnet's threads (the queue workers), ns. */
  extraNsPerFrame: number;
  /** extraNsPerFrame / the median of workerNsOn. */
  share: number;
}

/** What the jail step writes (bench/results/jail.json). */
export interface JailResults {
  seconds: number;
  rounds: number;
  cases: JailCase[];
  filterCost?: FilterCost;
  /** Why the filters' share was not counted, where it was not. */
  filterSkipped?: string;
}

/** What a child prints per measurement, one JSON line: `frames` counts the warm-up's too; the counters are the measured queue's. */
interface Measured { jail: boolean; dir: JailDir; fps: number; frames: number; io: string; ioUring: number; dropBackend: number; backendErrno: number; queueBroken: number }

/**
 * The child: a device on a tap of its own in the namespace, jailed or not, then one measurement per
 * line on stdin, one JSON line back each, until stdin ends. A line is a direction and a frame length
 * (a warm-up, then `seconds`), or those and a number of seconds (no warm-up). For RX the parent feeds
 * the tap (named in the `ready` line) while the child recycles its RX buffers.
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
  process.stdout.write(`ready ${tap}\n`);
  for (let r = await requests.next(); !r.done; r = await requests.next()) {
    const [dir, l, s] = r.value.split(' ') as [JailDir, string, string | undefined];
    const len = Number(l);
    const secs = s === undefined ? undefined : Number(s);
    let res: { frames: number; seconds: number };
    let frames: number;
    if (dir === 'tx') {
      const frame = ethernet(new Uint8Array([2, 0, 0, 0, 0, 2]), new Uint8Array([2, 0, 0, 0, 0, 1]), 0x88b5, new Uint8Array(len - 14));
      const warm = secs === undefined ? drv.blastTx(frame, 0.3).frames : 0;
      res = drv.blastTx(frame, secs ?? seconds);
      frames = warm + res.frames;
    } else {
      // The frames the RX queue delivered, as the device bench counts them (the sender runs throughout).
      const delivered = (): number => dev.metrics().queues[0]!.frames;
      const f0 = delivered();
      if (secs === undefined) drv.sinkRx(0.3);
      const f1 = delivered();
      const t = drv.sinkRx(secs ?? seconds);
      res = { frames: delivered() - f1, seconds: t.seconds };
      frames = delivered() - f0;
    }
    const q = dev.metrics().queues[dir === 'tx' ? 1 : 0]!;
    const out: Measured = {
      jail, dir, fps: res.frames / res.seconds, frames, io: backend.io, ioUring: q.ioUring,
      dropBackend: dir === 'tx' ? q.txDropBackend : q.rxDropBackend, backendErrno: q.backendErrno, queueBroken: q.queueBroken,
    };
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
  private readonly ns: Netns;
  private readonly sender: string;
  private readonly seconds: number;
  /** An AF_PACKET socket on the child's tap, for the RX sender (opened once the child is ready). */
  private pkt = -1;
  readonly mode: 'off' | 'on';
  readonly io: TapIo;
  readonly pid: number;

  /** `sender` is tap-loop, which feeds the child's tap for RX. */
  constructor(mode: 'off' | 'on', ns: Netns, io: TapIo, seconds: number, sender: string) {
    this.mode = mode;
    this.io = io;
    this.ns = ns;
    this.sender = sender;
    this.seconds = seconds;
    const self = fileURLToPath(import.meta.url);
    this.proc = spawn(process.execPath, ['--import', 'tsx', self, '--child', mode, ns.path, ns.name, io, String(seconds)], { cwd: ROOT });
    this.pid = this.proc.pid!;
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
    const tap = /^ready (\S+)$/.exec(l)?.[1];
    if (!tap) throw new Error(`jail bench: the ${this.mode} child said ${l}`);
    this.pkt = openPacketIn(this.ns, tap); // closed with the namespace
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

  /**
   * One measurement (`seconds` given: that long, without a warm-up): frames/s, frames in all, and the
   * CPU time lgnet's threads (the queue workers, `lgnet-…`) spent per frame, the warm-up's included.
   * For RX, tap-loop feeds the child's tap throughout from an AF_PACKET socket.
   */
  async measure(dir: JailDir, len: number, seconds?: number): Promise<{ fps: number; frames: number; workerNs: number }> {
    const before = threadSchedstat(this.pid, 'lgnet-').runNs;
    const ask = async (): Promise<Measured> => {
      this.proc.stdin.write(seconds === undefined ? `${dir} ${len}\n` : `${dir} ${len} ${seconds}\n`);
      return JSON.parse(await this.line(`measuring ${dir} ${len} B`)) as Measured;
    };
    const r = dir === 'tx' ? await ask() : (await withSender(this.sender, this.pkt, len, seconds ?? this.seconds + 0.3, ask)).result;
    const workerNs = (threadSchedstat(this.pid, 'lgnet-').runNs - before) / r.frames;
    // A jail that refused the ring's io_uring_enter (or the readv) would show as backend drops or a
    // broken queue, not as a slow run.
    if (r.dir !== dir || r.io !== this.io || r.ioUring !== (this.io === 'uring' ? 1 : 0) || r.dropBackend !== 0 || r.backendErrno !== 0 || r.queueBroken !== 0 || !(r.frames > 0) || r.jail !== (this.mode === 'on')) {
      throw new Error(`jail bench: the ${this.mode} child ran ${JSON.stringify(r)}`);
    }
    return { fps: r.fps, frames: r.frames, workerNs };
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

/**
 * Times each system call of a queue worker's frame path without and with both of lgnet's filters
 * (scripts/bench/seccomp-cost.c: per round a fresh process, whose filtered thread and two bare ones
 * take `blocks` turns each on one CPU), `calls` calls of each per round and thread.
 */
export function filterCost(calls: number, blocks: number, rounds: number): FilterCost {
  const bin = buildBenchC('seccomp-cost');
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-seccomp-'));
  try {
    // Any fd number will do: the program puts its ring there, and the filters are compiled for it.
    const ringFd = 200;
    const files = (['main', 'worker'] as const).map((role) => {
      const f = join(dir, `${role}.bpf`);
      writeFileSync(f, compilePolicy(role, { uringFds: [ringFd] }).program);
      return f;
    });
    const r = spawnSync(bin, [...files, String(ringFd), String(calls), String(blocks), String(rounds)], { encoding: 'utf8', timeout: 600_000 });
    if (r.status !== 0) throw new Error(`seccomp-cost failed (${r.status ?? r.signal}): ${r.stderr}`);
    // Lines: "off|on|ctl ROUND name ns name ns …" (ctl: a second bare thread).
    const by = new Map<string, { off: number[]; on: number[]; ctl: number[] }>();
    for (const line of r.stdout.trim().split('\n')) {
      const [side, , ...kv] = line.split(' ');
      for (let k = 0; k + 1 < kv.length; k += 2) {
        const e = by.get(kv[k]!) ?? by.set(kv[k]!, { off: [], on: [], ctl: [] }).get(kv[k]!)!;
        e[side as 'off' | 'on' | 'ctl'].push(Number(kv[k + 1]));
      }
    }
    const diff = (a: number[], b: number[]): number => median(a.map((v, i) => v - b[i]!));
    const syscalls = [...by].map(([name, x]) => ({ name, offNs: median(x.off), onNs: median(x.on), deltaNs: diff(x.on, x.off), noiseNs: diff(x.ctl, x.off) }));
    return { calls, blocks, rounds, syscalls };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The filters' share of a frame on the jailed side: every system call its threads make in `seconds`
 * of blasting (ftrace), each weighed by what the filters add to it (`cost`), summed over lgnet's
 * threads, against the queue workers' CPU per frame (`workerNs`, from the untraced rounds).
 */
async function filterShare(side: Side, dir: JailDir, len: number, seconds: number, cost: FilterCost, workerNs: number): Promise<FilterShare> {
  const { result, counts, lost } = await countSyscalls(side.pid, () => side.measure(dir, len, seconds));
  const names = Object.fromEntries(Object.entries(syscallTable(currentArch()!)).map(([k, v]) => [v, k]));
  const worst = Math.max(...cost.syscalls.map((x) => x.deltaNs));
  const rows: FilterRow[] = counts.map((c) => {
    const syscall = names[c.nr] ?? `nr ${c.nr}`;
    const timed = cost.syscalls.find((x) => x.name === syscall);
    return { comm: c.comm, syscall, perFrame: c.count / result.frames, deltaNs: timed ? Math.max(timed.deltaNs, 0) : worst, timed: timed !== undefined };
  });
  const extraNsPerFrame = rows.filter((x) => x.comm.startsWith('lgnet-')).reduce((a, x) => a + x.perFrame * x.deltaNs, 0);
  return { seconds, frames: result.frames, complete: !lost, rows, extraNsPerFrame, share: extraNsPerFrame / workerNs };
}

/** Runs the jail on/off rounds of every case and writes jail.json. */
export async function benchJail(o: { seconds?: number; rounds?: number; ios?: TapIo[]; dirs?: JailDir[]; lens?: number[]; outDir?: string; filterCalls?: number; filterRounds?: number; traceSeconds?: number } = {}): Promise<JailResults> {
  const seconds = o.seconds ?? envNum('LGNET_BENCH_JAIL_SECONDS', 1.5);
  const rounds = o.rounds ?? envNum('LGNET_BENCH_JAIL_ROUNDS', 7);
  const ios: TapIo[] = o.ios ?? (process.env['LGNET_BENCH_IO'] ? [process.env['LGNET_BENCH_IO'] as TapIo] : ['uring', 'syscall']);
  const dirs: JailDir[] = o.dirs ?? (process.env['LGNET_BENCH_JAIL_DIRS'] ? (process.env['LGNET_BENCH_JAIL_DIRS'].split(',') as JailDir[]) : ['tx', 'rx']);
  for (const d of dirs) if (d !== 'tx' && d !== 'rx') throw new Error(`jail bench: unknown direction ${JSON.stringify(d)} (LGNET_BENCH_JAIL_DIRS takes tx, rx or tx,rx)`);
  const results: JailResults = { seconds, rounds, cases: [] };
  // What each filtered system call costs, timed once for all cases; the trace needs root and tracefs.
  const counted = process.getuid?.() === 0 && existsSync('/sys/kernel/tracing');
  if (counted) {
    results.filterCost = filterCost(o.filterCalls ?? envNum('LGNET_BENCH_JAIL_FILTER_CALLS', 50_000), 50, o.filterRounds ?? envNum('LGNET_BENCH_JAIL_FILTER_ROUNDS', 10));
    progress('jail', `the filters' cost per system call (ns, on − off, and bare − bare): ${results.filterCost.syscalls.map((x) => `${x.name} ${x.deltaNs.toFixed(0)} (${x.noiseNs.toFixed(0)})`).join(', ')}`);
  } else {
    results.filterSkipped = 'not root, or no tracefs: the system calls per frame cannot be counted';
    progress('jail', `the filters' share of a frame is not counted: ${results.filterSkipped}`);
  }
  // The RX sender, compiled into a directory of this run's own (a checkout's .cache/ may be shared).
  const cdir = mkdtempSync(join(tmpdir(), 'lgnet-jail-'));
  let ns: Netns | undefined;
  try {
    const sender = buildTapLoop(join(cdir, 'tap-loop'));
    ns = createNetns('lgbjail');
    for (const io of ios) {
      const sides = { off: new Side('off', ns, io, seconds, sender), on: new Side('on', ns, io, seconds, sender) };
      try {
        await Promise.all([sides.off.ready(), sides.on.ready()]);
        for (const [dir, len] of dirs.flatMap((d) => (o.lens ?? [64, 1514]).map((l) => [d, l] as const))) {
          const fps: Record<'on' | 'off', number[]> = { on: [], off: [] };
          const cpu: Record<'on' | 'off', number[]> = { on: [], off: [] };
          const one = async (side: 'on' | 'off'): Promise<void> => {
            const m = await sides[side].measure(dir, len);
            fps[side].push(m.fps);
            cpu[side].push(m.workerNs);
          };
          for (let i = 0; i < rounds; i++) {
            // The order alternates, so that whatever the second of a pair pays (or gains) falls on both.
            await one(i % 2 === 0 ? 'off' : 'on');
            await one(i % 2 === 0 ? 'on' : 'off');
          }
          const roundRatios = fps.on.map((v, k) => v / fps.off[k]!);
          const x: JailCase = { dir, io, len, off: fps.off, on: fps.on, roundRatios, ratio: median(roundRatios), ratioOfMedians: median(fps.on) / median(fps.off), workerNsOff: cpu.off, workerNsOn: cpu.on };
          results.cases.push(x);
          progress('jail', `${io} ${dir} ${len} B: jail off ${(median(fps.off) / 1e6).toFixed(3)} M/s, on ${(median(fps.on) / 1e6).toFixed(3)} M/s, on/off per round ${x.ratio.toFixed(3)} (${Math.min(...roundRatios).toFixed(3)}–${Math.max(...roundRatios).toFixed(3)}), of the medians ${x.ratioOfMedians.toFixed(3)}; workers' CPU per frame off ${median(cpu.off).toFixed(0)} ns, on ${median(cpu.on).toFixed(0)} ns`);
          if (results.filterCost) {
            const f = await filterShare(sides.on, dir, len, o.traceSeconds ?? envNum('LGNET_BENCH_JAIL_TRACE_SECONDS', 0.25), results.filterCost, median(cpu.on));
            x.filter = f;
            const top = f.rows.filter((r) => r.comm.startsWith('lgnet-')).slice(0, 3).map((r) => `${r.comm} ${r.syscall} ${r.perFrame.toPrecision(3)}`).join(', ');
            progress('jail', `${io} ${dir} ${len} B: the filters add ${f.extraNsPerFrame.toFixed(2)} ns per frame, ${(f.share * 100).toFixed(2)} % of the workers' CPU per frame${f.complete ? '' : ' (the trace overflowed: counts short)'}; system calls per frame: ${top}`);
          }
        }
      } finally {
        await Promise.all([sides.off.close(), sides.on.close()]);
      }
    }
  } finally {
    ns?.destroy();
    rmSync(cdir, { recursive: true, force: true });
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
