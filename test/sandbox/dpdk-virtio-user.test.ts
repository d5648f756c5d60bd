/**
 * `lgnet serve` behind DPDK's virtio-user front-end: a second front-end implementation beside QEMU,
 * with its own split and packed drivers and its own ways of starting rings.
 *
 *   ns A:  lgnet serve ── tap lgdv0 (HOST_A)
 *            │ vhost-user socket
 *   ns B:  dpdk-testpmd: port 0 virtio-user ⇄ io forwarding ⇄ port 1 tap PMD dpdv0 (HOST_B)
 *
 * ns B's kernel sends to HOST_A through its tap, testpmd forwards each frame onto the virtio-user TX
 * ring, lgnet writes it to its tap in ns A, and the answer comes back the same way through lgnet's RX.
 * Cases: split rings with lgnet as the socket server; packed rings (packed_vq=1) and DPDK's
 * vectorized RX path served by the same lgnet process, one front-end after the other (virtio-user
 * negotiates VIRTIO_F_IN_ORDER by default and takes its in-order paths; the vectorized case turns it off); two queue pairs
 * with lgnet as the client of a virtio-user server (server=1). Each carries ping and a bounded ping
 * flood, the first ones TCP both ways and UDP over many ports too, and ends with every queue unbroken
 * and no frame dropped. Then, on each ring format, lgnet is SIGKILLed under a virtio-user server and
 * started again: DPDK hands a split ring over with base 0 while the ring went on (lgnet resumes at
 * used.idx), and resets a packed one. testpmd runs without hugepages (--no-huge): its memory is then
 * file-backed all the same, and shared over the socket.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { readMetrics, type MetricsDocument } from '../../sandbox/metrics-endpoint.ts';
import { sprayUdp } from '../helpers/flows.ts';
import { httpGet, parseExposition } from './metrics-helpers.ts';
import { kill, logLines, startLgnet, type Lgnet, type LogLine } from './serve-process.ts';
import { until } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
const haveTestpmd = spawnSync('sh', ['-c', 'command -v dpdk-testpmd'], { encoding: 'utf8' }).status === 0;
const FLOOD = 2000;
const UDP_PORTS = 64;
const UDP_PER_PORT = 8;

interface Testpmd {
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/** dpdk-testpmd in `ns`: virtio-user on `socket` (devargs added) and a tap PMD `tap`, io forwarding. */
async function startTestpmd(ns: Netns, socket: string, devargs: string, tap: string, queues: number): Promise<Testpmd> {
  const prefix = `lgnet-vu-${process.pid}-${tap}`;
  const child = ns.spawn([
    'dpdk-testpmd', '-l', '0,1', '-n', '1', '--no-huge', '-m', '512', '--file-prefix', prefix, '--no-pci', '--log-level', 'lib.eal:warning', '--log-level', 'pmd.net.virtio.*:info',
    '--vdev', `net_virtio_user0,path=${socket},queues=${queues}${devargs}`, '--vdev', `net_tap0,iface=${tap}`,
    // --stats-period keeps testpmd forwarding without a terminal (it would exit at stdin's EOF).
    '--', '--forward-mode=io', '--auto-start', '--nb-cores=1', `--rxq=${queues}`, `--txq=${queues}`, '--total-num-mbufs=8192', '--stats-period', '5',
  ]);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-200_000)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-200_000)));
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  const t: Testpmd = {
    child,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGINT'); // testpmd stops forwarding, closes its ports and exits
        await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        await gone;
      }
      rmSync(`/var/run/dpdk/${prefix}`, { recursive: true, force: true });
    },
  };
  const started = await until(() => /Port 1: /.test(out) && /Start automatic packet forwarding|start packet forwarding/i.test(out), 30_000, 50);
  if (!started || child.exitCode !== null) {
    await t.stop();
    throw new Error(`testpmd did not start forwarding (exit ${child.exitCode}):\n${out.slice(-3000)}`);
  }
  return t;
}

