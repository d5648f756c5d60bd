/**
 * npm run bench:migration — live migration of the same guest under iperf3 load, on lgnet (vhost-user)
 * and on QEMU's own userspace virtio-net (-netdev tap,vhost=off), side by side in one run (DESIGN.md,
 * "Targets": migration downtime under iperf3 load at most 50 ms).
 *
 * Each round boots the guest once per back-end, QEMU first, then lgnet, and migrates it there and back
 * (A → B → A) with scripts/migrate.ts: two QEMU 7.2 processes on this machine, taps A and B in one
 * bridge inside a namespace of its own, migration over a unix socket, the guest running ping every
 * 50 ms, an iperf3 TCP stream and a paced blob download during each migration. Per migration:
 *   total time and downtime (query-migrate), the source's STOP to the destination's RESUME (QMP event
 *   times: the guest's real pause, including the destination's device start), the host's longest gap
 *   between replies to its own ping every 50 ms (what a peer sees), the first reply after completion,
 *   the guest's ping loss, iperf3's throughput over the leg, the bytes sent and dirty-bitmap syncs.
 * Medians with min and max over all legs, and the ratio lgnet / QEMU of the medians.
 *
 * Output: bench/results/migration.json, migration.md (the table) and migration-chart.svg.
 * Env knobs: LGNET_BENCH_MIGRATION_ROUNDS (3), LGNET_BENCH_MIGRATION_SECONDS (12: load per leg),
 * LGNET_BENCH_MIGRATION_IPERF (rx: host→guest, or tx), LGNET_BENCH_SERVE_ARGS (more lgnet serve flags),
 * LGNET_BENCH_MIGRATION_POSTCOPY (ms after `migrate` to switch to postcopy; unset: precopy only). With
 * postcopy (`npm run bench:migration-postcopy`: 200 ms) both back-ends migrate that way, lgnet with
 * --postcopy, the table adds the RAM sent after the switch and the faults QEMU served from lgnet's
 * userfaultfd, and the files are migration-postcopy.{json,md} and migration-postcopy-chart.svg.
 * About 85 s per round under TCG on 2 vCPUs. A back-end that cannot migrate (lgnet without LOG_SHMFD)
 * has its legs recorded with the reason; the step then fails after writing the results.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { COLORS, renderChart, type Panel } from './chart.ts';
import { envNum, isMain, machine, onCleanup, progress, RESULTS_DIR, stat, writeResult, type Stat } from './common.ts';
import { describeLeg, runMigration, type LegResult, type MigrationRun } from '../migrate.ts';
import { detectAccel } from '../qemu.ts';

export interface MigrationBenchOptions {
  rounds?: number;
  seconds?: number;
  iperfDir?: 'rx' | 'tx';
  /** Switch to postcopy this many ms after `migrate` (-1: precopy only, the default). */
  postcopyAfterMs?: number;
  outDir?: string;
}

/** One migration. NaN where it did not complete. */
export interface MigrationRow {
  variant: 'lgnet' | 'qemu';
  round: number;
  leg: number;
  direction: string;
  status: string;
  error?: string;
  totalTimeMs: number;
  downtimeMs: number;
  stopToResumeMs: number;
  setupTimeMs: number;
  hostMaxGapMs: number;
  firstReplyMs: number;
  guestPingLossPct: number;
  iperfGbps: number;
  transferredMiB: number;
  dirtySyncs: number;
  blobIntact: boolean;
  announce: string;
  /** Postcopy: RAM sent after the switch, and (lgnet) the faults QEMU served from lgnet's userfaultfd. */
  postcopyMiB: number;
  postcopyFaults: number;
}

export const MIGRATION_METRICS: Array<{ key: keyof MigrationRow; label: string; unit: string; better: 'higher' | 'lower' }> = [
  { key: 'downtimeMs', label: 'downtime (QEMU)', unit: 'ms', better: 'lower' },
  { key: 'stopToResumeMs', label: 'source STOP → destination RESUME', unit: 'ms', better: 'lower' },
  { key: 'totalTimeMs', label: 'total time', unit: 'ms', better: 'lower' },
  { key: 'hostMaxGapMs', label: 'longest gap in host ping replies', unit: 'ms', better: 'lower' },
  { key: 'firstReplyMs', label: 'first host ping reply after completion', unit: 'ms', better: 'lower' },
  { key: 'guestPingLossPct', label: 'guest ping loss', unit: '%', better: 'lower' },
  { key: 'iperfGbps', label: 'iperf3 over the leg', unit: 'Gbit/s', better: 'higher' },
  { key: 'setupTimeMs', label: 'setup time', unit: 'ms', better: 'lower' },
  { key: 'transferredMiB', label: 'RAM sent', unit: 'MiB', better: 'lower' },
  { key: 'dirtySyncs', label: 'dirty-bitmap syncs', unit: '', better: 'lower' },
  { key: 'postcopyMiB', label: 'RAM sent after the switch to postcopy', unit: 'MiB', better: 'lower' },
  { key: 'postcopyFaults', label: "lgnet's faults served through its userfaultfd", unit: '', better: 'lower' },
];

