/**
 * Operations end to end: a real `lgnet serve` (bin/lgnet, inside a test namespace, fully jailed:
 * chroot to an empty directory, uid/gid nobody, seccomp) with --metrics-listen, driven by the harness
 * front-end over its vhost-user socket while UDP flows through its tap.
 *   - Scrapes answer from inside the jail, with process metrics that the chroot would hide from /proc.
 *   - The text passes `promtool check metrics`, and its queue counters equal the device's own
 *     metrics document (--metrics-socket, NetDevice.metrics() as JSON).
 *   - A request that is not HTTP gets a 400; the process goes on serving scrapes and frames.
 *   - `lgnet stats ADDR --once --json` (and the text view) reads the running lgnet, over the unix
 *     socket and over 127.0.0.1 inside the namespace.
 * Every lgnet started here is killed in afterAll, namespaces are removed even when a test fails.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { readMetrics } from '../../sandbox/metrics-endpoint.ts';
import type { ListenAddress } from '../../sandbox/metrics-listen.ts';
import type { QueuesDocument, StatsReport } from '../../sandbox/stats.ts';
import { httpGet, parseExposition, promtool, rawExchange, valueOf, type Sample } from './metrics-helpers.ts';
import { udpSend, until } from './vhost-user-helpers.ts';
import { LGNET, startLgnet, type Lgnet } from './serve-process.ts';

const pre = netnsPrerequisites();

/** `lgnet stats ARGS` to completion (in the namespace when given one). */
function runStats(args: string[], ns?: Netns): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const argv = ns ? ['ip', 'netns', 'exec', ns.name, LGNET, 'stats', ...args] : [LGNET, 'stats', ...args];
  return new Promise((resolve) => {
    const c = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => c.kill('SIGKILL'), 20_000);
    c.on('exit', (status) => {
      clearTimeout(t);
      resolve({ status, stdout, stderr });
    });
  });
}

const QUEUE_LABELS = { rx: { queue: '0', direction: 'rx' }, tx: { queue: '1', direction: 'tx' } };