/** iperf3's received rate, TCP for 2 s from `ns` to `ip` (-R: the other way); throws with its error. */
function iperfBitsPerSecond(ns: Netns, ip: string, port: number, reverse: boolean): number {
  const out = spawnSync('ip', ['netns', 'exec', ns.name, 'iperf3', '-c', ip, '-p', String(port), '-t', '2', '-J', ...(reverse ? ['-R'] : [])], { encoding: 'utf8', timeout: 20_000 });
  const j = JSON.parse(out.stdout || '{}') as { end?: { sum_received?: { bits_per_second?: number } }; error?: string };
  if (j.end?.sum_received?.bits_per_second === undefined) throw new Error(`iperf3 ${reverse ? '-R ' : ''}failed: ${j.error ?? out.stderr}`);
  return j.end.sum_received.bits_per_second;
}

/** ping from `ns`; returns [transmitted, received]. */
function ping(ns: Netns, ip: string, args: string[]): [number, number] {
  const r = spawnSync('ip', ['netns', 'exec', ns.name, 'ping', '-W', '2', ...args, ip], { encoding: 'utf8', timeout: 30_000 });
  const m = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
  if (!m) throw new Error(`ping gave no summary: ${r.stdout}${r.stderr}`);
  return [Number(m[1]), Number(m[2])];
}

/** The feature names the front-end negotiated, from lgnet's Prometheus endpoint. */
async function negotiated(metricsHttp: string): Promise<string[]> {
  const r = await httpGet({ kind: 'unix', path: metricsHttp }, '/metrics');
  return parseExposition(r.body).filter((s) => s.name === 'lgnet_vhost_user_negotiated_feature_info' && s.value === 1).map((s) => s.labels['feature']!);
}

const DROPS = ['txDropShort', 'txDropTooBig', 'txDropBackend', 'txDropGsoNotNegotiated', 'txDropCsumOutOfRange', 'rxDropShortBuffer', 'rxDropTooBig', 'rxDropBackend', 'queueBroken', 'memoryFaults'] as const;

/** Every queue's counters grew by something, and none dropped or broke. */
function expectClean(before: MetricsDocument, after: MetricsDocument, queues: number): void {
  expect(after.queues).toHaveLength(2 * queues);
  for (const q of after.queues) {
    const b = before.queues.find((x) => x.index === q.index)!;
    expect(q.broken, `queue ${q.index}`).toBeNull();
    for (const k of DROPS) expect(q[k] - b[k], `queue ${q.index} ${k}`).toBe(0);
    expect(q.frames - b.frames, `queue ${q.index} (${q.role}) carried frames`).toBeGreaterThan(0);
  }
}

/** Ping and a ping flood from B to A; then (full) TCP both ways and the UDP spray in both directions. */
async function traffic(a: Netns, b: Netns, ipA: string, ipB: string, iperfPort: number, full = true): Promise<void> {
  const [t1, r1] = ping(b, ipA, ['-c', '5', '-i', '0.2']);
  expect([t1, r1]).toEqual([5, 5]);
  const [tf, rf] = ping(b, ipA, ['-f', '-c', String(FLOOD)]);
  expect(tf).toBe(FLOOD);
  // A flood can lose a reply to the timing of a shared machine, never more than a handful.
  expect(rf).toBeGreaterThanOrEqual(FLOOD * 0.99);
  if (!full) return;
  for (const reverse of [false, true]) {
    const server = a.spawn(['iperf3', '-s', '-1', '-p', String(iperfPort)]);
    await new Promise((r) => setTimeout(r, 300));
    try {
      expect(iperfBitsPerSecond(b, ipA, iperfPort, reverse), `TCP ${reverse ? 'A→B' : 'B→A'}`).toBeGreaterThan(10e6);
    } finally {
      if (server.exitCode === null) server.kill('SIGKILL');
    }
  }
  for (const [from, to] of [[b, ipA], [a, ipB]] as const) sprayUdp(from, to, { flows: UDP_PORTS, perFlow: UDP_PER_PORT, port: 9999 });
}

