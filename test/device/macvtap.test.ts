/**
 * A macvtap as the backend (TapOptions.name naming a macvtap, or its fds handed over): an interface on
 * a host NIC, as libvirt's "direct" attachment, whose queues are opens of its character device. Here
 * the "NIC" is one end of a veth pair in a throw-away namespace, the host is the other end.
 *
 * What is asserted: frames both ways on both queue pairs, the guest's MAC taken from the macvtap (its
 * lower device delivers only the frames sent to that address), or given to the macvtap when the guest's
 * is named (and refused where another macvtap of the device has it), the macvtap's deletion seen and the
 * guest's frames from then on refused and counted (the kernel would take them and send them nowhere),
 * a device node that belongs to another namespace's macvtap of the same index refused, and a name
 * that is neither a tap nor a macvtap refused with NET_BAD_TAP.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import { formatMac, parseMac } from '../../device/config.ts';
import { NET_ERROR, NetConfigError } from '../../device/errors.ts';
import { mask } from '../../device/features.ts';
import { NetDevice, type MacChange } from '../../device/net.ts';
import { ACK, CTRL } from '../../device/ctrl.ts';
import { MACVTAP_WATCH_MS, TapBackend } from '../../device/tap-backend.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { createNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import * as native from '../../native/index.ts';
import { trackBed } from '../helpers/bed.ts';
import { addMacvtap, macvtapIndex } from '../helpers/macvtap.ts';
import { nativeErrorOf, thrownBy } from '../helpers/errors.ts';
import { FLOWS, sprayFlows } from '../helpers/flows.ts';
import { UDP_FIXTURE, until } from './helpers.ts';

const pre = netnsPrerequisites();
if (!pre.ok) console.warn(`macvtap tests skipped: ${pre.why}`);

const HOST_IP = '10.77.0.1';
const GUEST_IP = '10.77.0.2';

/** A namespace with macvtap lgmvt0 (test/helpers/macvtap.ts). */
function macvtapNs(): { ns: Netns; guestMac: string; hostMac: Uint8Array } {
  const ns = createNetns('lgmvt');
  try {
    return { ns, ...addMacvtap(ns, { name: 'lgmvt0', hostIp: HOST_IP, guestIp: GUEST_IP }) };
  } catch (e) {
    ns.destroy();
    throw e;
  }
}

/** A device on `backend` (no MAC given: it takes the macvtap's) and a harness driver on `pairs` pairs. */
async function serve(ns: Netns, backend: TapBackend, pairs: number, ctrl = false) {
  const dev = new NetDevice({ backend, queuePairs: pairs });
  const ram = new GuestRam(64 << 20);
  const features = mask('VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', ...(pairs > 1 ? ['MQ' as const] : []), ...(ctrl ? ['CTRL_VQ' as const, 'CTRL_MAC_ADDR' as const] : []));
  const drv = new VirtioNetDriver(ram, { features: features & dev.offered, pairs, ...(ctrl ? { ctrl: { maxPairs: pairs } } : {}) });
  await drv.attach(dev);
  const logs: Array<Record<string, unknown>> = [];
  dev.on('log', (e: Record<string, unknown>) => logs.push(e));
  return trackBed({
    dev, drv, logs,
    async close() {
      await dev.close().catch(() => {});
      drv.close();
      ram.close();
      ns.destroy();
    },
  });
}

/** One UDP datagram from the guest to the host's `port`; resolves with what the host received. */
async function guestToHost(ns: Netns, drv: VirtioNetDriver, guestMac: string, hostMac: Uint8Array, port: number, pair: number): Promise<string> {
  const sink = ns.spawn(['node', UDP_FIXTURE, 'sink', HOST_IP, String(port), '1', '5000']);
  let out = '';
  sink.stdout!.setEncoding('utf8');
  await new Promise<void>((res) => sink.stdout!.on('data', (d: string) => (out += d).includes('LISTENING') && res()));
  drv.send(udpFrame({ srcMac: mac(guestMac), dstMac: hostMac, srcIp: ip4(GUEST_IP), dstIp: ip4(HOST_IP), srcPort: 5000 + pair, dstPort: port, payload: new Uint8Array(64).fill(pair + 1) }), { pair, kick: true });
  await new Promise((res) => sink.once('exit', res));
  return out;
}