describe('lgnet stats (no lgnet there)', () => {
  it('exits 1 with a message naming the address; bad addresses exit 2', async () => {
    const r = await runStats(['/tmp/lgnet-no-such-metrics.sock', '--once']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('no metrics from /tmp/lgnet-no-such-metrics.sock');
    expect(r.stderr).toContain('--metrics-listen');
    const bad = await runStats(['0.0.0.0:9100', '--once']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('not a local address');
    const serve = spawnSync(LGNET, ['serve', '--socket', '/tmp/never.sock', '--metrics-listen', 'example.org:80'], { encoding: 'utf8', timeout: 20_000 });
    expect(serve.status).toBe(2);
    expect(serve.stderr).toContain('--metrics-listen');
    expect(existsSync('/tmp/never.sock')).toBe(false);
  });
});

describe.skipIf(!pre.ok)('lgnet serve --metrics-listen, jailed, and lgnet stats', () => {
  let ns: Netns;
  let dir: string;
  const started: Lgnet[] = [];
  const cleanup: Array<() => void> = [];

  beforeAll(() => {
    ns = createNetns('lgops');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-ops-'));
    ns.exec('ip', 'link', 'set', 'lo', 'up');
  });
  afterAll(() => {
    for (const c of cleanup.splice(0)) c();
    for (const l of started) {
      if (l.child.pid !== undefined && l.child.exitCode === null && l.child.signalCode === null) {
        try {
          process.kill(l.child.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts a jailed lgnet on `tap` and attaches a harness guest to it. */
  async function serveWithGuest(tap: string, subnet: number, metricsListen: string, extra: string[] = []) {
    const socket = join(dir, `${tap}.sock`);
    const root = mkdtempSync(join(dir, 'root-'));
    const l = await startLgnet(ns, ['--socket', socket, '--tap', tap, '--mac', '52:54:00:00:00:42', '--metrics-listen', metricsListen,
      '--chroot', root, '--user', 'nobody', '--group', 'nogroup', '--log-level', 'info', ...extra]);
    started.push(l);
    const hostIp = `10.${subnet}.0.1`;
    const guestIp = `10.${subnet}.0.2`;
    ns.exec('ip', 'addr', 'add', `${hostIp}/24`, 'dev', tap);
    ns.exec('ip', 'link', 'set', tap, 'up');
    ns.exec('ip', 'neigh', 'add', guestIp, 'lladdr', '52:54:00:00:00:42', 'dev', tap);
    const tapMac = mac(ns.exec('cat', `/sys/class/net/${tap}/address`).trim());
    const ram = new GuestRam(48 << 20);
    const fe = await VhostUserFrontend.connect(socket);
    const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
    const drv = new VirtioNetDriver(ram, { features: neg.features & ~(1n << 30n), queueSize: 256 });
    await fe.attachDriver(drv, ram, { negotiate: false });
    drv.fillRx(0);
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      fe.close();
      drv.close();
      ram.close();
    };
    cleanup.push(close);
    const frame = (port: number) => udpFrame({
      srcMac: mac('52:54:00:00:00:42'), dstMac: tapMac, srcIp: ip4(guestIp), dstIp: ip4(hostIp), srcPort: 1234, dstPort: port, payload: new Uint8Array(100).fill(port & 255),
    });
    /** `n` frames from the guest through the tap, sent in bursts of 10. */
    const sendTx = async (n: number) => {
      for (let i = 0; i < n; i++) {
        expect(drv.send(frame(9000 + (i % 100)))).toBe(true);
        if (i % 10 === 9 || i === n - 1) expect(await drv.drainTx(0, 5000)).toBe(0);
      }
    };
    return { l, socket, hostIp, guestIp, drv, fe, sendTx, close };
  }

  const scrape = async (addr: ListenAddress): Promise<{ text: string; samples: Sample[] }> => {
    const r = await httpGet(addr, '/metrics');
    expect(r.status, r.body).toBe(200);
    return { text: r.body, samples: parseExposition(r.body) };
  };

  it('serves scrapes from the jail (chroot, nobody, seccomp), matches the device metrics, survives a bad request, and lgnet stats reads it', async () => {
    const metricsPath = join(dir, 'metrics.sock');
    const metricsJson = join(dir, 'metrics-json.sock');
    const addr: ListenAddress = { kind: 'unix', path: metricsPath };
    const s = await serveWithGuest('lgopst0', 61, metricsPath, ['--metrics-socket', metricsJson]);
    expect(s.l.stdout()).toBe(`lgnet ready socket=${s.socket} tap=lgopst0 queues=1 mode=server metrics=${metricsPath}\n`);
    const jailLog = s.l.stderr().split('\n').filter(Boolean).map((x) => JSON.parse(x) as { msg: string; jail?: { sandboxed: boolean; chroot: string; uid: number } }).find((x) => x.msg === 'jailed');
    expect(jailLog?.jail).toMatchObject({ sandboxed: true, uid: 65534 });

    // Traffic both ways: 200 frames from the guest, 50 datagrams to it.
    await s.sendTx(200);
    const sender = udpSend(ns, s.guestIp, 7000, 200, 50, 2);
    const rx = await s.drv.waitRx(50, { timeoutMs: 10_000 });
    sender.kill();
    expect(rx.length).toBeGreaterThanOrEqual(50);

    const first = await scrape(addr);
    expect(valueOf(first.samples, 'lgnet_queue_frames_total', QUEUE_LABELS.tx)).toBe(200);
    expect(valueOf(first.samples, 'lgnet_queue_frames_total', QUEUE_LABELS.rx)).toBeGreaterThanOrEqual(50);
    expect(valueOf(first.samples, 'lgnet_vhost_user_connected')).toBe(1);
    expect(valueOf(first.samples, 'lgnet_vhost_user_messages_total', { request: 'SET_VRING_KICK' })).toBe(2);
    expect(valueOf(first.samples, 'lgnet_vhost_user_negotiated_feature_info', { feature: 'MRG_RXBUF' })).toBe(1);
    // Process metrics from inside a chroot without /proc: RSS through the fd opened before the jail,
    // fds counted by fstat up to the jail's RLIMIT_NOFILE.
    expect(valueOf(first.samples, 'process_resident_memory_bytes')).toBeGreaterThan(20 << 20);
    expect(valueOf(first.samples, 'process_open_fds')).toBeGreaterThan(10);
    expect(valueOf(first.samples, 'process_max_fds')).toBe(1024);
    expect(valueOf(first.samples, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    // The tap's kernel counters, re-read in the jail through /proc/self/net/dev opened before it: the
    // 200 frames lgnet wrote are the interface's received frames (nothing else writes to the tap).
    expect(valueOf(first.samples, 'lgnet_tap_frames_total', { interface: 'lgopst0', direction: 'from_guest' })).toBe(200);
    expect(valueOf(first.samples, 'lgnet_tap_frames_total', { interface: 'lgopst0', direction: 'to_guest' })).toBeGreaterThanOrEqual(50);
    expect(valueOf(first.samples, 'lgnet_tap_dropped_frames_total', { interface: 'lgopst0', direction: 'to_guest' })).toBe(0);
    const check = promtool(first.text);
    expect(check, check.output).toEqual({ status: 0, output: '' });

    // The same counters as the device's own document (--metrics-socket: NetDevice.metrics() as JSON),
    // taken between two identical documents (a stray IPv6 packet may move RX; bounded retries).
    let matched = false;
    for (let attempt = 0; attempt < 20 && !matched; attempt++) {
      const d0 = await readMetrics(metricsJson);
      const { samples } = await scrape(addr);
      const d1 = await readMetrics(metricsJson);
      const strip = (d: typeof d0) => JSON.stringify(d.queues);
      if (strip(d0) !== strip(d1)) continue;
      matched = true;
      for (const q of d1.queues) {
        const labels = { queue: String(q.index), direction: q.role };
        expect(valueOf(samples, 'lgnet_queue_frames_total', labels)).toBe(q.frames);
        expect(valueOf(samples, 'lgnet_queue_bytes_total', labels)).toBe(q.bytes);
        expect(valueOf(samples, 'lgnet_queue_kicks_total', labels)).toBe(q.kicks);
        expect(valueOf(samples, 'lgnet_queue_interrupts_total', labels)).toBe(q.interrupts);
        expect(valueOf(samples, 'lgnet_queue_asleep_seconds_total', labels)).toBeCloseTo(q.blockedNs / 1e9, 9);
      }
    }
    expect(matched).toBe(true);

    // Not HTTP: a 400 and a close; the process is unharmed: it scrapes, and frames still flow.
    expect(await rawExchange(addr, '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n')).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(await rawExchange(addr, 'GET /metrics HTTP/9.9.9\r\n\r\n')).toMatch(/^HTTP\/1\.1 400 /);
    expect(s.l.child.exitCode).toBeNull();
    await s.sendTx(10);
    const after = await scrape(addr);
    expect(valueOf(after.samples, 'lgnet_queue_frames_total', QUEUE_LABELS.tx)).toBe(210);
    expect(valueOf(after.samples, 'lgnet_metrics_http_requests_total', { code: '400' })).toBe(2);

    // lgnet stats --once --json while the guest sends (bursts of 10 until it is done): rates over one
    // interval.
    let statsDone = false;
    const statsRun = runStats([metricsPath, '--once', '--json', '--interval', '1000']).finally(() => (statsDone = true));
    let sent = 0;
    while (!statsDone && sent < 5000) {
      await s.sendTx(10);
      sent += 10;
      await new Promise((r) => setTimeout(r, 20));
    }
    const st = await statsRun;
    expect(st.status, st.stderr).toBe(0);
    const report = JSON.parse(st.stdout) as StatsReport;
    expect(report.pid).toBe(s.l.child.pid);
    expect(report.address).toBe(metricsPath);
    expect(report.queues.map((q) => [q.queue, q.direction, q.running])).toEqual([[0, 'rx', true], [1, 'tx', true]]);
    const tx = report.queues[1]!;
    expect(tx.frames_total).toBeGreaterThan(210);
    expect(tx.frames_total).toBeLessThanOrEqual(210 + sent);
    expect(tx.frames_per_s).toBeGreaterThan(0);
    expect(tx.bytes_per_s).toBeGreaterThan(tx.frames_per_s * 100);
    expect(tx.kicks_per_frame).not.toBeNull();
    expect(tx.kicks_per_frame!).toBeGreaterThan(0);
    expect(tx.kicks_per_frame!).toBeLessThanOrEqual(1);
    expect(tx.asleep).toBeGreaterThan(0);
    expect(tx.asleep).toBeLessThanOrEqual(1);
    expect(report.vhost_user).toMatchObject({ connected: true, connections_total: 1, errors_total: 0 });
    expect(report.process.rss_bytes).toBeGreaterThan(20 << 20);
    // The tap as the kernel counts it: what the guest sent in the interval arrived on the interface.
    expect(report.tap?.interface).toBe('lgopst0');
    expect(report.tap!.from_guest.frames_per_s).toBeGreaterThan(0);
    // A snapshot may fall inside a burst of 10 that the kernel counted and lgnet has yet to.
    expect(Math.abs(report.tap!.from_guest.frames_per_s - tx.frames_per_s)).toBeLessThanOrEqual(20 + tx.frames_per_s / 10);
    expect(report.tap!.to_guest.dropped_total).toBe(0);

    // The text view, once.
    const text = await runStats([metricsPath, '--once', '--interval', '200']);
    expect(text.status, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^lgnet pid ${s.l.child.pid} at ${metricsPath}`));
    expect(text.stdout).toMatch(/^queue\s+dir\s+frames\/s\s+bytes\/s\s+irq\/frame\s+kick\/frame\s+asleep\s+drops\/s$/m);
    expect(text.stdout).toMatch(/^1\s+tx\s+/m);
    expect(text.stdout).toMatch(/^tap lgopst0  to guest .* frames\/s, dropped 0\/s \(0 in all\)  from guest /m);

    // lgnet stats --queues: where each queue stands, read by its worker inside the jail. The guest's
    // TX is drained, so every chain it made available was popped and used.
    const q = await runStats([metricsPath, '--queues', '--json']);
    expect(q.status, q.stderr).toBe(0);
    const qd = JSON.parse(q.stdout) as QueuesDocument;
    expect(qd.pid).toBe(s.l.child.pid);
    const txq = qd.queues.find((x) => x.role === 'tx')!;
    expect(txq).toMatchObject({ index: 1, state: 'running', ring: { format: 'split', availPending: 0, inFlight: 0 } });
    expect(txq.ring!.lastAvail).toBe((210 + sent) & 0xffff);
    expect(txq.ring!.publishedUsed).toBe(txq.ring!.lastAvail);
    expect(txq.lastSleep?.on).toBe('kick');
    expect(qd.queues.find((x) => x.role === 'rx')).toMatchObject({ index: 0, state: 'running', ring: { format: 'split' } });
    const qt = await runStats([metricsPath, '--queues']);
    expect(qt.status, qt.stderr).toBe(0);
    expect(qt.stdout).toMatch(new RegExp(`^lgnet ${s.l.child.pid} at ${metricsPath}: queues`));
    expect(qt.stdout).toMatch(/^queue\s+state\s+ring\s+driver\s+device\s+pending\s+in flight\s+used\s+signalled\s+irq\s+slept on$/m);
    expect(qt.stdout).toMatch(new RegExp(`^1 tx\\s+running\\s+split \\d+\\s+${txq.ring!.lastAvail}\\s+${txq.ring!.lastAvail}\\s+0\\s+0\\s`, 'm'));

    // SIGUSR2: the same document in the log, from the jail.
    process.kill(s.l.child.pid!, 'SIGUSR2');
    const logged = () => s.l.stderr().split('\n').filter(Boolean).map((x) => JSON.parse(x) as { msg: string; queues?: QueuesDocument['queues'] }).find((x) => x.msg === 'queues');
    expect(await until(() => logged() !== undefined, 5000)).toBe(true);
    expect(logged()!.queues!.find((x) => x.role === 'tx')).toMatchObject({ state: 'running', ring: { lastAvail: txq.ring!.lastAvail, availPending: 0 } });
    expect(s.l.child.exitCode).toBeNull();

    // A clean stop: exit 0, both metrics sockets removed by the reapers.
    s.close();
    process.kill(s.l.child.pid!, 'SIGTERM');
    expect(await s.l.exited).toEqual({ code: 0, signal: null });
    expect(await until(() => !existsSync(metricsPath) && !existsSync(metricsJson), 3000)).toBe(true);
  }, 90_000);

  it('serves 127.0.0.1:PORT inside the namespace: lgnet stats reads it, a bad request gets a 400', async () => {
    const s = await serveWithGuest('lgopst1', 62, '127.0.0.1:0');
    const m = /metrics=127\.0\.0\.1:(\d+)\n$/.exec(s.l.stdout());
    expect(m, s.l.stdout()).not.toBeNull();
    const port = Number(m![1]);
    await s.sendTx(20);
    const st = await runStats([`127.0.0.1:${port}`, '--once', '--json', '--interval', '300'], ns);
    expect(st.status, st.stderr).toBe(0);
    const report = JSON.parse(st.stdout) as StatsReport;
    expect(report.pid).toBe(s.l.child.pid);
    expect(report.queues.find((q) => q.direction === 'tx')?.frames_total).toBe(20);

    // The live view: one JSON line per interval until SIGINT, then exit 0.
    const live = spawn('ip', ['netns', 'exec', ns.name, LGNET, 'stats', `127.0.0.1:${port}`, '--json', '--interval', '200'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let liveOut = '';
    live.stdout!.setEncoding('utf8').on('data', (d: string) => (liveOut += d));
    const liveExit = new Promise<number | null>((resolve) => live.on('exit', (code) => resolve(code)));
    cleanup.push(() => live.kill('SIGKILL'));
    expect(await until(() => liveOut.split('\n').filter(Boolean).length >= 3, 15_000), liveOut).toBe(true);
    live.kill('SIGINT');
    expect(await liveExit).toBe(0);
    const lines = liveOut.split('\n').filter(Boolean).map((x) => JSON.parse(x) as StatsReport);
    expect(lines.every((x) => x.pid === s.l.child.pid && x.queues.length === 2)).toBe(true);

    // From inside the namespace (the port is on its loopback): garbage, then a scrape, on raw sockets.
    const probe = `
      const net = require('node:net');
      const ask = (bytes) => new Promise((resolve) => {
        const s = net.createConnection(${port}, '127.0.0.1'); let got = '';
        s.setTimeout(5000, () => s.destroy()); s.on('data', (d) => (got += d)); s.on('close', () => resolve(got)); s.on('error', () => resolve(got));
        s.write(bytes);
      });
      (async () => {
        const bad = await ask('\\x00\\x01 not http\\r\\n\\r\\n');
        const ok = await ask('GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n');
        process.stdout.write(JSON.stringify({ bad: bad.split('\\r\\n')[0], ok: ok.split('\\r\\n')[0], frames: /lgnet_queue_frames_total\\{queue="1",direction="tx"\\} (\\d+)/.exec(ok)?.[1] }));
      })();`;
    const out = JSON.parse(ns.exec('node', '-e', probe)) as { bad: string; ok: string; frames: string };
    expect(out).toEqual({ bad: 'HTTP/1.1 400 Bad Request', ok: 'HTTP/1.1 200 OK', frames: '20' });
    expect(s.l.child.exitCode).toBeNull();

    s.close();
    process.kill(s.l.child.pid!, 'SIGTERM');
    expect(await s.l.exited).toEqual({ code: 0, signal: null });
  }, 60_000);
});
