/**
 * npm run bench:iommu — a guest whose NIC negotiates VIRTIO_F_ACCESS_PLATFORM, on three back-ends in
 * the same run, one boot each per round:
 *
 *   qemu   QEMU's own virtio-net (-netdev tap, vhost=off): it translates in its own process, no round trip
 *   lgnet  `lgnet serve --iommu` over vhost-user: every mapping it lacks is an IOTLB MISS to QEMU
 *   dpdk   dpdk-testpmd, net_vhost with iommu-support=1, io forwarding to a tap PMD (when installed;
 *          --no-huge, one busy-polling forwarding lcore, as in scripts/bench/dpdk.ts)
 *
 * in two settings (scripts/qemu.ts `iommu`):
 *
 *   intel          q35 with intel-iommu and a device IOTLB, the NIC behind a PCIe root port: the guest
 *                  maps and unmaps every buffer, and flushes lazily
 *   platform-only  iommu_platform=on without an IOMMU, as a confidential guest negotiates it: with no
 *                  IOMMU to translate, QEMU keeps the feature from a vhost-user back-end, which serves
 *                  guest physical addresses (lgnet asks for no mapping); the guest side still pays for
 *                  its DMA API
 *
 * Each boot: ping (PING_COUNT at PING_INTERVAL), then iperf3 TCP guest→host and host→guest (SECONDS
 * each). For lgnet also its IOTLB misses (lgnet_queue_iotlb_misses_total) per frame. Medians over
 * rounds, ratios lgnet / QEMU and lgnet / DPDK. A back-end that fails a boot is recorded with the
 * guest's errors (DPDK 22.11 behind intel-iommu does, see docs/PERFORMANCE.md); the bench goes on.
 *
 * Output: bench/results/iommu.json, iommu.md (the tables) and iommu-chart.svg.
 * Env: LGNET_BENCH_IOMMU_ROUNDS (2), LGNET_BENCH_IOMMU_SECONDS (5), LGNET_BENCH_IOMMU_PING_COUNT (20),
 * LGNET_BENCH_IOMMU_PING_INTERVAL (0.2), LGNET_BENCH_IOMMU_MODES (intel,platform-only),
 * LGNET_BENCH_DPDK_INSTALL=0 (do not apt-get dpdk-dev).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createNetns } from '../../harness/netns.ts';
import { bootGuest, detectAccel, ensureGuestImage, type GuestArgs, type GuestOutcome } from '../qemu.ts';
import { createTapNamespace } from '../netns.ts';
import { COLORS, renderChart, type Panel } from './chart.ts';
import { envNum, isMain, machine, onCleanup, progress, RESULTS_DIR, sleep, stat, writeResult, type Machine, type Stat } from './common.ts';
import { ensureTestpmd, startTestpmd } from './dpdk.ts';
import { startLgnet, type LgnetSnapshot } from './lgnet-process.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';

export const IOMMU_MODES = ['intel', 'platform-only'] as const;
export type IommuMode = (typeof IOMMU_MODES)[number];
export type IommuVariant = 'lgnet' | 'qemu' | 'dpdk';
const VARIANTS: readonly IommuVariant[] = ['qemu', 'lgnet', 'dpdk'];

/** What one boot measured; NaN where the job failed. */
export interface IommuRow {
  mode: IommuMode;
  variant: IommuVariant;
  round: number;
  ok: boolean;
  errors: string[];
  pingMinMs: number;
  pingAvgMs: number;
  pingLossPct: number;
  tcpTxMbps: number;
  tcpRxMbps: number;
  /** lgnet only: IOTLB misses asked for and frames moved over the boot, all queues. */
  iotlbMisses?: number;
  frames?: number;
}

const METRICS = [
  { key: 'pingMinMs', label: 'ping min', unit: 'ms', better: 'lower' },
  { key: 'pingAvgMs', label: 'ping avg', unit: 'ms', better: 'lower' },
  { key: 'tcpTxMbps', label: 'TCP guest→host', unit: 'Mbit/s', better: 'higher' },
  { key: 'tcpRxMbps', label: 'TCP host→guest', unit: 'Mbit/s', better: 'higher' },
] as const;
type MetricKey = (typeof METRICS)[number]['key'];

export interface IommuResults {
  machine: Machine;
  options: { rounds: number; seconds: number; pingCount: number; pingInterval: number; modes: IommuMode[] };
  dpdk: { status: 'ran' | 'unavailable'; why?: string; version?: string };
  rows: IommuRow[];
  /** Per mode and metric: each back-end's stat over its boots, and lgnet's median over the others'. */
  summary: Record<string, Record<MetricKey, Record<IommuVariant, Stat> & { vsQemu: number; vsDpdk: number }>>;
  /** Per mode: lgnet's IOTLB misses per frame, over its boots. */
  missesPerFrame: Record<string, Stat>;
}

