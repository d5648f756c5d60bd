/**
 * npx tsx scripts/bench/jail.ts — what the jail costs: TX frames/s (harness → NetDevice → tap) with
 * the jail on and off, in the same run (DESIGN.md target: on/off ≥ 0.97).
 *
 * A jail cannot be left, so each measurement is its own child process (this file with --child on|off),
 * alternating off, on, off, on … ROUNDS times on the same namespace; the ratio is of the medians.
 * TX is the worst case for seccomp: one writev per frame (one per 64-byte frame), plus eventfd
 * kicks and calls. The harness runs in the child's main thread and is filtered too, so the cost is,
 * if anything, overstated. Each tap I/O path is measured on its own: io_uring (one io_uring_enter per
 * burst, allowed by the jail on lgnet's own rings only) and readv/writev per frame. Options:
 * LGNET_BENCH_SECONDS (per measurement, default 2), LGNET_BENCH_ROUNDS (default 3), LGNET_BENCH_IO
 * (uring, syscall, or both: the default).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { mask } from '../../device/features.ts';
import { NetDevice } from '../../device/net.ts';
import { TapBackend, type TapIo } from '../../device/tap-backend.ts';
import * as native from '../../native/index.ts';
import { compilePolicy, enterJail } from '../../sandbox/jail.ts';
import { endTranspilerService } from '../transpiler.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns, destroyAllNetns } from '../../harness/netns.ts';

const SECONDS = Number(process.env['LGNET_BENCH_SECONDS'] ?? 2);
const ROUNDS = Number(process.env['LGNET_BENCH_ROUNDS'] ?? 3);
const IOS: TapIo[] = process.env['LGNET_BENCH_IO'] ? [process.env['LGNET_BENCH_IO'] as TapIo] : ['uring', 'syscall'];
const QSIZE = 256;

async function child(jail: boolean, nsPath: string, nsName: string, len: number, io: TapIo): Promise<void> {
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
  const fps = run(SECONDS);
  const ioUring = dev.metrics().queues[1]!.ioUring;
  process.stdout.write(JSON.stringify({ jail, fps, seccomp: jail ? 2 : 0, io: backend.io, ioUring, txDropBackend: dev.metrics().queues[1]!.txDropBackend }));
  await dev.close();
  drv.close();
  ram.close();
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const ns = createNetns('lgbjail');
  const self = fileURLToPath(import.meta.url);
  const results: Record<string, unknown> = { seconds: SECONDS, rounds: ROUNDS };
  try {
    for (const io of IOS) {
      for (const len of [64, 1514]) {
        const fps: Record<'on' | 'off', number[]> = { on: [], off: [] };
        for (let i = 0; i < ROUNDS; i++) {
          for (const mode of ['off', 'on'] as const) {
            const c = spawnSync(process.execPath, ['--import', 'tsx', self, '--child', mode, ns.path, ns.name, String(len), io], { encoding: 'utf8', timeout: (SECONDS + 60) * 1000 });
            if (c.status !== 0) throw new Error(`child ${mode} failed (${c.status}): ${c.stderr}`);
            const r = JSON.parse(c.stdout) as { fps: number; io: string; ioUring: number; txDropBackend: number };
            // A jail that refused the ring's io_uring_enter would show as backend drops, not as a slow run.
            if (r.io !== io || r.ioUring !== (io === 'uring' ? 1 : 0) || r.txDropBackend !== 0) throw new Error(`child ${mode} ran ${JSON.stringify(r)}`);
            fps[mode].push(r.fps);
          }
        }
        const on = median(fps.on);
        const off = median(fps.off);
        results[`${io}/tx${len}`] = { off: fps.off, on: fps.on, ratio: on / off };
        console.log(`${io.padEnd(7)} tx ${String(len).padStart(4)} B: jail off ${(off / 1e6).toFixed(3)} M/s, on ${(on / 1e6).toFixed(3)} M/s, on/off ${(on / off).toFixed(3)}  (runs off ${fps.off.map((x) => (x / 1e6).toFixed(3)).join(' ')}; on ${fps.on.map((x) => (x / 1e6).toFixed(3)).join(' ')})`);
      }
    }
  } finally {
    destroyAllNetns();
  }
  console.log(JSON.stringify(results));
}

const i = process.argv.indexOf('--child');
if (i > 0) await child(process.argv[i + 1] === 'on', process.argv[i + 2]!, process.argv[i + 3]!, Number(process.argv[i + 4]), process.argv[i + 5] as TapIo);
else await main();
