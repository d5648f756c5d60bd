/**
 * npm run bench:dpdk — the harness as a vhost-user front-end (harness/ VhostUserFrontend, the part
 * that plays QEMU) drives two back-ends one after the other in the same run, each bridging to a tap in
 * a namespace of its own:
 *
 *   lgnet   bin/lgnet serve --socket S --tap T --metrics-socket M          (one worker per queue)
 *   DPDK    dpdk-testpmd --vdev net_vhost0,iface=S --vdev net_tap0,iface=T -- --forward-mode=io
 *           (Debian's dpdk-dev package, installed here with apt-get when missing; one forwarding lcore
 *            busy-polls both ports)
 *
 * Per back-end and frame size (64, 1514): TX frames/s (the harness keeps the TX ring full; counted as
 * completions, and the tap's kernel rx counter as a cross-check) and RX frames/s (a C AF_PACKET sender
 * feeds the tap; the harness recycles RX buffers and counts completions). For both, the back-end
 * process's CPU seconds (/proc/<pid>/stat) over the window give CPU seconds per million frames.
 *
 * Hugepages: the bench reserves LGNET_BENCH_HUGEPAGES (128) 2 MiB pages, mounts a private hugetlbfs,
 * runs testpmd with --in-memory, then unmounts and writes back the original nr_hugepages, also on
 * failure and Ctrl-C. If the kernel will not give the pages, testpmd runs with --no-huge -m 512: the
 * vhost library maps the front-end's memory from the fds in SET_MEM_TABLE (our memfd), and testpmd's
 * own mbufs need not be shared with anyone, so vhost-user works without hugepages; this is said in the
 * results (hugepages: false).
 *
 * Env: LGNET_BENCH_DPDK_SECONDS (2 per measurement), LGNET_BENCH_DPDK_INSTALL=0 (do not apt-get).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { mask } from '../../device/features.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns, openPacketIn, type Netns } from '../../harness/netns.ts';
import { buildTapLoop, cpuSeconds, envNum, isMain, killPid, machine, onCleanup, progress, sleep, waitGone, writeResult } from './common.ts';
import { startLgnet, type LgnetProcess } from './lgnet-process.ts';

const QSIZE = 256;
const HUGE_NR = '/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';

export interface Rate { frames: number; seconds: number; fps: number; cpuS: number; cpuSPerMFrames: number; tapCount?: number }
export type BackendResult = Record<'tx64' | 'tx1514' | 'rx64' | 'rx1514', Rate & { offered?: number }>;

export interface DpdkResults {
  machine: ReturnType<typeof machine>;
  seconds: number;
  dpdk: { status: 'ran' | 'unavailable' | 'failed'; why?: string; version?: string; hugepages?: boolean; argv?: string[] };
  lgnetArgv?: string[];
  lgnet?: BackendResult;
  testpmd?: BackendResult;
  ratio?: Record<string, { fps: number; cpuSPerMFrames: number }>;
}

// ---- DPDK availability ------------------------------------------------------------------------------

function have(bin: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).status === 0;
}

/** dpdk-testpmd, installing Debian's dpdk-dev when missing. Returns why not when it cannot. */
export function ensureTestpmd(install = process.env['LGNET_BENCH_DPDK_INSTALL'] !== '0'): { ok: boolean; why: string; version?: string } {
  if (!have('dpdk-testpmd')) {
    if (!install) return { ok: false, why: 'dpdk-testpmd is not installed (apt-get install dpdk-dev; LGNET_BENCH_DPDK_INSTALL=0 forbade installing it)' };
    progress('dpdk', 'dpdk-testpmd missing: apt-get install -y --no-install-recommends dpdk-dev');
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    let r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'dpdk-dev'], { encoding: 'utf8', timeout: 600_000, env });
    if (r.status !== 0) {
      spawnSync('apt-get', ['update', '-qq'], { encoding: 'utf8', timeout: 300_000, env });
      r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'dpdk-dev'], { encoding: 'utf8', timeout: 600_000, env });
    }
    if (r.status !== 0 || !have('dpdk-testpmd')) return { ok: false, why: `apt-get install dpdk-dev failed (exit ${r.status}): ${(r.stderr ?? '').slice(-500)}` };
  }
  const v = spawnSync('dpkg-query', ['-W', '-f', '${Version}', 'dpdk-dev'], { encoding: 'utf8' }).stdout?.trim();
  return { ok: true, why: '', version: v || undefined };
}

