/**
 * lgnet SIGKILLed while a QEMU guest runs iperf3, ping and an HTTP download through it, and started
 * again on the same socket: how long the guest's traffic stops, and that nothing stays broken.
 *
 *   - QEMU as the socket client (reconnect=1), split and packed rings;
 *   - lgnet as the client (`--client`) and QEMU as the socket server (server=on), split rings.
 *
 * The guest runs its load from the console job (scripts/guest/init): ping every 0.1 s, iperf3 TCP
 * guest→host and a 16 MiB download with a known sha256, all for LOAD_S seconds; lgnet is killed
 * KILL_AFTER_MS into it. Figures: the longest time between two ping replies arriving in the guest
 * (the gap it saw; a reply held up counts where it arrived), the time from SIGKILL to the new lgnet's
 * ready line, iperf3's rate. Then the new lgnet's queues
 * must run unbroken, and a second load through it must pass without a gap.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMetrics, type MetricsDocument } from '../../sandbox/metrics-endpoint.ts';
import { fetchQueues, renderQueues } from '../../sandbox/stats.ts';
import { bootGuest, ensureGuestImage, iperfSummary, type GuestHandle, type GuestOutcome } from '../../scripts/qemu.ts';
import { createTapNamespace, type TapNamespace } from '../../scripts/netns.ts';
import { blobSha256, startBlobServer } from './lib/blob.ts';
import { killLgnet, startLgnet, stopLgnet, type Lgnet } from './lib/lgnet.ts';
import { backendWarnings, queue } from './lib/expect.ts';
import { GUEST, HOST, XFER_PORT } from './lib/run.ts';

const MiB = 1 << 20;
const LOAD_S = 14;
const KILL_AFTER_MS = 4000;
const PING_INTERVAL = 0.1;
const BLOB = 16 * MiB;

interface LoadReport {
  ping?: { rc: number; transmitted: number; received: number; max_gap: number; max_silence_ms: number };
  iperf?: { rc: number; output: string };
  blob?: { rc: number; rx_bytes: number; rx_sha256: string };
  errors: string[];
}

/** The tagged LGNET-RESULT/OUTPUT lines of one load, from the serial log. */
function loadReport(serial: string, tag: string): LoadReport {
  const r: LoadReport = { errors: [] };
  const lines = serial.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.startsWith('LGNET-ERROR')) r.errors.push(line);
    if (line === 'LGNET-OUTPUT-BEGIN load-iperf3') {
      const end = lines.findIndex((l, j) => j > i && l.trim() === 'LGNET-OUTPUT-END load-iperf3');
      r.iperf = { rc: -1, output: lines.slice(i + 1, end < 0 ? undefined : end).join('\n') };
    }
    if (!line.startsWith('LGNET-RESULT {')) continue;
    let res: Record<string, unknown>;
    try {
      res = JSON.parse(line.slice(13)) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (res['tag'] !== tag) continue;
    if (res['job'] === 'load-ping') r.ping = res as unknown as LoadReport['ping'];
    if (res['job'] === 'load-iperf3' && r.iperf) r.iperf.rc = res['rc'] as number;
    if (res['job'] === 'load-blob') r.blob = res as unknown as LoadReport['blob'];
  }
  return r;
}

