/**
 * lgnet behind a virtual IOMMU (VIRTIO_F_ACCESS_PLATFORM, `lgnet serve --iommu`), with the harness
 * playing QEMU's intel-iommu (harness/iommu.ts) over a real back-end channel and a real tap: the
 * driver writes I/O virtual addresses (gpa + an offset no guest physical address reaches), lgnet asks
 * for each mapping it lacks with an IOTLB MISS, and frames cross both ways through the mappings.
 * Then: a buffer whose mapping is withheld waits in the ring and is served once the mapping comes; a
 * mapping that forbids the device's write breaks the queue (VRING_IOMMU_DENIED) without touching the
 * connection; an invalidation makes lgnet ask again; IOTLB messages it cannot take are refused.
 * The whole thing under a QEMU guest: test/e2e/qemu-lgnet-features.test.ts (intel-iommu).
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { DirtyLogAudit } from '../../harness/dirty-log.ts';
import { ip4, mac, UDP_OFFSET, udpFrame } from '../../harness/frames.ts';
import { DEFAULT_IOVA_OFFSET, HarnessIommu, IOMMU_PERM } from '../../harness/iommu.ts';
import { netnsPrerequisites } from '../../harness/netns.ts';
import type { RxFrame } from '../../harness/virtio-net.ts';
import { mask, names as featureNames, type FeatureName } from '../../device/features.ts';
import { VU } from '../../sandbox/vhost-user/errors.ts';
import { encodeIotlb, IOTLB_TYPE, protocolMask, REQ } from '../../sandbox/vhost-user/messages.ts';
import { VringErrorCode } from '../../vring/index.ts';
import { expectedPayload, udpSend, udpSink, until, vuBedPerDescribe, type Guest, type VuBed } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
if (!pre.ok) console.warn(`[skip] iommu: ${pre.why}`);
const ACCESS_PLATFORM = mask('ACCESS_PLATFORM');

function udpTo(frames: RxFrame[], port: number): RxFrame[] {
  return frames.filter((f) => f.frame.length >= 42 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === port);
}

function payloadOf(f: RxFrame, size: number): Buffer {
  return Buffer.from(f.frame.subarray(UDP_OFFSET + 8, UDP_OFFSET + 8 + size));
}

/** A harness guest behind a fresh vIOMMU, attached and with RX buffers posted. */
async function guestBehindIommu(bed: VuBed, opts: { packed?: boolean } = {}): Promise<{ g: Guest; iommu: HarnessIommu }> {
  const g = await bed.guest({
    attach: false,
    dmaOffset: DEFAULT_IOVA_OFFSET,
    accept: (featureNames(bed.dev.offered) as FeatureName[]).filter((f) => opts.packed || f !== 'RING_PACKED'),
  });
  const iommu = new HarnessIommu(g.fe, g.ram);
  await g.fe.attachDriver(g.drv, g.ram, { iommu });
  g.drv.fillRx(0);
  const close = g.close;
  return { g: { ...g, close: () => { iommu.close(); close(); } }, iommu };
}

/** Everything lgnet knows is taken back, and from now on misses are only recorded: returns how many came before. */
async function withhold(iommu: HarnessIommu): Promise<number> {
  await iommu.invalidateAll();
  iommu.serve = false;
  return iommu.misses.length;
}

/** The pages lgnet asked for reading (TX buffers) since miss number `from`, in the order first asked. */
function readPages(iommu: HarnessIommu, from: number): number[] {
  return [...new Set(iommu.misses.slice(from).filter((m) => m.perm === IOMMU_PERM.RO).map((m) => Math.floor(m.iova / 4096)))];
}

