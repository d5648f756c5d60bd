/**
 * npm run bench's jail step (also `npx tsx scripts/bench/jail.ts`): what the jail costs, as TX frames/s
 * (harness → NetDevice → tap) with the jail on and off in the same run (target: on/off ≥ 0.97, a
 * cost under 3 %).
 *
 * A jail cannot be left, so each measurement is its own child process (this file with --child),
 * alternating off, on, off, on … `rounds` times on the same namespace; the figure is the ratio of
 * the medians, with the per-round ratios (each jailed run against the unjailed run just before it)
 * for the spread. TX is the worst case for seccomp: one writev per frame on the readv/writev path,
 * plus eventfd kicks and calls. The harness runs in the child's main thread and is filtered too, so
 * the cost is, if anything, overstated. Each tap I/O path is measured on its own: io_uring (one
 * io_uring_enter per burst, allowed by the jail on lgnet's own rings only) and readv/writev per
 * frame. Knobs: LGNET_BENCH_JAIL_SECONDS (per measurement, default 2), LGNET_BENCH_JAIL_ROUNDS
 * (default 3), LGNET_BENCH_IO (uring, syscall, or both: the default).
 */
import { spawnSync } from 'node:child_process';
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
  /** Frames/s of each round, jail off and on (alternating, off first). */
  off: number[];
  on: number[];
  /** Median on / median off. */
  ratio: number;
  /** Each round's on / off. */
  roundRatios: number[];
}

/** What the jail step writes (bench/results/jail.json). */
export interface JailResults {
  seconds: number;
  rounds: number;
  cases: JailCase[];
}

async function child(jail: boolean, nsPath: string, nsName: string, len: number, io: TapIo, seconds: number): Promise<void> {
  const tap = `lgbj${process.pid.toString(16)}`.slice(0, 15);
  const backend = native.withNetns(nsPath, () => new TapBackend({ name: tap, io }));
  const up = spawnSync('ip', ['-n', nsName, 'link', 'set', tap, 'up']);
  if (up.status !== 0) throw new Error('ip link set up failed');
  const dev = new NetDevice({ backend, mac: '52:54:00:00:00:01', maxQueueSize: QSIZE });
  const ram = new GuestRam(64 << 20);
  const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1', 'RING_EVENT_IDX', 'MAC'), queueSize: QSIZE, rxBufferSize: 2048 });
  await drv.attach(dev);
  if (jail) {
    // As lgnet serve does: the process-wide filter, then each queue worker's narrower one.
    endTranspilerService(); // this child runs from source under tsx
    enterJail({ user: 'nobody', group: 'nogroup' });
    await dev.restrictWorkers(compilePolicy('worker').program);
  }

  const frame = ethernet(new Uint8Array([2, 0, 0, 0, 0, 2]), new Uint8Array([2, 0, 0, 0, 0, 1]), 0x88b5, new Uint8Array(len - 14));
  const run = (seconds: number): number => {
    const r = drv.blastTx(frame, seconds);
    return r.frames / r.seconds;
  };
  run(0.3); // warm up
  const fps = run(seconds);
  const ioUring = dev.metrics().queues[1]!.ioUring;
  process.stdout.write(JSON.stringify({ jail, fps, seccomp: jail ? 2 : 0, io: backend.io, ioUring, txDropBackend: dev.metrics().queues[1]!.txDropBackend }));
  await dev.close();
  drv.close();
  ram.close();
}

/** Runs the jail on/off rounds of every case in child processes and writes jail.json. */
export async function benchJail(o: { seconds?: number; rounds?: number; ios?: TapIo[]; lens?: number[]; outDir?: string } = {}): Promise<JailResults> {
  const seconds = o.seconds ?? envNum('LGNET_BENCH_JAIL_SECONDS', 2);
  const rounds = o.rounds ?? envNum('LGNET_BENCH_JAIL_ROUNDS', 3);
  const ios: TapIo[] = o.ios ?? (process.env['LGNET_BENCH_IO'] ? [process.env['LGNET_BENCH_IO'] as TapIo] : ['uring', 'syscall']);
  const ns = createNetns('lgbjail');
  const self = fileURLToPath(import.meta.url);
  const results: JailResults = { seconds, rounds, cases: [] };
  try {
    for (const io of ios) {
      for (const len of o.lens ?? [64, 1514]) {
        const fps: Record<'on' | 'off', number[]> = { on: [], off: [] };
        for (let i = 0; i < rounds; i++) {
          for (const mode of ['off', 'on'] as const) {
            const c = spawnSync(process.execPath, ['--import', 'tsx', self, '--child', mode, ns.path, ns.name, String(len), io, String(seconds)], {
              cwd: ROOT, encoding: 'utf8', timeout: (seconds + 60) * 1000,
            });
            if (c.status !== 0) throw new Error(`jail bench: the ${mode} child failed (status ${c.status}, signal ${c.signal}): ${c.stderr}`);
            const r = JSON.parse(c.stdout) as { fps: number; io: string; ioUring: number; txDropBackend: number };
            // A jail that refused the ring's io_uring_enter would show as backend drops, not as a slow run.
            if (r.io !== io || r.ioUring !== (io === 'uring' ? 1 : 0) || r.txDropBackend !== 0) throw new Error(`jail bench: the ${mode} child ran ${JSON.stringify(r)}`);
            fps[mode].push(r.fps);
          }
        }
        const on = median(fps.on);
        const off = median(fps.off);
        const x: JailCase = { io, len, off: fps.off, on: fps.on, ratio: on / off, roundRatios: fps.on.map((v, k) => v / fps.off[k]!) };
        results.cases.push(x);
        progress('jail', `${io} tx ${len} B: jail off ${(off / 1e6).toFixed(3)} M/s, on ${(on / 1e6).toFixed(3)} M/s, on/off ${x.ratio.toFixed(3)} (rounds ${x.roundRatios.map((v) => v.toFixed(3)).join(' ')})`);
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
  await child(a[i + 1] === 'on', a[i + 2]!, a[i + 3]!, Number(a[i + 4]), a[i + 5] as TapIo, Number(a[i + 6]));
} else if (isMain(import.meta.url)) {
  await benchJail();
}
