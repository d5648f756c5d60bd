/**
 * npm run bench:guest — the same guest image on lgnet and on QEMU's own userspace virtio-net, booted in
 * alternation A B A B … in one run (DESIGN.md, "Targets"):
 *
 *   A  -netdev vhost-user on `lgnet serve --metrics-socket` (counters read at job boundaries), one
 *      lgnet process for all A rounds (so its RSS across rounds is a small soak)
 *   B  -netdev tap,vhost=off on a tap of its own; the same device flags (vectors=0 under TCG)
 *
 * Each boot runs, in order: ping (PING_COUNT pings at PING_INTERVAL), iperf3 TCP guest→host and
 * host→guest (SECONDS each), iperf3 UDP 64-byte payloads guest→host (UDP_SECONDS, -b 0). The guest's
 * LGNET-OUTPUT-BEGIN/END lines mark each job, and at both marks the bench samples lgnet's CPU time
 * (/proc/<pid>/stat), QEMU's CPU time, and lgnet's per-queue counters, so every figure of lgnet's cost
 * belongs to one job. Scaling: lgnet with 1 and 2 queue pairs, a 2-vCPU guest, iperf3 -P 2 both ways.
 *
 * Everything runs in two namespaces this bench creates (host side 10.0.2.1, guest 10.0.2.2) and removes.
 * Env knobs: LGNET_BENCH_ROUNDS (5), LGNET_BENCH_GUEST_SECONDS (10), LGNET_BENCH_UDP_SECONDS (5),
 * LGNET_BENCH_PING_COUNT (100), LGNET_BENCH_PING_INTERVAL (0.01), LGNET_BENCH_SCALING_ROUNDS (1; 0 skips),
 * LGNET_BENCH_SOAK_SECONDS (0: off; else one extra lgnet boot under iperf3 load for that long, RSS
 * sampled every 5 s), LGNET_BENCH_CPU_PROF=DIR (lgnet under node --cpu-prof, profiles into DIR).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, detectAccel, ensureGuestImage, iperfSummary, type GuestOutcome } from '../qemu.ts';
import { createTapNamespace, type TapNamespace } from '../netns.ts';
import { cpuSeconds, envNum, isMain, machine, memory, onCleanup, percentile, progress, stat, writeResult, type Stat } from './common.ts';
import { metricsDelta, startLgnet, type LgnetProcess, type LgnetSnapshot } from './lgnet-process.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';

export interface GuestBenchOptions {
  rounds?: number;
  seconds?: number;
  udpSeconds?: number;
  pingCount?: number;
  pingInterval?: number;
  scalingRounds?: number;
  soakSeconds?: number;
  cpuProfDir?: string;
  outDir?: string;
}

/** What one boot measured. NaN where a job failed. */
export interface BootRow {
  variant: 'lgnet' | 'qemu';
  round: number;
  ok: boolean;
  errors: string[];
  readyS: number;
  tcpTxGbps: number;
  tcpRxGbps: number;
  tcpTxRetransmits: number;
  udp64Kpps: number;
  udp64SentKpps: number;
  udp64LossPct: number;
  pingMinMs: number;
  pingAvgMs: number;
  pingMaxMs: number;
  /** The median and 90th percentile of the boot's round trips, from ping's line per packet. */
  pingP50Ms: number;
  pingP90Ms: number;
  pingLossPct: number;
  /** CPU seconds of the backend process (lgnet) per job; NaN for qemu. */
  lgnetCpuTcpTx: number;
  lgnetCpuTcpRx: number;
  lgnetCpuUdp: number;
  /** CPU seconds of QEMU per job. */
  qemuCpuTcpTx: number;
  qemuCpuTcpRx: number;
  qemuCpuUdp: number;
  /** lgnet RSS after this boot and peak (VmHWM) so far. */
  lgnetRssMiB: number;
  lgnetPeakRssMiB: number;
  /** From lgnet's counters, per job. */
  irqPerFrameTcpTx: number;
  irqPerFrameTcpRx: number;
  irqPerFrameUdp: number;
  kicksPerTxFrameTcpTx: number;
  kicksPerTxFrameUdp: number;
  /** Kicks of both queues per frame of both queues, per TCP job. */
  kicksPerFrameTcpTx: number;
  kicksPerFrameTcpRx: number;
  /** QEMU's CPU (cores: CPU seconds per second of the job) per Gbit/s of the TCP job: the guest's cost. */
  qemuCoresPerGbpsTcpTx: number;
  qemuCoresPerGbpsTcpRx: number;
  jobMetrics?: Record<string, ReturnType<typeof metricsDelta>>;
}

