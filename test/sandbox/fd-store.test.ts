/**
 * The tap across a restart of `lgnet serve`, through a service manager's fd store (sandbox/fd-store.ts).
 * A manager that keeps fds as systemd does (test/helpers/service-manager.ts) starts lgnet with FDSTORE
 * set; lgnet, jailed as always, makes a two-queue tap and stores its queue fds. lgnet is SIGKILLed
 * under a harness front-end: the interface stays, with the address and neighbour the host gave it, and
 * takes frames for the guest meanwhile. The next lgnet is handed the fds back, serves the same
 * interface on both pairs, and delivers what was queued while no lgnet ran. Stored fds whose tap was
 * deleted meanwhile are given up and the tap made anew. Without a store large enough, nothing is
 * stored and the tap goes with lgnet, as it always did.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { FDSTORE_CODE, splitHandOver, tapFdName, takeStoredTaps } from '../../sandbox/fd-store.ts';
import { FLOWS, sprayFlows, sprayUdp } from '../helpers/flows.ts';
import { serviceManager, type ServiceManager } from '../helpers/service-manager.ts';
import { httpGet, parseExposition } from './metrics-helpers.ts';
import { LGNET, type LogLine } from './serve-process.ts';
import { expectedPayload, udpSink } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
const GUEST_MAC = '52:54:00:00:80:02';
const QUEUED_PORT = 7790;

interface Started {
  pid: number;
  /** The names of the fds it was handed, in fd order from 3. */
  handed: string[];
  log(): LogLine[];
  /** Its --metrics-listen socket. */
  metrics: string;
}