describe.runIf(pre.ok)('a macvtap as the backend', () => {
  let ns: Netns | undefined;
  afterEach(() => {
    ns?.destroy();
    ns = undefined;
  });

  it('named: two queues, the guest takes its address, frames both ways on both pairs', async () => {
    const m = macvtapNs();
    const backend = native.withNetns(m.ns.path, () => new TapBackend({ name: 'lgmvt0', queuePairs: 2 }));
    const { dev, drv } = await serve(m.ns, backend, 2);
    expect(backend.macvtap).toBe(true);
    expect(backend.name).toBe('lgmvt0');
    expect(formatMac(dev.readConfig(0, 6))).toBe(m.guestMac);
    for (const fd of backend.fds) expect(native.tapInfo(fd).name).toBe('lgmvt0');
    // Host → guest: the macvtap spreads flows over its queues by hash, as a multi-queue tap does.
    const got = await sprayFlows(m.ns, GUEST_IP, drv, 2);
    expect(got[0]! + got[1]!).toBe(FLOWS);
    expect(got[0], `${got}`).toBeGreaterThan(0);
    expect(got[1], `${got}`).toBeGreaterThan(0);
    // Guest → host on each pair, through the lower device.
    for (const pair of [0, 1]) expect(await guestToHost(m.ns, drv, m.guestMac, m.hostMac, 7411 + pair, pair)).toContain('"len":64');
  });

  it('handed over as fds (each an open of its device): served as the named one', async () => {
    const m = macvtapNs();
    const fds = native.withNetns(m.ns.path, () => [0, 1].map(() => m.ns.track(native.macvtapOpen('lgmvt0').fd)));
    for (const fd of fds) m.ns.untrack(fd); // the backend owns them now
    const backend = new TapBackend({ fds });
    const { drv } = await serve(m.ns, backend, 2);
    expect(backend.macvtap).toBe(true);
    expect(backend.fds).toEqual(fds);
    const got = await sprayFlows(m.ns, GUEST_IP, drv, 2);
    expect(got[0]! + got[1]!).toBe(FLOWS);
    expect(await guestToHost(m.ns, drv, m.guestMac, m.hostMac, 7413, 1)).toContain('"len":64');
  });

  it("given the guest's address (macvtapAddress): the macvtap takes it and so does the guest; one another macvtap of the device has is refused; a tap ignores it", async () => {
    const m = macvtapNs();
    const want = '52:54:00:ab:cd:01';
    const backend = native.withNetns(m.ns.path, () => new TapBackend({ name: 'lgmvt0', macvtapAddress: parseMac(want) }));
    const { dev, drv } = await serve(m.ns, backend, 1);
    expect(formatMac(backend.replacedAddress!)).toBe(m.guestMac);
    expect(formatMac(backend.guestAddress!)).toBe(want);
    expect(m.ns.exec('cat', '/sys/class/net/lgmvt0/address').trim()).toBe(want);
    expect(formatMac(dev.readConfig(0, 6))).toBe(want);
    // The host now reaches the guest at the new address only: the lower device filters by it.
    m.ns.exec('ip', 'neigh', 'replace', GUEST_IP, 'lladdr', want, 'dev', 'lgvb');
    expect(await sprayFlows(m.ns, GUEST_IP, drv, 1)).toEqual([FLOWS]);
    expect(await guestToHost(m.ns, drv, want, m.hostMac, 7419, 0)).toContain('"len":64');
    // Bridge mode: a second macvtap of the same device may not take the address the first has.
    m.ns.exec('ip', 'link', 'add', 'link', 'lgva', 'name', 'lgmvt1', 'index', String(macvtapIndex()), 'type', 'macvtap', 'mode', 'bridge');
    const e = thrownBy(() => native.withNetns(m.ns.path, () => new TapBackend({ name: 'lgmvt1', macvtapAddress: parseMac(want) })), NetConfigError);
    expect(e.code).toBe(NET_ERROR.MACVTAP_ADDRESS);
    expect(e.message).toMatch(/lgmvt1 cannot take the guest's address 52:54:00:ab:cd:01: another macvtap or macvlan .*EADDRINUSE/);
    // A tap's own address is the host's end: the option leaves it alone.
    const tap = native.withNetns(m.ns.path, () => new TapBackend({ name: 'lgmvtt', macvtapAddress: parseMac(want) }));
    try {
      expect(tap.macvtap).toBe(false);
      expect(tap.guestAddress).toBeUndefined();
      expect(m.ns.exec('cat', '/sys/class/net/lgmvtt/address').trim()).not.toBe(want);
    } finally {
      tap.close();
    }
  });

  it("the guest sets its address (MAC_ADDR_SET): macChange tells the VMM, which gives it to the macvtap; the host reaches the guest there", async () => {
    const m = macvtapNs();
    const backend = native.withNetns(m.ns.path, () => new TapBackend({ name: 'lgmvt0' }));
    const { dev, drv } = await serve(m.ns, backend, 1, true);
    const seen: MacChange[] = [];
    // The VMM's policy, as libvirt's trustGuestRxFilters: the guest's choice goes to the macvtap.
    dev.on('macChange', (e: MacChange) => {
      seen.push(e);
      backend.setMacvtapAddress(parseMac(e.mac));
    });
    const want = '52:54:00:ab:cd:02';
    expect(await drv.ctrl(CTRL.MAC, CTRL.MAC_ADDR_SET, parseMac(want))).toBe(ACK.OK);
    expect(seen).toEqual([{ mac: want, previous: m.guestMac }]);
    expect(formatMac(dev.readConfig(0, 6))).toBe(want);
    expect(m.ns.exec('cat', '/sys/class/net/lgmvt0/address').trim()).toBe(want);
    expect(formatMac(backend.guestAddress!)).toBe(want);
    m.ns.exec('ip', 'neigh', 'replace', GUEST_IP, 'lladdr', want, 'dev', 'lgvb');
    expect(await sprayFlows(m.ns, GUEST_IP, drv, 1)).toEqual([FLOWS]);
    // The same address again changes nothing, so nothing is told.
    expect(await drv.ctrl(CTRL.MAC, CTRL.MAC_ADDR_SET, parseMac(want))).toBe(ACK.OK);
    expect(seen).toHaveLength(1);
    // A tap has no address of the guest's to give.
    const tap = native.withNetns(m.ns.path, () => new TapBackend({ name: 'lgmvtt' }));
    try {
      expect(thrownBy(() => tap.setMacvtapAddress(parseMac(want)), NetConfigError).code).toBe(NET_ERROR.BAD_TAP);
    } finally {
      tap.close();
    }
  });

  it('deleted under the device: its frames are refused and counted (ENOLINK), the queues go on, the announce is not sent', async () => {
    const m = macvtapNs();
    const backend = native.withNetns(m.ns.path, () => new TapBackend({ name: 'lgmvt0' }));
    const { dev, drv, logs } = await serve(m.ns, backend, 1);
    expect(await guestToHost(m.ns, drv, m.guestMac, m.hostMac, 7415, 0)).toContain('"len":64');
    m.ns.exec('ip', 'link', 'del', 'lgmvt0');
    await until('the backend to see the macvtap deleted', () => backend.deleted, MACVTAP_WATCH_MS * 50);
    const frame = udpFrame({ srcMac: mac(m.guestMac), dstMac: m.hostMac, srcIp: ip4(GUEST_IP), dstIp: ip4(HOST_IP), srcPort: 5000, dstPort: 7416, payload: new Uint8Array(64) });
    for (let i = 0; i < 5; i++) drv.send(frame, { kick: true });
    await drv.drainTx();
    const tx = () => dev.metrics().queues[1]!;
    await until('five frames counted as the backend\'s drops', () => tx().txDropBackend === 5);
    expect(tx().frames).toBe(1); // only the one before the deletion moved
    expect(tx().broken).toBeNull();
    await until('the edge logged', () => logs.some((l) => l.code === 'ENOLINK'));
    expect(String(logs.find((l) => l.code === 'ENOLINK')!.why)).toMatch(/macvtap was deleted/);
    expect(dev.announce()).toBe(false);
  });

  it("a device node that is another namespace's macvtap (the same index) is refused: the guest never lands on another's NIC", () => {
    const index = String(macvtapIndex());
    ns = createNetns('lgmvt');
    const other = createNetns('lgmvt');
    try {
      for (const [n, name] of [[ns, 'lgmvta'], [other, 'lgmvtb']] as const) {
        n.exec('ip', 'link', 'add', 'lgva', 'type', 'veth', 'peer', 'name', 'lgvb');
        n.exec('ip', 'link', 'add', 'link', 'lgva', 'name', name, 'index', index, 'type', 'macvtap', 'mode', 'bridge');
      }
      // The first made /dev/tap<index>; the second's open finds the first's device there.
      const e = nativeErrorOf(() => native.withNetns(other.path, () => native.macvtapOpen('lgmvtb')));
      expect(e.code).toBe('ENXIO');
      expect(e.message).toContain(`/dev/tap${index} is the device of 'lgmvta', not of 'lgmvtb'`);
      const b = thrownBy(() => native.withNetns(other.path, () => new TapBackend({ name: 'lgmvtb' })), NetConfigError);
      expect(b.code).toBe(NET_ERROR.BAD_TAP);
      expect(b.message).toContain(`is the device of 'lgmvta'`);
      // The first's own name opens it.
      const fd = native.withNetns(ns.path, () => native.macvtapOpen('lgmvta').fd);
      expect(native.tapInfo(fd).name).toBe('lgmvta');
      native.close(fd);
    } finally {
      other.destroy();
      ns.destroy();
      ns = undefined;
      rmSync(`/dev/tap${index}`, { force: true }); // a node left by the clash, if the kernel left one
    }
  });

  it('a name that is neither a tap nor a macvtap: NET_BAD_TAP, saying both', () => {
    ns = createNetns('lgmvt');
    const n = ns;
    n.exec('ip', 'link', 'add', 'lgva', 'type', 'veth', 'peer', 'name', 'lgvb');
    const e = thrownBy(() => native.withNetns(n.path, () => new TapBackend({ name: 'lgva' })), NetConfigError);
    expect(e.code).toBe(NET_ERROR.BAD_TAP);
    expect(e.message).toMatch(/lgva is not a tap \(.*EINVAL.*\), nor a macvtap lgnet can open \(.*ENOENT.*\/dev\/tap\d+.*mknod/);
  });
});
