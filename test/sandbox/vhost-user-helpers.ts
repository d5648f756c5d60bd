/**
 * A test bed for the vhost-user suites: a namespace with a tap that an in-process NetDevice serves
 * behind a VhostUserServer on a temporary socket, harness guest RAM, and a VirtioNetDriver that the
 * harness front-end attaches over the socket. The host side is `hostIp` on the tap inside the
 * namespace; the harness guest is `guestIp`/`guestMac` (a static neighbour, so no ARP is needed).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as native from '../../native/index.ts';
import { mask, type FeatureName } from '../../device/features.ts';
// The features `lgnet serve` offers over vhost-user; the test beds offer the same.
import { VHOST_USER_NET_FEATURES } from '../../sandbox/main.ts';
export { VHOST_USER_NET_FEATURES };
import { NetDevice } from '../../device/net.ts';
import { TapBackend } from '../../device/tap-backend.ts';
import { netDeviceHooks, VhostUserServer } from '../../sandbox/vhost-user/server.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { afterAll, beforeAll } from 'vitest';
import { createNetns, destroyAllNetns, type Netns } from '../../harness/netns.ts';
import { trackBed } from '../helpers/bed.ts';

export const UDP_FIXTURE = fileURLToPath(new URL('../device/fixtures/udp.mjs', import.meta.url));

export interface VuBed {
  ns: Netns;
  dev: NetDevice;
  server: VhostUserServer;
  dir: string;
  path: string;
  hostIp: string;
  guestIp: string;
  guestMac: string;
  /** A fresh harness guest: RAM, driver, front-end attached over the socket. */
  guest(opts?: { accept?: FeatureName[]; attach?: boolean; dmaOffset?: number }): Promise<Guest>;
  close(): Promise<void>;
}

export interface Guest {
  ram: GuestRam;
  drv: VirtioNetDriver;
  fe: VhostUserFrontend;
  close(): void;
}

let subnet = 0;

/**
 * `config` (default true): the bed's server offers the CONFIG protocol feature, which `lgnet serve`
 * offers only with --offer-config, so that the suites reach GET/SET_CONFIG (the fuzz included).
 */
export async function createVuBed(opts: { pairs?: number; config?: boolean; userfaultfd?: number; features?: bigint } = {}): Promise<VuBed> {
  const ns = createNetns('lgvu');
  const pairs = opts.pairs ?? 1;
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-vu-'));
  const path = join(dir, 'vu.sock');
  const n = (subnet = (subnet + 1) % 200) + 30;
  const hostIp = `10.${n}.1.1`;
  const guestIp = `10.${n}.1.2`;
  const guestMac = '52:54:00:12:34:56';
  const backend = native.withNetns(ns.path, () => new TapBackend({ name: 'lgtap0', queuePairs: pairs }));
  ns.exec('ip', 'addr', 'add', `${hostIp}/24`, 'dev', 'lgtap0');
  ns.exec('ip', 'link', 'set', 'lgtap0', 'up');
  ns.exec('ip', 'neigh', 'add', guestIp, 'lladdr', guestMac, 'dev', 'lgtap0');
  const dev = new NetDevice({ backend, mac: guestMac, mtu: 1500, queuePairs: pairs, features: VHOST_USER_NET_FEATURES | (opts.features ?? 0n) });
  const server = new VhostUserServer({ device: netDeviceHooks(dev), path, config: opts.config ?? true, ...(opts.userfaultfd !== undefined ? { userfaultfd: opts.userfaultfd } : {}) });
  server.start();
  const guests = new Set<Guest>();
  // Made in beforeAll: closed after its file at the latest, even when a test fails (test/helpers/bed.ts).
  return trackBed<VuBed>({
    ns, dev, server, dir, path, hostIp, guestIp, guestMac,
    async guest(g = {}) {
      const ram = new GuestRam((24 + 24 * pairs) << 20);
      // Split rings unless a test asks for RING_PACKED; no IOMMU unless it asks for ACCESS_PLATFORM.
      const accept = g.accept ? mask(...g.accept) : dev.offered & ~mask('RING_PACKED', 'ACCESS_PLATFORM');
      const drv = new VirtioNetDriver(ram, { features: accept & dev.offered, pairs, queueSize: 256, ...(g.dmaOffset !== undefined ? { dmaOffset: g.dmaOffset } : {}) });
      const fe = await VhostUserFrontend.connect(path);
      const guest: Guest = {
        ram, drv, fe,
        close() {
          guests.delete(guest);
          fe.close();
          drv.close();
          ram.close();
        },
      };
      guests.add(guest);
      if (g.attach !== false) {
        await fe.attachDriver(drv, ram);
        for (let p = 0; p < pairs; p++) drv.fillRx(p);
      }
      return guest;
    },
    async close() {
      for (const g of [...guests]) g.close();
      await server.close().catch(() => {});
      await dev.close().catch(() => {});
      ns.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  }, 'file');
}

/**
 * A bed made in beforeAll of the calling describe and closed in its afterAll (namespaces too, even when
 * a test failed); the returned getter reads it inside the tests.
 */
export function vuBedPerDescribe(opts: Parameters<typeof createVuBed>[0] = {}): () => VuBed {
  let bed: VuBed | undefined;
  beforeAll(async () => {
    bed = await createVuBed(opts);
  });
  afterAll(async () => {
    await bed?.close();
    destroyAllNetns();
  });
  return () => {
    if (!bed) throw new Error('the bed was not made (beforeAll failed)');
    return bed;
  };
}

/** Starts a UDP sink in the namespace; resolves once it listens. */
export async function udpSink(ns: Netns, ip: string, port: number, count: number, timeoutMs = 10_000): Promise<{ child: ChildProcess; datagrams: () => Promise<Array<{ len: number; hex: string }>> }> {
  const child = ns.spawn(['node', UDP_FIXTURE, 'sink', ip, String(port), String(count), String(timeoutMs)]);
  let out = '';
  child.stdout!.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('udp sink did not start')), 10_000);
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes('LISTENING')) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  return {
    child,
    async datagrams() {
      if (child.exitCode === null) await once(child, 'exit');
      return out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    },
  };
}

/** Sends `count` UDP datagrams of `size` bytes from the namespace. */
export function udpSend(ns: Netns, ip: string, port: number, size: number, count: number, gapMs = 0): ChildProcess {
  return ns.spawn(['node', UDP_FIXTURE, 'send', ip, String(port), String(size), String(count), String(gapMs)]);
}

/** The payload udp.mjs sends for datagram `seq`. */
export function expectedPayload(size: number, seq: number): Uint8Array {
  const p = new Uint8Array(size);
  for (let i = 0; i < size; i++) p[i] = (i * 7 + seq) & 255;
  return p;
}

/** Open fds of a process. */
export function fdCount(pid: number | 'self' = 'self'): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Mappings of a process (lines of /proc/<pid>/maps). */
export function mapCount(pid: number | 'self' = 'self'): number {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').length;
}

/** Polls `cond` until true or the timeout. */
export async function until(cond: () => boolean, timeoutMs = 5000, stepMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return true;
}

export { spawn };
