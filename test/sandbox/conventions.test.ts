/**
 * lgnet as management software starts a vhost-user back-end:
 *
 *   - QEMU's back-end conventions (docs/interop/vhost-user.rst, "Backend program conventions"):
 *     `lgnet-vhost-user` takes --socket-path or --fd and answers --print-capabilities, and `lgnet
 *     describe` prints the @VhostUserBackend JSON file that names it;
 *   - systemd: socket activation (systemd-socket-activate hands the listening socket as fd 3 and starts
 *     lgnet at the first connection), and the notification protocol (READY=1, STATUS=, WATCHDOG=1,
 *     STOPPING=1), received on a real datagram socket with each sender's pid, as systemd checks it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import * as native from '../../native/index.ts';
import type { Logger } from '../../sandbox/log.ts';
import { NOTIFY_WARN, ServiceNotifier } from '../../sandbox/notify.ts';
import { REPO_ROOT } from '../../scripts/qemu.ts';
import { FLOWS, sprayFlows } from '../helpers/flows.ts';
import { notifyReceiver, stuckReceiver, type NotifyReceiver } from '../helpers/notify.ts';
import { LGNET } from './serve-process.ts';
import { expectedPayload, udpSink } from './vhost-user-helpers.ts';
import { httpGet } from './metrics-helpers.ts';
import { apiRequest } from '../../sandbox/rate-limit-cmd.ts';

const VH = join(REPO_ROOT, 'bin/lgnet-vhost-user');
const pre = netnsPrerequisites();
const activate = spawnSync('sh', ['-c', 'command -v systemd-socket-activate'], { encoding: 'utf8' }).stdout.trim();
if (!activate) console.warn('socket activation test skipped: systemd-socket-activate is not installed (Debian package systemd; scripts/install-deps.sh installs it)');

/** A process's output and exit, for runs watched to their end or killed by pid. */
interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function run(argv: string[], env: Record<string, string> = {}): Run {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}

function killRun(r: Run | undefined): void {
  if (r?.child.pid !== undefined && r.child.exitCode === null && r.child.signalCode === null) process.kill(r.child.pid, 'SIGKILL');
}

/** lgnet's JSON log lines in a stderr that other programs (systemd-socket-activate) also wrote to. */
function jsonLines(stderr: string): Array<Record<string, unknown>> {
  return stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('the vhost-user back-end conventions', () => {
  it('--print-capabilities prints {"type":"net"} and exits 0, whatever else the command line holds', () => {
    for (const argv of [[VH, '--print-capabilities'], [VH, '--socket-path', '/nonexistent/x.sock', '--no-such-flag', '--print-capabilities'], [LGNET, 'serve', '--queues', 'many', '--print-capabilities']]) {
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 30_000 });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toBe('{"type":"net"}\n');
      expect(r.stderr).toBe('');
    }
  });

  it('lgnet describe prints a @VhostUserBackend document whose binary is this installation\'s lgnet-vhost-user, and that binary answers for the same type', () => {
    const r = spawnSync(LGNET, ['describe'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    const d = JSON.parse(r.stdout) as Record<string, unknown>;
    // The schema's members: description, type and binary required, tags optional; nothing else.
    expect(Object.keys(d).sort()).toEqual(['binary', 'description', 'tags', 'type']);
    expect(d['type']).toBe('net');
    expect(typeof d['description']).toBe('string');
    expect((d['tags'] as unknown[]).every((t) => typeof t === 'string')).toBe(true);
    const binary = d['binary'] as string;
    expect(isAbsolute(binary)).toBe(true);
    expect(binary).toBe(realpathSync(VH));
    accessSync(binary, constants.X_OK);
    const caps = spawnSync(binary, ['--print-capabilities'], { encoding: 'utf8', timeout: 30_000 });
    expect(JSON.parse(caps.stdout)).toEqual({ type: d['type'] });
  });

  it('refuses two names for one option with exit 2', () => {
    for (const args of [['--socket', '/tmp/a.sock', '--socket-path', '/tmp/b.sock'], ['--fd', '3', '--socket-fd', '3'], ['--fd', '3', '--socket-path', '/tmp/a.sock']]) {
      const r = spawnSync(VH, args, { encoding: 'utf8', timeout: 30_000 });
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/name the same thing|drop --socket/);
    }
  });
});

