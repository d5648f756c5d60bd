/**
 * What bounds the guest figures: boots the guest on lgnet serve once per mode and profiles lgnet during
 * each job (iperf3 TCP guest→host, host→guest, UDP 64 B, ping). Not part of `npm run bench`.
 *
 *   npx tsx scripts/bench/profile.ts [threads|cpuprof|strace|perf]... [--seconds 8] [--out DIR]
 *
 *   threads  CPU seconds per thread of lgnet and of QEMU per job (/proc/<pid>/task/<tid>/stat), plus
 *            lgnet's counters (frames, bursts, kicks, interrupts, sleeps) per job; also the same for
 *            QEMU's own tap virtio-net (B), for the vCPU/IO-thread split
 *   cpuprof  lgnet under node --cpu-prof (one .cpuprofile per thread), summarised as self time by
 *            function per thread
 *   strace   strace -c -f -p <lgnet> during each job: syscalls, their counts and time
 *   perf     perf record -g -p <lgnet> (node --perf-basic-prof for JIT names); perf report by symbol
 *
 * Results go to DIR (default bench/results/profile/): <mode>-<job>.txt and summary.json.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, ensureGuestImage } from '../qemu.ts';
import { createTapNamespace } from '../netns.ts';
import { killPid, onCleanup, progress, RESULTS_DIR, sleep, threadCpu } from './common.ts';
import { metricsDelta, startLgnet, type LgnetProcess, type LgnetSnapshot } from './lgnet-process.ts';

const argv = process.argv.slice(2);
const opt = (name: string, def: string) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1]! : def);
const SECONDS = Number(opt('seconds', '8'));
const OUT = opt('out', join(RESULTS_DIR, 'profile'));
const modes = argv.filter((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1]!.startsWith('--')));
const MODES = modes.length ? modes : ['threads', 'cpuprof', 'strace'];
const JOBS = ['iperf3-client-tx', 'iperf3-client-rx', 'cmd', 'ping'] as const;
const HOST = '10.0.2.1';

type ThreadSnap = Map<number, { comm: string; cpu: number }>;
function threadDelta(a: ThreadSnap, b: ThreadSnap): Array<{ tid: number; comm: string; cpu: number }> {
  const out: Array<{ tid: number; comm: string; cpu: number }> = [];
  for (const [tid, v] of b) out.push({ tid, comm: v.comm, cpu: v.cpu - (a.get(tid)?.cpu ?? 0) });
  return out.sort((x, y) => y.cpu - x.cpu);
}

/** Self time by function per profile (one file per thread). */
function summariseCpuProfiles(dir: string, top = 15): string {
  const lines: string[] = [];
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.cpuprofile')).sort()) {
    const p = JSON.parse(readFileSync(join(dir, f), 'utf8')) as {
      nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number } }>;
      samples: number[];
      timeDeltas: number[];
      startTime: number;
      endTime: number;
    };
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const self = new Map<string, number>();
    let total = 0;
    for (let i = 0; i < p.samples.length; i++) {
      const n = byId.get(p.samples[i]!);
      const dt = p.timeDeltas[i] ?? 0;
      if (!n) continue;
      const cf = n.callFrame;
      const key = `${cf.functionName || '(anonymous)'} ${cf.url.replace(/^.*\/(main|node_modules)\//, '')}:${cf.lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + dt);
      total += dt;
    }
    const busy = total - (self.get(`(idle) :0`) ?? 0);
    lines.push(`== ${f}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(2)} s not idle`);
    for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      lines.push(`  ${((100 * v) / total).toFixed(1).padStart(5)}%  ${(v / 1e6).toFixed(2).padStart(6)} s  ${k}`);
    }
  }
  return lines.join('\n');
}

async function runMode(mode: string, variant: 'lgnet' | 'qemu'): Promise<Record<string, unknown>> {
  const net = createTapNamespace({ prefix: 'lgb-p', hostCidr: `${HOST}/24` });
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-prof-'));
  const profDir = join(OUT, `cpuprof-${Date.now()}`);
  let lg: LgnetProcess | undefined;
  const tools: ChildProcess[] = [];
  const undo = onCleanup('profile', async () => {
    for (const t of tools) killPid(t.pid, 'SIGKILL');
    await lg?.stop();
    await net.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  const summary: Record<string, unknown> = {};
  try {
    await net.startIperf3Server({ port: 5201 });
    const socket = join(dir, 'lgnet.sock');
    if (variant === 'lgnet') {
      if (mode === 'cpuprof') mkdirSync(profDir, { recursive: true });
      lg = await startLgnet({
        ns: net.ns, socket, tap: net.tap, metricsPath: join(dir, 'm.sock'),
        ...(mode === 'cpuprof' ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] } : mode === 'perf' ? { nodeArgs: ['--perf-basic-prof'] } : {}),
      });
    }
    let qemuPid = 0;
    const begin = new Map<string, { lg: ThreadSnap; q: ThreadSnap; m: Promise<LgnetSnapshot | undefined>; tool?: ChildProcess; t: number }>();
    const pending: Array<Promise<void>> = [];
    const g = bootGuest({
      netns: net.ns,
      netdev: variant === 'lgnet' ? { type: 'vhost-user', socket, reconnect: 1 } : { type: 'tap', ifname: net.tap },
      guest: { ip: '10.0.2.2/24', peer: HOST, jobs: [...JOBS], iperfTime: SECONDS, pingCount: 100, pingInterval: 0.01, cmd: `iperf3 -c ${HOST} -p 5201 -u -b 0 -l 64 -t ${SECONDS} -J` },
      timeoutMs: 120_000 + 4 * SECONDS * 1000,
      onLine(line) {
        const b = /^LGNET-OUTPUT-BEGIN (\S+)/.exec(line);
        const e = /^LGNET-OUTPUT-END (\S+)/.exec(line);
        if (b) {
          const job = b[1]!;
          let tool: ChildProcess | undefined;
          if (lg && mode === 'strace') tool = spawn('strace', ['-c', '-f', '-p', String(lg.pid), '-o', join(OUT, `strace-${job}.txt`)], { stdio: 'ignore' });
          if (lg && mode === 'perf') tool = spawn('perf', ['record', '-F', '999', '-g', '-p', String(lg.pid), '-o', join(OUT, `perf-${job}.data`)], { stdio: 'ignore' });
          if (tool) tools.push(tool);
          begin.set(job, { lg: lg ? threadCpu(lg.pid) : new Map(), q: threadCpu(qemuPid), m: lg ? lg.metrics() : Promise.resolve(undefined), ...(tool ? { tool } : {}), t: performance.now() });
        } else if (e) {
          const job = e[1]!;
          const s = begin.get(job);
          if (!s) return;
          const lgT = lg ? threadCpu(lg.pid) : new Map();
          const qT = threadCpu(qemuPid);
          const m = lg ? lg.metrics() : Promise.resolve(undefined);
          const secs = (performance.now() - s.t) / 1000;
          if (s.tool) killPid(s.tool.pid, 'SIGINT');
          pending.push((async () => {
            const md = metricsDelta(await s.m, await m);
            const a = await s.m;
            const z = await m;
            const q = (snap: LgnetSnapshot | undefined, role: string, k: string) => (snap?.queues ?? []).filter((x) => x.role === role).reduce((acc, x) => acc + ((x as unknown as Record<string, number>)[k] ?? 0), 0);
            const d = (role: string, k: string) => q(z, role, k) - q(a, role, k);
            summary[job] = {
              seconds: secs,
              lgnetThreads: threadDelta(s.lg, lgT).filter((t) => t.cpu > 0.005),
              qemuThreads: threadDelta(s.q, qT).filter((t) => t.cpu > 0.005),
              counters: {
                ...md,
                rxBursts: d('rx', 'bursts'), txBursts: d('tx', 'bursts'), rxSleeps: d('rx', 'sleeps'), txSleeps: d('tx', 'sleeps'),
                rxSuppressed: d('rx', 'interruptsSuppressed'), txSuppressed: d('tx', 'interruptsSuppressed'),
                rxBytes: d('rx', 'bytes'), txBytes: d('tx', 'bytes'),
              },
            };
          })());
        }
      },
    });
    qemuPid = g.pid;
    const unq = onCleanup(`qemu ${g.pid}`, () => g.kill(0));
    const o = await g.done;
    await unq();
    await Promise.all(pending);
    for (const t of tools) await new Promise<void>((r) => (t.exitCode !== null || t.signalCode !== null ? r() : t.on('exit', () => r())));
    const r = (job: string) => o.results.find((x) => x.job === job);
    summary['figures'] = {
      ok: o.ok,
      tcpTxGbps: (r('iperf3-client-tx')?.iperf?.bitsPerSecond ?? NaN) / 1e9,
      tcpRxGbps: (r('iperf3-client-rx')?.iperf?.bitsPerSecond ?? NaN) / 1e9,
      ping: { ...r('ping'), output: undefined },
    };
    if (lg) await lg.stop();
    lg = undefined;
    if (mode === 'cpuprof') {
      await sleep(500);
      const text = summariseCpuProfiles(profDir);
      writeFileSync(join(OUT, 'cpuprof-summary.txt'), text + '\n');
      summary['cpuprof'] = text;
    }
    if (mode === 'perf') {
      for (const job of JOBS) {
        const rep = spawnSync('perf', ['report', '-i', join(OUT, `perf-${job}.data`), '--no-children', '--sort', 'comm,dso,sym', '--stdio', '-g', 'none'], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 120_000 });
        writeFileSync(join(OUT, `perf-${job}.txt`), rep.stdout.split('\n').filter((l) => !l.startsWith('#') && l.trim()).slice(0, 60).join('\n') + '\n');
      }
    }
  } finally {
    await undo();
  }
  return summary;
}

mkdirSync(OUT, { recursive: true });
ensureGuestImage();
const all: Record<string, unknown> = {};
for (const mode of MODES) {
  for (const variant of mode === 'threads' ? (['lgnet', 'qemu'] as const) : (['lgnet'] as const)) {
    progress('profile', `${mode} (${variant}), jobs ${JOBS.join(', ')}, ${SECONDS} s each`);
    all[`${mode}-${variant}`] = await runMode(mode, variant);
    progress('profile', `${mode} (${variant}) done: ${JSON.stringify((all[`${mode}-${variant}`] as Record<string, unknown>)['figures'])}`);
    writeFileSync(join(OUT, 'summary.json'), JSON.stringify(all, null, 2) + '\n');
  }
}
writeFileSync(join(OUT, 'summary.json'), JSON.stringify(all, null, 2) + '\n');
progress('profile', `wrote ${OUT}`);