export interface MigrationResults {
  machine: ReturnType<typeof machine>;
  options: Required<Omit<MigrationBenchOptions, 'outDir'>>;
  /** The migration parameters the runs used, and QEMU's defaults (from the first source). */
  parameters: { maxBandwidth: number; downtimeLimitMs: number; memMiB: number; qemuDefaults?: Record<string, unknown> };
  commands: { qemu: string[]; lgnetQemu: string[] };
  rows: MigrationRow[];
  summary: Record<string, { lgnet: Stat; qemu: Stat; ratio: number }>;
  /** Why lgnet (or QEMU) legs failed, first of each. */
  failures: Record<string, string>;
}

function rowsOf(variant: 'lgnet' | 'qemu', round: number, run: MigrationRun): MigrationRow[] {
  return run.legs.map((l: LegResult) => {
    const ok = l.status === 'completed' && !l.error;
    const num = (v: number | undefined) => (ok && v !== undefined ? v : NaN);
    return {
      variant, round, leg: l.leg, direction: `${l.from}→${l.to}`, status: l.status,
      ...(l.error ? { error: l.error.slice(0, 2000) } : {}),
      totalTimeMs: num(l.totalTimeMs),
      downtimeMs: num(l.downtimeMs),
      stopToResumeMs: num(l.stopToResumeMs),
      setupTimeMs: num(l.setupTimeMs),
      hostMaxGapMs: num(l.hostPing.maxGapMs),
      firstReplyMs: num(l.hostPing.firstReplyAfterCompleteMs),
      guestPingLossPct: num(l.guestPing?.lossPct),
      iperfGbps: num(l.iperf?.summary ? l.iperf.summary.bitsPerSecond / 1e9 : undefined),
      transferredMiB: num(l.ram?.['transferred'] !== undefined ? l.ram['transferred'] / 2 ** 20 : undefined),
      dirtySyncs: num(l.ram?.['dirty-sync-count']),
      blobIntact: !!l.blob && l.blob.sha256 === l.blob.expectedSha256 && l.blob.rc === 0,
      announce: [...new Set(l.announce.map((a) => a.kind))].join('+'),
      postcopyMiB: num(l.ram?.['postcopy-bytes'] !== undefined && l.states?.includes('postcopy-active') ? l.ram['postcopy-bytes'] / 2 ** 20 : undefined),
      postcopyFaults: num(l.postcopyFaults?.served),
    };
  });
}