interface Mark {
  lgCpu: number;
  qemuCpu: number;
  m: Promise<LgnetSnapshot | undefined>;
  t: number;
}

const UDP_CMD = (secs: number) => `iperf3 -c ${HOST} -p 5201 -u -b 0 -l 64 -t ${secs} -J`;

/** Boots one guest; samples lgnet and QEMU at every job boundary. */
async function boot(o: {
  variant: 'lgnet' | 'qemu';
  round: number;
  net: TapNamespace;
  lgnet?: LgnetProcess;
  socket?: string;
  queues?: number;
  vcpus?: number;
  jobs: Array<'ping' | 'iperf3-client-tx' | 'iperf3-client-rx' | 'cmd'>;
  seconds: number;
  udpSeconds: number;
  pingCount: number;
  pingInterval: number;
  iperfArgs?: string[];
}): Promise<{ outcome: GuestOutcome; marks: Map<string, { begin: Mark; end?: Mark }>; argv: string[] }> {
  const marks = new Map<string, { begin: Mark; end?: Mark }>();
  let qemuPid = 0;
  const mark = (): Mark => ({
    lgCpu: o.lgnet ? cpuSeconds(o.lgnet.pid) : NaN,
    qemuCpu: qemuPid ? cpuSeconds(qemuPid) : NaN,
    m: o.lgnet ? o.lgnet.metrics() : Promise.resolve(undefined),
    t: performance.now(),
  });
  const g = bootGuest({
    netns: o.net.ns,
    netdev: o.variant === 'lgnet'
      ? { type: 'vhost-user', socket: o.socket!, reconnect: 1, ...(o.queues && o.queues > 1 ? { queues: o.queues } : {}) }
      : { type: 'tap', ifname: o.net.tap, ...(o.queues && o.queues > 1 ? { queues: o.queues } : {}) },
    vcpus: o.vcpus ?? 1,
    guest: {
      ip: `${GUEST}/24`, peer: HOST, jobs: o.jobs, pingCount: o.pingCount, pingInterval: o.pingInterval,
      iperfTime: o.seconds, cmd: UDP_CMD(o.udpSeconds), ...(o.iperfArgs ? { iperfArgs: o.iperfArgs } : {}),
    },
    timeoutMs: 120_000 + (2 * o.seconds + o.udpSeconds + o.pingCount * o.pingInterval * 3) * 1000,
    onLine(line) {
      if (line.startsWith('LGNET-OUTPUT-BEGIN ')) marks.set(line.slice(19).trim(), { begin: mark() });
      else if (line.startsWith('LGNET-OUTPUT-END ')) {
        const e = marks.get(line.slice(17).trim());
        if (e) e.end = mark();
      }
    },
  });
  qemuPid = g.pid;
  const unregister = onCleanup(`qemu ${g.pid}`, () => g.kill(0));
  try {
    const outcome = await g.done;
    return { outcome, marks, argv: g.argv };
  } finally {
    await g.kill();
    await unregister();
  }
}