describe.each([
  { name: 'QEMU client, split rings', client: false, deviceFlags: {} as Record<string, string> },
  { name: 'QEMU client, packed rings', client: false, deviceFlags: { packed: 'on' } as Record<string, string> },
  { name: 'lgnet --client, QEMU server', client: true, deviceFlags: {} as Record<string, string> },
])('lgnet SIGKILLed under iperf3 and restarted ($name)', ({ name, client, deviceFlags }) => {
  let net: TapNamespace | undefined;
  let guest: GuestHandle | undefined;
  let dir: string | undefined;
  const lgnets: Lgnet[] = [];
  const log: string[] = [];
  let sha = '';
  let killedAt = 0;
  let killSignal: NodeJS.Signals | null = null;
  let during: LoadReport = { errors: [] };
  let after: LoadReport = { errors: [] };
  let metrics: MetricsDocument | undefined;
  let outcome: GuestOutcome | undefined;
  let metricsSocket = '';
  let listenSocket = '';
  let iperfServer = '';

  /** The guest's last 40 serial lines that are not iperf3's JSON (its events, errors, kernel messages). */
  function serialTail(): string {
    return guest!.serial().split('\n').filter((l) => !/^\s|^[{}\]]/.test(l)).slice(-40).join('\n');
  }

  /** Types a console command and waits for its acknowledgement. */
  async function command(cmd: string, tag: string, timeoutMs: number): Promise<void> {
    guest!.write(`${cmd}\n`);
    try {
      await guest!.waitForLine(new RegExp(`^LGNET-ACK \\{"cmd":"${cmd.split(' ')[0]}","tag":"${tag}"`), timeoutMs);
    } catch (e) {
      // A hang says little by itself: print where each queue stood and what the guest printed last.
      const doc = await readMetrics(metricsSocket).catch((m: Error) => m.message);
      const queues = typeof doc === 'string' ? doc : doc.queues.map((q) => ({ index: q.index, running: q.running, broken: q.broken,
        frames: q.frames, kicks: q.kicks, interrupts: q.interrupts, suppressed: q.interruptsSuppressed, sleeps: q.sleeps,
        rxNoBuffers: q.rxNoBuffers, kept: q.rxKept, recovered: q.ringBaseRecovered, inflight: q.inflightResubmitted }));
      const rings = await fetchQueues({ kind: 'unix', path: listenSocket }).then((d) => renderQueues(listenSocket, d), (m: Error) => m.message);
      console.error(`[e2e] '${cmd}' unanswered (${name}); lgnet queues: ${JSON.stringify(queues)}\n${rings}` +
        `guest serial (tail, iperf3's JSON left out):\n${serialTail()}\nlgnet log (info and above, tail):\n${log.join('').split('\n').filter((l) => !l.includes('"level":20')).slice(-20).join('\n')}\n` +
        `iperf3 server (tail):\n${iperfServer}`);
      throw e;
    }
  }

  beforeAll(async () => {
    ensureGuestImage();
    net = createTapNamespace({ hostCidr: `${HOST}/24` });
    dir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-'));
    const socket = join(dir, 'lgnet.sock');
    metricsSocket = join(dir, 'lgnet.metrics');
    listenSocket = join(dir, 'lgnet.prom');
    const lgnetArgs = ['--metrics-socket', metricsSocket, '--metrics-listen', listenSocket, ...(client ? ['--client', '--reconnect-ms', '100'] : [])];
    sha = blobSha256('e2e-reconnect-load', BLOB);
    await startBlobServer(net, { host: HOST, port: XFER_PORT, seed: 'e2e-reconnect-load', size: BLOB });
    const server = await net.startIperf3Server({ port: 5201 });
    for (const s of [server.stdout, server.stderr]) s?.on('data', (d: Buffer) => (iperfServer = (iperfServer + d.toString()).slice(-3000)));
    if (!client) lgnets.push(await startLgnet(net.ns, socket, net.tap, log, lgnetArgs));
    guest = bootGuest({
      netns: net.ns,
      netdev: client ? { type: 'vhost-user', socket, server: true } : { type: 'vhost-user', socket, reconnect: 1 },
      deviceFlags,
      guest: { ip: `${GUEST}/24`, peer: HOST, xferPort: XFER_PORT, jobs: ['console'], pingInterval: PING_INTERVAL },
      timeoutMs: 150_000,
    });
    // QEMU as the server listens before it boots; lgnet then connects.
    if (client) {
      await new Promise((r) => setTimeout(r, 1000));
      lgnets.push(await startLgnet(net.ns, socket, net.tap, log, lgnetArgs));
    }
    await guest.ready;
    await guest.waitForLine(/^LGNET-RESULT \{"job":"console","rc":0,"state":"listening"/, 60_000);

    await command(`load during ${LOAD_S} tx blob`, 'during', 15_000);
    await new Promise((r) => setTimeout(r, KILL_AFTER_MS));
    killedAt = performance.now();
    killSignal = await killLgnet(lgnets[0]!.child);
    lgnets.push(await startLgnet(net.ns, socket, net.tap, log, lgnetArgs));
    const mark = guest.serial().length;
    await command('report during', 'during', (LOAD_S + 30) * 1000);
    during = loadReport(guest.serial().slice(mark), 'during');

    // A second load through the new lgnet, with nothing killed: it must run without a gap.
    const mark2 = guest.serial().length;
    await command('load after 4 rx', 'after', 15_000);
    await command('report after', 'after', 40_000);
    after = loadReport(guest.serial().slice(mark2), 'after');
    metrics = await readMetrics(metricsSocket);
    await command('quit end', 'end', 10_000);
    outcome = await guest.done;
    const gap = (during.ping?.max_silence_ms ?? NaN) / 1000;
    const sum = iperfSummary(JSON.parse(during.iperf?.output || '{}'));
    console.info(
      `[e2e] reconnect under load (${name}): lgnet ready ${Math.round(lgnets[1]!.readyAt - killedAt)} ms after SIGKILL; ` +
        `guest ping gap ${gap.toFixed(1)} s (${during.ping?.received}/${during.ping?.transmitted}); ` +
        `iperf3 ${sum ? (sum.bitsPerSecond / 1e6).toFixed(1) : '-'} Mbit/s over the ${LOAD_S} s`,
    );
  }, 240_000);

  afterAll(async () => {
    await guest?.kill();
    for (const l of lgnets) await stopLgnet(l.child);
    await net?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  it('the first lgnet died of SIGKILL in the middle of the load', () => {
    expect(killSignal).toBe('SIGKILL');
    expect(lgnets).toHaveLength(2);
  });

  it('the guest saw its traffic stop for less than 5 s, and iperf3 and the download finished intact', () => {
    expect(during.errors, during.errors.join('\n')).toEqual([]);
    expect(during.ping, 'the load-ping result').toBeDefined();
    expect(during.ping!.received).toBeGreaterThan(0);
    // The longest time without a ping reply; pings go every 0.1 s, so the kill must show.
    expect(during.ping!.max_silence_ms).toBeGreaterThan(200);
    expect(during.ping!.max_silence_ms).toBeLessThan(5000);
    expect(during.iperf?.rc).toBe(0);
    const sum = iperfSummary(JSON.parse(during.iperf!.output));
    expect(sum?.bitsPerSecond ?? 0).toBeGreaterThan(0);
    expect(during.blob?.rc).toBe(0);
    expect(during.blob?.rx_bytes).toBe(BLOB);
    expect(during.blob?.rx_sha256).toBe(sha);
  });

  it('no queue of the new lgnet is stalled: a second load runs through it without a gap', () => {
    expect(after.errors, after.errors.join('\n')).toEqual([]);
    expect(after.ping!.received).toBe(after.ping!.transmitted);
    expect(after.iperf?.rc).toBe(0);
    expect(metrics?.pid).toBe(lgnets[1]!.pid);
    for (const i of [0, 1]) {
      const q = queue(metrics, i);
      expect(q.running, `queue ${i}`).toBe(true);
      expect(q.broken).toBeNull();
      expect(q.queueBroken).toBe(0);
      expect(q.frames).toBeGreaterThan(0);
    }
  });

  it('QEMU accepted both back-ends without a warning, and the guest powered off', () => {
    expect(log.join('').match(/front-end connected|connected to the front-end/g)?.length).toBe(2);
    expect(log.join('')).not.toContain('message refused');
    expect(backendWarnings(outcome!.stderr), outcome!.stderr).toEqual([]);
    expect(outcome!.exitCode).toBe(0);
  });
});