/** Queues one UDP datagram from the harness guest to the host side of the tap (to `port`). */
function sendToHost(b: VuBed, g: Guest, port: number, payload: Uint8Array, opts: { split?: number[] } = {}): boolean {
  const tapMac = mac(b.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
  return g.drv.send(udpFrame({ srcMac: mac(b.guestMac), dstMac: tapMac, srcIp: ip4(b.guestIp), dstIp: ip4(b.hostIp), srcPort: 1234, dstPort: port, payload }), opts);
}

function queueMetric(bed: VuBed, index: number): { iotlbMisses: number; queueBroken: number; frames: number; dirtyLogMissed: number; sleeps: number; broken: string | null } {
  return bed.dev.metrics().queues.find((q) => q.index === index)!;
}

describe.skipIf(!pre.ok)('lgnet behind a virtual IOMMU (ACCESS_PLATFORM)', () => {
  const bed = vuBedPerDescribe({ features: ACCESS_PLATFORM });

  it('offers ACCESS_PLATFORM with the back-end channel and REPLY_ACK; without it, neither', async () => {
    const b = bed();
    const g = await b.guest({ attach: false });
    try {
      expect((await g.fe.getFeatures()) & ACCESS_PLATFORM).toBe(ACCESS_PLATFORM);
      const p = await g.fe.getProtocolFeatures();
      expect(p & protocolMask('SLAVE_REQ', 'REPLY_ACK')).toBe(protocolMask('SLAVE_REQ', 'REPLY_ACK'));
    } finally {
      g.close();
    }
  });

  for (const packed of [false, true]) {
    it(`${packed ? 'packed' : 'split'} rings: frames cross both ways through I/O virtual addresses lgnet asked the IOMMU for`, async () => {
      const b = bed();
      const { g, iommu } = await guestBehindIommu(b, { packed });
      try {
        const missesBefore = queueMetric(b, 0).iotlbMisses + queueMetric(b, 1).iotlbMisses;
        // Host → guest: RX buffers are reached through their IOVAs.
        const sender = udpSend(b.ns, b.guestIp, 5801, 300, 3, 20);
        const rx = udpTo(await g.drv.waitRx(3, { timeoutMs: 10_000 }), 5801);
        sender.kill();
        expect(rx.length).toBe(3);
        for (let i = 0; i < 3; i++) expect(payloadOf(rx[i]!, 300).equals(Buffer.from(expectedPayload(300, i)))).toBe(true);
        // Guest → host: TX buffers likewise.
        const sink = await udpSink(b.ns, b.hostIp, 5802, 2, 10_000);
        for (let i = 0; i < 2; i++) expect(sendToHost(b, g, 5802, expectedPayload(400, i))).toBe(true);
        const got = await sink.datagrams();
        expect(got.map((d) => d.len)).toEqual([400, 400]);
        expect(got[1]!.hex).toBe(Buffer.from(expectedPayload(400, 1)).toString('hex'));
        // Every translation came from the IOMMU: the misses named IOVAs, never guest physical addresses.
        const served = iommu.misses.filter((m) => m.answer === 'update');
        expect(served.length).toBeGreaterThan(0);
        for (const m of iommu.misses) expect(m.iova).toBeGreaterThanOrEqual(DEFAULT_IOVA_OFFSET);
        expect(served.some((m) => m.perm === IOMMU_PERM.WO || m.perm === IOMMU_PERM.RW), 'an RX buffer asked for writing').toBe(true);
        expect(queueMetric(b, 0).iotlbMisses + queueMetric(b, 1).iotlbMisses).toBeGreaterThan(missesBefore);
        expect(iommu.unexpected).toBe(0);
        expect(queueMetric(b, 0).broken).toBeNull();
        expect(queueMetric(b, 1).broken).toBeNull();
      } finally {
        g.close();
      }
    });
  }

  it("the data queues' workers write their misses on the back-end channel themselves: none passes through the main thread", async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    const posted: number[] = [];
    const onMiss = (e: { queue: number }) => posted.push(e.queue);
    b.dev.on('iotlbMiss', onMiss);
    try {
      await iommu.invalidateAll();
      const before = iommu.misses.length;
      const sender = udpSend(b.ns, b.guestIp, 5812, 300, 2, 20);
      expect(udpTo(await g.drv.waitRx(2, { timeoutMs: 5000 }), 5812).length).toBe(2);
      sender.kill();
      const sink = await udpSink(b.ns, b.hostIp, 5813, 1, 10_000);
      expect(sendToHost(b, g, 5813, expectedPayload(300, 0))).toBe(true);
      expect((await sink.datagrams()).length).toBe(1);
      const asked = iommu.misses.slice(before);
      expect(asked.some((m) => m.perm === IOMMU_PERM.WO || m.perm === IOMMU_PERM.RW), 'RX asked').toBe(true);
      expect(asked.some((m) => m.perm === IOMMU_PERM.RO), 'TX asked').toBe(true);
      expect(posted, 'misses posted to the main thread (NetDevice iotlbMiss events)').toEqual([]);
    } finally {
      b.dev.off('iotlbMiss', onMiss);
      g.close();
    }
  });

  it('the back-end channel replaced while the rings run: misses go to the new one, the old one is closed, frames still cross', async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    const second = new HarnessIommu(g.fe, g.ram);
    try {
      await second.attach(); // SET_SLAVE_REQ_FD again, rings running
      expect(await until(() => iommu.backendClosed, 2000), 'lgnet closed its end of the first channel').toBe(true);
      const onFirst = iommu.misses.length;
      await iommu.invalidateAll();
      const sender = udpSend(b.ns, b.guestIp, 5814, 300, 2, 20);
      expect(udpTo(await g.drv.waitRx(2, { timeoutMs: 5000 }), 5814).length).toBe(2);
      sender.kill();
      const sink = await udpSink(b.ns, b.hostIp, 5815, 1, 10_000);
      expect(sendToHost(b, g, 5815, expectedPayload(300, 1))).toBe(true);
      expect((await sink.datagrams()).length).toBe(1);
      expect(iommu.misses.length, 'misses on the old channel').toBe(onFirst);
      expect(second.misses.filter((m) => m.answer === 'update').length).toBeGreaterThan(0);
      expect(second.unexpected).toBe(0);
      expect(queueMetric(b, 0).broken).toBeNull();
      expect(queueMetric(b, 1).broken).toBeNull();
    } finally {
      second.close();
      g.close();
    }
  });

  it('a frame whose buffer mapping is withheld waits in the ring, and arrives once the IOMMU serves it', async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    try {
      const before = await withhold(iommu);
      const sender = udpSend(b.ns, b.guestIp, 5803, 200, 1);
      await iommu.waitMisses(before + 1, 5000);
      await new Promise((r) => setTimeout(r, 400)); // two of lgnet's retries
      expect(udpTo(g.drv.receive(0), 5803)).toEqual([]);
      const asked = iommu.misses.slice(before);
      expect(asked.every((m) => m.answer === 'off')).toBe(true);
      expect(asked.length, 'lgnet asks again while nothing answers').toBeGreaterThanOrEqual(2);
      iommu.serve = true;
      const rx = udpTo(await g.drv.waitRx(1, { timeoutMs: 5000 }), 5803);
      sender.kill();
      expect(rx.length).toBe(1);
      expect(payloadOf(rx[0]!, 200).equals(Buffer.from(expectedPayload(200, 0)))).toBe(true);
      expect(queueMetric(b, 0).broken).toBeNull();
    } finally {
      g.close();
    }
  });

  it('a read-only mapping under an RX buffer breaks the RX queue (VRING_IOMMU_DENIED), counted; the connection stays', async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    const broken: Array<{ queue: number; code: string }> = [];
    const onBroken = (e: { queue: number; code: string }) => broken.push(e);
    b.dev.on('broken', onBroken);
    try {
      await iommu.invalidateAll();
      const slots = g.drv.rx[0]!.slots;
      const lo = Math.min(...slots);
      iommu.readOnly(lo, Math.max(...slots) + g.drv.rxBufferSize - lo);
      const brokenBefore = queueMetric(b, 0).queueBroken;
      const sender = udpSend(b.ns, b.guestIp, 5804, 200, 3, 50);
      expect(await until(() => broken.some((e) => e.queue === 0), 5000)).toBe(true);
      sender.kill();
      expect(broken.find((e) => e.queue === 0)!.code).toBe(VringErrorCode.IOMMU_DENIED);
      expect(queueMetric(b, 0).queueBroken).toBe(brokenBefore + 1);
      expect(udpTo(g.drv.receive(0), 5804)).toEqual([]);
      expect(await g.fe.getStatus()).toBeGreaterThanOrEqual(0); // the connection still answers
    } finally {
      b.dev.off('broken', onBroken);
      g.close();
    }
  });

  it('an invalidation takes mappings back: lgnet asks for them again before using them', async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    try {
      const first = udpSend(b.ns, b.guestIp, 5805, 100, 2, 20);
      expect(udpTo(await g.drv.waitRx(2, { timeoutMs: 5000 }), 5805).length).toBe(2);
      first.kill();
      const before = iommu.misses.length;
      await iommu.invalidateAll();
      const second = udpSend(b.ns, b.guestIp, 5806, 100, 2, 20);
      expect(udpTo(await g.drv.waitRx(2, { timeoutMs: 5000 }), 5806).length).toBe(2);
      second.kill();
      expect(iommu.misses.length).toBeGreaterThan(before);
    } finally {
      g.close();
    }
  });

  it('a buffer over several unmapped pages: lgnet asks for all of them together, not one per answer', async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    try {
      const before = await withhold(iommu);
      const sink = await udpSink(b.ns, b.hostIp, 5807, 1, 10_000);
      const payload = expectedPayload(12_000, 0);
      expect(sendToHost(b, g, 5807, payload)).toBe(true);
      // The TX buffer (read by the device) spans 3 or 4 pages; nothing is answered.
      const txPages = (): number[] => readPages(iommu, before).sort((x, y) => x - y);
      const all = await until(() => txPages().length >= 3, 1000);
      expect(all, `lgnet asked for pages ${txPages().map((p) => p.toString(16)).join(', ')} while none was answered`).toBe(true);
      const pages = txPages();
      expect(pages.at(-1)! - pages[0]!, 'one buffer: consecutive pages, none beyond it').toBe(pages.length - 1);
      expect(pages.length).toBeLessThanOrEqual(4);
      iommu.serve = true;
      const got = await sink.datagrams();
      expect(got.map((d) => d.len)).toEqual([12_000]);
      expect(got[0]!.hex).toBe(Buffer.from(payload).toString('hex'));
      expect(queueMetric(b, 1).broken).toBeNull();
    } finally {
      g.close();
    }
  });

  it('a queue waiting for a buffer over several pages sleeps through the answers until the last, then sends it', async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    try {
      const before = await withhold(iommu);
      const sink = await udpSink(b.ns, b.hostIp, 5811, 1, 10_000);
      const payload = expectedPayload(12_000, 0);
      expect(sendToHost(b, g, 5811, payload)).toBe(true);
      const txPages = (): number[] => readPages(iommu, before).sort((x, y) => x - y);
      expect(await until(() => txPages().length >= 3, 1000), 'the buffer\'s pages asked for').toBe(true);
      await new Promise((r) => setTimeout(r, 10)); // the rest of that batch, sent together
      const pages = txPages();
      const { sleeps, iotlbMisses } = queueMetric(b, 1);
      // All but the last answered, one at a time: each answer used to wake the worker for nothing.
      for (const p of pages.slice(0, -1)) {
        await iommu.map(iommu.toGpa(p * 4096), 4096);
        await new Promise((r) => setTimeout(r, 10));
      }
      // A wake-up of its own after IOTLB_RETRY_MS (a slow machine) asks for the last page again: only
      // those may show; a wake-up at an answer asks for nothing (its pages were asked just before).
      const m = queueMetric(b, 1);
      expect(m.sleeps - sleeps, `TX worker woke while page ${pages.at(-1)!.toString(16)} was still unmapped`).toBeLessThanOrEqual(m.iotlbMisses - iotlbMisses);
      expect(udpTo(g.drv.receive(0), 5811)).toEqual([]);
      await iommu.map(iommu.toGpa(pages.at(-1)! * 4096), 4096);
      iommu.serve = true;
      const got = await sink.datagrams();
      expect(got.map((d) => d.len)).toEqual([12_000]);
      expect(got[0]!.hex).toBe(Buffer.from(payload).toString('hex'));
    } finally {
      g.close();
    }
  });

  it('a mapping taken back while its chain waits for another page is asked for again at once, not after the retry', async () => {
    const b = bed();
    const { g, iommu } = await guestBehindIommu(b);
    try {
      const before = await withhold(iommu);
      const txPages = (from: number): number[] => readPages(iommu, from);
      const sink = await udpSink(b.ns, b.hostIp, 5808, 1, 10_000);
      const payload = expectedPayload(5000, 0);
      // Two descriptors: the 12-byte header in page A, the frame from A over the next page or two.
      expect(sendToHost(b, g, 5808, payload, { split: [12] })).toBe(true);
      expect(await until(() => txPages(before).length >= 1, 2000, 2)).toBe(true);
      const [a] = txPages(before);
      expect(txPages(before), 'the header alone first').toEqual([a]);
      const gpaOf = (page: number): number => iommu.toGpa(page * 4096);
      const mark = iommu.misses.length;
      await iommu.map(gpaOf(a!), 4096);
      expect(await until(() => txPages(mark).some((p) => p !== a), 2000, 2), 'then the frame\'s other pages').toBe(true);
      await new Promise((r) => setTimeout(r, 10)); // the rest of that batch, sent together
      const rest = txPages(mark).filter((p) => p !== a);
      // A is taken back (a guest's lazy flush), the other pages are answered: the chain needs A again.
      const again = iommu.misses.length;
      await iommu.invalidate(gpaOf(a!), 4096);
      for (const p of rest) await iommu.map(gpaOf(p), 4096);
      const t0 = Date.now();
      // Waiting out the retry would ask about 150 ms from here (200 ms after the first ask of A).
      const asked = await until(() => txPages(again).includes(a!), 100, 2);
      expect(asked, `page A asked for again within 100 ms of the answers; ${Date.now() - t0} ms`).toBe(true);
      iommu.serve = true;
      await iommu.map(gpaOf(a!), 4096);
      const got = await sink.datagrams();
      expect(got.map((d) => d.len)).toEqual([5000]);
      expect(got[0]!.hex).toBe(Buffer.from(payload).toString('hex'));
    } finally {
      g.close();
    }
  });

  for (const packed of [false, true]) {
    it(`${packed ? 'packed' : 'split'} rings, migrating: every page lgnet writes is marked at its guest physical address, the used ring too (its log address is an IOVA)`, async () => {
      const b = bed();
      const { g } = await guestBehindIommu(b, { packed });
      // As QEMU starts a migration behind a vIOMMU: the rings' addresses again with F_LOG, log_guest_addr
      // the used ring's IOVA (harness/vhost-user-frontend.ts startDirtyLog).
      const log = await g.fe.startDirtyLog(g.drv, g.ram);
      try {
        const audit = new DirtyLogAudit(g.ram, log, { driver: g.drv });
        audit.begin();
        const sender = udpSend(b.ns, b.guestIp, 5809, 700, 6, 10);
        const rx = udpTo(await g.drv.waitRx(6, { timeoutMs: 10_000 }), 5809);
        sender.kill();
        expect(rx.length).toBe(6);
        const sink = await udpSink(b.ns, b.hostIp, 5810, 3, 10_000);
        for (let i = 0; i < 3; i++) expect(sendToHost(b, g, 5810, expectedPayload(300, i))).toBe(true);
        expect((await sink.datagrams()).length).toBe(3);
        expect(await g.drv.drainTx(0, 5000), 'TX completions').toBe(0);
        // A used ring's last write is marked just after it lands: look twice before failing.
        let r = audit.check();
        if (!r.ok) {
          await new Promise((res) => setTimeout(res, 100));
          r = audit.check();
        }
        expect(r.unlogged, r.summary).toEqual([]);
        expect(r.strayLogBytes, 'marks beyond guest memory (an IOVA taken for a guest physical address)').toBe(0);
        expect(log.dirtyPages().length).toBeGreaterThan(0);
        expect(queueMetric(b, 0).dirtyLogMissed + queueMetric(b, 1).dirtyLogMissed, 'marks beyond the log').toBe(0);
      } finally {
        await g.fe.stopDirtyLog();
        log.close();
        g.close();
      }
    });
  }

  it('refuses IOTLB messages it cannot take: an update that wraps, a MISS from the front-end (VU_BAD_IOTLB)', async () => {
    const b = bed();
    for (const msg of [
      encodeIotlb({ iova: 2n ** 64n - 4096n, size: 8192, uaddr: 0x7f00_0000_0000, perm: 3, type: IOTLB_TYPE.UPDATE }),
      encodeIotlb({ iova: 0x1000, size: 4096, uaddr: 0x7f00_0000_0000, perm: 7, type: IOTLB_TYPE.UPDATE }),
      encodeIotlb({ iova: 0x1000, perm: 3, type: IOTLB_TYPE.MISS }),
    ]) {
      const { g } = await guestBehindIommu(b);
      try {
        const refusedBefore = b.server.metrics.errors[VU.BAD_IOTLB] ?? 0;
        g.fe.sendRequest(REQ.IOTLB_MSG, msg);
        expect(await g.fe.waitClosed(3000)).toBe(true);
        expect(b.server.metrics.errors[VU.BAD_IOTLB]).toBe(refusedBefore + 1);
      } finally {
        g.close();
      }
      expect(await until(() => b.server.connection === null, 5000)).toBe(true); // one front-end at a time
    }
  });

  it('refuses a back-end channel that is not a connected unix stream socket (VU_BAD_CHANNEL_FD): the workers would write misses into it', async () => {
    const b = bed();
    const listenPath = join(b.dir, 'not-a-channel.sock');
    for (const [what, make] of [['an eventfd', () => native.eventfdCreate()], ['a listening socket', () => native.unixListen(listenPath)]] as const) {
      const g = await b.guest({ attach: false });
      const fd = make();
      try {
        await g.fe.negotiate({ features: (o) => o & (ACCESS_PLATFORM | mask('VERSION_1')), protocolFeatures: protocolMask('SLAVE_REQ', 'REPLY_ACK') });
        const before = b.server.metrics.errors[VU.BAD_CHANNEL_FD] ?? 0;
        g.fe.sendRequest(REQ.SET_SLAVE_REQ_FD, new Uint8Array(0), { fds: [fd] });
        expect(await g.fe.waitClosed(3000), what).toBe(true);
        expect(b.server.metrics.errors[VU.BAD_CHANNEL_FD], what).toBe(before + 1);
      } finally {
        native.closeQuietly(fd);
        rmSync(listenPath, { force: true });
        g.close();
      }
      expect(await until(() => b.server.connection === null, 5000)).toBe(true);
    }
  });

  it('refuses IOTLB_MSG when ACCESS_PLATFORM was not negotiated', async () => {
    const b = bed();
    const g = await b.guest({ accept: ['VERSION_1', 'MRG_RXBUF'] });
    try {
      const before = b.server.metrics.errors[VU.BAD_IOTLB] ?? 0;
      g.fe.sendRequest(REQ.IOTLB_MSG, encodeIotlb({ iova: 0x1000, size: 4096, uaddr: 0x7f00_0000_0000, perm: 3, type: IOTLB_TYPE.UPDATE }));
      expect(await g.fe.waitClosed(3000)).toBe(true);
      expect(b.server.metrics.errors[VU.BAD_IOTLB]).toBe(before + 1);
    } finally {
      g.close();
    }
  });
});
