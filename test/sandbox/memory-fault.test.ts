/**
 * `lgnet serve` (a real process, jailed as it is by default, and with --no-sandbox) behind a front-end
 * that truncates guest memory after SET_MEM_TABLE: an unsealable memfd, a /dev/shm file, hugetlbfs
 * where this machine has huge pages. After a TX kick and RX traffic lgnet lives, logs and counts the
 * fault (VU_MEM_FAULT, NET_GUEST_MEMORY_FAULT, memoryFaults on the metrics socket), drops the
 * connection, keeps none of the file mapped, and the next connection with fresh memory passes traffic
 * both ways. A front-end that truncates and never kicks is found within a second or two (the workers'
 * bounded sleep re-checks the ring); one that truncates and leaves at once leaves a clean teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { readMetrics } from '../../sandbox/metrics-endpoint.ts';
import { REPO_ROOT } from '../../scripts/qemu.ts';
import { expectedPayload, udpSend, udpSink, until, VHOST_USER_NET_FEATURES } from './vhost-user-helpers.ts';

const LGNET = join(REPO_ROOT, 'bin/lgnet');
const pre = netnsPrerequisites();
const RAM = 32 << 20;
const GUEST_MAC = '52:54:00:aa:00:01';

interface LogLine { level: number; msg: string; code?: string; [k: string]: unknown }

interface Lgnet {
  child: ChildProcess;
  /** 10.<net>.0.1 is the tap, 10.<net>.0.2 the harness guest. */
  net: number;
  pid: number;
  socket: string;
  metrics: string;
  tap: string;
  logs(): LogLine[];
  alive(): boolean;
}