describe('the names of stored tap fds', () => {
  it('sorts a hand-over into sockets and stored tap queues by name', () => {
    expect(splitHandOver({ fds: [3, 4, 5, 6], names: ['tap/lgnet0/1', 'vhost-user', 'tap/lgnet0/0', 'metrics'] })).toEqual({
      sockets: { fds: [4, 6], names: ['vhost-user', 'metrics'] },
      taps: { fds: [3, 5], names: ['tap/lgnet0/1', 'tap/lgnet0/0'] },
    });
    expect(splitHandOver({ fds: [3], names: [''] })).toEqual({ sockets: { fds: [3], names: [''] } });
    expect(splitHandOver({ fds: [3], names: [tapFdName('x', 0)] })).toEqual({ taps: { fds: [3], names: ['tap/x/0'] } });
  });
  it('serves a whole set of this tap\'s pairs, in pair order, and the name the kernel picked when --tap left it open', () => {
    expect(takeStoredTaps({ fds: [3, 4], names: ['tap/t0/1', 'tap/t0/0'] }, 't0', 2)).toEqual({ fds: [4, 3], tap: 't0', stale: [] });
    expect(takeStoredTaps({ fds: [7], names: ['tap/tap3/0'] }, '', 1)).toEqual({ fds: [7], tap: 'tap3', stale: [] });
    expect(takeStoredTaps({ fds: [7], names: ['tap/tap3/0'] }, 'tap%d', 1)).toEqual({ fds: [7], tap: 'tap3', stale: [] });
    expect(takeStoredTaps({ fds: [], names: [] }, 't0', 1)).toEqual({ stale: [] });
  });
  it('gives up every stored fd, saying why, when the set is not whole or not this tap\'s', () => {
    const cases: Array<[string[], string, number, RegExp]> = [
      [['tap/t0/0'], 't0', 2, /1 of 2 queue pairs' fds came back.*the queue count changed/],
      [['tap/t0/0', 'tap/t0/1'], 't0', 1, /not all of tap t0's 1 queue pair\b/],
      [['tap/t1/0'], 't0', 1, /\(tap\/t1\/0\) are not all of tap t0's/],
      [['tap/t0/0', 'tap/t0/0'], 't0', 2, /two fds are stored under one name/],
    ];
    for (const [names, tap, pairs, why] of cases) {
      const fds = names.map((_, i) => 3 + i);
      const t = takeStoredTaps({ fds, names }, tap, pairs);
      expect(t.fds, names.join()).toBeUndefined();
      expect(t.stale).toEqual(fds.map((fd, i) => ({ fd, name: names[i] })));
      expect(t.why).toMatch(why);
    }
  });
});

describe.skipIf(!pre.ok)("lgnet serve: the tap across a restart, through the service manager's fd store", () => {
  let ns: Netns;
  let dir: string;
  const managers: ServiceManager[] = [];
  const pids: number[] = [];
  let runs = 0;

  beforeAll(() => {
    ns = createNetns('lgfdst');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-fdstore-'));
  });
  afterAll(() => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch { /* gone */ }
    }
    for (const m of managers) m.close();
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  const manager = async (): Promise<ServiceManager> => {
    const m = await serviceManager(join(dir, `notify-${managers.length}.sock`));
    managers.push(m);
    return m;
  };

  /** `lgnet serve` started by `m` on `tap` with two pairs; resolves at READY=1. */
  const start = async (m: ServiceManager, tap: string, fdStore?: number, args: string[] = []): Promise<Started> => {
    const n = ++runs;
    const from = m.messages.length;
    const stderr = join(dir, `lgnet-${n}.err`);
    const argv = ['ip', 'netns', 'exec', ns.name, LGNET, 'serve', '--socket', join(dir, `${tap}.sock`), '--tap', tap, '--queues', '2', '--log-level', 'info', '--metrics-listen', join(dir, `metrics-${n}.sock`), ...args];
    const r = await m.start(argv, { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, stdout: join(dir, `lgnet-${n}.out`), stderr, ...(fdStore ? { fdStore } : {}) });
    pids.push(r.pid);
    const log = (): LogLine[] => readFileSync(stderr, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as LogLine);
    await m.next((x) => x.pid === r.pid && x.fields['READY'] === '1', { from }).catch((e: Error) => {
      throw new Error(`${e.message}\nlgnet's log: ${readFileSync(stderr, 'utf8')}`);
    });
    return { pid: r.pid, handed: r.fds, log, metrics: join(dir, `metrics-${n}.sock`) };
  };

  /** The frames lgnet counted as dropped for `reason`, over all its queues. */
  const dropped = async (s: Started, reason: string): Promise<number> => {
    const r = await httpGet({ kind: 'unix', path: s.metrics }, '/metrics');
    return parseExposition(r.body).filter((x) => x.name === 'lgnet_queue_dropped_frames_total' && x.labels['reason'] === reason).reduce((n, x) => n + x.value, 0);
  };

  const kill = async (m: ServiceManager, s: Started, sig: NodeJS.Signals): Promise<number> => {
    process.kill(s.pid, sig);
    return m.exited(s.pid);
  };

  const ifindex = (tap: string): string => ns.exec('cat', `/sys/class/net/${tap}/ifindex`).trim();

  /**
   * A harness front-end on the lgnet serving `tap`: frames queued for the guest before it came (with
   * payload [QUEUED tag, flow] to QUEUED_PORT) are counted, then 64 flows from the host must reach it
   * over both pairs, and one datagram from it on each pair must reach the host.
   */
  const exchange = async (tap: string, hostIp: string, guestIp: string, queuedTag?: number): Promise<{ queued: number }> => {
    const tapMac = mac(ns.exec('cat', `/sys/class/net/${tap}/address`).trim());
    const ram = new GuestRam(48 << 20);
    const fe = await VhostUserFrontend.connect(join(dir, `${tap}.sock`));
    try {
      const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
      const drv = new VirtioNetDriver(ram, { features: neg.features, pairs: 2, queueSize: 256 });
      try {
        await fe.attachDriver(drv, ram, { negotiate: false });
        const queued = new Set<number>();
        const deadline = Date.now() + 3000;
        while (queuedTag !== undefined && queued.size < FLOWS && Date.now() < deadline) {
          for (const p of [0, 1]) {
            for (const f of drv.receive(p)) {
              if (f.frame.length >= 44 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === QUEUED_PORT && f.frame[42] === queuedTag) queued.add(f.frame[43]!);
            }
            drv.fillRx(p);
          }
          await new Promise((res) => setTimeout(res, 10));
        }
        const both = await sprayFlows(ns, guestIp, drv, 2);
        expect(both[0]! + both[1]!).toBe(FLOWS);
        expect(both[0], `${both}`).toBeGreaterThan(0);
        expect(both[1], `${both}`).toBeGreaterThan(0);
        const sink = await udpSink(ns, hostIp, 7502, 2, 5000);
        for (const pair of [0, 1]) {
          drv.send(udpFrame({ srcMac: mac(GUEST_MAC), dstMac: tapMac, srcIp: ip4(guestIp), dstIp: ip4(hostIp), srcPort: 6100 + pair, dstPort: 7502, payload: expectedPayload(64, pair) }), { pair, kick: true });
        }
        expect((await sink.datagrams()).length).toBe(2);
        return { queued: queued.size };
      } finally {
        drv.close();
      }
    } finally {
      fe.close();
      ram.close();
    }
  };

  it('stores the queue fds of the tap it made; killed, the tap stays with its set-up and takes frames; the next lgnet serves it and delivers them', async () => {
    const m = await manager();
    const a = await start(m, 'lgfs0', 4);
    expect(a.handed).toEqual([]);
    // Both queues stored, each under its name, before READY=1.
    const ready = m.messages.findIndex((x) => x.pid === a.pid && x.fields['READY'] === '1');
    const stored = m.messages.slice(0, ready).filter((x) => x.pid === a.pid && x.fields['FDSTORE'] === '1');
    expect(stored.map((x) => [x.fields['FDNAME'], x.fds])).toEqual([['tap/lgfs0/0', 1], ['tap/lgfs0/1', 1]]);
    expect(await m.store()).toEqual(['tap/lgfs0/0', 'tap/lgfs0/1']);
    expect(a.log().find((x) => x.msg === 'jailed')?.['jail']).toMatchObject({ sandboxed: true });

    // The host's set-up of the interface: an address and the guest's neighbour entry.
    ns.exec('ip', 'addr', 'add', '10.80.0.1/24', 'dev', 'lgfs0');
    ns.exec('ip', 'link', 'set', 'lgfs0', 'up');
    ns.exec('ip', 'neigh', 'replace', '10.80.0.2', 'lladdr', GUEST_MAC, 'dev', 'lgfs0', 'nud', 'permanent');
    const index = ifindex('lgfs0');
    await exchange('lgfs0', '10.80.0.1', '10.80.0.2');

    expect(await kill(m, a, 'SIGKILL')).not.toBe(0);
    // No lgnet holds the tap now; the manager's copies of its fds do.
    expect(ifindex('lgfs0')).toBe(index);
    expect(ns.exec('ip', '-o', '-4', 'addr', 'show', 'dev', 'lgfs0')).toContain('10.80.0.1/24');
    sprayUdp(ns, '10.80.0.2', { flows: FLOWS, tag: 0xa5, port: QUEUED_PORT });

    const b = await start(m, 'lgfs0', 4);
    expect(b.handed).toEqual(['tap/lgfs0/0', 'tap/lgfs0/1']);
    expect(b.log().find((x) => x['code'] === FDSTORE_CODE.KEPT)).toMatchObject({ tap: 'lgfs0', fds: [3, 4] });
    // The fds are in the store already: nothing is stored again.
    expect(m.messages.filter((x) => x.pid === b.pid && (x.fields['FDSTORE'] ?? x.fields['FDSTOREREMOVE']) !== undefined)).toEqual([]);
    expect(ifindex('lgfs0')).toBe(index);
    const { queued } = await exchange('lgfs0', '10.80.0.1', '10.80.0.2', 0xa5);
    // Every flow sent while no lgnet ran was waiting in the tap's queues. Those of pair 0 reach the
    // guest; those of pair 1 are read out and counted when lgnet detaches that queue until a front-end
    // enables the pair (as at every start).
    const detached = await dropped(b, 'detached');
    expect(queued, `detached ${detached}`).toBeGreaterThan(0);
    expect(queued + detached).toBe(FLOWS);
    expect(b.log().filter((x) => x.level >= 40 && x['code'] !== 'LGNET_JAIL_ROOT'), JSON.stringify(b.log())).toEqual([]);

    expect(await kill(m, b, 'SIGTERM')).toBe(0);
    // Deleted while no lgnet holds it: the stored fds are of no interface now.
    ns.exec('ip', 'link', 'del', 'lgfs0');
    const c = await start(m, 'lgfs0', 4);
    expect(c.handed).toEqual(['tap/lgfs0/0', 'tap/lgfs0/1']);
    const stale = c.log().find((x) => x['code'] === FDSTORE_CODE.STALE);
    expect(stale, JSON.stringify(c.log())).toMatchObject({ names: ['tap/lgfs0/0', 'tap/lgfs0/1'] });
    expect(String(stale?.['why'])).toMatch(/attached to no interface/);
    // Made anew, and its fds stored in place of the dead ones.
    expect(ifindex('lgfs0')).not.toBe(index);
    expect(await m.store()).toEqual(['tap/lgfs0/0', 'tap/lgfs0/1']);
    ns.exec('ip', 'addr', 'add', '10.80.0.1/24', 'dev', 'lgfs0');
    ns.exec('ip', 'link', 'set', 'lgfs0', 'up');
    ns.exec('ip', 'neigh', 'replace', '10.80.0.2', 'lladdr', GUEST_MAC, 'dev', 'lgfs0', 'nud', 'permanent');
    await exchange('lgfs0', '10.80.0.1', '10.80.0.2');
    expect(await kill(m, c, 'SIGTERM')).toBe(0);
  });

  it('stores nothing without a store large enough for every queue, and then the tap goes with lgnet; --fd-store stores where the manager does not say the size', async () => {
    const m = await manager();
    for (const fdStore of [undefined, 1]) {
      const a = await start(m, 'lgfs1', fdStore);
      expect(existsSync(`/proc/${a.pid}`)).toBe(true);
      expect(ns.exec('ip', '-o', 'link', 'show', 'lgfs1')).toContain('lgfs1');
      expect(m.messages.filter((x) => x.fields['FDSTORE'] !== undefined)).toEqual([]);
      const small = a.log().find((x) => x['code'] === FDSTORE_CODE.TOO_SMALL);
      if (fdStore) expect(small).toMatchObject({ fdStoreMax: 1, needs: 2 });
      else expect(small).toBeUndefined();
      await kill(m, a, 'SIGKILL');
      // Gone, though not always by the time the exit is reaped: the io_uring rings that hold the tap
      // as a registered file are torn down by a kernel work item after the process is gone.
      const gone = (): boolean => {
        try {
          ns.exec('ip', 'link', 'show', 'lgfs1');
          return false;
        } catch {
          return true;
        }
      };
      const deadline = Date.now() + 5000;
      while (!gone() && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      expect(gone()).toBe(true);
    }
    // A manager that does not say the store's size (systemd before 254): --fd-store stores anyway.
    const from = m.messages.length;
    const b = await start(m, 'lgfs1', undefined, ['--fd-store']);
    expect(m.messages.slice(from).filter((x) => x.fields['FDSTORE'] === '1').map((x) => x.fields['FDNAME'])).toEqual(['tap/lgfs1/0', 'tap/lgfs1/1']);
    const index = ifindex('lgfs1');
    await kill(m, b, 'SIGKILL');
    expect(ifindex('lgfs1')).toBe(index);
  });
});