export interface IommuBenchOptions {
  rounds?: number;
  seconds?: number;
  pingCount?: number;
  pingInterval?: number;
  modes?: IommuMode[];
  /** Run DPDK when installed; install it with apt-get when missing (default: LGNET_BENCH_DPDK_INSTALL). */
  dpdk?: boolean;
  install?: boolean;
  outDir?: string;
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : NaN);

function rowOf(mode: IommuMode, variant: IommuVariant, round: number, o: GuestOutcome | Error): IommuRow {
  if (o instanceof Error) {
    return { mode, variant, round, ok: false, errors: [o.message.split('\n')[0]!], pingMinMs: NaN, pingAvgMs: NaN, pingLossPct: NaN, tcpTxMbps: NaN, tcpRxMbps: NaN };
  }
  const r = (job: string) => o.results.find((x) => x.job === job);
  const mbps = (job: string) => {
    const x = r(job);
    return x && x.rc === 0 && x.iperf ? x.iperf.bitsPerSecond / 1e6 : NaN;
  };
  const ping = r('ping');
  const pingOk = ping !== undefined && ping.rc === 0;
  const row: IommuRow = {
    mode, variant, round, ok: o.ok,
    errors: [...o.errors, ...(o.timedOut ? ['timed out'] : [])],
    pingMinMs: pingOk ? num(ping['rtt_min_ms']) : NaN,
    pingAvgMs: pingOk ? num(ping['rtt_avg_ms']) : NaN,
    pingLossPct: ping ? num(ping['loss_pct']) : NaN,
    tcpTxMbps: mbps('iperf3-client-tx'),
    tcpRxMbps: mbps('iperf3-client-rx'),
  };
  // A boot counts only with every figure: the guest reports an iperf3 that printed an error as done.
  for (const [k, what] of [['pingAvgMs', 'ping'], ['tcpTxMbps', 'iperf3 guest→host'], ['tcpRxMbps', 'iperf3 host→guest']] as const) {
    if (!Number.isFinite(row[k])) {
      row.ok = false;
      if (!row.errors.some((e) => e.startsWith(what))) row.errors.push(`${what}: no result`);
    }
  }
  if (row.pingLossPct > 0) row.errors.push(`ping lost ${row.pingLossPct}%`);
  return row;
}

function sumQueues(s: LgnetSnapshot | undefined, k: 'iotlbMisses' | 'frames'): number {
  return (s?.queues ?? []).reduce((a, q) => a + ((q as unknown as Record<string, number>)[k] ?? 0), 0);
}