async function rowOf(variant: 'lgnet' | 'qemu', round: number, outcome: GuestOutcome, marks: Map<string, { begin: Mark; end?: Mark }>, lgnet?: LgnetProcess): Promise<BootRow> {
  const r = (job: string) => outcome.results.find((x) => x.job === job);
  let udp: ReturnType<typeof iperfSummary>;
  try {
    udp = iperfSummary(JSON.parse(String(r('cmd')?.output)));
  } catch {
    udp = undefined;
  }
  const jm: Record<string, ReturnType<typeof metricsDelta>> = {};
  const cpu: Record<string, { lg: number; qemu: number; s: number }> = {};
  for (const [job, { begin, end }] of marks) {
    if (!end) continue;
    cpu[job] = { lg: end.lgCpu - begin.lgCpu, qemu: end.qemuCpu - begin.qemuCpu, s: (end.t - begin.t) / 1000 };
    if (lgnet) jm[job] = metricsDelta(await begin.m, await end.m);
  }
  const mem = lgnet ? memory(lgnet.pid) : { rssMiB: NaN, hwmMiB: NaN };
  const num = (v: unknown) => (v === undefined || v === null || v === '' ? NaN : Number(v));
  // min and avg hide the shape (one slow packet moves avg): each packet's "time=… ms" from ping's output.
  const rtts = [...String(r('ping')?.output ?? '').matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  const rtt = stat(rtts);
  const tx = r('iperf3-client-tx')?.iperf;
  const coresPerGbps = (job: string, gbps: number) => (cpu[job] ? cpu[job].qemu / cpu[job].s / gbps : NaN);
  const udpSent = udp?.senderBitsPerSecond !== undefined ? udp.senderBitsPerSecond / (64 * 8) : NaN;
  return {
    variant, round, ok: outcome.ok, errors: outcome.errors,
    readyS: (outcome.readyMs ?? NaN) / 1000,
    tcpTxGbps: (tx?.bitsPerSecond ?? NaN) / 1e9,
    tcpRxGbps: (r('iperf3-client-rx')?.iperf?.bitsPerSecond ?? NaN) / 1e9,
    tcpTxRetransmits: tx?.retransmits ?? NaN,
    udp64Kpps: udp?.packets !== undefined ? udp.packets / udp.seconds / 1e3 : NaN,
    udp64SentKpps: udpSent / 1e3,
    udp64LossPct: udp?.lostPercent ?? NaN,
    pingMinMs: num(r('ping')?.['rtt_min_ms']),
    pingAvgMs: num(r('ping')?.['rtt_avg_ms']),
    pingMaxMs: num(r('ping')?.['rtt_max_ms']),
    pingP50Ms: rtt.median,
    pingP90Ms: percentile(rtts, 0.9),
    pingLossPct: num(r('ping')?.['loss_pct']),
    lgnetCpuTcpTx: lgnet ? cpu['iperf3-client-tx']?.lg ?? NaN : NaN,
    lgnetCpuTcpRx: lgnet ? cpu['iperf3-client-rx']?.lg ?? NaN : NaN,
    lgnetCpuUdp: lgnet ? cpu['cmd']?.lg ?? NaN : NaN,
    qemuCpuTcpTx: cpu['iperf3-client-tx']?.qemu ?? NaN,
    qemuCpuTcpRx: cpu['iperf3-client-rx']?.qemu ?? NaN,
    qemuCpuUdp: cpu['cmd']?.qemu ?? NaN,
    lgnetRssMiB: mem.rssMiB,
    lgnetPeakRssMiB: mem.hwmMiB,
    irqPerFrameTcpTx: jm['iperf3-client-tx']?.interruptsPerFrame ?? NaN,
    irqPerFrameTcpRx: jm['iperf3-client-rx']?.interruptsPerFrame ?? NaN,
    irqPerFrameUdp: jm['cmd']?.interruptsPerFrame ?? NaN,
    kicksPerTxFrameTcpTx: jm['iperf3-client-tx']?.kicksPerTxFrame ?? NaN,
    kicksPerTxFrameUdp: jm['cmd']?.kicksPerTxFrame ?? NaN,
    kicksPerFrameTcpTx: jm['iperf3-client-tx']?.kicksPerFrame ?? NaN,
    kicksPerFrameTcpRx: jm['iperf3-client-rx']?.kicksPerFrame ?? NaN,
    qemuCoresPerGbpsTcpTx: coresPerGbps('iperf3-client-tx', (tx?.bitsPerSecond ?? NaN) / 1e9),
    qemuCoresPerGbpsTcpRx: coresPerGbps('iperf3-client-rx', (r('iperf3-client-rx')?.iperf?.bitsPerSecond ?? NaN) / 1e9),
    jobMetrics: jm,
  };
}

const short = (row: BootRow) =>
  `tcp tx ${row.tcpTxGbps.toFixed(2)} rx ${row.tcpRxGbps.toFixed(2)} Gbit/s, udp64 ${row.udp64Kpps.toFixed(1)} kpps (loss ${row.udp64LossPct.toFixed(1)}%), ` +
  `ping ${row.pingMinMs}/${row.pingAvgMs}/${row.pingMaxMs} ms (median ${row.pingP50Ms}, p90 ${row.pingP90Ms})` +
  (row.variant === 'lgnet' ? `, lgnet cpu tx ${row.lgnetCpuTcpTx.toFixed(2)} s rx ${row.lgnetCpuTcpRx.toFixed(2)} s, rss ${row.lgnetRssMiB.toFixed(0)} MiB, irq/frame tx ${row.irqPerFrameTcpTx.toFixed(3)} rx ${row.irqPerFrameTcpRx.toFixed(3)}` : '') +
  (row.ok ? '' : `  FAILED: ${row.errors.join('; ')}`);

export interface GuestResults {
  machine: ReturnType<typeof machine>;
  options: Required<Omit<GuestBenchOptions, 'cpuProfDir' | 'outDir'>>;
  commands: { lgnet: string[]; qemuA: string[]; qemuB: string[] };
  rows: BootRow[];
  summary: Record<string, { lgnet: Stat; qemu: Stat; ratio: number }>;
  rss: { afterEachRound: number[]; growthMiB: number };
  scaling: Array<{ queues: number; round: number; tcpTxGbps: number; tcpRxGbps: number; lgnetCpuTx: number; lgnetCpuRx: number; perQueueTxFrames: number[]; perQueueRxFrames: number[]; ok: boolean }>;
  soak?: { seconds: number; rssMiB: Array<[number, number]>; growthMiB: number };
}

/** Keys summarised lgnet vs QEMU. */
export const GUEST_METRICS: Array<{ key: keyof BootRow; label: string; unit: string; better: 'higher' | 'lower'; both: boolean }> = [
  { key: 'tcpTxGbps', label: 'TCP guest→host', unit: 'Gbit/s', better: 'higher', both: true },
  { key: 'tcpRxGbps', label: 'TCP host→guest', unit: 'Gbit/s', better: 'higher', both: true },
  { key: 'udp64Kpps', label: 'UDP 64 B guest→host, received', unit: 'kpps', better: 'higher', both: true },
  { key: 'udp64LossPct', label: 'UDP 64 B loss', unit: '%', better: 'lower', both: true },
  { key: 'pingMinMs', label: 'ping RTT min', unit: 'ms', better: 'lower', both: true },
  { key: 'pingAvgMs', label: 'ping RTT avg', unit: 'ms', better: 'lower', both: true },
  { key: 'pingMaxMs', label: 'ping RTT max', unit: 'ms', better: 'lower', both: true },
  { key: 'pingP50Ms', label: 'ping RTT median', unit: 'ms', better: 'lower', both: true },
  { key: 'pingP90Ms', label: 'ping RTT p90', unit: 'ms', better: 'lower', both: true },
  { key: 'qemuCpuTcpTx', label: 'QEMU CPU during TCP g→h', unit: 's', better: 'lower', both: true },
  { key: 'qemuCpuTcpRx', label: 'QEMU CPU during TCP h→g', unit: 's', better: 'lower', both: true },
  { key: 'qemuCoresPerGbpsTcpTx', label: 'QEMU CPU per Gbit/s, TCP g→h', unit: 'cores', better: 'lower', both: true },
  { key: 'qemuCoresPerGbpsTcpRx', label: 'QEMU CPU per Gbit/s, TCP h→g', unit: 'cores', better: 'lower', both: true },
  { key: 'readyS', label: 'boot to link up', unit: 's', better: 'lower', both: true },
  { key: 'lgnetCpuTcpTx', label: 'lgnet CPU during TCP g→h', unit: 's', better: 'lower', both: false },
  { key: 'lgnetCpuTcpRx', label: 'lgnet CPU during TCP h→g', unit: 's', better: 'lower', both: false },
  { key: 'lgnetCpuUdp', label: 'lgnet CPU during UDP 64 B', unit: 's', better: 'lower', both: false },
  { key: 'lgnetPeakRssMiB', label: 'lgnet peak RSS', unit: 'MiB', better: 'lower', both: false },
  { key: 'irqPerFrameTcpTx', label: 'interrupts/frame, TCP g→h', unit: '', better: 'lower', both: false },
  { key: 'irqPerFrameTcpRx', label: 'interrupts/frame, TCP h→g', unit: '', better: 'lower', both: false },
  { key: 'irqPerFrameUdp', label: 'interrupts/frame, UDP 64 B', unit: '', better: 'lower', both: false },
  { key: 'kicksPerTxFrameTcpTx', label: 'kicks/TX frame, TCP g→h', unit: '', better: 'lower', both: false },
  { key: 'kicksPerTxFrameUdp', label: 'kicks/TX frame, UDP 64 B', unit: '', better: 'lower', both: false },
  { key: 'kicksPerFrameTcpTx', label: 'kicks/frame, TCP g→h', unit: '', better: 'lower', both: false },
  { key: 'kicksPerFrameTcpRx', label: 'kicks/frame, TCP h→g', unit: '', better: 'lower', both: false },
];

export async function benchGuest(opts: GuestBenchOptions = {}): Promise<GuestResults> {
  const o = {
    rounds: opts.rounds ?? envNum('LGNET_BENCH_ROUNDS', 5),
    seconds: opts.seconds ?? envNum('LGNET_BENCH_GUEST_SECONDS', 10),
    udpSeconds: opts.udpSeconds ?? envNum('LGNET_BENCH_UDP_SECONDS', 5),
    pingCount: opts.pingCount ?? envNum('LGNET_BENCH_PING_COUNT', 100),
    pingInterval: opts.pingInterval ?? envNum('LGNET_BENCH_PING_INTERVAL', 0.01),
    scalingRounds: opts.scalingRounds ?? envNum('LGNET_BENCH_SCALING_ROUNDS', 1),
    soakSeconds: opts.soakSeconds ?? envNum('LGNET_BENCH_SOAK_SECONDS', 0),
  };
  const cpuProfDir = opts.cpuProfDir ?? process.env['LGNET_BENCH_CPU_PROF'];
  ensureGuestImage();
  const accel = detectAccel();
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-bench-'));
  const nets: TapNamespace[] = [];
  const lgnets: LgnetProcess[] = [];
  const cleanup = onCleanup('guest bench namespaces', async () => {
    for (const l of lgnets) await l.stop();
    for (const n of nets) await n.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  const jobs = ['ping', 'iperf3-client-tx', 'iperf3-client-rx', 'cmd'] as const;
  const rows: BootRow[] = [];
  const rssAfter: number[] = [];
  const scaling: GuestResults['scaling'] = [];
  let soak: GuestResults['soak'];
  const commands: GuestResults['commands'] = { lgnet: [], qemuA: [], qemuB: [] };
  try {
    const netA = createTapNamespace({ prefix: 'lgb-a', hostCidr: `${HOST}/24` });
    nets.push(netA);
    const netB = createTapNamespace({ prefix: 'lgb-b', hostCidr: `${HOST}/24` });
    nets.push(netB);
    await netA.startIperf3Server({ port: 5201 });
    await netB.startIperf3Server({ port: 5201 });
    const socket = join(dir, 'lgnet.sock');
    const lg = await startLgnet({
      ns: netA.ns, socket, tap: netA.tap, metricsPath: join(dir, 'metrics-a.sock'),
      ...(cpuProfDir ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] } : {}),
    });
    lgnets.push(lg);
    commands.lgnet = ['ip', 'netns', 'exec', netA.ns, ...lg.argv];
    const common = { jobs: [...jobs], seconds: o.seconds, udpSeconds: o.udpSeconds, pingCount: o.pingCount, pingInterval: o.pingInterval };
    for (let round = 1; round <= o.rounds; round++) {
      for (const variant of ['lgnet', 'qemu'] as const) {
        progress('guest', `round ${round}/${o.rounds} ${variant === 'lgnet' ? 'A (vhost-user on lgnet)' : 'B (QEMU tap, vhost=off)'} booting (${accel})`);
        const net = variant === 'lgnet' ? netA : netB;
        const { outcome, marks, argv } = await boot({ variant, round, net, ...(variant === 'lgnet' ? { lgnet: lg, socket } : {}), ...common });
        if (variant === 'lgnet' && !commands.qemuA.length) commands.qemuA = argv;
        if (variant === 'qemu' && !commands.qemuB.length) commands.qemuB = argv;
        const row = await rowOf(variant, round, outcome, marks, variant === 'lgnet' ? lg : undefined);
        if (!outcome.ok) {
          row.errors.push(`qemu exit ${outcome.exitCode}${outcome.timedOut ? ' (timeout)' : ''}; serial tail: ${outcome.serial.slice(-600).replace(/\s+/g, ' ')}`);
        }
        rows.push(row);
        if (variant === 'lgnet') rssAfter.push(row.lgnetRssMiB);
        progress('guest', `round ${round} ${variant}: ${short(row)}`);
      }
    }
    // Scaling: 1 and 2 queue pairs, 2 vCPUs, iperf3 -P 2.
    for (let round = 1; round <= o.scalingRounds; round++) {
      for (const queues of [1, 2]) {
        progress('scaling', `lgnet ${queues} queue pair(s), 2 vCPUs, iperf3 -P 2, round ${round}/${o.scalingRounds}`);
        const net = createTapNamespace({ prefix: 'lgb-s', hostCidr: `${HOST}/24`, multiQueue: queues > 1 });
        nets.push(net);
        await net.startIperf3Server({ port: 5201 });
        const sock = join(dir, `lgnet-q${queues}.sock`);
        const l = await startLgnet({ ns: net.ns, socket: sock, tap: net.tap, queues, metricsPath: join(dir, `metrics-q${queues}.sock`) });
        lgnets.push(l);
        try {
          const { outcome, marks } = await boot({
            variant: 'lgnet', round, net, lgnet: l, socket: sock, queues, vcpus: 2,
            jobs: ['iperf3-client-tx', 'iperf3-client-rx'], seconds: o.seconds, udpSeconds: 1, pingCount: 1, pingInterval: 1, iperfArgs: ['-P', '2'],
          });
          const r = (job: string) => outcome.results.find((x) => x.job === job)?.iperf?.bitsPerSecond ?? NaN;
          const cpu = (job: string) => { const m = marks.get(job); return m?.end ? m.end.lgCpu - m.begin.lgCpu : NaN; };
          const last = await l.metrics();
          const perRole = (role: string) => (last?.queues ?? []).filter((q) => q.role === role).map((q) => q.frames);
          const s = {
            queues, round, tcpTxGbps: r('iperf3-client-tx') / 1e9, tcpRxGbps: r('iperf3-client-rx') / 1e9,
            lgnetCpuTx: cpu('iperf3-client-tx'), lgnetCpuRx: cpu('iperf3-client-rx'),
            perQueueTxFrames: perRole('tx'), perQueueRxFrames: perRole('rx'), ok: outcome.ok,
          };
          scaling.push(s);
          progress('scaling', `${queues} pair(s): tcp tx ${s.tcpTxGbps.toFixed(2)} rx ${s.tcpRxGbps.toFixed(2)} Gbit/s, lgnet cpu ${s.lgnetCpuTx.toFixed(2)}/${s.lgnetCpuRx.toFixed(2)} s, frames per tx queue ${s.perQueueTxFrames.join('/')}, per rx queue ${s.perQueueRxFrames.join('/')}${outcome.ok ? '' : ` FAILED ${outcome.errors.join('; ')}`}`);
        } finally {
          await l.stop();
          lgnets.splice(lgnets.indexOf(l), 1);
          await net.destroy();
          nets.splice(nets.indexOf(net), 1);
        }
      }
    }
    if (o.soakSeconds > 0) {
      progress('soak', `lgnet under iperf3 load for ${o.soakSeconds} s, RSS every 5 s`);
      const samples: Array<[number, number]> = [];
      const t0 = Date.now();
      const timer = setInterval(() => samples.push([(Date.now() - t0) / 1000, memory(lg.pid).rssMiB]), 5000);
      try {
        await boot({ variant: 'lgnet', round: 0, net: netA, lgnet: lg, socket, jobs: ['iperf3-client-tx', 'iperf3-client-rx'], seconds: Math.ceil(o.soakSeconds / 2), udpSeconds: 1, pingCount: 1, pingInterval: 1 });
      } finally {
        clearInterval(timer);
      }
      const rs = samples.map((s) => s[1]);
      // Growth: the last minute's median against the first minute's (skip warm-up).
      const head = rs.slice(0, Math.max(1, Math.min(12, rs.length >> 1)));
      const tail = rs.slice(-Math.max(1, Math.min(12, rs.length >> 1)));
      soak = { seconds: o.soakSeconds, rssMiB: samples, growthMiB: stat(tail).median - stat(head).median };
      progress('soak', `RSS ${rs[0]?.toFixed(1)} → ${rs[rs.length - 1]?.toFixed(1)} MiB (growth ${soak.growthMiB.toFixed(2)} MiB)`);
    }
  } finally {
    await cleanup();
  }
  // Medians over the boots that worked: a failed boot's partial figures (an iperf3 that never
  // connected reports 0 bit/s) would pull them down. Failed boots are listed in the report instead.
  const summary: GuestResults['summary'] = {};
  const good = rows.filter((r) => r.ok);
  for (const m of GUEST_METRICS) {
    const a = stat(good.filter((r) => r.variant === 'lgnet').map((r) => r[m.key] as number));
    const b = stat(good.filter((r) => r.variant === 'qemu').map((r) => r[m.key] as number));
    summary[m.key] = { lgnet: a, qemu: b, ratio: a.median / b.median };
  }
  const res: GuestResults = {
    machine: machine(accel),
    options: o,
    commands,
    rows,
    summary,
    rss: { afterEachRound: rssAfter, growthMiB: rssAfter.length > 1 ? rssAfter[rssAfter.length - 1]! - rssAfter[0]! : NaN },
    scaling,
    ...(soak ? { soak } : {}),
  };
  const path = writeResult('guest', res, opts.outDir);
  progress('guest', `wrote ${path}`);
  return res;
}

if (isMain(import.meta.url)) {
  const r = await benchGuest();
  for (const m of GUEST_METRICS) {
    const s = r.summary[m.key]!;
    const f = (x: Stat) => `${x.median.toPrecision(4)} [${x.min.toPrecision(3)}–${x.max.toPrecision(3)}]`;
    console.log(`${m.label.padEnd(34)} lgnet ${f(s.lgnet).padEnd(26)} qemu ${m.both ? f(s.qemu).padEnd(26) : '-'.padEnd(26)} ${m.both ? `ratio ${s.ratio.toFixed(3)}` : ''}`);
  }
}