describe('ServiceNotifier on a real datagram socket', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'lgnet-notify-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function capture(): { log: Logger; warnings: Array<Record<string, unknown>> } {
    const warnings: Array<Record<string, unknown>> = [];
    const noop = (): void => {};
    const log: Logger = { error: noop, info: noop, debug: noop, warn: (o: object) => void warnings.push(o as Record<string, unknown>), child: () => log } as unknown as Logger;
    return { log, warnings };
  }

  it('takes the manager\'s variables out of the environment, sends one datagram per message, and keeps a value on its line', async () => {
    const rx = await notifyReceiver(join(dir, 'a.sock'));
    try {
      const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: rx.address, WATCHDOG_USEC: '1000000', WATCHDOG_PID: String(process.pid), FDSTORE: '8', KEEP: '1' };
      const n = ServiceNotifier.fromEnv(capture().log, env)!;
      expect(env).toEqual({ KEEP: '1' });
      expect(n.watchdogUsec).toBe(1_000_000);
      expect(n.fdStoreMax).toBe(8);
      expect(n.send({ STATUS: 'two\nlines' })).toBe(true);
      const m = await rx.next(() => true);
      expect(m.pid).toBe(process.pid);
      expect(m.fields).toEqual({ STATUS: 'two lines' });
      n.close();
    } finally {
      rx.close();
    }
  });

  it('never blocks on a manager that does not read: the messages its queue has no room for are counted and logged', async () => {
    const path = join(dir, 'stuck.sock');
    const py = await stuckReceiver([path]);
    try {
      const c = capture();
      const n = ServiceNotifier.fromEnv(c.log, { NOTIFY_SOCKET: path })!;
      let sent = 0;
      for (let i = 0; i < 200; i++) if (n.send({ STATUS: `message ${i}` })) sent++;
      // The kernel queues a few datagrams (net.unix.max_dgram_qlen), then sendmsg says EAGAIN.
      expect(sent).toBeGreaterThan(0);
      expect(n.lost).toBe(200 - sent);
      expect(n.lost).toBeGreaterThan(0);
      expect(c.warnings.filter((w) => w['code'] === NOTIFY_WARN.LOST)).toHaveLength(n.lost);
      n.close();
    } finally {
      process.kill(py.pid!, 'SIGKILL');
    }
  });

  it('warns about an address it cannot reach, a watchdog interval that is not one, and ignores a watchdog meant for another pid', async () => {
    const c = capture();
    expect(ServiceNotifier.fromEnv(c.log, {})).toBeNull();
    expect(ServiceNotifier.fromEnv(c.log, { NOTIFY_SOCKET: join(dir, 'none.sock') })).toBeNull();
    expect(ServiceNotifier.fromEnv(c.log, { NOTIFY_SOCKET: 'vsock:2:1234' })).toBeNull();
    expect(c.warnings.map((w) => w['code'])).toEqual([NOTIFY_WARN.UNREACHABLE, NOTIFY_WARN.UNREACHABLE]);
    const path = join(dir, 'w.sock');
    const py = await stuckReceiver([path]);
    try {
      const other = ServiceNotifier.fromEnv(c.log, { NOTIFY_SOCKET: path, WATCHDOG_USEC: '100000', WATCHDOG_PID: String(process.pid + 1) })!;
      expect(other.watchdogUsec).toBe(0);
      other.close();
      const bad = ServiceNotifier.fromEnv(c.log, { NOTIFY_SOCKET: path, WATCHDOG_USEC: '1e5' })!;
      expect(bad.watchdogUsec).toBe(0);
      expect(c.warnings.at(-1)?.['code']).toBe(NOTIFY_WARN.BAD_WATCHDOG);
      bad.close();
      const store = ServiceNotifier.fromEnv(c.log, { NOTIFY_SOCKET: path, FDSTORE: '-1' })!;
      expect(store.fdStoreMax).toBe(0);
      expect(c.warnings.at(-1)?.['code']).toBe(NOTIFY_WARN.BAD_FDSTORE);
      store.close();
    } finally {
      process.kill(py.pid!, 'SIGKILL');
    }
  });
});

