/**
 * Faults a jailed `lgnet serve` must survive, each with real parts: a front-end process SIGKILLed in
 * the middle of traffic or of a message, RLIMIT_NOFILE reached, and a memory region the kernel
 * refuses to map. In every case lgnet logs a clean error, releases what the connection held (fds and
 * guest mappings back to the baseline, read from /proc), and serves the next front-end.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { REQ } from '../../sandbox/vhost-user/messages.ts';
import { readMetrics } from '../../sandbox/metrics-endpoint.ts';
import { fixture } from './child.ts';
import { expectedPayload, fdCount, udpSink, until } from './vhost-user-helpers.ts';
import { alive, kill, logLines, startLgnet, type Lgnet, type LogLine } from './serve-process.ts';

const pre = netnsPrerequisites();
const TAP = 'lgtapf';
const HOST_IP = '10.78.0.1';
const GUEST_MAC = '52:54:00:fa:17:01';

/** Guest RAM mappings in lgnet (memfds named lgnet-fault-ram or lgnet-guest-ram, as /proc shows them). */
function guestMaps(pid: number): number {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => /memfd:lgnet-(fault|guest)-ram/.test(l)).length;
}

/** RLIMIT_NOFILE of a process, as /proc shows it (soft). */
/** utime + stime of a process, in clock ticks (1/100 s). */
function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]);
}

function nofile(pid: number): number {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max open files'))!;
  return Number(line.split(/\s+/)[3]);
}

