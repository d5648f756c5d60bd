/**
 * Smoke test of `npm run bench`: every step runs once with tiny durations, into a temporary results
 * directory, so that the benchmarks cannot rot. Figures are not checked, only that each step produces
 * its results (and that frames moved). docs/ is never touched here. DPDK: testpmd is used when it is
 * installed (the bench itself would apt-get it; the smoke test does not), else the DPDK half reports
 * "unavailable" and the lgnet half still runs.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchDevice } from '../../scripts/bench/device.ts';
import { benchDpdk } from '../../scripts/bench/dpdk.ts';
import { benchGuest } from '../../scripts/bench/guest.ts';
import { benchIommu } from '../../scripts/bench/iommu.ts';
import { benchJail } from '../../scripts/bench/jail.ts';
import { benchNative } from '../../scripts/bench/native.ts';
import { benchPlacement } from '../../scripts/bench/placement.ts';
import { benchVring } from '../../scripts/bench/vring.ts';
import { writeReport } from '../../scripts/bench/report.ts';
import { writeResult } from '../../scripts/bench/common.ts';

const dir = mkdtempSync(join(tmpdir(), 'lgnet-bench-smoke-'));
const quiet = <T>(f: () => Promise<T>): Promise<T> => {
  const log = console.log;
  console.log = () => {};
  return f().finally(() => (console.log = log));
};

describe.skipIf(process.getuid?.() !== 0)('bench smoke (tiny durations)', () => {
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('native and vring', async () => {
    const n = await quiet(() => benchNative({ seconds: 0.1, rounds: 1, outDir: dir }));
    expect(n['nopNs']).toBeGreaterThan(0);
    const v = await quiet(async () => benchVring({ chains: 20_000, outDir: dir }));
    expect((v['results'] as unknown[]).length).toBe(3);
    expect(existsSync(join(dir, 'native.json')) && existsSync(join(dir, 'vring.json'))).toBe(true);
  }, 30_000);

  it('device beside the C loop', async () => {
    const d = await quiet(() => benchDevice({ seconds: 0.2, mrgRounds: 1, quick: true }));
    writeResult('device', d, dir);
    expect((d['tx64'] as { lgnet: number }).lgnet).toBeGreaterThan(0);
    expect((d['rx64'] as { lgnet: number }).lgnet).toBeGreaterThan(0);
    expect(d['mrg']).toBeDefined();
    expect((d['ping'] as { lgnet: { p50: number } }).lgnet.p50).toBeGreaterThan(0);
    // The device on a macvtap, beside the C loops on it and the device on a tap.
    const mv = d['macvtap'] as Record<string, { lgnet: number; c: number; ratioToTap: number }>;
    for (const k of ['tx64', 'rx64']) {
      expect(mv[k]!.lgnet, k).toBeGreaterThan(0);
      expect(mv[k]!.c, k).toBeGreaterThan(0);
      expect(mv[k]!.ratioToTap, k).toBeGreaterThan(0);
    }
    // Two devices of one process, on a switch and on a pair: both carried frames, none dropped.
    const ip = d['inProcess'] as Record<string, { pair: number; switch: number; dropped: { pair: number; switch: number } }>;
    for (const k of ['a2b64', 'a2b1514']) {
      expect(ip[k]!.switch, k).toBeGreaterThan(0);
      expect(ip[k]!.pair, k).toBeGreaterThan(0);
      expect(ip[k]!.dropped, k).toEqual({ pair: 0, switch: 0 });
    }
    // Packed, dirty-log, echo and MRG comparisons come on top of tx/rx, shortened (quick).
  }, 180_000);

  it('dpdk: lgnet serve (and testpmd when installed) behind the vhost-user harness', async () => {
    const nr = '/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';
    const before = existsSync(nr) ? readFileSync(nr, 'utf8').trim() : '';
    const r = await quiet(() => benchDpdk({ seconds: 0.2, outDir: dir, install: false }));
    expect(r.lgnet?.tx64.fps).toBeGreaterThan(0);
    expect(r.lgnet?.rx64.fps).toBeGreaterThan(0);
    expect(['ran', 'unavailable']).toContain(r.dpdk.status);
    if (r.dpdk.status === 'ran') expect(r.testpmd?.tx64.fps).toBeGreaterThan(0);
    if (before) expect(readFileSync(nr, 'utf8').trim(), 'hugepages restored').toBe(before);
  }, 40_000);

  it('jail: TX and RX with the jail off and on, in child processes', async () => {
    const r = await benchJail({ seconds: 0.2, rounds: 1, ios: ['uring'], dirs: ['tx', 'rx'], lens: [64], outDir: dir, filterCalls: 2000, filterRounds: 1, traceSeconds: 0.1 });
    expect(r.cases.map((c) => c.dir)).toEqual(['tx', 'rx']);
    for (const c of r.cases) {
      // Both children moved frames (a jailed child that could not reach its ring, or whose RX queue
      // failed on the tap, throws instead).
      expect(c.off[0]).toBeGreaterThan(0);
      expect(c.on[0]).toBeGreaterThan(0);
      expect(c.workerNsOn[0]).toBeGreaterThan(0);
    }
    expect(existsSync(join(dir, 'jail.json'))).toBe(true);
    // The cost from its parts: every system call timed bare and filtered (a call the filters refused
    // would have failed the run), and each jailed worker's io_uring_enter counted per frame.
    expect(r.filterCost?.syscalls.map((x) => x.name)).toEqual(['getpid', 'io_uring_enter', 'writev', 'write', 'read', 'ppoll', 'futex', 'readv']);
    for (const x of r.filterCost!.syscalls) expect(Number.isFinite(x.offNs) && Number.isFinite(x.onNs) && x.offNs > 0).toBe(true);
    for (const [c, worker] of [[r.cases[0]!, 'lgnet-tx1'], [r.cases[1]!, 'lgnet-rx0']] as const) {
      const f = c.filter!;
      expect(f.complete).toBe(true);
      const enter = f.rows.find((x) => x.comm === worker && x.syscall === 'io_uring_enter');
      expect(enter?.perFrame, `${c.dir}: ${worker}'s io_uring_enter per frame`).toBeGreaterThan(0);
      expect(enter!.perFrame).toBeLessThan(1); // one per burst, not one per frame
      expect(f.extraNsPerFrame).toBeGreaterThanOrEqual(0);
    }
  }, 60_000);

  it('guest A/B and scaling, then the report and the chart', async () => {
    const g = await benchGuest({ rounds: 1, seconds: 1, udpSeconds: 1, pingCount: 5, pingInterval: 0.01, scalingRounds: 1, soakSeconds: 0, outDir: dir });
    expect(g.rows.map((r) => r.variant)).toEqual(['lgnet', 'qemu']);
    for (const r of g.rows) {
      expect(r.ok, r.errors.join('; ')).toBe(true);
      expect(r.tcpTxGbps).toBeGreaterThan(0);
      expect(r.pingAvgMs).toBeGreaterThan(0);
      // The median comes from the packets' own lines: within min … max.
      expect(r.pingP50Ms).toBeGreaterThanOrEqual(r.pingMinMs);
      expect(r.pingP90Ms).toBeGreaterThanOrEqual(r.pingP50Ms);
      expect(r.pingP90Ms).toBeLessThanOrEqual(r.pingMaxMs);
    }
    expect(g.rows[0]!.lgnetCpuTcpTx).toBeGreaterThan(0);
    expect(Number.isFinite(g.rows[0]!.irqPerFrameTcpTx)).toBe(true);
    expect(g.scaling.map((s) => s.queues)).toEqual([1, 2]);
    expect(g.scaling[1]!.perQueueTxFrames.length).toBe(2);
    const md = writeReport({ dir, docs: false });
    expect(md).toContain('lgnet/QEMU');
    expect(md).toContain('lgnet/C');
    expect(md).toContain('What the jail costs');
    expect(md).toContain('The same cost from its parts');
    const svg = readFileSync(join(dir, 'chart.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('TCP guest→host');
  }, 90_000);

  it('iommu: a guest with iommu_platform=on on lgnet, QEMU\'s own device and DPDK (when installed)', async () => {
    const r = await benchIommu({ rounds: 1, seconds: 1, pingCount: 3, pingInterval: 0.05, modes: ['platform-only'], install: false, outDir: dir });
    expect(r.rows.map((x) => x.variant)).toEqual(r.dpdk.status === 'ran' ? ['qemu', 'lgnet', 'dpdk'] : ['qemu', 'lgnet']);
    for (const x of r.rows) {
      expect(x.ok, `${x.variant}: ${x.errors.join('; ')}`).toBe(true);
      expect(x.tcpTxMbps).toBeGreaterThan(0);
      expect(x.pingAvgMs).toBeGreaterThan(0);
    }
    expect(r.rows.find((x) => x.variant === 'lgnet')!.frames).toBeGreaterThan(0);
    expect(readFileSync(join(dir, 'iommu.md'), 'utf8')).toContain('lgnet/QEMU');
    expect(readFileSync(join(dir, 'iommu-chart.svg'), 'utf8').startsWith('<svg')).toBe(true);
  }, 120_000);

  it('placement: the guest pings under each thread placement', async () => {
    const p = (await quiet(() => benchPlacement({ rounds: 1, pings: 5 }))) as { skipped?: string; summary?: Record<string, { min: { median: number }; ratio?: { min: number } }> };
    if (p.skipped) {
      console.log(`placement smoke skipped: ${p.skipped}`);
      return;
    }
    const rows = Object.values(p.summary!);
    expect(rows).toHaveLength(6);
    for (const r of rows) expect(r.min.median).toBeGreaterThan(0);
    expect(rows.filter((r) => r.ratio !== undefined)).toHaveLength(4);
  }, 120_000);
});