describe.skipIf(!pre.ok)('lgnet-vhost-user under a service manager', () => {
  let ns: Netns;
  let dir: string;
  const runs: Run[] = [];
  const receivers: NotifyReceiver[] = [];
  beforeAll(() => {
    if (!pre.ok) console.warn(`skipped: ${pre.why}`);
    ns = createNetns('lgconv');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-conv-'));
  });
  afterAll(() => {
    for (const r of runs) killRun(r);
    for (const r of receivers) r.close();
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(!activate)('socket-activated by systemd-socket-activate (--fd 3): started at the first connection, READY=1 from its own pid, traffic both ways, STATUS as front-ends come and go, WATCHDOG=1, STOPPING=1 at SIGTERM', async () => {
    const socket = join(dir, 'activated.sock');
    const rx = await notifyReceiver(join(dir, 'notify.sock'));
    receivers.push(rx);
    const tap = 'lgconv0';
    const r = run(['ip', 'netns', 'exec', ns.name, activate, '-l', socket, '-E', `NOTIFY_SOCKET=${rx.address}`, '-E', 'WATCHDOG_USEC=200000',
      VH, '--fd', '3', '--tap', tap, '--log-level', 'info']);
    runs.push(r);
    // The manager listens before lgnet runs: the front-end's connection is what starts it.
    const deadline = Date.now() + 10_000;
    while (!existsSync(socket) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    expect(rx.messages).toEqual([]);
    const fe = await VhostUserFrontend.connect(socket, { timeoutMs: 30_000 });
    const ram = new GuestRam(32 << 20);
    try {
      const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      // systemd-socket-activate execs lgnet in its own place: the pid that reports is the one it started.
      const ready = await rx.next((m) => m.fields['READY'] === '1');
      expect(ready.pid).toBe(r.child.pid);
      expect(ready.fields['MAINPID']).toBe(String(r.child.pid));
      expect(r.stdout()).toBe(`lgnet ready socket=${socket} tap=${tap} queues=1 mode=server\n`);
      // The front-end that started lgnet may be accepted before or after READY: either way the status says it is served.
      await rx.next((m) => m.fields['STATUS'] === `tap ${tap}, 1 queue pair: serving a front-end on ${socket}`);
      expect(jsonLines(r.stderr()).find((x) => x['msg'] === 'jailed')?.['jail']).toMatchObject({ sandboxed: true });

      ns.exec('ip', 'addr', 'add', '10.81.0.1/24', 'dev', tap);
      ns.exec('ip', 'link', 'set', tap, 'up');
      const guestMac = '52:54:00:00:81:02';
      ns.exec('ip', 'neigh', 'add', '10.81.0.2', 'lladdr', guestMac, 'dev', tap);
      const drv = new VirtioNetDriver(ram, { features: neg.features, pairs: 1, queueSize: 256 });
      try {
        await fe.attachDriver(drv, ram, { negotiate: false });
        drv.fillRx(0);
        expect(await sprayFlows(ns, '10.81.0.2', drv, 1)).toEqual([FLOWS]);
        const sink = await udpSink(ns, '10.81.0.1', 7601, 1, 5000);
        const tapMac = mac(ns.exec('cat', `/sys/class/net/${tap}/address`).trim());
        drv.send(udpFrame({ srcMac: mac(guestMac), dstMac: tapMac, srcIp: ip4('10.81.0.2'), dstIp: ip4('10.81.0.1'), srcPort: 6001, dstPort: 7601, payload: expectedPayload(100, 1) }), { kick: true });
        expect((await sink.datagrams()).length).toBe(1);
      } finally {
        drv.close();
      }
    } finally {
      fe.close();
      ram.close();
    }
    const at = rx.messages.length;
    await rx.next((m) => m.fields['STATUS'] === `tap ${tap}, 1 queue pair: waiting for a front-end on ${socket}`, { from: at });
    // Every 100 ms (half of WATCHDOG_USEC), from lgnet's pid.
    const dogs = rx.messages.filter((m) => m.fields['WATCHDOG'] === '1');
    expect(dogs.length).toBeGreaterThanOrEqual(2);
    expect(dogs.every((m) => m.pid === r.child.pid)).toBe(true);
    process.kill(r.child.pid!, 'SIGTERM');
    expect(await r.exited).toBe(0);
    const stopping = await rx.next((m) => m.fields['STOPPING'] === '1');
    expect(stopping.fields['STATUS']).toBe('stopping on SIGTERM');
    // The socket is the manager's: lgnet leaves the file.
    expect(statSync(socket).isSocket()).toBe(true);
    const warnings = jsonLines(r.stderr()).filter((x) => (x['level'] as number) >= 40 && x['code'] !== 'LGNET_JAIL_ROOT');
    expect(warnings, r.stderr()).toEqual([]);
  });

  /** systemd-socket-activate with `args` in the namespace, started by one connection to `connectTo`, run to its exit. */
  async function activatedOnce(args: string[], connectTo: string): Promise<{ run: Run; code: number | null }> {
    const r = run(['ip', 'netns', 'exec', ns.name, activate, ...args]);
    runs.push(r);
    const deadline = Date.now() + 20_000;
    while (!existsSync(connectTo) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    const c = native.unixConnect(connectTo);
    try {
      return { run: r, code: await r.exited };
    } finally {
      native.close(c);
    }
  }

  it.skipIf(!activate)('socket activation without --fd: serves the socket handed over (LISTEN_FDS), among three the one named vhost-user, the control API on the one named api, and no child inherits any', async () => {
    const other = join(dir, 'other.sock');
    const socket = join(dir, 'named.sock');
    const apiSock = join(dir, 'named-api.sock');
    const metricsSock = join(dir, 'named-metrics.sock');
    const r = run(['ip', 'netns', 'exec', ns.name, activate, '-l', other, '-l', socket, '-l', apiSock, '--fdname=metrics:vhost-user:api',
      VH, '--tap', 'lgconv4', '--metrics-socket', metricsSock, '--log-level', 'info']);
    runs.push(r);
    const deadline = Date.now() + 10_000;
    while (!existsSync(socket) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    const fe = await VhostUserFrontend.connect(socket, { timeoutMs: 30_000 });
    try {
      await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      while (!r.stdout().includes('\n') && Date.now() < deadline + 20_000) await new Promise((res) => setTimeout(res, 20));
      // The one named metrics is the Prometheus endpoint's.
      expect(r.stdout()).toBe(`lgnet ready socket=${socket} tap=lgconv4 queues=1 mode=server metrics=${other} api=${apiSock}\n`);
      const handed = jsonLines(r.stderr()).find((x) => x['msg'] === 'sockets handed over by a service manager (LISTEN_FDS)');
      expect(handed).toMatchObject({ fds: [3, 4, 5], names: ['metrics', 'vhost-user', 'api'], serving: 4, metrics: 3, api: 5 });
      expect(await apiRequest(apiSock, 'PATCH', '/rate-limit', { tx: { ops: { size: 100, refillMs: 10 } } })).toEqual({ status: 200, body: { rx: null, tx: { ops: { size: 100, refillMs: 10 } } } });
      const scrape = await httpGet({ kind: 'unix', path: other }, '/metrics');
      expect(scrape.status).toBe(200);
      expect(scrape.body).toMatch(/^lgnet_tap_frames_total\{interface="lgconv4",direction="to_guest"\} \d+$/m);
      // The socket reaper (for --metrics-socket) is lgnet's child: neither handed-over socket nor the
      // hand-over's variables reach it.
      const pid = r.child.pid!;
      const inodes = [3, 4, 5].map((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`));
      expect(inodes.every((x) => x.startsWith('socket:['))).toBe(true);
      const kids = readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean));
      expect(kids.length).toBeGreaterThanOrEqual(1);
      for (const k of kids) {
        const fds = readdirSync(`/proc/${k}/fd`).map((fd) => { try { return readlinkSync(`/proc/${k}/fd/${fd}`); } catch { return ''; } });
        expect(fds.filter((x) => inodes.includes(x)), `child ${k}'s fds`).toEqual([]);
        expect(readFileSync(`/proc/${k}/environ`, 'utf8').split('\0').filter((e) => e.startsWith('LISTEN_')), `child ${k}'s environment`).toEqual([]);
      }
    } finally {
      fe.close();
    }
    process.kill(r.child.pid!, 'SIGTERM');
    expect(await r.exited).toBe(0);

    // One socket, no names: that one.
    const single = join(dir, 'single.sock');
    const one = run(['ip', 'netns', 'exec', ns.name, activate, '-l', single, VH, '--tap', 'lgconv5', '--log-level', 'warn']);
    runs.push(one);
    while (!existsSync(single) && Date.now() < deadline + 30_000) await new Promise((res) => setTimeout(res, 20));
    const fe1 = await VhostUserFrontend.connect(single, { timeoutMs: 30_000 });
    try {
      expect((await fe1.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') })).features & mask('VERSION_1')).toBe(mask('VERSION_1'));
    } finally {
      fe1.close();
    }
    process.kill(one.child.pid!, 'SIGTERM');
    expect(await one.exited).toBe(0);
    expect(one.stdout()).toBe(`lgnet ready socket=${single} tap=lgconv5 queues=1 mode=server\n`);

    // Two sockets and no name to choose by: refused before anything is opened, exit 2.
    const a = join(dir, 'a.sock');
    const b = join(dir, 'b.sock');
    const two = await activatedOnce(['-l', a, '-l', b, VH, '--tap', 'lgconv6'], a);
    expect(two.code).toBe(2);
    expect(two.run.stderr()).toContain("2 sockets were handed over (LISTEN_FDS), without names: name lgnet's FileDescriptorName=vhost-user");
  });

  it.skipIf(!activate)('socket activation hands over the metrics socket too (named metrics): served on loopback, refused on any other address; a control socket (named api) that is not a unix socket is refused', async () => {
    const socket = join(dir, 'with-metrics.sock');
    const r = run(['ip', 'netns', 'exec', ns.name, activate, '-l', socket, '-l', '127.0.0.1:9102', '--fdname=vhost-user:metrics',
      VH, '--tap', 'lgconv7', '--log-level', 'warn']);
    runs.push(r);
    const deadline = Date.now() + 20_000;
    while (!existsSync(socket) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    const fe = await VhostUserFrontend.connect(socket, { timeoutMs: 30_000 });
    try {
      await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      while (!r.stdout().includes('\n') && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      expect(r.stdout()).toBe(`lgnet ready socket=${socket} tap=lgconv7 queues=1 mode=server metrics=127.0.0.1:9102\n`);
      // What an operator runs: lgnet stats on that address, in the namespace whose loopback it is.
      const st = spawnSync('ip', ['netns', 'exec', ns.name, LGNET, 'stats', '127.0.0.1:9102', '--once', '--json', '--interval', '200'], { encoding: 'utf8', timeout: 30_000 });
      expect(st.status, st.stderr).toBe(0);
      const report = JSON.parse(st.stdout) as { pid: number; tap: { interface: string } | null; vhost_user: { connected: boolean } | null };
      expect(report.pid).toBe(r.child.pid);
      expect(report.tap?.interface).toBe('lgconv7');
      expect(report.vhost_user?.connected).toBe(true);
    } finally {
      fe.close();
    }
    process.kill(r.child.pid!, 'SIGTERM');
    expect(await r.exited).toBe(0);

    // The endpoint is for this host: a socket on every address is refused, as --metrics-listen 0.0.0.0:P is.
    const open = join(dir, 'with-open-metrics.sock');
    const bad = await activatedOnce(['-l', open, '-l', '0.0.0.0:9103', '--fdname=vhost-user:metrics', VH, '--tap', 'lgconv8', '--log-level', 'warn'], open);
    expect(bad.code).toBe(1);
    expect(jsonLines(bad.run.stderr()).find((x) => x['msg'] === 'lgnet serve could not start')).toMatchObject({ code: 'LGNET_METRICS_BAD_ADDRESS' });
    expect(bad.run.stderr()).toContain('listens on 0.0.0.0:9103, not on loopback');

    // The control socket must be a unix socket, even on loopback: its file's mode says who may use it.
    const tcpApi = join(dir, 'with-tcp-api.sock');
    const api = await activatedOnce(['-l', tcpApi, '-l', '127.0.0.1:9104', '--fdname=vhost-user:api', VH, '--tap', 'lgconv9', '--log-level', 'warn'], tcpApi);
    expect(api.code).toBe(1);
    expect(jsonLines(api.run.stderr()).find((x) => x['msg'] === 'lgnet serve could not start')).toMatchObject({ code: 'LGNET_API_BAD_ADDRESS' });
    expect(api.run.stderr()).toContain('handed over as fd 4 is not a unix socket');
  });

  it('--socket-path with an abstract NOTIFY_SOCKET: READY=1 comes once the socket accepts, and a start-up failure is told with its errno', async () => {
    const rx = await notifyReceiver(`@lgnet-conv-${process.pid}`, ns);
    receivers.push(rx);
    const socket = join(dir, 'own.sock');
    const r = run(['ip', 'netns', 'exec', ns.name, VH, '--socket-path', socket, '--tap', 'lgconv1', '--log-level', 'warn'], { NOTIFY_SOCKET: rx.address });
    runs.push(r);
    const ready = await rx.next((m) => m.fields['READY'] === '1', { timeoutMs: 20_000 });
    expect(ready.pid).toBe(r.child.pid);
    // Ready means listening: a connection made now is accepted, with no retry.
    native.close(native.unixConnect(socket));
    process.kill(r.child.pid!, 'SIGTERM');
    expect(await r.exited).toBe(0);
    await rx.next((m) => m.fields['STOPPING'] === '1');
    expect(rx.messages.some((m) => m.fields['WATCHDOG'] !== undefined)).toBe(false);

    const at = rx.messages.length;
    const bad = run(['ip', 'netns', 'exec', ns.name, VH, '--socket-path', join(dir, 'missing', 'x.sock'), '--tap', 'lgconv2', '--log-level', 'warn'], { NOTIFY_SOCKET: rx.address });
    runs.push(bad);
    expect(await bad.exited).toBe(1);
    const failed = await rx.next(() => true, { from: at });
    expect(failed.pid).toBe(bad.child.pid);
    expect(failed.fields['STATUS']).toMatch(/^could not start: bind failed with ENOENT/);
    expect(failed.fields['ERRNO']).toBe('2');
    expect(failed.fields['READY']).toBeUndefined();
  });

  it('serves without a manager it cannot reach, and says why in its log', async () => {
    const socket = join(dir, 'unreached.sock');
    const r = run(['ip', 'netns', 'exec', ns.name, VH, '--socket-path', socket, '--tap', 'lgconv3', '--log-level', 'warn'], { NOTIFY_SOCKET: join(dir, 'nobody-listens.sock') });
    runs.push(r);
    const deadline = Date.now() + 20_000;
    while (!r.stdout().includes('\n') && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    expect(r.stdout()).toBe(`lgnet ready socket=${socket} tap=lgconv3 queues=1 mode=server\n`);
    expect(jsonLines(r.stderr()).find((x) => x['code'] === NOTIFY_WARN.UNREACHABLE)?.['msg']).toContain('will not hear that lgnet is ready');
    process.kill(r.child.pid!, 'SIGTERM');
    expect(await r.exited).toBe(0);
  });
});
