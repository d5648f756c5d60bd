/**
 * An embedded NetDevice whose guest memory shrinks under it (the file behind a region truncated after
 * setMemory mapped it: an unsealable memfd, a /dev/shm file, or the dirty log): the queue that touches
 * it stops with NET_GUEST_MEMORY_FAULT, the device sets NEEDS_RESET, the process (this test runner)
 * lives, and after a reset the device serves fresh memory. Real tap in a test-made namespace, real
 * memfds and files; the harness driver plays the guest, and after the truncation the test only writes
 * eventfds and sends frames from the namespace (it never touches the shrunk RAM itself).
 */
import { ftruncateSync, openSync, unlinkSync } from 'node:fs';

import { afterAll, describe, expect, it } from 'vitest';

import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { NET_ERROR } from '../../device/errors.ts';
import type { NetDevice } from '../../device/net.ts';
import { udpFrame } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { destroyAllNetns } from '../../harness/netns.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createBed, expectedPayload, ip4, udpSend, udpSink, type Bed } from './helpers.ts';

afterAll(() => destroyAllNetns());

const NEEDS_RESET = 0x40;
const RAM = 64 << 20; // what the default driver needs (256-entry rings, 2 KiB-4 KiB buffers)

type Kind = 'memfd' | 'shm';

/** An fd of RAM bytes that can shrink after it is mapped. */
function shrinkableFd(kind: Kind): number {
  if (kind === 'memfd') return native.memfdCreate('lgnet-shrinkable', RAM, { sealable: false });
  const path = `/dev/shm/lgnet-shrinkable-${process.pid}`;
  const fd = openSync(path, 'w+', 0o600);
  unlinkSync(path);
  ftruncateSync(fd, RAM);
  return fd;
}

/** Takes the bed's device away from its own driver and gives it a guest whose RAM is `fd`. */
async function rehome(bed: Bed, fd: number): Promise<{ ram: GuestRam; drv: VirtioNetDriver; close(): void }> {
  await bed.dev.reset();
  await bed.dev.releaseMemory();
  const ram = new GuestRam(RAM, { fd });
  const drv = new VirtioNetDriver(ram, { features: bed.dev.offered & ~mask('RING_PACKED') });
  await drv.attach(bed.dev);
  let open = true;
  return { ram, drv, close: () => { if (open) { open = false; drv.close(); ram.close(); } } };
}

interface Broken { queue: number; code: string; message: string }

function brokenEvents(dev: NetDevice): Broken[] {
  const seen: Broken[] = [];
  dev.on('broken', (e: Broken) => seen.push(e));
  return seen;
}