export async function benchMigration(opts: MigrationBenchOptions = {}): Promise<MigrationResults> {
  const o = {
    rounds: opts.rounds ?? envNum('LGNET_BENCH_MIGRATION_ROUNDS', 3),
    seconds: opts.seconds ?? envNum('LGNET_BENCH_MIGRATION_SECONDS', 12),
    iperfDir: opts.iperfDir ?? ((process.env['LGNET_BENCH_MIGRATION_IPERF'] ?? 'rx') as 'rx' | 'tx'),
    postcopyAfterMs: opts.postcopyAfterMs ?? envNum('LGNET_BENCH_MIGRATION_POSTCOPY', -1),
  };
  const postcopy = o.postcopyAfterMs >= 0;
  const name = postcopy ? 'migration-postcopy' : 'migration';
  if (o.iperfDir !== 'rx' && o.iperfDir !== 'tx') throw new Error(`LGNET_BENCH_MIGRATION_IPERF must be rx or tx, got ${o.iperfDir}`);
  const accel = detectAccel();
  const serveArgs = ['--log-level', 'warn', ...(process.env['LGNET_BENCH_SERVE_ARGS'] ?? '').split(/\s+/).filter(Boolean)];
  const rows: MigrationRow[] = [];
  const failures: Record<string, string> = {};
  const commands: MigrationResults['commands'] = { qemu: [], lgnetQemu: [] };
  let parameters: MigrationResults['parameters'] | undefined;
  for (let round = 1; round <= o.rounds; round++) {
    for (const variant of ['qemu', 'lgnet'] as const) {
      progress('migration', `round ${round}/${o.rounds} ${variant === 'lgnet' ? 'lgnet (vhost-user)' : 'QEMU tap, vhost=off'}: boot, A → B → A under iperf3 ${o.iperfDir} (${accel})`);
      const run = await runMigration({
        backend: variant,
        legs: 2,
        seconds: o.seconds,
        iperfDir: o.iperfDir,
        lgnetArgs: serveArgs,
        ...(postcopy ? { postcopyAfterMs: o.postcopyAfterMs } : {}),
        onCleanup,
      });
      const rs = rowsOf(variant, round, run);
      rows.push(...rs);
      parameters ??= {
        maxBandwidth: run.options.maxBandwidth,
        downtimeLimitMs: run.options.downtimeLimitMs,
        memMiB: run.options.memMiB,
        ...(run.parameters ? { qemuDefaults: run.parameters } : {}),
      };
      const argv = run.qemus.find((q) => q.name === 'q2')?.argv ?? [];
      if (variant === 'qemu' && !commands.qemu.length) commands.qemu = argv;
      if (variant === 'lgnet' && !commands.lgnetQemu.length) commands.lgnetQemu = argv;
      const why = run.error ?? run.legs.find((l) => l.error)?.error;
      if (why && !failures[variant]) failures[variant] = why.slice(0, 2000);
      for (const l of run.legs) progress('migration', `round ${round} ${variant} ${describeLeg(l)}`);
      if (run.error) progress('migration', `round ${round} ${variant}: ${run.error.split('\n')[0]}`);
      if (run.legs.length < 2) rows.push(...Array.from({ length: 2 - run.legs.length }, (_, i) => missingRow(variant, round, run.legs.length + i + 1, why)));
    }
  }
  const summary: MigrationResults['summary'] = {};
  for (const m of MIGRATION_METRICS) {
    const a = stat(rows.filter((r) => r.variant === 'lgnet').map((r) => r[m.key] as number));
    const b = stat(rows.filter((r) => r.variant === 'qemu').map((r) => r[m.key] as number));
    summary[m.key] = { lgnet: a, qemu: b, ratio: a.median / b.median };
  }
  const res: MigrationResults = {
    machine: machine(accel),
    options: o,
    parameters: parameters ?? { maxBandwidth: NaN, downtimeLimitMs: NaN, memMiB: NaN },
    commands,
    rows,
    summary,
    failures,
  };
  const dir = opts.outDir ?? RESULTS_DIR;
  const path = writeResult(name, res, dir);
  writeFileSync(join(dir, `${name}.md`), migrationMarkdown(res));
  writeFileSync(join(dir, `${name}-chart.svg`), migrationChart(res));
  progress('migration', `wrote ${path}, ${name}.md, ${name}-chart.svg`);
  const completed = (v: string) => rows.filter((r) => r.variant === v && r.status === 'completed' && !r.error).length;
  if (completed('qemu') < rows.filter((r) => r.variant === 'qemu').length) {
    throw new Error(`QEMU's own virtio-net did not migrate every time (${completed('qemu')} of ${rows.filter((r) => r.variant === 'qemu').length}): ${failures['qemu']?.split('\n')[0] ?? ''}`);
  }
  if (completed('lgnet') < rows.filter((r) => r.variant === 'lgnet').length) {
    throw new Error(`lgnet did not migrate every time (${completed('lgnet')} of ${rows.filter((r) => r.variant === 'lgnet').length}): ${failures['lgnet']?.split('\n')[0] ?? ''}`);
  }
  return res;
}

function missingRow(variant: 'lgnet' | 'qemu', round: number, leg: number, why: string | undefined): MigrationRow {
  return {
    variant, round, leg, direction: leg % 2 ? 'A→B' : 'B→A', status: 'not run', error: `an earlier leg failed: ${(why ?? '').split('\n')[0]}`,
    totalTimeMs: NaN, downtimeMs: NaN, stopToResumeMs: NaN, setupTimeMs: NaN, hostMaxGapMs: NaN, firstReplyMs: NaN,
    guestPingLossPct: NaN, iperfGbps: NaN, transferredMiB: NaN, dirtySyncs: NaN, blobIntact: false, announce: '',
    postcopyMiB: NaN, postcopyFaults: NaN,
  };
}

const p4 = (v: number) => (Number.isFinite(v) ? (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3)) : 'n/a');
const st = (s: Stat | undefined) => (s && s.n ? `${p4(s.median)} [${p4(s.min)}–${p4(s.max)}]` : 'n/a');

