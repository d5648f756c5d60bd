/**
 * Embedded behind an IOMMU (docs/EMBEDDING.md, "Behind an IOMMU"): the test plays the VMM, filling the
 * device's IOTLB on its `iotlbMiss` events and calling iotlbChanged(), over a real tap. The driver
 * writes I/O virtual addresses (gpa + an offset no guest physical address reaches). The control queue,
 * which only an embedding VMM gives the device (over vhost-user it stays in QEMU), is served on the main
 * thread: a command whose mapping is withheld must be asked for again by itself, since a guest's driver
 * spins on its command.
 */
import { expect, it } from 'vitest';
import { ACK, CTRL } from '../../device/ctrl.ts';
import { DEFAULT_OFFERED, mask } from '../../device/features.ts';
import * as native from '../../native/index.ts';
import { NET_ERROR } from '../../device/errors.ts';
import { Iotlb, IOTLB_ACCESS } from '../../vring/index.ts';
import { createBed, expectedPayload, udpSend, until, type Bed } from './helpers.ts';

const OFFSET = 0x10_0000_0000;
const PAGE = 4096;

interface Miss {
  queue: number;
  iova: number;
  access: number;
}

/** A bed behind an IOMMU; misses are recorded and, while `serve` is on, mapped page by page. */
async function iommuBed(): Promise<{ b: Bed; iotlb: Iotlb; misses: Miss[]; owner: { serve: boolean } }> {
  const iotlb = new Iotlb();
  const misses: Miss[] = [];
  const owner = { serve: true };
  // createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
  const b = await createBed({
    accept: ['VERSION_1', 'MAC', 'CTRL_VQ', 'CTRL_RX', 'ACCESS_PLATFORM'],
    device: { features: DEFAULT_OFFERED | mask('ACCESS_PLATFORM') },
    driver: { ctrl: { maxPairs: 1 }, dmaOffset: OFFSET },
    iotlb,
  });
  const r = b.ram.region();
  const answer = (m: Miss) => {
    misses.push(m);
    if (!owner.serve) return;
    const page = Math.floor(m.iova / PAGE) * PAGE;
    const gpa = page - OFFSET;
    if (gpa < r.gpa || gpa + PAGE > r.gpa + r.size) return;
    iotlb.update(page, PAGE, r.uaddr + (gpa - r.gpa), IOTLB_ACCESS.RW);
    b.dev.iotlbChanged();
  };
  b.dev.on('iotlbMiss', answer);
  return { b, iotlb, misses, owner };
}

it('frames reach the guest through I/O virtual addresses the VMM maps on iotlbMiss', async () => {
  const { b, misses } = await iommuBed();
  const sender = udpSend(b, 6500, 200, 2, 20);
  const rx = await b.drv.waitRx(2, { timeoutMs: 5000 });
  sender.kill();
  const udp = rx.filter((f) => f.frame.length >= 42 && f.frame[23] === 17);
  expect(udp.length).toBe(2);
  expect(Buffer.from(udp[1]!.frame.subarray(42, 242)).equals(Buffer.from(expectedPayload(200, 1)))).toBe(true);
  expect(misses.some((m) => m.queue === 0 && m.access === IOTLB_ACCESS.WRITE && m.iova >= OFFSET)).toBe(true);
  expect(b.dev.metrics().queues[0]!.broken).toBeNull();
});

it('the control queue: a command whose mapping is withheld is asked for again by itself, and answered once mapped', async () => {
  const { b, iotlb, misses, owner } = await iommuBed();
  expect(await b.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([1]))).toBe(ACK.OK);
  const ctrlQ = 2;
  expect(misses.some((m) => m.queue === ctrlQ), 'the first command was asked for and served').toBe(true);
  iotlb.clear();
  owner.serve = false;
  const before = misses.length;
  const answered = b.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([0]), 5000);
  await until('the command is asked for', () => misses.slice(before).some((m) => m.queue === ctrlQ), 2000);
  const first = misses.slice(before).find((m) => m.queue === ctrlQ)!;
  expect(first.access, 'the command is read first').toBe(IOTLB_ACCESS.READ);
  // No kick and no mapping come: the queue asks again on its own, or the guest's driver would spin forever.
  await until('the command is asked for again without any kick or mapping', () => misses.slice(before).filter((m) => m.queue === ctrlQ && m.iova === first.iova).length >= 2, 1000);
  owner.serve = true;
  expect(await answered).toBe(ACK.OK);
  const q = b.dev.metrics().queues.find((x) => x.index === ctrlQ)!;
  expect(q.broken).toBeNull();
  expect(q.iotlbMisses).toBeGreaterThanOrEqual(3);
});

it('an embedder’s miss sink: the data queues write their misses on it (none as events), and the frame arrives once they are mapped; a bad sink is refused', async () => {
  const { b, iotlb, misses, owner } = await iommuBed();
  owner.serve = false; // misses must not come as events: any that do are recorded, not answered
  const [mine, theirs] = native.unixSocketpair();
  try {
    native.setNonblocking(mine, true);
    native.setNonblocking(theirs, true);
    for (const bad of [
      { fd: -1, message: new Uint8Array(16), iovaAt: 0, accessAt: 8 },
      { fd: mine, message: new Uint8Array(8), iovaAt: 4, accessAt: 0 },
      { fd: mine, message: new Uint8Array(16), iovaAt: 0, accessAt: 16 },
    ]) {
      await expect(b.dev.setIotlbMissSink(bad)).rejects.toMatchObject({ code: NET_ERROR.BAD_IOTLB_SINK });
    }
    // Each record: a marker byte, the IOVA (u64 little-endian) at 4, the access at 12.
    const message = new Uint8Array(16);
    message[0] = 0x5a;
    await b.dev.setIotlbMissSink({ fd: mine, message, iovaAt: 4, accessAt: 12 });
    // The RX worker may have asked for its first buffers before the sink came (as events then, and
    // rightly); the workers' answers to the sink command come after any such event on the same port.
    const sinkFrom = misses.length;
    const r = b.ram.region();
    const buf = new Uint8Array(16 * 64);
    let answered = 0;
    const answer = (): void => {
      const n = native.fdRead(theirs, buf);
      for (let o = 0; o + 16 <= n; o += 16) {
        expect(buf[o]).toBe(0x5a);
        const dv = new DataView(buf.buffer, o, 16);
        const page = Math.floor((dv.getUint32(4, true) + dv.getUint32(8, true) * 2 ** 32) / PAGE) * PAGE;
        iotlb.update(page, PAGE, r.uaddr + (page - OFFSET - r.gpa), IOTLB_ACCESS.RW);
        answered++;
      }
      if (n > 0) b.dev.iotlbChanged();
    };
    const sender = udpSend(b, 6510, 200, 2, 20);
    const got: number[] = [];
    await until('both frames, the misses answered from the sink', () => {
      answer();
      got.push(...b.drv.receive().filter((f) => f.frame.length >= 42 && f.frame[23] === 17).map((f) => f.frame.length));
      return got.length >= 2;
    });
    sender.kill();
    expect(got.length).toBe(2);
    expect(answered, 'misses read from the sink').toBeGreaterThan(0);
    expect(misses.slice(sinkFrom).filter((m) => m.queue < 2), 'data-queue misses emitted as events once the sink is set').toEqual([]);
    await b.dev.setIotlbMissSink(null);
  } finally {
    native.closeQuietly(mine);
    native.closeQuietly(theirs);
  }
});