/** Reserves `pages` 2 MiB hugepages and mounts a private hugetlbfs; undo() restores both. */
async function setupHugepages(pages: number): Promise<{ ok: boolean; dir?: string; why: string; undo: () => Promise<void> }> {
  if (!existsSync(HUGE_NR)) return { ok: false, why: `${HUGE_NR} missing (kernel without 2 MiB hugepages)`, undo: async () => {} };
  const orig = Number(readFileSync(HUGE_NR, 'utf8').trim());
  const free0 = Number(/^HugePages_Free:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  let dir: string | undefined;
  let mounted = false;
  const undo = onCleanup('hugepages', async () => {
    if (mounted && dir) spawnSync('umount', [dir], { timeout: 10_000 });
    if (dir) rmSync(dir, { recursive: true, force: true });
    // Pages a just-killed testpmd still holds become surplus when the count drops. The kernel does not
    // always free a surplus page once it is released (CI saw one stay, free, for good); writing the
    // current total first makes it persistent again, and then lowering the count frees it. Repeat until
    // the original count reads back (bounded).
    for (let i = 0; i < 30; i++) {
      try {
        const now = Number(readFileSync(HUGE_NR, 'utf8').trim());
        if (now === orig) break;
        if (now > orig) writeFileSync(HUGE_NR, String(now));
        writeFileSync(HUGE_NR, String(orig));
      } catch {
        /* reported by the caller's check */
      }
      await sleep(100);
    }
  });
  try {
    if (free0 < pages) writeFileSync(HUGE_NR, String(orig + pages - free0));
    const free = Number(/^HugePages_Free:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
    if (free < pages) {
      await undo();
      return { ok: false, why: `the kernel gave ${free} free 2 MiB hugepages of ${pages} asked`, undo: async () => {} };
    }
    dir = mkdtempSync(join(tmpdir(), 'lgnet-huge-'));
    const m = spawnSync('mount', ['-t', 'hugetlbfs', '-o', 'pagesize=2M', 'nodev', dir], { encoding: 'utf8', timeout: 10_000 });
    if (m.status !== 0) {
      await undo();
      return { ok: false, why: `mount -t hugetlbfs failed: ${m.stderr}`, undo: async () => {} };
    }
    mounted = true;
    return { ok: true, dir, why: `reserved ${pages} pages (nr_hugepages ${orig} → ${readFileSync(HUGE_NR, 'utf8').trim()})`, undo };
  } catch (e) {
    await undo();
    return { ok: false, why: `cannot reserve hugepages: ${(e as Error).message}`, undo: async () => {} };
  }
}

// ---- back-ends --------------------------------------------------------------------------------------

export interface Backend {
  name: 'lgnet' | 'testpmd';
  pid: number;
  tap: string;
  argv: string[];
  stop(): Promise<void>;
}

/**
 * testpmd forwarding (io) between a vhost-user port on `socket` and a tap PMD port that makes `tap` in
 * `ns`. `vhostArgs` adds net_vhost devargs (e.g. ',iommu-support=1'). Resolves once both ports are up.
 */
export async function startTestpmd(ns: Netns, socket: string, tap: string, huge: { dir?: string } | undefined, log: string[], vhostArgs = ''): Promise<Backend> {
  const mem = huge?.dir ? ['--in-memory', '--huge-dir', huge.dir] : ['--no-huge', '-m', '512', '--file-prefix', `lgnet-bench-${process.pid}`];
  const argv = [
    'dpdk-testpmd', '-l', '0,1', '-n', '1', ...mem, '--no-pci', '--log-level', 'lib.eal:warning',
    '--vdev', `net_vhost0,iface=${socket},queues=1${vhostArgs}`, '--vdev', `net_tap0,iface=${tap}`,
    '--', '--forward-mode=io', '--auto-start', '--nb-cores=1', '--rxq=1', '--txq=1', '--total-num-mbufs=16384', '--stats-period', '1',
  ];
  const child: ChildProcess = spawn('ip', ['netns', 'exec', ns.name, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid!;
  const unregister = onCleanup(`testpmd ${pid}`, () => killPid(pid, 'SIGKILL'));
  let out = '';
  let head = '';
  const onData = (d: Buffer) => {
    // Keep the start-up lines and the last stats (testpmd prints port stats every second).
    if (head.length < 20_000) head += d.toString();
    else out = (out + d.toString()).slice(-60_000);
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<void>((res) => child.on('exit', () => res()));
  const stop = async () => {
    killPid(pid, 'SIGINT'); // testpmd stops forwarding, closes ports and exits on SIGINT
    await Promise.race([exited, sleep(5000)]);
    killPid(pid, 'SIGKILL');
    await waitGone(pid, 2000);
    await unregister();
    if (!huge?.dir) rmSync(`/var/run/dpdk/lgnet-bench-${process.pid}`, { recursive: true, force: true });
    log.push(head + out);
  };
  const deadline = Date.now() + 30_000;
  while (!existsSync(socket) || !/Port 1:/.test(head)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`testpmd did not start (exit ${child.exitCode}):\n${head.slice(-3000)}`);
    }
    await sleep(50);
  }
  return { name: 'testpmd', pid, tap, argv, stop };
}

async function startLgnetBackend(ns: Netns, socket: string, tap: string, dir: string): Promise<Backend & { lg: LgnetProcess }> {
  const lg = await startLgnet({ ns: ns.name, socket, tap, metricsPath: join(dir, 'metrics.sock') });
  return { name: 'lgnet', pid: lg.pid, tap, argv: lg.argv, lg, stop: async () => void (await lg.stop()) };
}

// ---- the harness --------------------------------------------------------------------------------------

function tapRxPackets(ns: Netns, tap: string): number {
  try {
    const j = JSON.parse(ns.exec('ip', '-s', '-j', 'link', 'show', 'dev', tap)) as Array<{ stats64?: { rx?: { packets?: number } } }>;
    return j[0]?.stats64?.rx?.packets ?? NaN;
  } catch {
    return NaN;
  }
}

type Attached = { fe: VhostUserFrontend; ram: GuestRam; drv: VirtioNetDriver };

async function attach(socket: string): Promise<Attached> {
  const fe = await VhostUserFrontend.connect(socket, { timeoutMs: 10_000 });
  const ram = new GuestRam(64 << 20, { name: 'lgnet-bench-dpdk' });
  const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1', 'RING_EVENT_IDX'), queueSize: QSIZE, rxBufferSize: 2048 });
  await fe.attachDriver(drv, ram);
  drv.fillRx();
  drv.rx[0]!.publishAndKick();
  return { fe, ram, drv };
}

/** Keeps the TX ring full for `seconds`; counts completions and the back-end's CPU time meanwhile. */
function harnessTx(a: Attached, len: number, seconds: number, pid: number): Rate {
  const frame = ethernet(new Uint8Array([2, 0, 0, 0, 0, 2]), new Uint8Array([2, 0, 0, 0, 0, 1]), 0x88b5, new Uint8Array(len - 14));
  const c0 = cpuSeconds(pid);
  let cpuS = 0;
  const r = a.drv.blastTx(frame, seconds, { onStop: () => (cpuS = cpuSeconds(pid) - c0) });
  return { frames: r.frames, seconds: r.seconds, fps: r.frames / r.seconds, cpuS, cpuSPerMFrames: cpuS / (r.frames / 1e6) };
}

/** Recycles RX buffers for `seconds`; counts completions and the back-end's CPU time meanwhile. */
function harnessRx(a: Attached, seconds: number, pid: number): Rate {
  const c0 = cpuSeconds(pid);
  let cpuS = 0;
  const r = a.drv.sinkRx(seconds, { onStop: () => (cpuS = cpuSeconds(pid) - c0) });
  return { frames: r.frames, seconds: r.seconds, fps: r.frames / r.seconds, cpuS, cpuSPerMFrames: cpuS / (r.frames / 1e6) };
}

async function measureBackend(kind: 'lgnet' | 'testpmd', seconds: number, huge: { dir?: string } | undefined, bin: string, log: string[]): Promise<{ res: BackendResult; argv: string[] }> {
  const ns = createNetns(kind === 'lgnet' ? 'lgb-dl' : 'lgb-dp');
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-bench-dpdk-'));
  const socket = join(dir, 'vhost.sock');
  const tap = kind === 'lgnet' ? 'lgdl0' : 'lgdp0';
  let be: Backend | undefined;
  let a: Attached | undefined;
  const undo = onCleanup(`dpdk bench ${kind}`, async () => {
    try {
      a?.fe.close();
    } catch {
      /* closed */
    }
    await be?.stop();
    a?.drv.close();
    a?.ram.close();
    ns.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    be = kind === 'lgnet' ? await startLgnetBackend(ns, socket, tap, dir) : await startTestpmd(ns, socket, tap, huge, log);
    ns.exec('ip', 'link', 'set', tap, 'up');
    a = await attach(socket);
    await sleep(300); // testpmd: the vhost port's link comes up on new_device
    const res = {} as BackendResult;
    for (const len of [64, 1514] as const) {
      harnessTx(a, len, 0.3, be.pid);
      const k0 = tapRxPackets(ns, tap);
      const r = harnessTx(a, len, seconds, be.pid);
      r.tapCount = tapRxPackets(ns, tap) - k0;
      res[`tx${len}`] = r;
      progress('dpdk', `${kind} tx ${len} B: ${(r.fps / 1e6).toFixed(3)} M/s (tap saw ${(r.tapCount / r.seconds / 1e6).toFixed(3)} M/s), ${r.cpuSPerMFrames.toFixed(2)} CPU s per M frames`);
    }
    const pkt = openPacketIn(ns, tap);
    for (const len of [64, 1514] as const) {
      const child = spawn(bin, ['send', '3', String(len), String(seconds + 1)], { stdio: ['ignore', 'pipe', 'pipe', pkt] });
      const unk = onCleanup(`sender ${child.pid}`, () => killPid(child.pid, 'SIGKILL'));
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<void>((res2) => child.on('close', () => res2()));
      await sleep(200);
      const r = harnessRx(a, seconds, be.pid);
      await Promise.race([exited, sleep((seconds + 5) * 1000)]);
      killPid(child.pid, 'SIGKILL');
      await unk();
      let offered = NaN;
      try {
        offered = (JSON.parse(out) as { fps: number }).fps;
      } catch {
        /* sender said nothing */
      }
      res[`rx${len}`] = { ...r, offered };
      progress('dpdk', `${kind} rx ${len} B: ${(r.fps / 1e6).toFixed(3)} M/s (sender offered ${(offered / 1e6).toFixed(3)} M/s), ${r.cpuSPerMFrames.toFixed(2)} CPU s per M frames`);
    }
    return { res, argv: be.argv };
  } finally {
    await undo();
  }
}

/** Runs lgnet and testpmd behind the same harness; writes `outDir`/dpdk.json. */
export async function benchDpdk(opts: { seconds?: number; outDir?: string; install?: boolean } = {}): Promise<DpdkResults> {
  const seconds = opts.seconds ?? envNum('LGNET_BENCH_DPDK_SECONDS', 2);
  const bin = buildTapLoop();
  const results: DpdkResults = { machine: machine(), seconds, dpdk: { status: 'unavailable' } };
  const log: string[] = [];
  progress('dpdk', 'lgnet serve behind the vhost-user harness');
  const lg = await measureBackend('lgnet', seconds, undefined, bin, log);
  results.lgnet = lg.res;
  results.lgnetArgv = lg.argv;
  const avail = ensureTestpmd(opts.install);
  if (!avail.ok) {
    results.dpdk = { status: 'unavailable', why: avail.why };
    progress('dpdk', `DPDK NOT RUN: ${avail.why}`);
  } else {
    const huge = await setupHugepages(envNum('LGNET_BENCH_HUGEPAGES', 128));
    progress('dpdk', huge.ok ? `hugepages: ${huge.why}` : `no hugepages (${huge.why}): testpmd runs with --no-huge`);
    try {
      progress('dpdk', 'dpdk-testpmd (vhost PMD + tap PMD, io forwarding) behind the same harness');
      const dp = await measureBackend('testpmd', seconds, huge.ok ? { dir: huge.dir! } : undefined, bin, log);
      results.testpmd = dp.res;
      results.dpdk = { status: 'ran', version: avail.version, hugepages: huge.ok, argv: dp.argv, ...(huge.ok ? {} : { why: huge.why }) };
      results.ratio = {};
      for (const k of ['tx64', 'tx1514', 'rx64', 'rx1514'] as const) {
        results.ratio[k] = { fps: lg.res[k].fps / dp.res[k].fps, cpuSPerMFrames: lg.res[k].cpuSPerMFrames / dp.res[k].cpuSPerMFrames };
      }
    } catch (e) {
      results.dpdk = { status: 'failed', why: (e as Error).message.slice(0, 2000), version: avail.version, hugepages: huge.ok };
      progress('dpdk', `DPDK FAILED: ${(e as Error).message.split('\n')[0]}`);
    } finally {
      await huge.undo();
      if (existsSync(HUGE_NR)) progress('dpdk', `hugepages restored: nr_hugepages=${readFileSync(HUGE_NR, 'utf8').trim()}`);
    }
  }
  if (log.length) writeFileSync(join(dirname(writeResult('dpdk', results, opts.outDir)), 'dpdk-testpmd.log'), log.join('\n'));
  const path = writeResult('dpdk', results, opts.outDir);
  progress('dpdk', `wrote ${path}`);
  return results;
}

export function printDpdk(r: DpdkResults): void {
  const f = (x: number) => (x / 1e6).toFixed(3);
  console.log(`\nvhost-user back-ends behind the same harness (M frames/s; CPU s per M frames)   DPDK: ${r.dpdk.status}${r.dpdk.why ? ` (${r.dpdk.why.split('\n')[0]})` : ''}`);
  console.log('case      lgnet   cpu/M    testpmd  cpu/M    lgnet/DPDK  cpu ratio');
  for (const k of ['tx64', 'tx1514', 'rx64', 'rx1514'] as const) {
    const a = r.lgnet?.[k];
    const b = r.testpmd?.[k];
    console.log(`${k.padEnd(8)}  ${a ? f(a.fps) : '-'.padEnd(5)}  ${a ? a.cpuSPerMFrames.toFixed(2).padStart(6) : '-'}   ${b ? f(b.fps) : '-    '}    ${b ? b.cpuSPerMFrames.toFixed(2).padStart(6) : '     -'}   ${r.ratio?.[k] ? r.ratio[k]!.fps.toFixed(3) : '-'}       ${r.ratio?.[k] ? r.ratio[k]!.cpuSPerMFrames.toFixed(3) : '-'}`);
  }
}

if (isMain(import.meta.url)) {
  const r = await benchDpdk();
  printDpdk(r);
}
