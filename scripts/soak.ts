/**
 * `npm run soak -- [--minutes 10] [--reconnect-s 60] [--sample-s 10] [--warmup-s 60] [--rss-limit-mb 5] [--out DIR]`
 *
 * lgnet under a long, mixed load, watched for leaks and for frames lost without being counted:
 *   - `lgnet serve` (jailed, as it ships) with a QEMU guest: the guest runs ping every 0.2 s and iperf3,
 *     guest→host and host→guest in turns, in rounds of up to 20 s, for the whole run;
 *   - every --reconnect-s, lgnet drops the front-end's connection (SIGUSR1) and QEMU reconnects;
 *   - in this process, an embedded NetDevice on a tap of its own whose harness driver sends control
 *     commands without pause (RX modes, MAC tables, VLANs, the MAC address): control-queue churn;
 *   - every --sample-s: RSS and open fds of lgnet and of this process, and both devices' counters.
 * At the end the guest's own interface counters are compared with lgnet's: every frame the guest sent
 * was sent or counted as dropped by lgnet, every frame lgnet delivered reached the guest's counters.
 *
 * Writes DIR/soak.json (every sample) and DIR/soak.svg (the chart), prints a summary, and exits 1 when a
 * target is missed: RSS growth after warm-up < 5 MB (lgnet and the embedding process), a flat fd count,
 * every frame accounted for, every load round and control command answered. The test suite runs a short
 * version (test/e2e/soak.test.ts); docs/PERFORMANCE.md has the 10-minute chart.
 */
import { mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as native from '../native/index.ts';
import { NetDevice } from '../device/net.ts';
import { TapBackend } from '../device/tap-backend.ts';
import { mask } from '../device/features.ts';
import { CTRL, ACK } from '../device/ctrl.ts';
import { GuestRam } from '../harness/guest-ram.ts';
import { VirtioNetDriver } from '../harness/virtio-net.ts';
import { createNetns } from '../harness/netns.ts';
import { bootGuest, ensureGuestImage, iperfSummary, type GuestHandle } from './qemu.ts';
import { createTapNamespace } from './netns.ts';
import { startLgnet, type LgnetProcess, type LgnetSnapshot } from './bench/lgnet-process.ts';
import { renderLines, COLORS } from './bench/chart.ts';
import { RESULTS_DIR, median } from './bench/common.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';
const MB = 1024 * 1024;

interface Options {
  minutes: number;
  reconnectS: number;
  sampleS: number;
  warmupS: number;
  /** The RSS growth allowed after warm-up (MB). A short run cannot show V8's heap settled: give more. */
  rssLimitMB: number;
  out: string;
}

function parseArgs(argv: string[]): Options {
  const get = (name: string, def: number): number => {
    const i = argv.indexOf(`--${name}`);
    if (i < 0) return def;
    const v = Number(argv[i + 1]);
    if (!(v > 0)) throw new Error(`--${name} needs a positive number`);
    return v;
  };
  const i = argv.indexOf('--out');
  const minutes = get('minutes', 10);
  return {
    minutes,
    reconnectS: get('reconnect-s', 60),
    sampleS: get('sample-s', 10),
    warmupS: get('warmup-s', Math.min(60, minutes * 60 * 0.2)),
    rssLimitMB: get('rss-limit-mb', 5),
    out: i >= 0 ? argv[i + 1]! : RESULTS_DIR,
  };
}

interface Sample {
  t: number;
  lgnet: { rssMB: number; fds: number };
  embedder: { rssMB: number; fds: number };
  frames: { tx: number; rx: number; drops: number };
  ctrlCommands: number;
}

interface Round {
  tag: string;
  dir: 'tx' | 'rx';
  seconds: number;
  ping?: { transmitted: number; received: number; maxSilenceMs: number };
  iperfRc?: number;
  mbps?: number;
}

const procRss = (pid: number | 'self'): number => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)![1]) * 1024;
const procFds = (pid: number | 'self'): number => readdirSync(`/proc/${pid}/fd`).length;
/** What each fd refers to, by kind (`anon_inode:[eventfd]`, `socket`, a path...): a miss names the kinds that moved. */
const fdKinds = (pid: number): Map<string, number> => {
  const kinds = new Map<string, number>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let k: string;
    try {
      k = readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/:\[\d+\]$/, '');
    } catch {
      continue; // closed while listed
    }
    kinds.set(k, (kinds.get(k) ?? 0) + 1);
  }
  return kinds;
};
/** The kinds whose counts differ between two inventories, as `kind a→b`. */
const fdKindDiff = (a: Map<string, number>, b: Map<string, number>): string[] =>
  [...new Set([...a.keys(), ...b.keys()])].filter((k) => (a.get(k) ?? 0) !== (b.get(k) ?? 0)).map((k) => `${k} ${a.get(k) ?? 0}→${b.get(k) ?? 0}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The embedded device and its driver, sending control commands until stopped. */
async function startChurn(): Promise<{ count: () => number; refused: () => number; stop: () => Promise<void> }> {
  const ns = createNetns('lgsoak');
  const backend = native.withNetns(ns.path, () => new TapBackend({ name: 'lgsoak0' }));
  const dev = new NetDevice({ backend, mac: '52:54:00:50:a0:01' });
  const ram = new GuestRam(32 << 20);
  const drv = new VirtioNetDriver(ram, { features: dev.offered & ~mask('RING_PACKED'), ctrl: { maxPairs: 1 } });
  await drv.attach(dev);
  let n = 0;
  let refused = 0;
  let running = true;
  const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);
  const macs = (k: number, seed: number) => {
    const b = new Uint8Array(6 * k);
    for (let i = 0; i < k; i++) b.set([0x02, 0, 0, (seed >> 8) & 255, seed & 255, i], 6 * i);
    return b;
  };
  const loop = (async () => {
    for (let round = 0; running; round++) {
      const k = round % 8;
      const commands: Array<[number, number, Uint8Array]> = [
        [CTRL.RX, CTRL.RX_PROMISC, Uint8Array.of(round & 1)],
        [CTRL.RX, CTRL.RX_ALLMULTI, Uint8Array.of((round >> 1) & 1)],
        [CTRL.MAC, CTRL.MAC_TABLE_SET, new Uint8Array([...u32(k), ...macs(k, round), ...u32(1), 0x01, 0, 0x5e, 0, 0, k])],
        [CTRL.VLAN, CTRL.VLAN_ADD, Uint8Array.of(round & 255, (round >> 8) & 15)],
        [CTRL.VLAN, CTRL.VLAN_DEL, Uint8Array.of(round & 255, (round >> 8) & 15)],
        [CTRL.MAC, CTRL.MAC_ADDR_SET, Uint8Array.of(0x52, 0x54, 0, 0x50, 0xa0, 1 + (round & 7))],
      ];
      for (const [cls, cmd, data] of commands) {
        if (!running) break;
        if ((await drv.ctrl(cls, cmd, data)) === ACK.OK) n++;
        else refused++;
      }
      // About a thousand commands a second: churn, without taking a CPU from the guest.
      await sleep(5);
    }
  })();
  return {
    count: () => n,
    refused: () => refused,
    async stop() {
      running = false;
      await loop;
      await dev.close();
      drv.close();
      ram.close();
      ns.destroy();
    },
  };
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const durationMs = o.minutes * 60_000;
  mkdirSync(o.out, { recursive: true });
  ensureGuestImage();
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-soak-'));
  const net = createTapNamespace({ hostCidr: `${HOST}/24` });
  let lg: LgnetProcess | undefined;
  let guest: GuestHandle | undefined;
  let churn: Awaited<ReturnType<typeof startChurn>> | undefined;
  const samples: Sample[] = [];
  const rounds: Round[] = [];
  const reconnects: number[] = [];
  const failures: string[] = [];
  const t0 = performance.now();
  const now = () => (performance.now() - t0) / 1000;
  let serial = '';
  try {
    await net.startIperf3Server({ port: 5201 });
    // Info level, so that each connection shows in its log (the last --log-level given wins).
    process.env['LGNET_BENCH_SERVE_ARGS'] = `${process.env['LGNET_BENCH_SERVE_ARGS'] ?? ''} --log-level info`;
    lg = await startLgnet({ ns: net.ns, socket: join(dir, 'lgnet.sock'), tap: net.tap, metricsPath: join(dir, 'lgnet.metrics') });
    guest = bootGuest({
      netns: net.ns,
      netdev: { type: 'vhost-user', socket: join(dir, 'lgnet.sock'), reconnect: 1 },
      guest: { ip: `${GUEST}/24`, peer: HOST, jobs: ['console'], pingInterval: 0.2 },
      timeoutMs: durationMs + 180_000,
      onLine: (l) => void (serial += `${l}\n`),
    });
    await guest.ready;
    await guest.waitForLine(/^LGNET-RESULT \{"job":"console","rc":0,"state":"listening"/, 60_000);
    const command = async (cmd: string, tag: string, timeoutMs: number): Promise<string> => {
      const mark = serial.length;
      guest!.write(`${cmd}\n`);
      await guest!.waitForLine(new RegExp(`^LGNET-ACK \\{"cmd":"${cmd.split(' ')[0]}","tag":"${tag}"`), timeoutMs);
      return serial.slice(mark);
    };
    churn = await startChurn();
    const t1 = performance.now();

    // Sampling and reconnects run beside the load rounds.
    const take = async (): Promise<void> => {
      const m: LgnetSnapshot | undefined = await lg!.metrics();
      const q = (i: number) => m?.queues.find((x) => x.index === i);
      const drops = (m?.queues ?? []).reduce((a, x) => a + Object.entries(x).filter(([k]) => /Drop/.test(k)).reduce((b, [, v]) => b + (typeof v === 'number' ? v : 0), 0), 0);
      samples.push({
        t: now(),
        lgnet: { rssMB: procRss(lg!.pid) / MB, fds: procFds(lg!.pid) },
        embedder: { rssMB: procRss('self') / MB, fds: procFds('self') },
        frames: { tx: q(1)?.frames ?? NaN, rx: q(0)?.frames ?? NaN, drops },
        ctrlCommands: churn!.count(),
      });
    };
    await take();
    // One step at a time: a sample holds a metrics connection open in lgnet, which an fd count taken
    // meanwhile would see (the sampler and the reconnector fire in the same tick every 30 s).
    let busy: Promise<void> = Promise.resolve();
    const oneAtATime = (f: () => Promise<void>): void => void (busy = busy.then(f, f));
    const sampler = setInterval(() => oneAtATime(take), o.sampleS * 1000);
    // lgnet's fds just before each reconnect, a connection established for a whole interval: flat if
    // nothing leaks (samples at other moments may catch a connection half set up).
    const beforeReconnect: number[] = [];
    const kindsBeforeReconnect: Map<string, number>[] = [];
    const reconnector = setInterval(() => oneAtATime(async () => {
      // lgnet closes its end of the last metrics connection in its own time.
      await sleep(300);
      const kinds = fdKinds(lg!.pid);
      kindsBeforeReconnect.push(kinds);
      beforeReconnect.push([...kinds.values()].reduce((a, n) => a + n, 0));
      reconnects.push(now());
      process.kill(lg!.pid, 'SIGUSR1');
    }), o.reconnectS * 1000);
    try {
      for (let n = 0; performance.now() - t1 < durationMs - 5000; n++) {
        const seconds = Math.max(5, Math.min(20, Math.floor((durationMs - (performance.now() - t1)) / 1000) - 2));
        const tag = `r${n}`;
        const dirn = n % 2 === 0 ? 'tx' : 'rx';
        await command(`load ${tag} ${seconds} ${dirn}`, tag, 15_000);
        const out = await command(`report ${tag}`, tag, (seconds + 40) * 1000);
        const r: Round = { tag, dir: dirn, seconds };
        for (const line of out.split('\n')) {
          if (!line.startsWith('LGNET-RESULT {')) continue;
          const res = JSON.parse(line.slice(13)) as Record<string, number | string>;
          if (res['tag'] !== tag) continue;
          if (res['job'] === 'load-ping') r.ping = { transmitted: Number(res['transmitted']), received: Number(res['received']), maxSilenceMs: Number(res['max_silence_ms']) };
          if (res['job'] === 'load-iperf3') r.iperfRc = Number(res['rc']);
        }
        const begin = out.indexOf('LGNET-OUTPUT-BEGIN load-iperf3');
        const end = out.indexOf('LGNET-OUTPUT-END load-iperf3');
        if (begin >= 0 && end > begin) {
          try {
            const s = iperfSummary(JSON.parse(out.slice(out.indexOf('\n', begin) + 1, end)));
            if (s) r.mbps = s.bitsPerSecond / 1e6;
          } catch {
            /* iperf3 failed: its rc says so */
          }
        }
        rounds.push(r);
        if (r.iperfRc !== 0) failures.push(`round ${tag} (${dirn}): iperf3 rc ${r.iperfRc}`);
        if (!r.ping || r.ping.received === 0) failures.push(`round ${tag}: no ping answered`);
      }
    } finally {
      clearInterval(sampler);
      clearInterval(reconnector);
      await busy;
    }
    await sleep(2000); // the last reconnect settles
    await take();

    // Every frame accounted for: the guest's interface counters against lgnet's.
    const statsOut = await command('stats end', 'end', 10_000);
    const g = JSON.parse(statsOut.split('\n').find((l) => l.startsWith('LGNET-RESULT {"job":"stats"'))!.slice(13)) as Record<string, number>;
    const m = (await lg.metrics())!;
    const rx = m.queues.find((x) => x.index === 0)!;
    const tx = m.queues.find((x) => x.index === 1)!;
    const sumDrops = (x: Record<string, unknown>, prefix: string) => Object.entries(x).filter(([k]) => k.startsWith(prefix)).reduce((a, [, v]) => a + (typeof v === 'number' ? v : 0), 0);
    const accounting = {
      guestTxPackets: g['tx_packets']!,
      lgnetTxFramesAndDrops: tx.frames + sumDrops(tx, 'txDrop'),
      // While the back-end is away (between a drop and the reconnect) QEMU completes what the guest
      // queues for TX itself, without sending it (virtio-net drops a stopped queue's data): the guest
      // counts those as sent, lgnet never sees them. At most a ring's worth per reconnect.
      droppedByQemuWhileDisconnected: 0,
      lgnetRxFrames: rx.frames,
      guestRxPacketsAndDrops: g['rx_packets']! + g['rx_dropped']!,
    };
    accounting.droppedByQemuWhileDisconnected = accounting.guestTxPackets - accounting.lgnetTxFramesAndDrops;
    const gap = accounting.droppedByQemuWhileDisconnected;
    if (gap < 0 || gap > 256 * reconnects.length) failures.push(`TX: the guest sent ${accounting.guestTxPackets} frames, lgnet sent or counted ${accounting.lgnetTxFramesAndDrops}`);
    if (accounting.lgnetRxFrames !== accounting.guestRxPacketsAndDrops) failures.push(`RX: lgnet delivered ${accounting.lgnetRxFrames} frames, the guest counted ${accounting.guestRxPacketsAndDrops}`);
    await command('quit end', 'end', 10_000);
    await Promise.race([guest.done, sleep(30_000)]);
    const ctrl = { sent: churn.count(), refused: churn.refused() };
    await churn.stop();
    churn = undefined;
    if (ctrl.refused > 0) failures.push(`${ctrl.refused} control commands refused`);

    // Leaks: after warm-up, the median of the last three samples against the first three.
    const warm = samples.filter((s) => s.t >= o.warmupS);
    const growth = (f: (s: Sample) => number): number => (warm.length >= 2 ? median(warm.slice(-3).map(f)) - median(warm.slice(0, 3).map(f)) : NaN);
    const spread = (f: (s: Sample) => number): number => (warm.length ? Math.max(...warm.map(f)) - Math.min(...warm.map(f)) : NaN);
    const figures = {
      lgnetRssGrowthMB: growth((s) => s.lgnet.rssMB),
      embedderRssGrowthMB: growth((s) => s.embedder.rssMB),
      lgnetFdSpread: beforeReconnect.length ? Math.max(...beforeReconnect) - Math.min(...beforeReconnect) : NaN,
      embedderFdSpread: spread((s) => s.embedder.fds),
    };
    if (!(figures.lgnetRssGrowthMB < o.rssLimitMB)) failures.push(`lgnet RSS grew ${figures.lgnetRssGrowthMB.toFixed(1)} MB after warm-up`);
    if (!(figures.embedderRssGrowthMB < o.rssLimitMB)) failures.push(`the embedding process's RSS grew ${figures.embedderRssGrowthMB.toFixed(1)} MB after warm-up`);
    if (figures.lgnetFdSpread !== 0) {
      const moved = kindsBeforeReconnect.slice(1).map((k, i) => fdKindDiff(kindsBeforeReconnect[i]!, k).join(', ') || 'none');
      failures.push(`lgnet's fd count before each reconnect moved by ${figures.lgnetFdSpread} (${beforeReconnect.join(', ')}; by kind, reconnect to reconnect: ${moved.join(' | ')})`);
    }
    if (figures.embedderFdSpread !== 0) failures.push(`the embedding process's fd count moved by ${figures.embedderFdSpread} after warm-up`);
    const connected = (lg.log().match(/front-end connected/g) ?? []).length;
    if (connected < reconnects.length + 1) failures.push(`${reconnects.length} reconnects asked, but QEMU connected only ${connected} times`);
    const result = { options: o, wallS: now(), reconnects: reconnects.length, connections: connected, lgnetFdsBeforeReconnect: beforeReconnect, rounds, samples, accounting, ctrl, figures, failures };
    writeFileSync(join(o.out, 'soak.json'), JSON.stringify(result, null, 2));
    writeFileSync(join(o.out, 'soak.svg'), chart(result));
    console.log(
      `soak ${o.minutes} min: ${rounds.length} load rounds, ${reconnects.length} reconnects, ${ctrl.sent} control commands; ` +
        `lgnet RSS ${figures.lgnetRssGrowthMB.toFixed(2)} MB after warm-up, fds ±${figures.lgnetFdSpread}; ` +
        `embedder RSS ${figures.embedderRssGrowthMB.toFixed(2)} MB, fds ±${figures.embedderFdSpread}; ` +
        `TX guest ${accounting.guestTxPackets} = lgnet ${accounting.lgnetTxFramesAndDrops} + QEMU while disconnected ${gap}, RX lgnet ${accounting.lgnetRxFrames} = guest ${accounting.guestRxPacketsAndDrops}`,
    );
    console.log(`wrote ${join(o.out, 'soak.json')} and soak.svg`);
    for (const f of failures) console.error(`MISSED: ${f}`);
    process.exitCode = failures.length ? 1 : 0;
  } finally {
    await churn?.stop().catch(() => {});
    await guest?.kill();
    await lg?.stop();
    await net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

function chart(r: { options: Options; samples: Sample[]; reconnects: number; rounds: Round[]; figures: Record<string, number> }): string {
  const s = r.samples;
  const marks = [] as number[];
  for (let t = r.options.reconnectS; t < (s.at(-1)?.t ?? 0); t += r.options.reconnectS) marks.push(t);
  const line = (label: string, color: string, f: (x: Sample) => number) => ({ label, color, points: s.map((x) => [x.t, f(x)] as const) });
  const rate = (f: (x: Sample) => number) => s.slice(1).map((x, i) => [x.t, (f(x) - f(s[i]!)) / Math.max(1e-9, x.t - s[i]!.t)] as const);
  return renderLines({
    title: `lgnet soak: ${r.options.minutes} min`,
    subtitle: `QEMU guest with ping and iperf3 both ways, a reconnect every ${r.options.reconnectS} s (dashed), control-queue churn in an embedded device`,
    xUnit: 's',
    panels: [
      { title: 'RSS', unit: 'MB', series: [line('lgnet serve', COLORS.lgnet, (x) => x.lgnet.rssMB), line('embedding process', COLORS.c, (x) => x.embedder.rssMB)], marks, note: `growth after warm-up: lgnet ${r.figures['lgnetRssGrowthMB']!.toFixed(2)} MB, embedder ${r.figures['embedderRssGrowthMB']!.toFixed(2)} MB` },
      { title: 'Open fds', unit: 'count', series: [line('lgnet serve', COLORS.lgnet, (x) => x.lgnet.fds), line('embedding process', COLORS.c, (x) => x.embedder.fds)], marks },
      { title: 'Frames through lgnet', unit: 'frames/s', series: [{ label: 'TX', color: COLORS.lgnet, points: rate((x) => x.frames.tx) }, { label: 'RX', color: COLORS.qemu, points: rate((x) => x.frames.rx) }], marks },
      { title: 'Control commands (embedded)', unit: 'commands/s', series: [{ label: 'acknowledged', color: COLORS.dpdk, points: rate((x) => x.ctrlCommands) }], marks },
    ],
  });
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(2);
});
