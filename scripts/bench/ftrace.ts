/**
 * ftrace for the latency benchmarks (ping-trace.ts: a guest's pings; device.ts: the harness's echoes):
 * turn on the scheduler and read/write (and io_uring_enter) system-call events for some processes' threads, read the trace
 * back, and cut it into the hops of one round trip through lgnet's two workers. Needs root (tracefs);
 * traceOff() leaves tracing off and empty.
 */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { stat, type Stat } from './common.ts';

const T = '/sys/kernel/tracing';

/** Mounts tracefs where it is not yet. */
export function tracefs(): void {
  if (!existsSync(join(T, 'trace'))) execFileSync('mount', ['-t', 'tracefs', 'nodev', T]);
}

/** Writes one tracefs control file. */
export const put = (f: string, v: string): void => writeFileSync(join(T, f), v);

/** Empties the buffer (per CPU, `bufferKb`) and selects `events` of threads `tids` alone, tracing left off. */
function selectEvents(tids: ReadonlyArray<number | string>, events: readonly string[], bufferKb: number): void {
  put('tracing_on', '0');
  put('trace', '');
  put('buffer_size_kb', String(bufferKb));
  put('set_event', '');
  put('set_event_pid', tids.join(' '));
  for (const e of events) writeFileSync(join(T, 'set_event'), `${e}\n`, { flag: 'a' });
}

/** Records the scheduler and read/write system calls of every thread of `pids` (tracing left off). */
export function traceSetup(pids: number[]): void {
  const events = ['sched:sched_switch', 'sched:sched_wakeup', 'syscalls:sys_enter_write', 'syscalls:sys_enter_writev', 'syscalls:sys_enter_readv', 'syscalls:sys_enter_read', 'syscalls:sys_enter_io_uring_enter'];
  // Every system call's entry and exit too, for reading a raw trace (LGNET_BENCH_TRACE_RAW).
  if (process.env['LGNET_BENCH_TRACE_SYSCALLS']) events.push('raw_syscalls:sys_enter', 'raw_syscalls:sys_exit');
  selectEvents(pids.flatMap((p) => readdirSync(`/proc/${p}/task`)), events, 16384);
}

/** Stops tracing and returns what was recorded; the buffer and the event selection are cleared. */
export function traceOff(): string {
  put('tracing_on', '0');
  const text = readFileSync(join(T, 'trace'), 'utf8');
  put('trace', '');
  put('set_event', '');
  put('set_event_pid', '');
  return text;
}

/** How many times one thread made one system call. */
export interface SyscallCount {
  tid: number;
  comm: string;
  nr: number;
  count: number;
}

/**
 * Counts every system call entered by the threads of `pid` while `during` runs (raw_syscalls:sys_enter,
 * kept in the trace buffer and counted afterwards; tracing is left off and empty). `lost` is true when
 * the buffer overflowed, so that the counts are short: keep `during` short on a busy path.
 */
export async function countSyscalls<T>(pid: number, during: () => Promise<T>): Promise<{ result: T; counts: SyscallCount[]; lost: boolean }> {
  tracefs();
  const tids = readdirSync(`/proc/${pid}/task`).map(Number);
  const comm = new Map(tids.map((t) => [t, readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim()]));
  selectEvents(tids, ['raw_syscalls:sys_enter'], 32768);
  let result: T;
  let text: string;
  put('tracing_on', '1');
  try {
    result = await during();
  } finally {
    text = traceOff();
  }
  const by = new Map<string, SyscallCount>();
  for (const m of text.matchAll(/-(\d+)\s+\[\d+\][^\n]*?sys_enter: NR (\d+) /g)) {
    const tid = Number(m[1]);
    const nr = Number(m[2]);
    const k = `${tid} ${nr}`;
    const c = by.get(k) ?? by.set(k, { tid, comm: comm.get(tid) ?? String(tid), nr, count: 0 }).get(k)!;
    c.count++;
  }
  const h = /entries-in-buffer\/entries-written: (\d+)\/(\d+)/.exec(text);
  return { result: result!, counts: [...by.values()].sort((a, b) => b.count - a.count), lost: !h || h[1] !== h[2] };
}

