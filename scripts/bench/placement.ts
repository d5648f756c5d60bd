/**
 * npm run bench:placement — a guest's ping under thread placements, lgnet (vhost-user) against QEMU's
 * own virtio-net (tap, vhost=off), each variant booted in turn, round after round:
 *
 *   lgnet free             nothing pinned
 *   qemu free              nothing pinned
 *   lgnet workers@W        lgnet serve --worker-cpus W (the queue pair's two workers on the last CPU)
 *   lgnet workers@W qemu@Q QEMU's threads on the first CPU (taskset -a), lgnet's workers on the last
 *   qemu qemu@Q            QEMU's threads on the first CPU
 *   lgnet all@Q            QEMU and lgnet's workers on the first CPU
 *
 * The guest pings the host LGNET_BENCH_PINGS times (100) every 10 ms; each variant's min and avg RTT
 * are medians over LGNET_BENCH_ROUNDS rounds (4), with the spread. Ratios are lgnet's against QEMU's
 * under the same placement of QEMU (free with free, qemu@Q with qemu@Q). Needs 2 CPUs; writes
 * bench/results/placement.json. Everything runs in namespaces the bench creates and removes.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as native from '../../native/index.ts';
import { bootGuest, ensureGuestImage } from '../qemu.ts';
import { createTapNamespace } from '../netns.ts';
import { envNum, isMain, machine, progress, stat, writeResult, type Stat } from './common.ts';
import { startLgnet, type LgnetProcess } from './lgnet-process.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';

interface Variant {
  name: string;
  kind: 'lgnet' | 'qemu';
  /** CPU for every QEMU thread, or none. */
  qemuCpu?: number;
  /** lgnet serve --worker-cpus, or none. */
  workerCpus?: string;
  /** The QEMU variant this one is compared with. */
  against?: string;
}

/** Sets every thread of `pid` (and those it makes later) to run on `cpu`. */
function pinProcess(pid: number, cpu: number): void {
  const r = spawnSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`taskset on QEMU ${pid} failed: ${r.stderr}`);
}

/** Boots the guest once in `v`'s placement; returns its ping min and avg in ms. */
async function boot(v: Variant, pings: number): Promise<{ min: number; avg: number; max: number }> {
  const net = createTapNamespace({ hostCidr: `${HOST}/24` });
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-placement-'));
  const socket = join(dir, 'lgnet.sock');
  let lg: LgnetProcess | undefined;
  try {
    // Inside the try: lgnet may refuse to start (a stale dist/), and the namespace must go all the same.
    if (v.kind === 'lgnet') lg = await startLgnet({ ns: net.ns, socket, tap: net.tap, metricsPath: join(dir, 'm'), ...(v.workerCpus ? { extraArgs: ['--worker-cpus', v.workerCpus] } : {}) });
    const g = bootGuest({
      netns: net.ns,
      netdev: v.kind === 'lgnet' ? { type: 'vhost-user', socket, reconnect: 1 } : { type: 'tap', ifname: net.tap },
      guest: { ip: `${GUEST}/24`, peer: HOST, jobs: ['ping'], pingCount: pings, pingInterval: 0.01 },
      timeoutMs: 180_000,
    });
    try {
      if (v.qemuCpu !== undefined) pinProcess(g.pid, v.qemuCpu);
      await g.ready;
      // Threads QEMU made while booting (vCPU, workers) take the CPU too.
      if (v.qemuCpu !== undefined) pinProcess(g.pid, v.qemuCpu);
      const out = await g.done;
      const m = /round-trip min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(out.serial);
      if (!m) throw new Error(`${v.name}: the guest printed no ping summary (ok ${out.ok})`);
      return { min: Number(m[1]), avg: Number(m[2]), max: Number(m[3]) };
    } finally {
      await g.kill();
    }
  } finally {
    await lg?.stop();
    await net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchPlacement(opts: { rounds?: number; pings?: number } = {}): Promise<Record<string, unknown>> {
  const cpus = native.threadAffinity();
  if (cpus.length < 2) {
    const why = `only CPU ${cpus.join(',')} may be used: placements need two`;
    console.log(`placement: skipped, ${why}`);
    return { skipped: why };
  }
  const q = cpus[0]!;
  const w = cpus[cpus.length - 1]!;
  const rounds = opts.rounds ?? envNum('LGNET_BENCH_ROUNDS', 4);
  const pings = opts.pings ?? envNum('LGNET_BENCH_PINGS', 100);
  ensureGuestImage();
  const variants: Variant[] = [
    { name: 'lgnet free', kind: 'lgnet', against: 'qemu free' },
    { name: 'qemu free', kind: 'qemu' },
    { name: `lgnet workers@${w}`, kind: 'lgnet', workerCpus: String(w), against: 'qemu free' },
    { name: `lgnet workers@${w} qemu@${q}`, kind: 'lgnet', workerCpus: String(w), qemuCpu: q, against: `qemu qemu@${q}` },
    { name: `qemu qemu@${q}`, kind: 'qemu', qemuCpu: q },
    { name: `lgnet all@${q}`, kind: 'lgnet', workerCpus: String(q), qemuCpu: q, against: `qemu qemu@${q}` },
  ];
  const runs: Record<string, Array<{ min: number; avg: number; max: number }>> = {};
  for (let r = 0; r < rounds; r++) {
    for (const v of variants) {
      const x = await boot(v, pings);
      (runs[v.name] ??= []).push(x);
      progress('placement', `round ${r + 1}/${rounds} ${v.name}: ping min/avg/max ${x.min}/${x.avg}/${x.max} ms`);
    }
  }
  const summary: Record<string, { min: Stat; avg: Stat; ratio?: { min: number; avg: number } }> = {};
  for (const v of variants) {
    const xs = runs[v.name]!;
    summary[v.name] = { min: stat(xs.map((x) => x.min)), avg: stat(xs.map((x) => x.avg)) };
  }
  console.log(`\nguest ping (ms), median [min–max] over ${rounds} rounds of ${pings} pings; ratio: lgnet / QEMU with QEMU placed alike`);
  for (const v of variants) {
    const s = summary[v.name]!;
    if (v.against) {
      const b = summary[v.against]!;
      s.ratio = { min: s.min.median / b.min.median, avg: s.avg.median / b.avg.median };
    }
    const f = (x: Stat) => `${x.median.toFixed(3)} [${x.min.toFixed(3)}–${x.max.toFixed(3)}]`;
    console.log(`  ${v.name.padEnd(26)} min ${f(s.min)}  avg ${f(s.avg)}${s.ratio ? `  ratio min ${s.ratio.min.toFixed(2)} avg ${s.ratio.avg.toFixed(2)} (against ${v.against})` : ''}`);
  }
  return { machine: machine(), rounds, pings, cpus: { qemu: q, workers: w }, runs, summary };
}

if (isMain(import.meta.url)) {
  const results = await benchPlacement();
  console.log(`wrote ${writeResult('placement', results)}`);
}