/** One boot on one back-end; never throws (a failure is the row's). */
async function boot(mode: IommuMode, variant: IommuVariant, round: number, o: Required<Omit<IommuBenchOptions, 'outDir' | 'dpdk' | 'install' | 'modes'>>, log: string[]): Promise<IommuRow> {
  const guest: GuestArgs = { ip: `${GUEST}/24`, peer: HOST, jobs: ['ping', 'iperf3-client-tx', 'iperf3-client-rx'], pingCount: o.pingCount, pingInterval: o.pingInterval, iperfTime: o.seconds };
  const timeoutMs = 150_000 + (2 * o.seconds + o.pingCount * o.pingInterval * 3) * 1000;
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-bench-iommu-'));
  const socket = join(dir, 'vhost.sock');
  const undos: Array<() => Promise<void> | void> = [];
  const undo = onCleanup(`iommu bench ${variant}`, async () => {
    for (const u of undos.reverse()) await u();
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    if (variant === 'dpdk') {
      const ns = createNetns('lgb-di');
      undos.push(() => ns.destroy());
      const tap = 'lgdi0';
      const tp = await startTestpmd(ns, socket, tap, undefined, log, ',iommu-support=1');
      undos.push(() => tp.stop());
      ns.exec('ip', 'addr', 'add', `${HOST}/24`, 'dev', tap);
      ns.exec('ip', 'link', 'set', tap, 'up');
      const srv = ns.spawn(['iperf3', '-s', '-B', HOST, '-p', '5201']);
      undos.push(() => void srv.kill('SIGKILL'));
      await sleep(500); // iperf3 -s listens within milliseconds; the guest's first iperf3 comes after its pings
      return rowOf(mode, variant, round, await bootGuest({ netdev: { type: 'vhost-user', socket }, iommu: mode, guest, timeoutMs }).done);
    }
    const net = createTapNamespace({ prefix: 'lgb-io', hostCidr: `${HOST}/24` });
    undos.push(() => net.destroy());
    await net.startIperf3Server({ port: 5201 });
    if (variant === 'qemu') {
      return rowOf(mode, variant, round, await bootGuest({ netns: net.ns, netdev: { type: 'tap', ifname: net.tap }, iommu: mode, guest, timeoutMs }).done);
    }
    const lg = await startLgnet({ ns: net.ns, socket, tap: net.tap, metricsPath: join(dir, 'metrics.sock'), extraArgs: ['--iommu'] });
    undos.push(async () => void (await lg.stop()));
    const m0 = await lg.metrics();
    const out = await bootGuest({ netns: net.ns, netdev: { type: 'vhost-user', socket }, iommu: mode, guest, timeoutMs }).done;
    const m1 = await lg.metrics();
    if (!out.ok) log.push(`lgnet ${mode} round ${round}:\n${lg.log().slice(-5000)}`);
    return { ...rowOf(mode, variant, round, out), iotlbMisses: sumQueues(m1, 'iotlbMisses') - sumQueues(m0, 'iotlbMisses'), frames: sumQueues(m1, 'frames') - sumQueues(m0, 'frames') };
  } catch (e) {
    return rowOf(mode, variant, round, e as Error);
  } finally {
    await undo();
  }
}

/** Runs the boots, writes iommu.json, iommu.md and iommu-chart.svg under outDir. */
export async function benchIommu(opts: IommuBenchOptions = {}): Promise<IommuResults> {
  const o = {
    rounds: opts.rounds ?? envNum('LGNET_BENCH_IOMMU_ROUNDS', 2),
    seconds: opts.seconds ?? envNum('LGNET_BENCH_IOMMU_SECONDS', 5),
    pingCount: opts.pingCount ?? envNum('LGNET_BENCH_IOMMU_PING_COUNT', 20),
    pingInterval: opts.pingInterval ?? envNum('LGNET_BENCH_IOMMU_PING_INTERVAL', 0.2),
  };
  const modes = opts.modes ?? ((process.env['LGNET_BENCH_IOMMU_MODES'] ?? IOMMU_MODES.join(',')).split(',').map((m) => m.trim()) as IommuMode[]);
  for (const m of modes) if (!(IOMMU_MODES as readonly string[]).includes(m)) throw new Error(`unknown IOMMU mode ${m}; modes: ${IOMMU_MODES.join(', ')}`);
  ensureGuestImage();
  const accel = detectAccel();
  const avail = opts.dpdk === false ? { ok: false, why: 'not asked for (dpdk: false)' } : ensureTestpmd(opts.install);
  if (!avail.ok) progress('iommu', `DPDK NOT RUN: ${avail.why}`);
  const variants = VARIANTS.filter((v) => v !== 'dpdk' || avail.ok);
  const rows: IommuRow[] = [];
  const log: string[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    for (const mode of modes) {
      for (const variant of variants) {
        progress('iommu', `round ${round}/${o.rounds} ${mode}: ${variant} booting (${accel})`);
        const row = await boot(mode, variant, round, o, log);
        rows.push(row);
        const f = (v: number) => (Number.isFinite(v) ? v.toFixed(v >= 100 ? 0 : 2) : 'n/a');
        progress('iommu', `  ${variant}: ping ${f(row.pingMinMs)}/${f(row.pingAvgMs)} ms, TCP out ${f(row.tcpTxMbps)} in ${f(row.tcpRxMbps)} Mbit/s${row.iotlbMisses !== undefined ? `, ${row.iotlbMisses} IOTLB misses for ${row.frames} frames` : ''}${row.ok ? '' : ` — FAILED: ${row.errors.join('; ')}`}`);
      }
    }
  }
  const summary: IommuResults['summary'] = {};
  const missesPerFrame: IommuResults['missesPerFrame'] = {};
  for (const mode of modes) {
    const per = {} as IommuResults['summary'][string];
    for (const m of METRICS) {
      // Over the boots that gave every figure: a boot that lost most pings or had no TCP is listed apart.
      const s = Object.fromEntries(VARIANTS.map((v) => [v, stat(rows.filter((r) => r.mode === mode && r.variant === v && r.ok).map((r) => r[m.key]))])) as Record<IommuVariant, Stat>;
      per[m.key] = { ...s, vsQemu: s.lgnet.median / s.qemu.median, vsDpdk: s.lgnet.median / s.dpdk.median };
    }
    summary[mode] = per;
    missesPerFrame[mode] = stat(rows.filter((r) => r.mode === mode && r.variant === 'lgnet' && r.frames).map((r) => r.iotlbMisses! / r.frames!));
  }
  const res: IommuResults = {
    machine: machine(accel),
    options: { ...o, modes },
    dpdk: avail.ok ? { status: 'ran', ...('version' in avail && avail.version ? { version: avail.version } : {}) } : { status: 'unavailable', why: avail.why },
    rows,
    summary,
    missesPerFrame,
  };
  const dir = opts.outDir ?? RESULTS_DIR;
  const path = writeResult('iommu', res, dir);
  writeFileSync(join(dir, 'iommu.md'), iommuMarkdown(res));
  writeFileSync(join(dir, 'iommu-chart.svg'), iommuChart(res));
  if (log.length) writeFileSync(join(dir, 'iommu-backends.log'), log.join('\n'));
  progress('iommu', `wrote ${path}, iommu.md, iommu-chart.svg`);
  return res;
}

const p4 = (v: number) => (Number.isFinite(v) ? (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3)) : 'n/a');
const st = (s: Stat | undefined) => (s && s.n ? `${p4(s.median)} [${p4(s.min)}–${p4(s.max)}]` : 'n/a');
const ratio = (v: number) => (Number.isFinite(v) ? `**${v.toFixed(2)}**` : '—');