async function until(cond: () => boolean, ms = 5000): Promise<boolean> {
  for (const end = Date.now() + ms; !cond(); ) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** One UDP frame from the guest to the host side of the tap, seq in the payload. */
function frameTo(bed: Bed, port: number, seq: number): Uint8Array {
  return udpFrame({
    srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
    srcPort: 5000, dstPort: port, payload: expectedPayload(64, seq),
  });
}

/** The device serves a fresh, sealed guest after a reset: a frame each way. */
async function servesFreshGuest(bed: Bed, port: number): Promise<void> {
  expect(bed.dev.status & NEEDS_RESET).toBe(0);
  const g = await rehome(bed, native.memfdCreate('lgnet-fresh', RAM));
  try {
    const sink = await udpSink(bed, port, 1, 5000);
    expect(g.drv.send(frameTo(bed, port, 1))).toBe(true);
    expect(await g.drv.drainTx()).toBe(0);
    expect((await sink.datagrams()).map((d) => d.hex)).toEqual([Buffer.from(expectedPayload(64, 1)).toString('hex')]);
    const sender = udpSend(bed, port + 1, 64, 3, 20);
    const got = await g.drv.waitRx(1, { timeoutMs: 5000 });
    sender.kill();
    expect(got.length).toBeGreaterThan(0);
    expect(bed.dev.metrics().queues.every((q) => q.broken === null)).toBe(true);
  } finally {
    await bed.dev.reset();
    await bed.dev.releaseMemory();
    g.close();
  }
}

describe('guest memory that shrinks under an embedded NetDevice', () => {
  for (const kind of ['memfd', 'shm'] as const) {
    it(`${kind}: truncated, then a TX kick and RX traffic → both queues NET_GUEST_MEMORY_FAULT, NEEDS_RESET, the process lives; a reset and fresh memory serve again`, async () => {
      const bed = await createBed();
      const fd = shrinkableFd(kind);
      const g = await rehome(bed, fd);
      const broken = brokenEvents(bed.dev);
      const logs: Array<Record<string, unknown>> = [];
      bed.dev.on('log', (l: Record<string, unknown>) => logs.push(l));
      try {
        // It serves while the file is whole.
        const sink = await udpSink(bed, 7100, 1, 5000);
        expect(g.drv.send(frameTo(bed, 7100, 0))).toBe(true);
        expect(await g.drv.drainTx()).toBe(0);
        expect((await sink.datagrams()).length).toBe(1);
        const faultsBefore = native.memoryFaults();

        ftruncateSync(fd, 0);
        native.eventfdWrite(g.drv.tx[0]!.kickFd, 1); // the TX worker wakes and reads the ring
        const sender = udpSend(bed, 7101, 64, 20, 10); // the RX worker wakes on the tap and fills a buffer
        expect(await until(() => broken.length === 2), JSON.stringify(broken)).toBe(true);
        sender.kill();

        expect(broken.map((b) => b.queue).sort()).toEqual([0, 1]);
        for (const b of broken) {
          expect(b.code).toBe(NET_ERROR.GUEST_MEMORY_FAULT);
          expect(b.message).toMatch(/guest memory region 0x0\+0x4000000 shrank after the device mapped it.*F_SEAL_SHRINK/);
        }
        expect(bed.dev.status & NEEDS_RESET).toBe(NEEDS_RESET);
        const m = bed.dev.metrics().queues;
        for (const q of [0, 1]) {
          expect(m[q]!.memoryFaults).toBe(1);
          expect(m[q]!.queueBroken).toBe(1);
          expect(m[q]!.broken).toMatch(/^NET_GUEST_MEMORY_FAULT: /);
        }
        expect(logs.filter((l) => l['msg'] === 'queue broken' && l['code'] === NET_ERROR.GUEST_MEMORY_FAULT)).toHaveLength(2);
        expect(native.memoryFaults()).toBeGreaterThan(faultsBefore);
        expect(bed.dev.memoryFault()?.code).toBe(NET_ERROR.GUEST_MEMORY_FAULT);

        // Reset, release the faulted mapping, map fresh memory: it serves, and nothing is broken.
        await bed.dev.reset();
        await bed.dev.releaseMemory();
        expect(bed.dev.memoryFault()).toBe(null);
        g.close();
        await servesFreshGuest(bed, 7110);
      } finally {
        g.close();
        await bed.close();
      }
    });
  }

  it('truncated and never kicked: a sleeping worker\'s once-a-second re-check finds it; release and fresh memory are clean', async () => {
    const bed = await createBed();
    const fd = shrinkableFd('memfd');
    const g = await rehome(bed, fd);
    const broken = brokenEvents(bed.dev);
    try {
      ftruncateSync(fd, 0);
      // No kick and no frame: only the bounded sleep (device/loops.ts SLEEP_MS) wakes the TX worker.
      expect(await until(() => broken.some((b) => b.queue === 1))).toBe(true);
      expect(broken.every((b) => b.code === NET_ERROR.GUEST_MEMORY_FAULT)).toBe(true);
      expect(bed.dev.status & NEEDS_RESET).toBe(NEEDS_RESET);
      await bed.dev.reset();
      await bed.dev.releaseMemory();
      g.close();
      await servesFreshGuest(bed, 7120);
    } finally {
      g.close();
      await bed.close();
    }
  });

  /** A bed whose guest's RAM is an unsealable memfd, for `body`; everything is closed after it. */
  async function onShrinkable(body: (t: { bed: Bed; fd: number; g: Awaited<ReturnType<typeof rehome>>; broken: Broken[] }) => Promise<void>): Promise<void> {
    const bed = await createBed();
    const fd = shrinkableFd('memfd');
    const g = await rehome(bed, fd);
    try {
      await body({ bed, fd, g, broken: brokenEvents(bed.dev) });
    } finally {
      g.close();
      await bed.close();
    }
  }

  /** Queue `q` broke as a memory fault after the tap's EFAULT, and NEEDS_RESET is up; a reset and fresh memory serve again. */
  async function brokeOnEfault(bed: Bed, g: { close(): void }, b: Broken, q: number, port: number): Promise<void> {
    expect(b.queue).toBe(q);
    expect(b.code).toBe(NET_ERROR.GUEST_MEMORY_FAULT);
    expect(b.message).toMatch(/shrank after the device mapped it/);
    const m = bed.dev.metrics().queues[q]!;
    expect(m.backendErrno).toBe(14); // EFAULT
    expect(m.memoryFaults).toBe(1);
    expect(bed.dev.status & NEEDS_RESET).toBe(NEEDS_RESET);
    await bed.dev.reset();
    await bed.dev.releaseMemory();
    g.close();
    await servesFreshGuest(bed, port);
  }

  it('shrunk under the RX buffers alone: the tap\'s EFAULT breaks the RX queue with NET_GUEST_MEMORY_FAULT, and the lost frame is counted', async () => {
    await onShrinkable(async ({ bed, fd, g, broken }) => {
      // The RX ring stays; every RX buffer (and what lies above them) goes. The device never touches an
      // RX buffer itself before the kernel writes it: only the tap's copy meets the missing page.
      // The TX ring goes too, and a sleeping TX worker re-checks its ring once a second: kicked now, it
      // wakes and sleeps again, so its fault (which the RX queue would see as well) is a second away.
      native.eventfdWrite(g.drv.tx[0]!.kickFd, 1);
      await new Promise((r) => setTimeout(r, 20));
      ftruncateSync(fd, Math.floor(Math.min(...g.drv.rx[0]!.slots) / 4096) * 4096);
      const sender = udpSend(bed, 7140, 64, 20, 10);
      expect(await until(() => broken.length > 0, 900), JSON.stringify(broken)).toBe(true);
      sender.kill();
      expect(bed.dev.metrics().queues[0]!.rxDropBackend).toBeGreaterThanOrEqual(1);
      // Broken by its own RX traffic, not after the TX queue's fault.
      await brokeOnEfault(bed, g, broken[0]!, 0, 7150);
    });
  });

  it('shrunk under a TX frame\'s bytes, its header whole: the tap\'s EFAULT breaks the TX queue with NET_GUEST_MEMORY_FAULT, and the frame is counted', async () => {
    await onShrinkable(async ({ bed, fd, g, broken }) => {
      const at = Math.min(...g.drv.tx[0]!.slots); // the slot send() takes first
      const hdrLen = 12;
      // A frame that runs 100 bytes into the page after the one holding its headers: the device reads
      // the headers itself (they pass), and the kernel meets the missing page in the frame's bytes.
      const cut = (Math.floor((at + hdrLen + 64) / 4096) + 1) * 4096;
      const len = cut - (at + hdrLen) + 100;
      const f = udpFrame({
        srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
        srcPort: 5000, dstPort: 7160, payload: new Uint8Array(len - 42),
      });
      expect(f.length).toBe(len);
      expect(g.drv.send(f, { kick: false })).toBe(true); // written while the memory is whole
      ftruncateSync(fd, cut);
      g.drv.flushTx(); // publishes and kicks: the ring lies below the cut
      expect(await until(() => broken.some((b) => b.queue === 1)), JSON.stringify(broken)).toBe(true);
      expect(bed.dev.metrics().queues[1]!.txDropBackend).toBe(1);
      await brokeOnEfault(bed, g, broken.find((x) => x.queue === 1)!, 1, 7170);
    });
  });

  it('the dirty log truncated while logging: the queue that writes a mark stops with NET_GUEST_MEMORY_FAULT naming the log', async () => {
    const bed = await createBed();
    const g = await rehome(bed, native.memfdCreate('lgnet-ram', RAM)); // sealed RAM: only the log can shrink
    const broken = brokenEvents(bed.dev);
    const size = 4096;
    const logFd = native.memfdCreate('lgnet-shrinkable-log', size, { sealable: false });
    try {
      await bed.dev.setDirtyLog({ fd: logFd, size });
      await bed.dev.setLogging(true);
      ftruncateSync(logFd, 0);
      expect(g.drv.send(frameTo(bed, 7130, 0))).toBe(true); // TX completes it: the used ring write is logged
      expect(await until(() => broken.length >= 1)).toBe(true);
      // The TX queue logs its used ring; the RX queue may get there first, with a frame the host's
      // stack sends on its own (router or neighbour solicitation): either names the log.
      expect(broken[0]).toMatchObject({ code: NET_ERROR.GUEST_MEMORY_FAULT });
      expect([0, 1]).toContain(broken[0]!.queue);
      expect(broken[0]!.message).toMatch(/^the dirty log shrank/);
      expect(bed.dev.status & NEEDS_RESET).toBe(NEEDS_RESET);
      await bed.dev.reset();
      await bed.dev.releaseMemory();
    } finally {
      native.close(logFd);
      g.close();
      await bed.close();
    }
  });
});