/** One trace line. */
export interface Ev {
  comm: string;
  tid: number;
  ts: number; // µs
  name: string;
  args: string;
}

export function parse(text: string): Ev[] {
  const out: Ev[] = [];
  // sched events print "name: args", syscall entries "sys_name(args)".
  const re = /^\s*(.+)-(\d+)\s+\[\d+\]\s+\S+\s+(\d+\.\d+): (\w+)(?:: |\()(.*)$/;
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (m) out.push({ comm: m[1]!.trim(), tid: Number(m[2]), ts: Number(m[3]) * 1e6, name: m[4]!, args: m[5]! });
  }
  return out;
}

/** The next event at or after index i matching f. */
export function next(evs: Ev[], i: number, f: (e: Ev) => boolean, within = 20_000): number {
  for (let j = i; j < evs.length && evs[j]!.ts - evs[i]!.ts < within; j++) if (f(evs[j]!)) return j;
  return -1;
}
export function prev(evs: Ev[], i: number, f: (e: Ev) => boolean, within = 20_000): number {
  for (let j = i; j >= 0 && evs[i]!.ts - evs[j]!.ts < within; j--) if (f(evs[j]!)) return j;
  return -1;
}

/** A sched_switch to a thread `pred` accepts. */
export const switchTo = (pred: (comm: string, pid: number) => boolean) => (e: Ev): boolean => {
  if (e.name !== 'sched_switch') return false;
  const m = /next_comm=(.+) next_pid=(\d+)/.exec(e.args);
  return !!m && pred(m[1]!.trim(), Number(m[2]));
};
export const wakeOf = (tid: number) => (e: Ev): boolean => e.name === 'sched_wakeup' && new RegExp(` pid=${tid} `).test(e.args);

export type Hops = Record<string, number>;

/** The TX worker handing frames to the tap: a writev, or (tap I/O 'uring') an io_uring_enter. */
export const isTapWrite = (e: Ev): boolean => e.comm === 'lgnet-tx1' && (e.name === 'sys_writev' || e.name === 'sys_io_uring_enter');
/** The RX worker reading the tap: a readv (also MRG_RXBUF's on the io_uring path), or an io_uring_enter. */
export const isTapRead = (e: Ev): boolean => e.comm === 'lgnet-rx0' && (e.name === 'sys_readv' || e.name === 'sys_io_uring_enter');

/**
 * The TX worker's tap write at index `i` (a request; isTapWrite) and what lgnet does for its answer: the indices of
 * the front-end's kick before it (a write by a thread `isKicker` accepts), the TX worker's start of
 * run after the kick, the RX worker's run, its readv and its call eventfd write. Null where a hop is
 * missing (the trace started or ended mid-echo).
 */
export function workerHops(evs: Ev[], i: number, isKicker: (e: Ev) => boolean): { kick: number; run: number; rxRun: number; readv: number; call: number } | null {
  // The kick before the writev, and the switch that ran the TX worker after it (none: it was running).
  const kick = prev(evs, i, (x) => isKicker(x) && x.name === 'sys_write');
  const lastTx = prev(evs, i, switchTo((c) => c === 'lgnet-tx1'));
  const run = lastTx > kick ? lastTx : kick;
  // The RX worker's readv of the reply, and the switch that ran it: the last one before the readv (an
  // earlier wake-up, e.g. a held interrupt's deadline, is not this frame's), or none when it was
  // running already.
  const readv = next(evs, i, isTapRead);
  const lastRun = readv >= 0 ? prev(evs, readv, switchTo((c) => c === 'lgnet-rx0')) : -1;
  const rxRun = lastRun > i ? lastRun : i;
  const call = readv >= 0 ? next(evs, readv, (x) => x.comm === 'lgnet-rx0' && x.name === 'sys_write') : -1;
  if ([run, kick, readv, call].some((x) => x < 0)) return null;
  return { kick, run, rxRun, readv, call };
}

/** Each hop's figures over the round trips. */
export function summarise(hops: Hops[]): Record<string, Stat> {
  const keys = hops.length ? Object.keys(hops[0]!) : [];
  return Object.fromEntries(keys.map((k) => [k, stat(hops.map((h) => h[k]!))]));
}
