/**
 * `npm run demo`: a real Linux guest on a real network, served by lgnet, in one command.
 *
 *   1. builds the guest image if it is missing (scripts/guest-image.sh; the first run downloads the
 *      Debian cloud kernel into .cache/)
 *   2. creates a network namespace with a tap (10.0.2.1/24 on the host side)
 *   3. starts `lgnet serve` inside it, attached to the tap, with a metrics socket
 *   4. boots the guest under QEMU on lgnet's vhost-user socket (10.0.2.2/24)
 *   5. the guest pings the host, then runs iperf3 against it both ways
 *   6. prints a summary (ping loss and RTT, Gbit/s each way, lgnet's interrupts per frame) and removes
 *      everything it made: QEMU, lgnet and iperf3 are stopped by pid, the tap and namespace deleted,
 *      also on Ctrl-C.
 *
 * Needs root (namespaces, taps) and the packages of scripts/install-deps.sh. Traffic stays inside the
 * namespace. Options (environment): LGNET_DEMO_SECONDS (iperf3 time per direction, default 5),
 * LGNET_QEMU_ACCEL=kvm|tcg, LGNET_QEMU_VERBOSE=1 (echo the guest console).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMetrics, type MetricsDocument } from '../sandbox/metrics-endpoint.ts';
import { createTapNamespace, type TapNamespace } from './netns.ts';
import { bootGuest, detectAccel, ensureGuestImage, guestImage, iperfSummary, REPO_ROOT, type GuestHandle, type GuestOutcome } from './qemu.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';
const PINGS = 10;
const SECONDS = Number(process.env.LGNET_DEMO_SECONDS ?? 5);
const STEPS = 7;

const t0 = performance.now();
const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(1)}s`.padStart(6);
const step = (n: number, msg: string) => console.log(`[demo ${n}/${STEPS} ${elapsed()}] ${msg}`);
const info = (msg: string) => console.log(`             ${msg}`);

function fail(msg: string): never {
  console.error(`\n[demo] ${msg}`);
  process.exit(1);
}

function need(cmd: string): void {
  if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) fail(`'${cmd}' not found: run 'bash scripts/install-deps.sh' first.`);
}

// ---- what to clean up, in reverse order of creation
let net: TapNamespace | undefined;
let lgnet: ChildProcess | undefined;
let guest: GuestHandle | undefined;
let dir: string | undefined;
let cleaning: Promise<void> | undefined;

function stopChild(c: ChildProcess | undefined): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null || c.pid === undefined) return Promise.resolve();
  return new Promise((resolve) => {
    const k = setTimeout(() => c.pid !== undefined && process.kill(c.pid, 'SIGKILL'), 5000);
    c.once('exit', () => {
      clearTimeout(k);
      resolve();
    });
    process.kill(c.pid!, 'SIGTERM');
  });
}

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await guest?.kill();
    await stopChild(lgnet);
    await net?.destroy(); // also stops the iperf3 server it started
    if (dir) rmSync(dir, { recursive: true, force: true });
  })();
  return cleaning;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    console.log(`\n[demo] ${sig}: cleaning up`);
    void cleanup().then(() => process.exit(130));
  });
}

function startLgnet(ns: string, socket: string, tap: string, metrics: string): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', ns, join(REPO_ROOT, 'bin/lgnet'), 'serve', '--socket', socket, '--tap', tap, '--metrics-socket', metrics, '--log-level', 'warn'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  lgnet = child;
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (err = (err + d).slice(-4000)));
  return new Promise((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`lgnet did not get ready in 30 s: ${err}`)), 30_000);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('lgnet ready'));
      if (line) {
        clearTimeout(t);
        info(line);
        resolve(child);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`lgnet exited (${code}) before it was ready: ${err}`));
    });
  });
}

function pingStats(out: string): { tx: number; rx: number; loss: number; min?: number; avg?: number; max?: number } {
  const m = /(\d+) packets transmitted, (\d+) packets received, (\d+)% packet loss/.exec(out);
  const rtt = /min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(out);
  return {
    tx: Number(m?.[1] ?? 0),
    rx: Number(m?.[2] ?? 0),
    loss: Number(m?.[3] ?? 100),
    ...(rtt ? { min: Number(rtt[1]), avg: Number(rtt[2]), max: Number(rtt[3]) } : {}),
  };
}

const gbit = (bps: number | undefined) => (bps === undefined ? 'n/a' : `${(bps / 1e9).toFixed(2)} Gbit/s`);

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) fail('the demo needs root (network namespaces and taps): run it as root, e.g. `sudo npm run demo`.');
  for (const c of ['ip', 'qemu-system-x86_64', 'iperf3']) need(c);

  step(1, 'guest image');
  if (!guestImage()) {
    info('not built yet: running scripts/guest-image.sh (the first run downloads the Debian cloud kernel)');
    const r = spawnSync('bash', [join(REPO_ROOT, 'scripts/guest-image.sh')], { cwd: REPO_ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) fail(`scripts/guest-image.sh failed (exit ${r.status}); run 'bash scripts/install-deps.sh' first.`);
  }
  const image = ensureGuestImage();
  info(`kernel ${image.kernelVersion ?? image.kernel}, initramfs ${image.initrd}`);

  step(2, 'network namespace with a tap');
  net = createTapNamespace({ hostCidr: `${HOST}/24` });
  info(`namespace ${net.ns}, tap ${net.tap} with ${HOST}/24 (host side); traffic stays inside the namespace`);
  await net.startIperf3Server();
  info(`iperf3 server listening on ${HOST}:5201`);

  step(3, 'lgnet serve (inside the namespace, attached to the tap)');
  dir = mkdtempSync(join(tmpdir(), 'lgnet-demo-'));
  const socket = join(dir, 'lgnet.sock');
  const metricsSocket = join(dir, 'lgnet.metrics');
  await startLgnet(net.ns, socket, net.tap, metricsSocket);

  const accel = detectAccel();
  step(4, `booting the guest under QEMU (${accel === 'kvm' ? 'KVM' : 'TCG, no KVM here: slower'}) on lgnet's socket`);
  let phase = '';
  let iperfLines: string[] = [];
  guest = bootGuest({
    netns: net.ns,
    netdev: { type: 'vhost-user', socket, reconnect: 1 },
    guest: { ip: `${GUEST}/24`, peer: HOST, jobs: ['ping-live', 'iperf3-client-tx', 'iperf3-client-rx'], pingCount: PINGS, pingInterval: 0.2, iperfTime: SECONDS },
    timeoutMs: 60_000 + 4 * SECONDS * 1000,
    // Progress comes from the guest's console as it happens.
    onLine: (line) => {
      if (line.startsWith('LGNET-READY')) {
        const r = JSON.parse(line.slice('LGNET-READY'.length)) as { ifname: string; mac: string; ip: string; mtu: number; carrier: number; uptime_s: number };
        info(`guest up after ${Number(r.uptime_s).toFixed(1)} s: ${r.ifname} ${r.mac} ${r.ip} mtu ${r.mtu}, link ${r.carrier ? 'up' : 'DOWN'}`);
      } else if (line.startsWith('LGNET-OUTPUT-BEGIN ping-live')) {
        phase = 'ping';
        step(5, `the guest pings the host ${PINGS} times`);
      } else if (line.startsWith('LGNET-OUTPUT-BEGIN iperf3-client')) {
        phase = line.slice('LGNET-OUTPUT-BEGIN '.length);
        iperfLines = [];
        if (phase === 'iperf3-client-tx') step(6, `iperf3 through lgnet: guest → host for ${SECONDS} s, then host → guest for ${SECONDS} s`);
      } else if (line.startsWith('LGNET-OUTPUT-END')) {
        if (phase.startsWith('iperf3')) {
          let sum;
          try {
            sum = iperfSummary(JSON.parse(iperfLines.join('\n')));
          } catch {
            /* iperf3 failed: the summary says so */
          }
          info(`${phase === 'iperf3-client-tx' ? 'guest → host' : 'host → guest'}: ${sum ? `${gbit(sum.bitsPerSecond)}, ${(sum.bytes / 2 ** 20).toFixed(0)} MiB in ${sum.seconds.toFixed(1)} s` : 'failed'}`);
        }
        phase = '';
      } else if (phase === 'ping' && line.trim()) {
        info(`guest | ${line}`);
      } else if (phase.startsWith('iperf3')) {
        iperfLines.push(line);
      } else if (line.startsWith('LGNET-ERROR')) {
        info(`guest | ${line}`);
      }
    },
  });
  const out: GuestOutcome = await guest.done;
  let metrics: MetricsDocument | undefined;
  try {
    metrics = await readMetrics(metricsSocket);
  } catch (e) {
    info(`(lgnet metrics unavailable: ${(e as Error).message})`);
  }

  step(7, 'summary');
  const pingOut = out.results.find((r) => r.job === 'ping-live')?.output ?? '';
  const ping = pingStats(pingOut);
  const tx = out.results.find((r) => r.job === 'iperf3-client-tx');
  const rx = out.results.find((r) => r.job === 'iperf3-client-rx');
  const lines: string[] = [];
  lines.push(`guest        Linux ${image.kernelVersion ?? ''} under QEMU (${accel}), its virtio-net driver served by lgnet over vhost-user`);
  lines.push(`ping         ${ping.rx}/${ping.tx} replies, ${ping.loss}% loss, rtt min/avg/max ${ping.min ?? '-'}/${ping.avg ?? '-'}/${ping.max ?? '-'} ms`);
  lines.push(`TCP          guest → host ${gbit(tx?.iperf?.bitsPerSecond)}, host → guest ${gbit(rx?.iperf?.bitsPerSecond)} (iperf3, ${SECONDS} s each)`);
  if (metrics) {
    const data = metrics.queues.filter((q) => q.role !== 'ctrl');
    const frames = data.reduce((s, q) => s + q.frames, 0);
    const irqs = data.reduce((s, q) => s + q.interrupts, 0);
    const per = (role: string) => {
      const qs = data.filter((q) => q.role === role);
      const f = qs.reduce((s, q) => s + q.frames, 0);
      const i = qs.reduce((s, q) => s + q.interrupts, 0);
      return `${role.toUpperCase()} ${f} frames, ${i} interrupts (${f ? (i / f).toFixed(3) : '-'}/frame)`;
    };
    lines.push(`lgnet        ${frames} frames, ${irqs} interrupts to the guest: ${frames ? (irqs / frames).toFixed(3) : '-'} per frame`);
    lines.push(`             ${per('rx')}; ${per('tx')}`);
  }
  const ok = out.ok && ping.rx === ping.tx && ping.tx > 0 && !!tx?.iperf?.bitsPerSecond && !!rx?.iperf?.bitsPerSecond;
  lines.push(`result       ${ok ? 'OK' : `FAILED${out.errors.length ? `: ${out.errors.join('; ')}` : ''}${out.timedOut ? ' (timed out)' : ''}`}`);
  console.log(`\n${lines.map((l) => `  ${l}`).join('\n')}\n`);
  if (!ok) console.log(`guest console (tail):\n${out.serial.slice(-3000)}\n${out.stderr.slice(-2000)}`);

  console.log(`[demo ${elapsed()}] cleaning up: QEMU, lgnet, iperf3, tap, namespace`);
  await cleanup();
  console.log(`[demo ${elapsed()}] done`);
  process.exitCode = ok ? 0 : 1;
}

main().catch(async (e: unknown) => {
  console.error(`\n[demo] ${(e as Error).message ?? String(e)}`);
  await cleanup();
  process.exit(1);
});
