/**
 * Postcopy migration on the destination, with the harness playing QEMU's part over a real
 * userfaultfd: lgnet (its server given /dev/userfaultfd, as `lgnet serve --postcopy` does) is advised,
 * listens, maps a memory table whose RX buffer pages are still holes in the memfd, and answers with
 * where it mapped it. A frame from the tap then makes lgnet's RX worker touch a missing page: the fault
 * must reach the front-end through the fd lgnet gave it, at an address inside the base lgnet answered,
 * and the frame must wait until the front-end has put the page in and woken the worker. Then:
 * POSTCOPY_END unregisters everything (no more faults reported), a connection that ends while a worker
 * waits on a fault does not hang the device, and the protocol's order is enforced.
 * The whole migration through QEMU: test/e2e/migration.test.ts (postcopy).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import * as native from '../../native/index.ts';
import { UDP_OFFSET } from '../../harness/frames.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import type { RxFrame } from '../../harness/virtio-net.ts';
import { destroyAllNetns, netnsPrerequisites } from '../../harness/netns.ts';
import { VU } from '../../sandbox/vhost-user/errors.ts';
import { encodeVringState, PROTOCOL_F, protocolMask, REQ } from '../../sandbox/vhost-user/messages.ts';
import { netDeviceHooks, VhostUserServer } from '../../sandbox/vhost-user/server.ts';
import { createVuBed, expectedPayload, udpSend, until, type Guest, type VuBed } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
const PAGEFAULT = protocolMask('PAGEFAULT');
const PAGE = 4096;

/** /dev/userfaultfd, where this kernel (6.1+) has it and root may open it. */
function openDevice(): { fd: number; why?: string } {
  if (!existsSync('/dev/userfaultfd')) return { fd: -1, why: '/dev/userfaultfd does not exist (Linux before 6.1)' };
  try {
    return { fd: native.userfaultfdDevice() };
  } catch (e) {
    return { fd: -1, why: `/dev/userfaultfd cannot be opened: ${(e as Error).message}` };
  }
}
const device = pre.ok ? openDevice() : { fd: -1, why: pre.why };
if (device.fd < 0) console.warn(`[skip] postcopy: ${device.why}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** QEMU's part up to a running device: negotiate with PAGEFAULT, advise, listen, table, rings. */
async function attachPostcopy(g: Guest): Promise<{ uffd: number; base: number }> {
  const neg = await g.fe.negotiate({ features: g.drv.features, protocolFeatures: FRONTEND_PROTOCOL_FEATURES | PAGEFAULT });
  expect(neg.protocolFeatures & PAGEFAULT).toBe(PAGEFAULT);
  const uffd = await g.fe.postcopyAdvise();
  await g.fe.postcopyListen();
  const [base] = await g.fe.setMemTablePostcopy([VhostUserFrontend.regionOf(g.ram)]);
  for (const { index, setup } of g.drv.queueSetups()) await g.fe.startRing(g.ram, index, setup, setup.lastAvail ?? 0, true);
  if (g.fe.protocolFeatures & (1n << BigInt(PROTOCOL_F.STATUS))) await g.fe.setStatus(1 | 2 | 8 | 4);
  g.drv.fillRx(0);
  return { uffd, base: base! };
}

/**
 * Serves lgnet's faults as QEMU does for shared memory: the page goes into the file (here a write
 * through the harness's own mapping, which is not registered), then the waiting thread is woken at
 * lgnet's address. Until `done` or the timeout; returns the fault addresses in order.
 */
async function serveFaults(g: Guest, uffd: number, base: number, done: () => boolean, timeoutMs: number, onFault?: (addr: number) => void): Promise<number[]> {
  const faults: number[] = [];
  const deadline = Date.now() + timeoutMs;
  while (!done() && Date.now() < deadline) {
    const addr = native.userfaultRead(uffd);
    if (addr < 0) {
      await sleep(2);
      continue;
    }
    onFault?.(addr);
    faults.push(addr);
    const page = addr - (addr % PAGE);
    if (page >= base && page < base + g.ram.size) g.ram.u8[page - base] = 0;
    native.userfaultWake(uffd, page, PAGE);
  }
  return faults;
}

function udpTo(frames: RxFrame[], port: number): RxFrame[] {
  return frames.filter((f) => f.frame.length >= 42 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === port);
}

describe.skipIf(device.fd < 0)('postcopy: lgnet waits on its userfaultfd for pages the migration has not brought', () => {
  let bed: VuBed;
  beforeAll(async () => {
    bed = await createVuBed({ userfaultfd: device.fd });
  });
  afterAll(async () => {
    await bed?.close();
    destroyAllNetns();
    native.closeQuietly(device.fd);
  });

  it("a frame into a missing page waits for it: the fault reaches the front-end inside lgnet's answered base, and the frame arrives intact once the page is in", async () => {
    const g = await bed.guest({ attach: false });
    const { uffd, base } = await attachPostcopy(g);
    try {
      expect(base % PAGE).toBe(0);
      const rx: RxFrame[] = [];
      let framesAtFirstFault = -1;
      const sender = udpSend(bed.ns, bed.guestIp, 5701, 200, 3, 20);
      const faults = await serveFaults(g, uffd, base, () => {
        rx.push(...g.drv.receive(0));
        return udpTo(rx, 5701).length >= 3;
      }, 10_000, () => {
        if (framesAtFirstFault < 0) framesAtFirstFault = udpTo([...rx, ...g.drv.receive(0)], 5701).length;
      });
      sender.kill();
      expect(faults.length, 'faults read from the userfaultfd lgnet sent').toBeGreaterThan(0);
      expect(framesAtFirstFault, 'no frame arrived before its page was served').toBe(0);
      for (const a of faults) {
        expect(a).toBeGreaterThanOrEqual(base);
        expect(a).toBeLessThan(base + g.ram.size);
      }
      const udp = udpTo(rx, 5701);
      expect(udp.length).toBe(3);
      for (let i = 0; i < 3; i++) {
        expect(Buffer.from(udp[i]!.frame.subarray(UDP_OFFSET + 8, UDP_OFFSET + 8 + 200)).equals(Buffer.from(expectedPayload(200, i)))).toBe(true);
      }

      // POSTCOPY_END: nothing is registered any more. Missing pages are filled by the kernel as
      // usual, and no fault reaches the front-end.
      await g.fe.postcopyEnd();
      const later = udpSend(bed.ns, bed.guestIp, 5702, 200, 3, 20);
      const frames = await g.drv.waitRx(3, { timeoutMs: 5000 });
      later.kill();
      expect(udpTo(frames, 5702).length).toBe(3);
      expect(native.userfaultRead(uffd)).toBe(-1);
    } finally {
      native.closeQuietly(uffd);
      g.close();
    }
  });

  /**
   * A front-end that leaves a worker waiting on a fault it never serves (after `beforeHangUp`), then
   * hangs up: the connection must end, and the next front-end must get traffic.
   */
  async function abandonMidFault(port: number, beforeHangUp?: (g: Guest) => Promise<void>): Promise<void> {
    const g = await bed.guest({ attach: false });
    const { uffd } = await attachPostcopy(g);
    try {
      const sender = udpSend(bed.ns, bed.guestIp, port, 200, 1, 0);
      expect(await until(() => native.userfaultRead(uffd) >= 0, 10_000, 5), 'a fault to leave unserved').toBe(true);
      sender.kill();
      await beforeHangUp?.(g);
      const gone = new Promise((resolve) => bed.server.once('disconnect', resolve));
      g.close(); // the fault is never served
      const ended = await Promise.race([gone.then(() => true), sleep(10_000).then(() => false)]);
      expect(ended, 'the connection was torn down').toBe(true);
    } finally {
      native.closeQuietly(uffd);
    }
    const next = await bed.guest();
    try {
      const sender = udpSend(bed.ns, bed.guestIp, port + 1, 200, 3, 20);
      const frames = await next.drv.waitRx(3, { timeoutMs: 5000 });
      sender.kill();
      expect(udpTo(frames, port + 1).length).toBe(3);
    } finally {
      next.close();
    }
  }

  it('a front-end that goes away while a worker waits on a fault: the connection ends, and the next front-end gets traffic', async () => {
    await abandonMidFault(5703);
  });

  it('a front-end that asks GET_VRING_BASE while a worker waits on a fault it never serves, then hangs up: the connection still ends', async () => {
    await abandonMidFault(5705, async (g) => {
      // The RX ring's stop waits for its worker, which waits on the fault: the request stays unanswered.
      g.fe.sendRequest(REQ.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 }));
      await sleep(200);
    });
  });

  it('POSTCOPY_LISTEN before POSTCOPY_ADVISE is refused (VU_POSTCOPY_STATE), and the server keeps serving', async () => {
    const before = bed.server.metrics.errors[VU.POSTCOPY_STATE] ?? 0;
    const g = await bed.guest({ attach: false });
    try {
      await g.fe.negotiate({ features: g.drv.features, protocolFeatures: FRONTEND_PROTOCOL_FEATURES | PAGEFAULT });
      await expect(g.fe.postcopyListen()).rejects.toThrow();
      expect(await g.fe.waitClosed(5000)).toBe(true);
      expect(bed.server.metrics.errors[VU.POSTCOPY_STATE]).toBe(before + 1);
    } finally {
      g.close();
    }
    const next = await bed.guest();
    next.close();
  });

  it('without a userfaultfd device the server does not offer PAGEFAULT; with one it does', () => {
    const hooks = netDeviceHooks(bed.dev);
    expect(new VhostUserServer({ device: hooks, path: '/nonexistent/a.sock' }).protocolOffered & PAGEFAULT).toBe(0n);
    expect(new VhostUserServer({ device: hooks, path: '/nonexistent/b.sock', userfaultfd: device.fd }).protocolOffered & PAGEFAULT).toBe(PAGEFAULT);
  });
});