/** The tables (markdown), for bench/results/iommu.md. */
export function iommuMarkdown(r: IommuResults): string {
  const md: string[] = [];
  md.push("### Behind an IOMMU (ACCESS_PLATFORM): lgnet vs QEMU's own virtio-net vs DPDK's vhost", '');
  md.push(
    `${r.options.rounds} rounds, one boot per back-end and setting each; ${r.options.pingCount} pings ${r.options.pingInterval} s apart, then iperf3 TCP ${r.options.seconds} s each way; ` +
      `accel ${r.machine.accel}. QEMU's own: -netdev tap, vhost=off. DPDK: ${r.dpdk.status === 'ran' ? `dpdk-testpmd ${r.dpdk.version ?? ''} (net_vhost iommu-support=1, io forwarding to a tap PMD, --no-huge)` : `not run (${r.dpdk.why ?? ''})`}. ` +
      'Median [min–max] over the boots that gave every figure; ratios of medians.',
    '',
  );
  for (const mode of r.options.modes) {
    const s = r.summary[mode];
    if (!s) continue;
    md.push(`**${mode}**${mode === 'intel' ? ' (q35, intel-iommu with a device IOTLB, the NIC behind a PCIe root port)' : ' (iommu_platform=on, no IOMMU)'}; lgnet's IOTLB misses per frame: ${st(r.missesPerFrame[mode])}`, '');
    md.push('| metric | lgnet | QEMU | DPDK | lgnet/QEMU | lgnet/DPDK |', '|---|---|---|---|---|---|');
    for (const m of METRICS) {
      const x = s[m.key];
      md.push(`| ${m.label} (${m.unit}) | ${st(x.lgnet)} | ${st(x.qemu)} | ${st(x.dpdk)} | ${ratio(x.vsQemu)} | ${ratio(x.vsDpdk)} |`);
    }
    md.push('');
  }
  const bad = r.rows.filter((x) => !x.ok || x.errors.length);
  if (bad.length) md.push(`Boots that failed or lost pings: ${bad.map((x) => `${x.variant} ${x.mode} round ${x.round}: ${x.errors.join('; ') || 'no result'}`).join(' / ')}`, '');
  md.push('```', 'npm run bench:iommu', '```');
  return md.join('\n') + '\n';
}

/** One panel per setting and metric, a bar per back-end (median, whisker min–max). */
export function iommuChart(r: IommuResults): string {
  const panels: Panel[] = [];
  for (const mode of r.options.modes) {
    for (const m of METRICS) {
      if (m.key === 'pingMinMs') continue;
      const x = r.summary[mode]?.[m.key];
      if (!x) continue;
      panels.push({
        title: `${m.label}, ${mode}`,
        unit: m.unit,
        better: m.better,
        bars: VARIANTS.filter((v) => x[v].n > 0).map((v) => ({ label: v === 'qemu' ? "QEMU's own" : v === 'dpdk' ? 'DPDK' : 'lgnet', value: x[v].median, min: x[v].min, max: x[v].max, color: COLORS[v] })),
        note: `lgnet/QEMU ${p4(x.vsQemu)}, lgnet/DPDK ${p4(x.vsDpdk)}`,
      });
    }
  }
  return renderChart({ title: 'Behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM)', subtitle: `${r.options.rounds} rounds, accel ${r.machine.accel}; median, whisker min–max`, panels, columns: 3 });
}

if (isMain(import.meta.url)) {
  benchIommu()
    .then((r) => {
      console.log(`\n${iommuMarkdown(r)}`);
    })
    .catch((e: unknown) => {
      console.error(e);
      process.exitCode = 1;
    });
}