describe.skipIf(!pre.ok)('lgnet serve behind DPDK virtio-user (dpdk-testpmd)', () => {
  let a: Netns;
  let b: Netns;
  let dir: string;
  let lg: Lgnet | undefined;
  let lg2: Lgnet | undefined;
  const pmds: Testpmd[] = [];

  beforeAll(() => {
    expect(haveTestpmd, 'dpdk-testpmd is missing: scripts/install-deps.sh installs dpdk-dev').toBe(true);
    a = createNetns('lgdva');
    b = createNetns('lgdvb');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-dv-'));
  });
  afterAll(async () => {
    for (const t of pmds) await t.stop().catch(() => {});
    kill(lg);
    kill(lg2);
    destroyAllNetns();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function serve(tap: string, ip: string, extra: string[]): Promise<Lgnet> {
    const l = await startLgnet(a, ['--tap', tap, '--metrics-socket', join(dir, `${tap}.json.sock`), '--metrics-listen', join(dir, `${tap}.http.sock`), ...extra]);
    a.exec('ip', 'addr', 'add', `${ip}/24`, 'dev', tap);
    a.exec('ip', 'link', 'set', tap, 'up');
    return l;
  }

  async function frontEnd(socket: string, devargs: string, tap: string, ip: string, queues: number): Promise<Testpmd> {
    const t = await startTestpmd(b, socket, devargs, tap, queues);
    pmds.push(t);
    b.exec('ip', 'addr', 'add', `${ip}/24`, 'dev', tap);
    b.exec('ip', 'link', 'set', tap, 'up');
    return t;
  }

  it('split rings, lgnet the socket server: ping, flood, TCP both ways, UDP', { timeout: 90_000 }, async () => {
    const socket = join(dir, 'vu0.sock');
    lg = await serve('lgdv0', '10.81.0.1', ['--socket', socket]);
    const before = await readMetrics(join(dir, 'lgdv0.json.sock'));
    const t = await frontEnd(socket, '', 'dpdv0', '10.81.0.2', 1);
    const features = await negotiated(join(dir, 'lgdv0.http.sock'));
    expect(features).not.toContain('RING_PACKED');
    // virtio-user asks for IN_ORDER by default (in_order=1), and then takes its in-order paths.
    expect(features).toContain('IN_ORDER');
    expect(t.output()).toMatch(/using inorder Tx path/);
    expect(t.output()).toMatch(/using inorder Rx path/);
    await traffic(a, b, '10.81.0.1', '10.81.0.2', 5301);
    expectClean(before, await readMetrics(join(dir, 'lgdv0.json.sock')), 1);
    await t.stop();
    expect(await until(() => logLines(lg!).some((l) => l.msg === 'connection closing'), 5000)).toBe(true);
  });

  it('packed rings (packed_vq=1), the same lgnet process after the first front-end left', { timeout: 90_000 }, async () => {
    expect(lg, 'the first case started lgnet').toBeDefined();
    const socket = join(dir, 'vu0.sock');
    const before = await readMetrics(join(dir, 'lgdv0.json.sock'));
    const t = await frontEnd(socket, ',packed_vq=1', 'dpdv1', '10.81.0.2', 1);
    expect(await negotiated(join(dir, 'lgdv0.http.sock'))).toEqual(expect.arrayContaining(['RING_PACKED', 'IN_ORDER']));
    await traffic(a, b, '10.81.0.1', '10.81.0.2', 5302);
    expectClean(before, await readMetrics(join(dir, 'lgdv0.json.sock')), 1);
    expect(lg!.child.exitCode).toBeNull();
    const bad = logLines(lg!).filter((l) => l.level >= 40 && l['code'] !== 'LGNET_JAIL_ROOT');
    expect(bad, JSON.stringify(bad)).toEqual([]);
    await t.stop();
    expect(await until(() => logLines(lg!).filter((l) => l.msg === 'connection closing').length === 2, 5000)).toBe(true);
  });

  it('split rings under DPDK\'s vectorized RX path (vectorized=1, mrg_rxbuf=0), the same lgnet process', { timeout: 90_000 }, async () => {
    expect(lg, 'the first case started lgnet').toBeDefined();
    const before = await readMetrics(join(dir, 'lgdv0.json.sock'));
    // DPDK takes its in-order paths before the vectorized one: in_order=0 leaves it that one.
    const t = await frontEnd(join(dir, 'vu0.sock'), ',vectorized=1,mrg_rxbuf=0,in_order=0', 'dpdv9', '10.81.0.2', 1);
    expect(t.output()).toMatch(/using vectorized Rx path/);
    const features = await negotiated(join(dir, 'lgdv0.http.sock'));
    expect(features).not.toContain('MRG_RXBUF');
    expect(features).not.toContain('IN_ORDER');
    await traffic(a, b, '10.81.0.1', '10.81.0.2', 0, false);
    expectClean(before, await readMetrics(join(dir, 'lgdv0.json.sock')), 1);
    await t.stop();
  });

  it('two queue pairs, lgnet the client of a virtio-user server (server=1): every queue carries frames', { timeout: 90_000 }, async () => {
    const socket = join(dir, 'vu1.sock');
    // The server must listen first: testpmd's probe waits for lgnet to connect.
    const pmd = startTestpmd(b, socket, ',server=1', 'dpdv2', 2).then((t) => (pmds.push(t), t));
    expect(await until(() => existsSync(socket), 20_000, 50), 'testpmd listens').toBe(true);
    lg2 = await serve('lgdv1', '10.82.0.1', ['--socket', socket, '--client', '--reconnect-ms', '200', '--queues', '2']);
    await pmd;
    b.exec('ip', 'addr', 'add', '10.82.0.2/24', 'dev', 'dpdv2');
    b.exec('ip', 'link', 'set', 'dpdv2', 'up');
    const before = await readMetrics(join(dir, 'lgdv1.json.sock'));
    await traffic(a, b, '10.82.0.1', '10.82.0.2', 5303);
    expectClean(before, await readMetrics(join(dir, 'lgdv1.json.sock')), 2);
    const bad = logLines(lg2).filter((l) => l.level >= 40 && l['code'] !== 'LGNET_JAIL_ROOT');
    expect(bad, JSON.stringify(bad)).toEqual([]);
  });
  for (const [n, ring] of [[3, 'split'], [4, 'packed']] as const) {
    it(`${ring} rings: lgnet SIGKILLed under a virtio-user server and started again; traffic resumes`, { timeout: 90_000 }, async () => {
      const socket = join(dir, `vu${n}.sock`);
      const tap = `lgdv${n}`;
      const ipA = `10.8${n}.0.1`;
      const pmd = startTestpmd(b, socket, `,server=1${ring === 'packed' ? ',packed_vq=1' : ''}`, `dpdv${n}`, 1).then((t) => (pmds.push(t), t));
      expect(await until(() => existsSync(socket), 20_000, 50), 'testpmd listens').toBe(true);
      const first = await serve(tap, ipA, ['--socket', socket, '--client', '--reconnect-ms', '200']);
      await pmd;
      b.exec('ip', 'addr', 'add', `10.8${n}.0.2/24`, 'dev', `dpdv${n}`);
      b.exec('ip', 'link', 'set', `dpdv${n}`, 'up');
      await traffic(a, b, ipA, `10.8${n}.0.2`, 0, false);
      // A crash: the rings are mid-stream, RX buffers held, nothing handed back.
      first.child.kill('SIGKILL');
      await first.exited;
      const again = await serve(tap, ipA, ['--socket', socket, '--client', '--reconnect-ms', '200']);
      // The new lgnet made a new tap, down until serve() set it up; testpmd's side went on, and what it
      // sent before then was dropped, counted and logged (EIO, "the tap is down"). Only then.
      const upAt = Date.now();
      // The new tap has a new MAC address: B must not send to the old one it cached.
      b.exec('ip', 'neigh', 'flush', 'dev', `dpdv${n}`);
      try {
        const before = await readMetrics(join(dir, `${tap}.json.sock`));
        await traffic(a, b, ipA, `10.8${n}.0.2`, 0, false);
        expectClean(before, await readMetrics(join(dir, `${tap}.json.sock`)), 1);
        const resumed = logLines(again).filter((l) => l.msg.startsWith('queue resumed where its ring shows'));
        // DPDK resets a packed ring on a reconnect and starts it afresh; a split ring it hands over
        // with base 0 while the ring went on, and lgnet resumes it at used.idx.
        if (ring === 'split') expect(resumed.length, JSON.stringify(logLines(again))).toBeGreaterThan(0);
        const tapWasDown = (l: LogLine) => l['code'] === 'EIO' && l.msg.startsWith('backend failing') && (l['time'] as number) <= upAt;
        const bad = logLines(again).filter((l) => l.level >= 40 && l['code'] !== 'LGNET_JAIL_ROOT' && !l.msg.startsWith('queue resumed') && !tapWasDown(l));
        expect(bad, JSON.stringify(bad)).toEqual([]);
      } finally {
        kill(again);
      }
    });
  }
});