/** The table (markdown), for bench/results/migration.md and the report. */
export function migrationMarkdown(r: MigrationResults): string {
  const md: string[] = [];
  const p = r.parameters;
  const pc = r.options.postcopyAfterMs >= 0;
  md.push(`### Live migration${pc ? ' (postcopy)' : ''} under iperf3 load: lgnet (vhost-user) vs QEMU's own virtio-net (tap, vhost=off)`, '');
  md.push(
    `${r.options.rounds} rounds, each one boot per back-end migrated A → B → A (${r.rows.length / 2} migrations each); ${r.options.seconds} s of load per leg ` +
      `(iperf3 TCP ${r.options.iperfDir === 'rx' ? 'host→guest' : 'guest→host'}, ping every 50 ms both ways, a paced 24 MiB blob host→guest); ` +
      `${p.memMiB} MiB guest${r.machine.accel === 'tcg' ? ' (+ 8 KiB under TCG)' : ''}, accel ${r.machine.accel}; max-bandwidth ${p4(p.maxBandwidth / 2 ** 30)} GiB/s, downtime-limit ${p.downtimeLimitMs} ms ` +
      `(see scripts/migrate.ts for why).${pc ? ` Postcopy: both QEMUs have postcopy-ram, lgnet --postcopy; the source switches ${r.options.postcopyAfterMs} ms after \`migrate\`.` : ''} Median [min–max]; ratio = median lgnet / median QEMU.`,
    '',
  );
  md.push('| metric | lgnet | QEMU | lgnet/QEMU | target |', '|---|---|---|---|---|');
  for (const m of MIGRATION_METRICS) {
    const s = r.summary[m.key];
    if (!s || (!pc && (m.key === 'postcopyMiB' || m.key === 'postcopyFaults'))) continue;
    const target = m.key === 'downtimeMs' || m.key === 'stopToResumeMs' ? '≤ 50 ms' : '';
    md.push(`| ${m.label}${m.unit ? ` (${m.unit})` : ''} | ${st(s.lgnet)} | ${st(s.qemu)} | ${Number.isFinite(s.ratio) ? `**${s.ratio.toFixed(2)}**` : '—'} | ${target} |`);
  }
  md.push('');
  const bad = r.rows.filter((x) => x.status !== 'completed' || x.error || !x.blobIntact);
  if (bad.length) {
    md.push(`Migrations that failed or lost data: ${bad.map((x) => `${x.variant} round ${x.round} leg ${x.leg} (${x.direction}): ${x.status}${x.error ? ` — ${x.error.split('\n')[0]}` : ''}${x.status === 'completed' && !x.blobIntact ? ' — blob sha256 mismatch' : ''}`).join(' / ')}`, '');
  }
  md.push('```');
  md.push(pc ? `LGNET_BENCH_MIGRATION_POSTCOPY=${r.options.postcopyAfterMs} npm run bench:migration` : 'npm run bench:migration');
  if (r.commands.qemu.length) md.push(`# QEMU destination (tap): ${r.commands.qemu.join(' ')}`);
  if (r.commands.lgnetQemu.length) md.push(`# QEMU destination (lgnet): ${r.commands.lgnetQemu.join(' ')}`);
  md.push('```');
  return md.join('\n') + '\n';
}

export function migrationChart(r: MigrationResults): string {
  const panels: Panel[] = [];
  for (const key of ['downtimeMs', 'stopToResumeMs', 'totalTimeMs', 'hostMaxGapMs', 'firstReplyMs', 'iperfGbps'] as const) {
    const m = MIGRATION_METRICS.find((x) => x.key === key)!;
    const s = r.summary[key]!;
    panels.push({
      title: m.label, unit: m.unit, better: m.better,
      bars: [
        { label: 'lgnet', value: s.lgnet.median, min: s.lgnet.min, max: s.lgnet.max, color: COLORS.lgnet },
        { label: 'QEMU tap', value: s.qemu.median, min: s.qemu.min, max: s.qemu.max, color: COLORS.qemu },
      ],
      note: `lgnet/QEMU ${Number.isFinite(s.ratio) ? s.ratio.toFixed(2) : 'n/a'}`,
    });
  }
  const mc = r.machine;
  return renderChart({
    title: `Live migration${r.options.postcopyAfterMs >= 0 ? ' (postcopy)' : ''} under iperf3 load: lgnet vs QEMU userspace virtio-net`,
    subtitle: `${mc.cpu}, ${mc.cores} vCPUs, ${mc.accel}, ${mc.qemu.replace('QEMU emulator version ', 'QEMU ')}, ${mc.date.slice(0, 10)}; bars = median, whiskers = min–max`,
    panels,
    columns: 3,
  });
}

if (isMain(import.meta.url)) {
  try {
    const r = await benchMigration();
    console.log('\n' + migrationMarkdown(r));
  } catch (e) {
    const md = join(RESULTS_DIR, envNum('LGNET_BENCH_MIGRATION_POSTCOPY', -1) >= 0 ? 'migration-postcopy.md' : 'migration.md');
    if (existsSync(md)) console.log('\n' + readFileSync(md, 'utf8'));
    console.error(`\n${(e as Error).message}`);
    process.exit(1);
  }
}
