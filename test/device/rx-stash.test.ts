/**
 * Frames read ahead of the guest's buffers. On io_uring, MRG_RXBUF into buffers so small that one
 * frame's room spans more than 4 of them reads through the ring's stage (native/uring.cc), and frames
 * read past the buffers left wait in its stash. A stop drops them and counts them (rxDropStopped):
 * every frame the tap gave is delivered or counted, in order. On readv/writev nothing is read ahead:
 * the frames wait in the tap, and the same accounting holds with nothing dropped.
 */
import { expect, it } from 'vitest';
import { createBed, expectedPayload, udpSend, type Bed } from './helpers.ts';
import type { RxFrame } from '../../harness/virtio-net.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The datagram's sequence number: udp.mjs starts payload byte 0 at `seq`. */
const seqOf = (f: RxFrame): number => f.frame[42]!;

it('frames read past the buffers left are dropped and counted at stop; every frame is delivered or counted, in order', async () => {
  // 16 buffers of 256 bytes; a 1526-byte frame's room spans 6 of them. Each datagram (454 bytes with
  // the headers, 466 with the virtio header) takes 2 buffers: the ring holds 8 of the 20 sent.
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'],
    driver: { queueSize: 16, rxBufferSize: 256 },
  });
  const m = () => bed!.dev.metrics().queues[0]!;
  const uring = m().ioUring === 1;
  await bed.dev.stopQueue(0);
  const sender = udpSend(bed, 6200, 412, 20);
  await new Promise((r) => sender.on('close', r));
  await sleep(100); // the last datagrams reach the tap's queue
  await bed.dev.startQueue(0);
  // The device fills what it can and waits for buffers.
  await expect.poll(() => m().rxNoBuffers, { timeout: 5000 }).toBeGreaterThan(0);
  await sleep(200);
  const first = m().frames;
  expect(first).toBe(uring ? 8 : 6); // readv: the last 4 buffers are less than one frame's room
  await bed.dev.stopQueue(0);
  const dropped = m().rxDropStopped;
  if (uring) expect(dropped).toBeGreaterThanOrEqual(1);
  else expect(dropped).toBe(0);
  // The guest takes what it got and gives the buffers back; the rest comes from the tap.
  const got = bed.drv.receive();
  expect(got.length).toBe(first);
  await bed.dev.startQueue(0);
  got.push(...(await bed.drv.waitRx(20 - first - dropped, { timeoutMs: 5000 })));
  await sleep(200);
  got.push(...bed.drv.receive());
  expect(got.length + dropped).toBe(20);
  expect(m().frames + m().rxDropStopped).toBe(20);
  // In order, the dropped ones a run right after what the first buffers took.
  const seqs = got.map(seqOf);
  const want = [...Array(20).keys()].filter((s) => s < first || s >= first + dropped);
  expect(seqs).toEqual(want);
  for (const f of got) {
    expect(f.frame.length).toBe(454);
    expect(Buffer.from(f.frame.subarray(42)).equals(Buffer.from(expectedPayload(412, seqOf(f))))).toBe(true);
  }
});
