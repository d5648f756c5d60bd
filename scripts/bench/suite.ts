/**
 * npm run bench — the whole benchmark suite, one progress line per step, JSON under bench/results/,
 * then the report (printed, and written between the markers of docs/PERFORMANCE.md) and the chart
 * (bench/results/chart.svg, copied to docs/performance-chart.svg).
 *
 *   1. micro     native (N-API, writevBatch/readvBatch vs C) and vring (device hot path)
 *   2. device    harness → lgnet → tap and back, beside the C tap loop (scripts/bench/device.ts)
 *      dpdk      the vhost-user harness drives lgnet serve, then DPDK testpmd (scripts/bench/dpdk.ts)
 *      jail      TX and RX frames/s with the jail on and off, on both tap I/O paths (scripts/bench/jail.ts)
 *   3. guest     A B A B boots: lgnet vs QEMU's own tap virtio-net (scripts/bench/guest.ts)
 *   4.           scaling: 1 and 2 queue pairs (part of the guest step)
 *      placement the guest's ping with lgnet's workers and QEMU pinned, or not (scripts/bench/placement.ts)
 *   5. migration live migration there and back under iperf3 load, lgnet vs QEMU's own tap virtio-net
 *                (scripts/bench/migration.ts; its table and chart: bench/results/migration.md, -chart.svg)
 *   6. iommu     a guest behind intel-iommu, and with iommu_platform=on alone: lgnet vs QEMU's own
 *                virtio-net vs DPDK's vhost (scripts/bench/iommu.ts; bench/results/iommu.md, -chart.svg)
 *
 * Options: --only native,vring,device,dpdk,jail,guest,placement,migration,iommu (or LGNET_BENCH_STEPS), --no-docs (do not touch
 * docs/). Knobs for longer runs: LGNET_BENCH_ROUNDS, LGNET_BENCH_GUEST_SECONDS, LGNET_BENCH_SECONDS,
 * LGNET_BENCH_DPDK_SECONDS, LGNET_BENCH_JAIL_SECONDS, LGNET_BENCH_SOAK_SECONDS, LGNET_BENCH_MIGRATION_ROUNDS (see each script).
 * The default run takes about 25 minutes on 2 vCPUs: the device step 9, the guest step 6–7, migration 3, iommu 2,
 * jail and placement 2 each. A step that fails is reported and the others still run; the exit status
 * is 1 then.
 */
import { benchDevice } from './device.ts';
import { benchDpdk, printDpdk } from './dpdk.ts';
import { benchGuest } from './guest.ts';
import { benchIommu } from './iommu.ts';
import { benchJail } from './jail.ts';
import { benchMigration } from './migration.ts';
import { benchNative } from './native.ts';
import { benchPlacement } from './placement.ts';
import { benchVring } from './vring.ts';
import { envNum, machine, progress, RESULTS_DIR, writeResult } from './common.ts';
import { writeReport, type SuiteInfo } from './report.ts';

const STEPS = ['native', 'vring', 'device', 'dpdk', 'jail', 'guest', 'placement', 'migration', 'iommu'] as const;
type Step = (typeof STEPS)[number];

const argv = process.argv.slice(2);
const onlyArg = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : process.env['LGNET_BENCH_STEPS'];
const only = new Set((onlyArg ?? STEPS.join(',')).split(',').map((s) => s.trim()).filter(Boolean));
for (const s of only) if (!(STEPS as readonly string[]).includes(s)) throw new Error(`unknown step ${s}; steps: ${STEPS.join(', ')}`);
const docs = !argv.includes('--no-docs');

const run: Record<Step, () => Promise<unknown>> = {
  native: () => benchNative({ seconds: envNum('LGNET_BENCH_SECONDS', 2.5) }),
  vring: async () => benchVring({ chains: envNum('LGNET_BENCH_VRING_CHAINS', 3_000_000) }),
  device: async () => writeResult('device', await benchDevice({ seconds: envNum('LGNET_BENCH_SECONDS', 2) })),
  dpdk: async () => printDpdk(await benchDpdk()),
  jail: () => benchJail(),
  guest: () => benchGuest(),
  placement: async () => writeResult('placement', await benchPlacement()),
  migration: () => benchMigration(),
  iommu: () => benchIommu(),
};

const t0 = performance.now();
const info: SuiteInfo = {
  command: `npm run bench${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
  totalSeconds: 0,
  steps: [],
  env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('LGNET_BENCH_')) as Array<[string, string]>),
};
const m = machine();
progress('suite', `${m.cpu}, ${m.cores} cores, kernel ${m.kernel}, ${m.qemu}, accel ${m.accel}; steps ${[...only].join(', ')}; results in ${RESULTS_DIR}`);
let failed = 0;
for (const step of STEPS) {
  if (!only.has(step)) continue;
  const s0 = performance.now();
  progress(step, 'start');
  try {
    await run[step]();
    info.steps.push({ name: step, seconds: (performance.now() - s0) / 1000, ok: true });
    progress(step, `done in ${((performance.now() - s0) / 1000).toFixed(0)} s`);
  } catch (e) {
    failed++;
    const msg = (e as Error).stack ?? String(e);
    info.steps.push({ name: step, seconds: (performance.now() - s0) / 1000, ok: false, error: msg.slice(0, 2000) });
    progress(step, `FAILED after ${((performance.now() - s0) / 1000).toFixed(0)} s: ${msg.split('\n')[0]}`);
  }
}
info.totalSeconds = (performance.now() - t0) / 1000;
writeResult('suite', info);
progress('report', docs ? 'tables, chart, docs/PERFORMANCE.md' : 'tables and chart (docs untouched)');
console.log('\n' + writeReport({ docs }));
progress('suite', `finished in ${(info.totalSeconds / 60).toFixed(1)} min${failed ? `, ${failed} step(s) FAILED` : ''}; chart: ${RESULTS_DIR}/chart.svg`);
process.exit(failed ? 1 : 0);