/** Starts lgnet serve in the namespace (ip netns exec execs in place: the pid is lgnet's). */
async function startLgnet(ns: Netns, dir: string, name: string, net: number, extra: string[]): Promise<Lgnet> {
  const socket = join(dir, `${name}.sock`);
  const metrics = join(dir, `${name}.metrics`);
  const tap = `lgmf${name}`;
  const child = spawn('ip', ['netns', 'exec', ns.name, LGNET, 'serve', '--socket', socket, '--tap', tap, '--mac', GUEST_MAC,
    '--metrics-socket', metrics, '--log-level', 'info', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const ready = await until(() => out.includes('\n') || child.exitCode !== null || child.signalCode !== null, 20_000);
  if (!ready || !out.startsWith('lgnet ready')) throw new Error(`lgnet did not get ready (${child.exitCode}/${child.signalCode}): ${out}\n${err}`);
  return {
    child, net, pid: child.pid!, socket, metrics, tap,
    logs: () => err.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as LogLine),
    alive: () => child.exitCode === null && child.signalCode === null,
  };
}

type Kind = 'memfd' | 'shm' | 'huge';

/** An fd of `size` bytes that can shrink after lgnet maps it, and the name it has in /proc/<pid>/maps. */
function shrinkable(kind: Kind, size: number, hugeDir: string | null): { fd: number; mapsName: string } {
  if (kind === 'memfd') {
    const name = `lgnet-mf-${process.pid}-${Date.now()}`;
    return { fd: native.memfdCreate(name, size, { sealable: false }), mapsName: `memfd:${name}` };
  }
  const path = join(kind === 'shm' ? '/dev/shm' : hugeDir!, `lgnet-mf-${process.pid}-${Date.now()}`);
  const fd = openSync(path, 'w+', 0o600);
  unlinkSync(path); // the maps line then reads "<path> (deleted)"
  ftruncateSync(fd, size);
  return { fd, mapsName: path };
}

function hugetlbfs(): { dir: string | null; why: string } {
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const free = Number(/HugePages_Free:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  const mount = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[2] === 'hugetlbfs');
  if (free * 2 << 20 < RAM) return { dir: null, why: `${free} huge pages free; ${RAM >> 20} MiB needed (vm.nr_hugepages is not set here)` };
  if (!mount) return { dir: null, why: 'no hugetlbfs is mounted' };
  return { dir: mount[1]!, why: '' };
}

interface Session { fe: VhostUserFrontend; ram: GuestRam; drv: VirtioNetDriver; close(): void }

/** A front-end attached with `ram`: negotiated (split rings), memory table, rings running, RX filled. */
async function attach(l: Lgnet, ram: GuestRam): Promise<Session> {
  const fe = await VhostUserFrontend.connect(l.socket);
  const drv = new VirtioNetDriver(ram, { features: VHOST_USER_NET_FEATURES & ~mask('RING_PACKED', 'MQ'), queueSize: 256 });
  await fe.attachDriver(drv, ram);
  drv.fillRx(0);
  let open = true;
  return { fe, ram, drv, close: () => { if (open) { open = false; fe.close(); drv.close(); ram.close(); } } };
}

/** The guest's frame to the host side of the tap. */
function frameTo(ns: Netns, l: Lgnet, port: number, seq: number): Uint8Array {
  const tapMac = mac(ns.exec('cat', `/sys/class/net/${l.tap}/address`).trim());
  return udpFrame({ srcMac: mac(GUEST_MAC), dstMac: tapMac, srcIp: ip4(`10.${l.net}.0.2`), dstIp: ip4(`10.${l.net}.0.1`), srcPort: 4000, dstPort: port, payload: expectedPayload(64, seq) });
}

/** A frame each way through a session. */
async function traffic(ns: Netns, l: Lgnet, s: Session, port: number): Promise<void> {
  const sink = await udpSink(ns, `10.${l.net}.0.1`, port, 1, 5000);
  expect(s.drv.send(frameTo(ns, l, port, 3))).toBe(true);
  expect(await s.drv.drainTx(0, 5000)).toBe(0);
  expect((await sink.datagrams()).map((d) => d.hex)).toEqual([Buffer.from(expectedPayload(64, 3)).toString('hex')]);
  const sender = udpSend(ns, `10.${l.net}.0.2`, port + 1, 64, 5, 20);
  const got = await s.drv.waitRx(1, { timeoutMs: 5000 });
  sender.kill();
  expect(got.length).toBeGreaterThan(0);
}

describe.skipIf(!pre.ok)('lgnet serve: guest memory truncated by the front-end', () => {
  let ns: Netns;
  let dir: string;
  const started: Lgnet[] = [];
  const huge = hugetlbfs();
  if (!huge.dir) console.log(`skipping hugetlbfs: ${huge.why}`);

  beforeAll(() => {
    ns = createNetns('lgmf');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-mf-'));
  });
  afterAll(() => {
    for (const l of started) if (l.alive()) process.kill(l.pid, 'SIGKILL');
    ns?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const jailed of [true, false]) {
    const tag = jailed ? 'jailed' : '--no-sandbox';

    describe(tag, () => {
      let l: Lgnet;
      beforeAll(async () => {
        l = await startLgnet(ns, dir, jailed ? 'j' : 'n', jailed ? 88 : 89, jailed ? ['--user', 'nobody', '--group', 'nogroup'] : ['--no-sandbox']);
        started.push(l);
        // No IPv6 on the tap: its neighbour discovery would reach the RX queue when a test wants no traffic.
        ns.exec('sysctl', '-qw', `net.ipv6.conf.${l.tap}.disable_ipv6=1`);
        ns.exec('ip', 'addr', 'add', `10.${l.net}.0.1/24`, 'dev', l.tap);
        ns.exec('ip', 'link', 'set', l.tap, 'up');
        ns.exec('ip', 'neigh', 'add', `10.${l.net}.0.2`, 'lladdr', GUEST_MAC, 'dev', l.tap);
        if (jailed) expect(l.logs().find((x) => x.msg === 'jailed'), JSON.stringify(l.logs())).toMatchObject({ jail: { sandboxed: true } });
      });
      afterAll(async () => {
        if (l.alive()) process.kill(l.pid, 'SIGTERM');
        await until(() => !l.alive(), 10_000);
        expect({ code: l.child.exitCode, signal: l.child.signalCode }).toEqual({ code: 0, signal: null });
      });

      for (const kind of ['memfd', 'shm', 'huge'] as const) {
        it.skipIf(kind === 'huge' && !huge.dir)(`${kind}: truncated, TX kick and RX traffic → lgnet lives, logs and counts VU_MEM_FAULT, drops the connection; the next one serves`, async () => {
          const { fd, mapsName } = shrinkable(kind, RAM, huge.dir);
          const s = await attach(l, new GuestRam(RAM, { fd }));
          let logsBefore = 0;
          try {
            await traffic(ns, l, s, 7200); // whole, it serves
            expect(readFileSync(`/proc/${l.pid}/maps`, 'utf8')).toContain(mapsName);
            const before = await readMetrics(l.metrics);
            logsBefore = l.logs().length;

            ftruncateSync(fd, 0);
            native.eventfdWrite(s.drv.tx[0]!.kickFd, 1);
            const sender = udpSend(ns, `10.${l.net}.0.2`, 7203, 64, 50, 10);
            const closed = await s.fe.waitClosed(10_000);
            sender.kill();
            expect(closed, JSON.stringify(l.logs().slice(logsBefore))).toBe(true);
            expect(l.alive()).toBe(true);

            const logs = l.logs().slice(logsBefore);
            const dropped = logs.filter((x) => x.code === 'VU_MEM_FAULT');
            expect(dropped, JSON.stringify(logs)).toHaveLength(1);
            expect(dropped[0]).toMatchObject({ msg: 'guest memory vanished under the device; dropping the connection' });
            expect(String(dropped[0]!['err'])).toMatch(/shrank after .*F_SEAL_SHRINK/);
            expect(logs.some((x) => x.msg === 'queue broken' && x.code === 'NET_GUEST_MEMORY_FAULT')).toBe(true);
            expect(await until(() => l.logs().slice(logsBefore).some((x) => x.msg === 'connection closing'))).toBe(true);
            const after = await readMetrics(l.metrics);
            const faults = (m: typeof after) => m.queues.reduce((n, q) => n + q.memoryFaults, 0);
            expect(faults(after) - faults(before)).toBeGreaterThanOrEqual(1);
            // Nothing of the file stays mapped: the guard replaced it, the teardown released it.
            expect(await until(() => !readFileSync(`/proc/${l.pid}/maps`, 'utf8').includes(mapsName))).toBe(true);
          } finally {
            s.close();
          }
          // The next front-end, with fresh (sealed) memory, gets traffic both ways.
          const next = await attach(l, new GuestRam(RAM));
          try {
            await traffic(ns, l, next, 7210);
            // Warnings since the truncation: the fault's own (the dropped connection, each broken queue), nothing else.
            expect(l.logs().slice(logsBefore).filter((x) => x.level >= 40 && x.code !== 'VU_MEM_FAULT' && x.code !== 'NET_GUEST_MEMORY_FAULT')).toEqual([]);
          } finally {
            next.close();
          }
          expect(await until(() => l.logs().filter((x) => x.msg === 'connection closing').length >= 2)).toBe(true);
        }, 60_000);
      }

      it('truncated, never kicked, no traffic: a worker\'s once-a-second re-check finds it; lgnet lives and the next front-end serves', async () => {
        const { fd } = shrinkable('memfd', RAM, null);
        const s = await attach(l, new GuestRam(RAM, { fd }));
        const logsBefore = l.logs().length;
        try {
          ftruncateSync(fd, 0);
          // Nothing wakes the workers but their bounded sleep (device/loops.ts SLEEP_MS, 1 s).
          expect(await s.fe.waitClosed(5000)).toBe(true);
          expect(l.alive()).toBe(true);
          expect(l.logs().slice(logsBefore).filter((x) => x.code === 'VU_MEM_FAULT')).toHaveLength(1);
        } finally {
          s.close();
        }
        const next = await attach(l, new GuestRam(RAM));
        try {
          await traffic(ns, l, next, 7220);
        } finally {
          next.close();
        }
      }, 60_000);

      it('truncated, and the front-end leaves at once: the teardown is clean, and the next front-end serves', async () => {
        const { fd } = shrinkable('shm', RAM, null);
        const s = await attach(l, new GuestRam(RAM, { fd }));
        const logsBefore = l.logs().length;
        ftruncateSync(fd, 0);
        s.close();
        expect(await until(() => l.logs().slice(logsBefore).some((x) => x.msg === 'connection closing'))).toBe(true);
        expect(l.alive()).toBe(true);
        const next = await attach(l, new GuestRam(RAM));
        try {
          await traffic(ns, l, next, 7230);
          expect(l.logs().slice(logsBefore).filter((x) => x.level >= 40 && x.code !== 'VU_MEM_FAULT' && x.code !== 'NET_GUEST_MEMORY_FAULT')).toEqual([]);
        } finally {
          next.close();
        }
      }, 60_000);
    });
  }
});
