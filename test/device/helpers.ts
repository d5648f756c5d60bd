/**
 * A test bed for device suites: a namespace with a tap that a NetDevice serves, harness guest RAM and
 * a VirtioNetDriver attached to the device. The host side of the link is `hostIp` on the tap inside the
 * namespace; the harness guest is `guestIp` with `guestMac` (installed as a static neighbour so that
 * the namespace can send to it without ARP).
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import * as native from '../../native/index.ts';
import { mask, type FeatureName } from '../../device/features.ts';
import { NetDevice, type NetDeviceOptions } from '../../device/net.ts';
import { TapBackend, type TapIo } from '../../device/tap-backend.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver, type NetDriverOptions } from '../../harness/virtio-net.ts';
import { ip4, mac } from '../../harness/frames.ts';
import { createNetns, type Netns } from '../../harness/netns.ts';
import { trackBed } from '../helpers/bed.ts';
import type { Iotlb } from '../../vring/index.ts';

export const UDP_FIXTURE = fileURLToPath(new URL('./fixtures/udp.mjs', import.meta.url));

export interface Bed {
  ns: Netns;
  backend: TapBackend;
  dev: NetDevice;
  ram: GuestRam;
  drv: VirtioNetDriver;
  hostIp: string;
  guestIp: string;
  guestMac: Uint8Array;
  tapMac: Uint8Array;
  close(): Promise<void>;
}

let subnet = 0;

/** Builds the bed. `accept` lists the features the driver accepts (intersected with what is offered). */
export async function createBed(opts: {
  accept?: FeatureName[];
  mtu?: number;
  queuePairs?: number;
  ramMiB?: number;
  driver?: Partial<NetDriverOptions>;
  device?: Partial<NetDeviceOptions>;
  /** The tap's I/O path (default: LGNET_IO, else io_uring where the kernel allows it). */
  io?: TapIo;
  /**
   * Hand the backend tap fds opened here (blocking, as a manager would open them: TapOptions.fds)
   * instead of letting it open the tap.
   */
  tapFds?: boolean;
  /** Behind an IOMMU: the device translates through this table from the start (VirtioNetDriver.attach). */
  iotlb?: Iotlb;
} = {}): Promise<Bed> {
  const ns = createNetns('lgdev');
  const pairs = opts.queuePairs ?? 1;
  const backend = native.withNetns(ns.path, () => {
    const io = opts.io ? { io: opts.io } : {};
    if (!opts.tapFds) return new TapBackend({ name: 'lgtap0', queuePairs: pairs, ...io });
    const fds = Array.from({ length: pairs }, () => {
      const fd = native.tapOpen({ name: 'lgtap0', vnetHdr: true, multiQueue: pairs > 1 }).fd;
      native.setCloexec(fd, false); // as a child inherits it
      return fd;
    });
    return new TapBackend({ fds, ...io });
  });
  const n = (subnet = (subnet + 1) % 200) + 20;
  const hostIp = `10.${n}.0.1`;
  const guestIp = `10.${n}.0.2`;
  const guestMacText = '52:54:00:12:34:56';
  ns.exec('ip', 'link', 'set', 'lgtap0', 'mtu', String(opts.mtu ?? 1500));
  ns.exec('ip', 'addr', 'add', `${hostIp}/24`, 'dev', 'lgtap0');
  ns.exec('ip', 'link', 'set', 'lgtap0', 'up');
  ns.exec('ip', 'neigh', 'add', guestIp, 'lladdr', guestMacText, 'dev', 'lgtap0');
  const tapMac = mac(ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
  const dev = new NetDevice({ backend, mac: guestMacText, mtu: opts.mtu ?? 1500, queuePairs: pairs, ...opts.device });
  const ram = new GuestRam((opts.ramMiB ?? 64) << 20);
  // Split rings unless a test asks for RING_PACKED (test/device/packed.test.ts does).
  const accept = opts.accept ? mask(...opts.accept) : dev.offered & ~mask('RING_PACKED');
  const drv = new VirtioNetDriver(ram, { features: accept & dev.offered, pairs, ...opts.driver });
  await drv.attach(dev, opts.iotlb ? { iotlb: opts.iotlb } : {});
  // Closed after the test that made it, even when the test fails (test/helpers/bed.ts).
  return trackBed({
    ns, backend, dev, ram, drv, hostIp, guestIp, guestMac: mac(guestMacText), tapMac,
    async close() {
      await dev.close().catch(() => {});
      drv.close();
      ram.close();
      ns.destroy();
    },
  });
}

/** Starts a UDP sink in the namespace; resolves once it listens. */
export async function udpSink(bed: Bed, port: number, count: number, timeoutMs = 10_000): Promise<{ child: ChildProcess; datagrams: () => Promise<Array<{ len: number; hex: string }>> }> {
  const child = bed.ns.spawn(['node', UDP_FIXTURE, 'sink', bed.hostIp, String(port), String(count), String(timeoutMs)]);
  let out = '';
  child.stdout!.setEncoding('utf8');
  const listening = new Promise<void>((resolve) => {
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes('LISTENING')) resolve();
    });
  });
  await listening;
  return {
    child,
    async datagrams() {
      if (child.exitCode === null) await once(child, 'exit');
      return out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    },
  };
}

/** Sends `count` datagrams of `size` bytes from the namespace to the harness guest. */
export function udpSend(bed: Bed, port: number, size: number, count: number, gapMs = 0): ChildProcess {
  return bed.ns.spawn(['node', UDP_FIXTURE, 'send', bed.guestIp, String(port), String(size), String(count), String(gapMs)]);
}

/** The payload udp.mjs sends for datagram `seq`. */
export function expectedPayload(size: number, seq: number): Uint8Array {
  const p = new Uint8Array(size);
  for (let i = 0; i < size; i++) p[i] = (i * 7 + seq) & 255;
  return p;
}

export { ip4 };

/** Waits until `cond()` holds, polling every 10 ms; throws "timed out waiting for WHAT" after `timeoutMs`. */
export async function until(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
