/**
 * `lgnet serve --tap NAME` on a macvtap: lgnet opens the macvtap's device once per queue pair, takes
 * its address as the guest's, and serves it jailed (`--user nobody`) behind the harness's vhost-user
 * front-end. The macvtap sits on one end of a veth pair, the host on the other, all in a throw-away
 * namespace. A pair the front-end disables is detached from the macvtap and attached again; the
 * macvtap's own kernel counters are served from the guest's side (its directions are a tap's swapped),
 * so that the frames it drops while down are counted. Deleted
 * under the running lgnet, its TX frames are refused and counted (the watch's
 * TUNGETIFF runs in the jail) and lgnet keeps serving the front-end.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mask } from '../../device/features.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { FLOWS, sprayFlows } from '../helpers/flows.ts';
import { addMacvtap } from '../helpers/macvtap.ts';
import { httpGet, parseExposition } from './metrics-helpers.ts';
import { alive, kill, logLines, startLgnet, type Lgnet } from './serve-process.ts';
import { expectedPayload, udpSink } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
if (!pre.ok) console.warn(`lgnet serve on a macvtap skipped: ${pre.why}`);

const HOST_IP = '10.82.0.1';
const GUEST_IP = '10.82.0.2';

describe.skipIf(!pre.ok)('lgnet serve --tap on a macvtap', () => {
  let ns: Netns;
  let dir: string;
  let lg: Lgnet | undefined;
  beforeAll(() => {
    ns = createNetns('lgmvs');
    dir = mkdtempSync(join(tmpdir(), 'lgnet-macvtap-'));
  });
  afterAll(() => {
    kill(lg);
    destroyAllNetns();
    rmSync(dir, { recursive: true, force: true });
  });

  it('two queue pairs, jailed: frames both ways on both, a disabled pair detached and back, then the macvtap deleted: refused, counted, still serving', async () => {
    const { guestMac, hostMac } = addMacvtap(ns, { name: 'lgmvs0', hostIp: HOST_IP, guestIp: GUEST_IP });
    const socket = join(dir, 'vu.sock');
    const metrics = join(dir, 'metrics.sock');
    lg = await startLgnet(ns, ['--socket', socket, '--tap', 'lgmvs0', '--queues', '2', '--metrics-listen', metrics, '--log-level', 'info', '--user', 'nobody', '--group', 'nogroup']);
    expect(lg.stdout()).toContain('tap=lgmvs0 queues=2');
    const serving = logLines(lg).find((x) => x.msg.startsWith('serving a macvtap'));
    expect(serving?.['mac']).toBe(guestMac);
    expect(logLines(lg).find((x) => x.msg === 'jailed')?.['jail']).toMatchObject({ sandboxed: true });

    const ram = new GuestRam(48 << 20);
    const fe = await VhostUserFrontend.connect(socket);
    const neg = await fe.negotiate({ features: (offered) => offered & ~mask('RING_PACKED') });
    const drv = new VirtioNetDriver(ram, { features: neg.features, pairs: 2, queueSize: 256 });
    try {
      await fe.attachDriver(drv, ram, { negotiate: false });
      for (const p of [0, 1]) drv.fillRx(p);
      const both = await sprayFlows(ns, GUEST_IP, drv, 2);
      expect(both[0]! + both[1]!).toBe(FLOWS);
      expect(both[0], `${both}`).toBeGreaterThan(0);
      expect(both[1], `${both}`).toBeGreaterThan(0);
      const frame = (pair: number, port: number, seq: number) => udpFrame({ srcMac: mac(guestMac), dstMac: hostMac, srcIp: ip4(GUEST_IP), dstIp: ip4(HOST_IP), srcPort: 6300 + pair, dstPort: port, payload: expectedPayload(80, seq) });
      const sink = await udpSink(ns, HOST_IP, 7521, 2, 5000);
      for (const pair of [0, 1]) drv.send(frame(pair, 7521, pair), { pair, kick: true });
      expect((await sink.datagrams()).length).toBe(2);
      // Pair 1 disabled: lgnet detaches its macvtap queue (TUNSETQUEUE, in the jail), and the macvtap
      // steers every flow to pair 0; enabled again, both take flows.
      await fe.setVringEnable(2, false);
      await fe.setVringEnable(3, false);
      expect(await sprayFlows(ns, GUEST_IP, drv, 2)).toEqual([FLOWS, 0]);
      await fe.setVringEnable(2, true);
      await fe.setVringEnable(3, true);
      const again = await sprayFlows(ns, GUEST_IP, drv, 2);
      expect(again[0]! + again[1]!).toBe(FLOWS);
      expect(again[1], `${again}`).toBeGreaterThan(0);

      // The macvtap's own counters, named from the guest's side (a macvtap's directions are a tap's
      // swapped): set down, it takes lgnet's writes and drops them, and says so.
      const tapSeries = async (name: string, direction: string): Promise<number> => parseExposition((await httpGet({ kind: 'unix', path: metrics }, '/metrics')).body)
        .find((x) => x.name === name && x.labels['interface'] === 'lgmvs0' && x.labels['direction'] === direction)?.value ?? NaN;
      expect(await tapSeries('lgnet_tap_frames_total', 'to_guest')).toBeGreaterThanOrEqual(2 * FLOWS);
      expect(await tapSeries('lgnet_tap_frames_total', 'from_guest')).toBeGreaterThanOrEqual(2);
      const kernelDrops = await tapSeries('lgnet_tap_dropped_frames_total', 'from_guest');
      ns.exec('ip', 'link', 'set', 'lgmvs0', 'down');
      for (let i = 0; i < 3; i++) drv.send(frame(0, 7523, i), { kick: true });
      await drv.drainTx(0);
      const t1 = Date.now();
      while ((await tapSeries('lgnet_tap_dropped_frames_total', 'from_guest')) < kernelDrops + 3 && Date.now() - t1 < 5000) await new Promise((r) => setTimeout(r, 50));
      expect(await tapSeries('lgnet_tap_dropped_frames_total', 'from_guest')).toBe(kernelDrops + 3);
      ns.exec('ip', 'link', 'set', 'lgmvs0', 'up');

      ns.exec('ip', 'link', 'del', 'lgmvs0');
      const dropped = async (): Promise<number> => parseExposition((await httpGet({ kind: 'unix', path: metrics }, '/metrics')).body)
        .filter((x) => x.name === 'lgnet_queue_dropped_frames_total' && x.labels['reason'] === 'backend').reduce((n, x) => n + x.value, 0);
      // Until the watch has seen the deletion (within 0.1 s), a frame still goes nowhere uncounted: send
      // until one is counted, then five more that must all be.
      const deadline = Date.now() + 5000;
      while ((await dropped()) === 0 && Date.now() < deadline) {
        drv.send(frame(0, 7522, 0), { kick: true });
        await new Promise((r) => setTimeout(r, 50));
      }
      const before = await dropped();
      expect(before).toBeGreaterThan(0);
      for (let i = 0; i < 5; i++) drv.send(frame(1, 7522, i), { pair: 1, kick: true });
      await drv.drainTx(1);
      const t = Date.now();
      while ((await dropped()) < before + 5 && Date.now() - t < 5000) await new Promise((r) => setTimeout(r, 50));
      expect(await dropped()).toBe(before + 5);
      const edge = logLines(lg).find((x) => x.msg.startsWith('backend failing') && x['code'] === 'ENOLINK');
      expect(String(edge?.['why']), lg.stderr()).toMatch(/macvtap was deleted/);
      expect(alive(lg)).toBe(true);
    } finally {
      drv.close();
      fe.close();
      ram.close();
    }
    // Still serving: the next front-end negotiates (the deleted macvtap takes no settings: not its fault).
    const fe2 = await VhostUserFrontend.connect(socket);
    try {
      expect((await fe2.negotiate()).features & mask('MQ')).not.toBe(0n);
    } finally {
      fe2.close();
    }
    process.kill(lg.child.pid!, 'SIGTERM');
    expect((await lg.exited).code).toBe(0);
    lg = undefined;
  });
});