describe.skipIf(!pre.ok)('lgnet serve under faults', () => {
  let ns: Netns;
  let dir: string;
  let lg: Lgnet;
  let pid: number;
  let socket: string;
  let tapMac: string;
  let metricsSocket: string;
  const children: ChildProcess[] = [];

  /** One well-behaved session from this process: frames reach a UDP socket in the namespace. */
  async function cleanSession(port: number): Promise<number> {
    const ram = new GuestRam(8 << 20);
    const fe = await VhostUserFrontend.connect(socket);
    try {
      const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      const drv = new VirtioNetDriver(ram, { features: neg.features, queueSize: 64 });
      try {
        await fe.attachDriver(drv, ram, { negotiate: false });
        const sink = await udpSink(ns, HOST_IP, port, 5, 5000);
        for (let i = 0; i < 5; i++) {
          drv.send(udpFrame({ srcMac: mac(GUEST_MAC), dstMac: mac(tapMac), srcIp: ip4('10.78.0.2'), dstIp: ip4(HOST_IP), srcPort: 1234, dstPort: port, payload: expectedPayload(64, i) }));
        }
        expect(await drv.drainTx(0, 5000)).toBe(0);
        return (await sink.datagrams()).length;
      } finally {
        drv.close();
      }
    } finally {
      fe.close();
      ram.close();
    }
  }

  /** Waits until lgnet holds no connection: fds back to `fds`, no guest mapping. */
  async function released(fds: number): Promise<{ fds: number; maps: number }> {
    await until(() => fdCount(pid) === fds && guestMaps(pid) === 0, 10_000, 50);
    return { fds: fdCount(pid), maps: guestMaps(pid) };
  }

  /** The first 'message refused' line lgnet logged after line `from` (its stderr arrives asynchronously). */
  async function refusal(from: number): Promise<LogLine | undefined> {
    const find = (): LogLine | undefined => logLines(lg).slice(from).find((l) => l.msg.startsWith('vhost-user message refused'));
    await until(() => find() !== undefined, 5000);
    return find();
  }

  /** A front-end process (fixtures/frontend-child.ts) in `mode`; resolves at its first line. */
  function frontendChild(mode: 'traffic' | 'partial'): Promise<{ child: ChildProcess; line: Record<string, unknown> }> {
    const child = spawn(process.execPath, ['--import', 'tsx', fixture('frontend-child.ts'), socket, mode, GUEST_MAC, tapMac, HOST_IP], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`front-end child (${mode}) said nothing: ${err}`)), 20_000);
      createInterface({ input: child.stdout! }).once('line', (l) => {
        clearTimeout(t);
        resolve({ child, line: JSON.parse(l) as Record<string, unknown> });
      });
      child.once('exit', (code) => reject(new Error(`front-end child exited ${code}: ${err}`)));
    });
  }

  beforeAll(async () => {
    ns = createNetns('lgflt');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-faults-'));
    socket = join(dir, 'lgnet.sock');
    metricsSocket = join(dir, 'lgnet.metrics');
    // As nobody, as lgnet should run: the jail then lets it attach its tap again after a delete.
    lg = await startLgnet(ns, ['--socket', socket, '--tap', TAP, '--log-level', 'info', '--metrics-socket', metricsSocket, '--user', 'nobody', '--group', 'nogroup']);
    pid = lg.child.pid!;
    ns.exec('ip', 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
    ns.exec('ip', 'link', 'set', TAP, 'up');
    ns.exec('ip', 'neigh', 'replace', '10.78.0.2', 'lladdr', GUEST_MAC, 'dev', TAP);
    tapMac = ns.exec('cat', `/sys/class/net/${TAP}/address`).trim();
  }, 30_000);

  afterAll(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
    kill(lg);
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a front-end SIGKILLed mid-traffic and mid-message, 3 times each: every fd and mapping is released, and the next one is served', async () => {
    // The baseline: after one clean session, which starts whatever lgnet keeps for its life.
    expect(await cleanSession(6100)).toBe(5);
    await until(() => guestMaps(pid) === 0, 5000);
    const baseline = fdCount(pid);
    expect(guestMaps(pid)).toBe(0);
    const after: Array<{ mode: string; fds: number; maps: number }> = [];
    for (let round = 0; round < 3; round++) {
      for (const mode of ['traffic', 'partial'] as const) {
        const { child, line } = await frontendChild(mode);
        expect(line['ev']).toBe(mode === 'traffic' ? 'running' : 'partial');
        // While it runs, lgnet maps its RAM.
        expect(guestMaps(pid)).toBeGreaterThan(0);
        process.kill(child.pid!, 'SIGKILL');
        after.push({ mode, ...(await released(baseline)) });
      }
    }
    expect(after).toEqual(Array.from({ length: 6 }, (_, i) => ({ mode: i % 2 ? 'partial' : 'traffic', fds: baseline, maps: 0 })));
    expect(alive(lg)).toBe(true);
    expect(await cleanSession(6101)).toBe(5);
    // Every kill ended its connection through the ordinary teardown, with no teardown step failing.
    const closings = (): number => logLines(lg).filter((l) => l.msg === 'connection closing').length;
    await until(() => closings() >= 8, 5000);
    expect(closings()).toBe(8);
    const logs = logLines(lg);
    expect(logs.filter((l) => l.msg === 'teardown step failed')).toEqual([]);
  }, 120_000);

  it('RLIMIT_NOFILE reached: the connection whose fds cannot arrive is refused cleanly, and lgnet serves once fds are free', async () => {
    // prlimit(2) on another user's process needs CAP_SYS_RESOURCE, which root here may lack: this test
    // runs its own lgnet as root (jailed), on a tap of its own.
    const tap = 'lgtapr';
    const sock = join(dir, 'rlimit.sock');
    const own = await startLgnet(ns, ['--socket', sock, '--tap', tap, '--log-level', 'info']);
    const opid = own.child.pid!;
    ns.exec('ip', 'link', 'set', tap, 'up');
    const rxPackets = (): number => Number(ns.exec('cat', `/sys/class/net/${tap}/statistics/rx_packets`).trim());
    const session = async (): Promise<void> => {
      const ram = new GuestRam(8 << 20);
      const fe = await VhostUserFrontend.connect(sock);
      try {
        const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
        const drv = new VirtioNetDriver(ram, { features: neg.features, queueSize: 64 });
        try {
          await fe.attachDriver(drv, ram, { negotiate: false });
          const frame = udpFrame({ srcMac: mac(GUEST_MAC), dstMac: mac('ff:ff:ff:ff:ff:ff'), srcIp: ip4('10.78.9.2'), dstIp: ip4('10.78.9.1'), srcPort: 1, dstPort: 9, payload: new Uint8Array(64) });
          for (let i = 0; i < 5; i++) drv.send(frame);
          expect(await drv.drainTx(0, 5000)).toBe(0);
        } finally {
          drv.close();
        }
      } finally {
        fe.close();
        ram.close();
      }
    };
    try {
      const limit = nofile(opid);
      const used = fdCount(opid);
      // Room for the accepted socket and nothing more: the memory table's fd cannot be received.
      const r = spawnSync('prlimit', ['--pid', String(opid), `--nofile=${used + 1}:${limit}`], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const from = logLines(own).length;
      let failed: unknown;
      try {
        await session();
      } catch (e) {
        failed = e;
      } finally {
        spawnSync('prlimit', ['--pid', String(opid), `--nofile=${limit}:${limit}`]);
      }
      expect(failed, 'the attach must fail: lgnet cannot take its fds').toBeDefined();
      const find = (): LogLine | undefined => logLines(own).slice(from).find((l) => l.msg.startsWith('vhost-user message refused'));
      await until(() => find() !== undefined, 5000);
      // The kernel could not install the fd (EMFILE) and said so with MSG_CTRUNC: lgnet names the limit.
      expect(find(), own.stderr().slice(-3000)).toMatchObject({ code: 'VU_FDS_LOST' });
      expect(String(find()!['err'])).toMatch(/RLIMIT_NOFILE/);
      expect(alive(own)).toBe(true);
      // Limit restored: the next front-end is served, its frames reach the tap.
      const rx0 = rxPackets();
      await session();
      expect(rxPackets() - rx0).toBe(5);
    } finally {
      kill(own);
    }
  }, 60_000);

  it('a memory region the kernel will not map (a read-only file): a clean error, and it serves on', async () => {
    const path = join(dir, 'readonly-ram');
    writeFileSync(path, Buffer.alloc(1 << 20));
    const fd = openSync(path, 'r'); // MAP_SHARED with PROT_WRITE on an O_RDONLY fd: EACCES
    const from = logLines(lg).length;
    const fe = await VhostUserFrontend.connect(socket);
    try {
      await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      // One region: gpa 0, 1 MiB, uaddr 0x7f0000000000, offset 0.
      const p = new DataView(new ArrayBuffer(8 + 32));
      p.setUint32(0, 1, true);
      p.setBigUint64(8, 0n, true);
      p.setBigUint64(16, 1n << 20n, true);
      p.setBigUint64(24, 0x7f00_0000_0000n, true);
      p.setBigUint64(32, 0n, true);
      fe.sendRequest(REQ.SET_MEM_TABLE, new Uint8Array(p.buffer), { fds: [fd] });
      expect(await fe.waitClosed(5000)).toBe(true);
    } finally {
      fe.close();
      closeSync(fd);
    }
    const refused = await refusal(from);
    expect(refused, lg.stderr().slice(-3000)).toMatchObject({ req: 'SET_MEM_TABLE', code: 'VU_MEM_MAP_FAILED' });
    expect(String(refused!['err'])).toMatch(/EACCES|permission/i);
    expect(alive(lg)).toBe(true);
    expect(await cleanSession(6103)).toBe(5);
  }, 60_000);

  /** A session that stays attached; `send(n)` pushes n frames and waits for the ring to drain. */
  async function attached(): Promise<{ send: (n: number, port: number) => Promise<void>; close: () => void }> {
    const ram = new GuestRam(8 << 20);
    const fe = await VhostUserFrontend.connect(socket);
    const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
    const drv = new VirtioNetDriver(ram, { features: neg.features, queueSize: 64 });
    await fe.attachDriver(drv, ram, { negotiate: false });
    return {
      async send(n, port) {
        for (let i = 0; i < n; i++) {
          drv.send(udpFrame({ srcMac: mac(GUEST_MAC), dstMac: mac(tapMac), srcIp: ip4('10.78.0.2'), dstIp: ip4(HOST_IP), srcPort: 1234, dstPort: port, payload: expectedPayload(64, i) }));
          if (i % 16 === 15) expect(await drv.drainTx(0, 5000)).toBe(0);
        }
        expect(await drv.drainTx(0, 5000)).toBe(0);
      },
      close() {
        drv.close();
        fe.close();
        ram.close();
      },
    };
  }

  const txQueue = async () => (await readMetrics(metricsSocket)).queues.find((q) => q.index === 1)!;

  it('the tap set down under traffic: frames are counted as backend drops (EIO) and logged once; set up again, they flow', async () => {
    const s = await attached();
    try {
      await s.send(20, 6200);
      const before = await txQueue();
      const from = logLines(lg).length;
      ns.exec('ip', 'link', 'set', TAP, 'down');
      await s.send(50, 6200);
      const down = await txQueue();
      expect(down.txDropBackend - before.txDropBackend).toBe(50);
      expect(down.backendErrno).toBe(5); // EIO
      expect(down.frames).toBe(before.frames);
      ns.exec('ip', 'link', 'set', TAP, 'up');
      ns.exec('ip', 'neigh', 'replace', '10.78.0.2', 'lladdr', GUEST_MAC, 'dev', TAP);
      const sink = await udpSink(ns, HOST_IP, 6201, 10, 5000);
      await s.send(10, 6201);
      expect((await sink.datagrams()).length).toBe(10);
      const up = await txQueue();
      expect(up.frames - down.frames).toBe(10);
      expect(up.txDropBackend).toBe(down.txDropBackend);
      // One warning on the way down, one line on the way up: edges, not a line per frame.
      await until(() => logLines(lg).slice(from).some((l) => l.msg === 'backend works again'), 5000);
      const lines = logLines(lg).slice(from).filter((l) => l.msg.startsWith('backend'));
      expect(lines.map((l) => [l.msg, l['code'] ?? null])).toEqual([
        ['backend failing: frames are dropped and counted', 'EIO'],
        ['backend works again', null],
      ]);
      expect(alive(lg)).toBe(true);
    } finally {
      s.close();
    }
  }, 60_000);

  it('the tap deleted under traffic: drops counted (EBADFD) and logged, no spinning, vhost-user goes on; made again, lgnet attaches and serves', async () => {
    const s1 = await attached();
    try {
      await s1.send(10, 6300);
      const before = await txQueue();
      const from = logLines(lg).length;
      ns.exec('ip', 'link', 'del', TAP);
      const cpu0 = cpuTicks(pid);
      await s1.send(50, 6300);
      await new Promise((r) => setTimeout(r, 1000));
      const after = await txQueue();
      expect(after.txDropBackend - before.txDropBackend).toBe(50);
      expect(after.backendErrno).toBe(77); // EBADFD: the fd's interface is gone
      // The RX worker's tap fd reports an error for good: it must not spin on it (< 0.5 s of CPU in ~1.5 s).
      expect(cpuTicks(pid) - cpu0).toBeLessThan(50);
      await until(() => logLines(lg).slice(from).some((l) => l.msg.startsWith('backend failing')), 5000);
      expect(logLines(lg).slice(from).find((l) => l.msg.startsWith('backend failing'))).toMatchObject({ code: 'EBADFD' });
      expect(logLines(lg).slice(from).some((l) => l.msg.startsWith('backend interface gone'))).toBe(true);
      expect(after.running).toBe(true);
      expect(after.broken).toBeNull();
    } finally {
      s1.close();
    }
    // The vhost-user side goes on: a new front-end negotiates and sets its features meanwhile.
    const s2 = await attached();
    s2.close();
    expect(alive(lg)).toBe(true);
    // The tap is made again, persistent and owned by lgnet's user: within a few seconds lgnet attaches.
    const from = logLines(lg).length;
    ns.exec('ip', 'tuntap', 'add', 'dev', TAP, 'mode', 'tap', 'user', 'nobody', 'vnet_hdr');
    try {
      ns.exec('ip', 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
      ns.exec('ip', 'link', 'set', TAP, 'up');
      ns.exec('ip', 'neigh', 'replace', '10.78.0.2', 'lladdr', GUEST_MAC, 'dev', TAP);
      tapMac = ns.exec('cat', `/sys/class/net/${TAP}/address`).trim();
      expect(await until(() => logLines(lg).slice(from).some((l) => l.msg === 'backend attached again'), 5000), lg.stderr().slice(-2000)).toBe(true);
      expect(await cleanSession(6301)).toBe(5);
    } finally {
      ns.exec('ip', 'link', 'del', TAP);
    }
  }, 60_000);
});
