/**
 * MRG_RXBUF: a 9000-byte frame spread over 4 small RX chains, num_buffers right, the chains it did not
 * need kept for the next frames and given back to the ring when the queue stops, and the next frame
 * landing in them; with a filter, rejected
 * frames inside one burst leave no hole; a frame too big for the guest is counted, its bytes logged;
 * a rate-limited burst smaller than the chains kept loses none of them.
 */
import { expect, it } from 'vitest';
import { ACK, CTRL } from '../../device/ctrl.ts';
import { ethernet, mac } from '../../harness/frames.ts';
import { openPacketIn } from '../../harness/netns.ts';
import { SplitRingBuilder } from '../../harness/rings.ts';
import * as native from '../../native/index.ts';
import { DEFAULT_OFFERED, mask } from '../../device/features.ts';
import { createBed, expectedPayload, udpSend, until, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

it('a 9000-byte frame fills 4 chains of 2304 bytes; the other 4 are given back at stop', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', 'MTU'],
    mtu: 9000,
    driver: { queueSize: 8, rxBufferSize: 2304 },
  });
  const sender = udpSend(bed, 6100, 9000 - 42, 1);
  const r = bed.drv.rx[0]!;
  // Take the completion without reposting, to see what the device consumed.
  expect(await r.waitCall(5000)).toBe(true);
  sender.kill();
  const frames = bed.drv.receive();
  expect(frames.length).toBe(1);
  expect(frames[0]!.numBuffers).toBe(4);
  expect(frames[0]!.frame.length).toBe(9000);
  expect(Buffer.from(frames[0]!.frame.subarray(42)).equals(Buffer.from(expectedPayload(8958, 0)))).toBe(true);
  // The device popped all 8 chains for the burst, used 4 and kept 4, which it gives back when it
  // stops: its next avail index is 4.
  expect(bed.dev.metrics().queues[0]!.rxKept).toBe(4);
  expect(await bed.dev.stopQueue(0)).toBe(4);
  expect(bed.dev.metrics().queues[0]!.rxKept).toBe(0);
  const m = bed.dev.metrics().queues[0]!;
  expect(m.frames).toBe(1);
  expect(m.rxDropTooBig + m.rxDropShortBuffer).toBe(0);
  // Restarted, the device takes the next frame into the given-back chains first.
  await bed.dev.startQueue(0);
  const again = udpSend(bed, 6100, 3000, 1);
  const next = await bed.drv.waitRx(1, { timeoutMs: 5000 });
  again.kill();
  expect(next.length).toBe(1);
  expect(next[0]!.numBuffers).toBe(2);
});

it('chains a burst did not use are kept for the next frames, not popped again, and given back at stop', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'],
    driver: { queueSize: 8, rxBufferSize: 2048 },
  });
  const r = bed.drv.rx[0]!;
  const kept = (): number => bed!.dev.metrics().queues[0]!.rxKept;
  // The driver takes each completion without reposting: a frame of 1042 bytes takes one chain.
  for (let i = 1; i <= 3; i++) {
    const sender = udpSend(bed, 6101, 1000, 1);
    expect(await r.waitCall(5000)).toBe(true);
    sender.kill();
    expect(r.q.popUsed()).toBeGreaterThanOrEqual(0);
    expect(r.q.lastUsedLen).toBe(12 + 1042);
    // The first burst popped all 8 chains; each frame since took one the device kept.
    await expect.poll(kept, { timeout: 2000 }).toBe(8 - i);
  }
  expect(r.q.popUsed()).toBe(-1);
  // Stopped, the device gives back the 5 it kept: its next avail index counts the 3 it used.
  expect(await bed.dev.stopQueue(0)).toBe(3);
  expect(kept()).toBe(0);
  // Restarted, it pops them again and the next frame lands in the first of them.
  await bed.dev.startQueue(0);
  const sender = udpSend(bed, 6101, 1000, 1);
  expect(await r.waitCall(5000)).toBe(true);
  sender.kill();
  expect(r.q.popUsed()).toBeGreaterThanOrEqual(0);
  await expect.poll(kept, { timeout: 2000 }).toBe(4);
  const m = bed.dev.metrics().queues[0]!;
  expect(m.frames).toBe(4);
  expect(m.rxDropTooBig + m.rxDropShortBuffer + m.rxDropBackend).toBe(0);
});

/** Raw frames of a local experimental EtherType from the namespace side of the tap. */
function rawFrames(b: Bed, list: Array<{ dst: Uint8Array; len: number; seq: number }>): Uint8Array[] {
  const pkt = openPacketIn(b.ns, 'lgtap0'); // closed with the namespace
  return list.map(({ dst, len, seq }) => {
    const payload = new Uint8Array(len - 14).map((_, i) => (i * 13 + seq) & 255);
    const f = ethernet(dst, b.tapMac, 0x88b5, payload);
    expect(native.fdWrite(pkt, f)).toBe(f.length);
    return f;
  });
}

it('with a filter in one burst: rejected frames are counted and their buffers take the next frame', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', 'CTRL_VQ', 'CTRL_RX'],
    driver: { queueSize: 16, rxBufferSize: 1024, ctrl: { maxPairs: 1 } },
  });
  expect(await bed.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([0]))).toBe(ACK.OK);
  const other = mac('52:54:00:aa:bb:cc');
  // Queued in the kernel while the queue is stopped, so that one burst meets them all.
  expect(await bed.dev.stopQueue(0)).toBe(0);
  const m0 = bed.dev.metrics().queues[0]!;
  const plan = [
    { dst: bed.guestMac, len: 1500, seq: 1 }, // 2 buffers
    { dst: other, len: 1500, seq: 2 }, // rejected
    { dst: other, len: 200, seq: 3 }, // rejected
    { dst: bed.guestMac, len: 100, seq: 4 }, // 1 buffer
    { dst: other, len: 900, seq: 5 }, // rejected, last: its buffer goes back to the ring
  ];
  const sent = rawFrames(bed, plan);
  await bed.dev.startQueue(0);
  const got = await bed.drv.waitRx(2, { timeoutMs: 5000 });
  expect(got.map((g) => g.numBuffers)).toEqual([2, 1]);
  expect(Buffer.from(got[0]!.frame).equals(Buffer.from(sent[0]!))).toBe(true);
  expect(Buffer.from(got[1]!.frame).equals(Buffer.from(sent[3]!))).toBe(true);
  await expect.poll(() => bed!.dev.metrics().queues[0]!.rxDropFiltered - m0.rxDropFiltered, { timeout: 2000 }).toBe(3);
  const m = bed.dev.metrics().queues[0]!;
  expect(m.frames - m0.frames).toBe(2);
  expect(m.rxDropShortBuffer + m.rxDropTooBig).toBe(0);
  // Three buffers used, none lost to the rejected frames: the device's next avail index is 3.
  expect(await bed.dev.stopQueue(0)).toBe(3);
});

it('a chain too short for a frame, among the buffers a frame takes, goes back before them: the frame\'s buffers are consecutive used entries', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'],
    driver: { queueSize: 8, rxBufferSize: 1024 },
  });
  const rx = bed.drv.rx[0]!;
  const ring = SplitRingBuilder.over(bed.ram.mem, rx.setup, bed.ram);
  // Stopped, the second chain the device will pop shrinks to 8 writable bytes: less than the header,
  // which MRG_RXBUF asks of every buffer (virtio 1.2 §5.1.6.3.1), so the device gives it back empty.
  const base = await bed.dev.stopQueue(0);
  const short = ring.availEntry(base + 1);
  const d = ring.readDesc(short);
  ring.writeDesc(short, { ...d, len: 8 });
  const m0 = bed.dev.metrics().queues[0]!;
  const sent = rawFrames(bed, [
    { dst: bed.guestMac, len: 1500, seq: 1 }, // 2 buffers: the first chain and the third
    { dst: bed.guestMac, len: 100, seq: 2 },
  ]);
  await bed.dev.startQueue(0);
  const got: Array<{ frame: Uint8Array; numBuffers: number }> = [];
  for (let i = 0; i < 50 && got.length < 3; i++) got.push(...(await bed.drv.waitRx(1, { timeoutMs: 100 })));
  // The driver reads num_buffers consecutive used entries, as Linux's receive_mergeable does: the
  // short chain comes back on its own, and the frames whole.
  const frames = got.filter((g) => g.frame.length > 0);
  expect(got.length - frames.length).toBe(1);
  expect(frames.map((g) => g.numBuffers)).toEqual([2, 1]);
  expect(Buffer.from(frames[0]!.frame).equals(Buffer.from(sent[0]!))).toBe(true);
  expect(Buffer.from(frames[1]!.frame).equals(Buffer.from(sent[1]!))).toBe(true);
  const m = bed.dev.metrics().queues[0]!;
  expect(m.frames - m0.frames).toBe(2);
  expect(m.rxDropShortBuffer - m0.rxDropShortBuffer).toBe(1);
});

it('with VIRTIO_F_IN_ORDER the same short chain cannot be passed over: the RX queue is marked broken, TX serves on', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', 'IN_ORDER'],
    device: { features: DEFAULT_OFFERED | mask('IN_ORDER') },
    driver: { queueSize: 8, rxBufferSize: 1024 },
  });
  expect(bed.dev.features.inOrder).toBe(true);
  const rx = bed.drv.rx[0]!;
  const ring = SplitRingBuilder.over(bed.ram.mem, rx.setup, bed.ram);
  const base = await bed.dev.stopQueue(0);
  const short = ring.availEntry(base + 1);
  ring.writeDesc(short, { ...ring.readDesc(short), len: 8 });
  rawFrames(bed, [{ dst: bed.guestMac, len: 1500, seq: 1 }]); // would take the first chain and the third
  await bed.dev.startQueue(0);
  await until('the RX queue breaks', () => bed!.dev.metrics().queues[0]!.broken !== null);
  expect(bed.dev.metrics().queues[0]!.broken).toMatch(/^VRING_IN_ORDER_SKIP: /);
  // Nothing was used out of order: no used entry names the chain after the short one.
  expect(ring.usedIdx - base).toBe(0);
  // The other queue is unaffected.
  expect(bed.drv.send(new Uint8Array(60).fill(1), { kick: true })).toBe(true);
  expect(await bed.drv.drainTx(0, 5000)).toBe(0);
  expect(bed.dev.metrics().queues[1]!.broken).toBeNull();
});

// MRG_RXBUF asks only that a buffer hold the header: one that holds no more takes a frame's header alone,
// and one in the middle of a frame a few bytes of it.
for (const io of ['syscall', 'uring'] as const) {
  it(`${io}: buffers of the header's size and a little more carry parts of frames, none given back empty`, async () => {
    bed = await createBed({ io, accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'], driver: { queueSize: 8, rxBufferSize: 1024 } });
    const rx = bed.drv.rx[0]!;
    const ring = SplitRingBuilder.over(bed.ram.mem, rx.setup, bed.ram);
    const base = await bed.dev.stopQueue(0);
    // The first chain the device pops holds the header alone, the second 20 bytes.
    for (const [k, len] of [[0, 12], [1, 20]] as const) {
      const e = ring.availEntry(base + k);
      ring.writeDesc(e, { ...ring.readDesc(e), len });
    }
    const m0 = bed.dev.metrics().queues[0]!;
    const sent = rawFrames(bed, [
      { dst: bed.guestMac, len: 1500, seq: 1 }, // 12 + 20 + 1024 + 468: 4 buffers
      { dst: bed.guestMac, len: 100, seq: 2 },
    ]);
    await bed.dev.startQueue(0);
    const got: Array<{ frame: Uint8Array; numBuffers: number }> = [];
    for (let i = 0; i < 50 && got.length < 2; i++) got.push(...(await bed.drv.waitRx(1, { timeoutMs: 100 })));
    expect(got.map((g) => g.numBuffers)).toEqual([4, 1]);
    expect(got.map((g, i) => Buffer.from(g.frame).equals(Buffer.from(sent[i]!)))).toEqual([true, true]);
    const m = bed.dev.metrics().queues[0]!;
    expect(m.frames - m0.frames).toBe(2);
    expect(m.rxDropShortBuffer - m0.rxDropShortBuffer).toBe(0);
  });
}

// MRG_RXBUF asks only that a buffer hold the header, so a frame's first chain may end inside the bytes the
// filter judges (destination, VLAN tag). The filter reads them across the frame's chains. With readv
// (syscall) the filter judges in JS a frame the peek list does not vouch for; io_uring applies it natively.
for (const io of ['syscall', 'uring'] as const) {
  it(`${io}: a frame whose first chain holds the header and 14 bytes is still judged by the RX filter`, async () => {
    bed = await createBed({
      io,
      accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', 'CTRL_VQ', 'CTRL_RX'],
      driver: { queueSize: 8, rxBufferSize: 1024, ctrl: { maxPairs: 1 } },
    });
    expect(await bed.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([0]))).toBe(ACK.OK);
    const rx = bed.drv.rx[0]!;
    const ring = SplitRingBuilder.over(bed.ram.mem, rx.setup, bed.ram);
    // Stopped, the chain the device pops next shrinks to 26 bytes: header and Ethernet header, which
    // the device takes for a frame's first buffer, short of the 16 bytes the filter reads.
    const base = await bed.dev.stopQueue(0);
    const small = ring.availEntry(base);
    ring.writeDesc(small, { ...ring.readDesc(small), len: 26 });
    const m0 = bed.dev.metrics().queues[0]!;
    const sent = rawFrames(bed, [
      { dst: mac('52:54:00:aa:bb:cc'), len: 100, seq: 1 }, // for another host: rejected
      { dst: bed.guestMac, len: 100, seq: 2 },
    ]);
    await bed.dev.startQueue(0);
    const got = await bed.drv.waitRx(1, { timeoutMs: 5000 });
    expect(got.length).toBe(1);
    expect(Buffer.from(got[0]!.frame).equals(Buffer.from(sent[1]!))).toBe(true);
    await expect.poll(() => bed!.dev.metrics().queues[0]!.rxDropFiltered - m0.rxDropFiltered, { timeout: 2000 }).toBe(1);
    expect(bed.dev.metrics().queues[0]!.frames - m0.frames).toBe(1);
  });
}

// Two RX paths take MRG_RXBUF frames. Merged (here chosen by an RX filter: promisc off) reads each
// frame into a window of buffers and lets the next frame read over a dropped one. Batched (no GSO,
// every buffer holds the largest frame) reads one frame per buffer and gives a dropped frame's buffer
// back empty. Both count the drop and log what the frame wrote.
for (const path of ['merged', 'batched'] as const) {
  it(`${path}: a frame larger than the guest may receive is counted too big, and what it wrote is logged`, async () => {
    bed = await createBed({
      accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', ...(path === 'merged' ? (['CTRL_VQ', 'CTRL_RX'] as const) : [])],
      driver: { queueSize: 16, rxBufferSize: 4096, ...(path === 'merged' ? { ctrl: { maxPairs: 1 } } : {}) },
    });
    if (path === 'merged') expect(await bed.drv.ctrl(CTRL.RX, CTRL.RX_PROMISC, new Uint8Array([0]))).toBe(ACK.OK);
    // The tap takes jumbo frames; the device's MTU stays 1500, so the guest may get 1514 + VLAN at most.
    bed.ns.exec('ip', 'link', 'set', 'lgtap0', 'mtu', '9000');
    expect(await bed.dev.stopQueue(0)).toBe(0);
    const log = await bed.dev.startDirtyLog();
    const sent = rawFrames(bed, [
      { dst: bed.guestMac, len: 4000, seq: 1 }, // too big
      { dst: bed.guestMac, len: 300, seq: 2 },
      { dst: bed.guestMac, len: 1800, seq: 3 }, // too big for 1500 + VLAN, fits in the 4096-byte buffer
    ]);
    const before = bed.dev.metrics().queues[0]!;
    await bed.dev.startQueue(0);
    const got = await bed.drv.waitRx(path === 'merged' ? 1 : 3, { timeoutMs: 5000 });
    // Batched: the dropped frames' buffers come back used with length 0 (no header, no frame).
    expect(got.map((g) => g.frame.length)).toEqual(path === 'merged' ? [sent[1]!.length] : [0, sent[1]!.length, 0]);
    expect(Buffer.from(got.find((g) => g.frame.length > 0)!.frame).equals(Buffer.from(sent[1]!))).toBe(true);
    await expect.poll(() => bed!.dev.metrics().queues[0]!.rxDropTooBig - before.rxDropTooBig, { timeout: 2000 }).toBe(2);
    // Merged: the second frame was read over the first in one buffer, and the last frame into the
    // second buffer, which went back to the ring: one buffer used. Batched: a buffer each, the
    // dropped frames' given back empty.
    expect(await bed.dev.stopQueue(0)).toBe(path === 'merged' ? 1 : 3);
    // Find the buffer by its content: the third frame's bytes after the 12-byte header.
    const r = bed.drv.rx[0]!;
    const third = sent[2]!;
    const at = r.slots.find((gpa) => Buffer.from(bed!.ram.read(gpa + 12, 1000)).equals(Buffer.from(third.subarray(0, 1000))));
    expect(at).toBeDefined();
    const page = (gpa: number): number => Math.floor(gpa / 4096) * 4096;
    // A page only the dropped frame wrote: not one of the delivered frame's buffer.
    const delivered = r.slots.find((gpa) => Buffer.from(bed!.ram.read(gpa + 12, 288)).equals(Buffer.from(sent[1]!.subarray(0, 288))))!;
    const probe = page(at! + 12 + 1700);
    expect([page(delivered), page(delivered + 311)]).not.toContain(probe);
    expect(new Set(log.collect()).has(probe)).toBe(true);
    await bed.dev.stopDirtyLog();
  });
}

it('a rate-limited burst that leaves the batched path keeps every chain it held, beyond the burst too', async () => {
  // Buffers smaller than the largest frame send MRG_RXBUF to the merged path, which keeps the chains
  // a frame did not fill; one frame per burst (the ops bucket) makes the next burst smaller than them.
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC'],
    driver: { queueSize: 16, rxBufferSize: 1024 },
    device: { rateLimit: { rx: { ops: { size: 1, refillMs: 5 } } } },
  });
  expect(await bed.dev.stopQueue(0)).toBe(0);
  const plan = [1, 2, 3, 4].map((seq) => ({ dst: bed!.guestMac, len: 100, seq }));
  const sent = rawFrames(bed, plan);
  await bed.dev.startQueue(0);
  const got = await bed.drv.waitRx(4, { timeoutMs: 5000 });
  expect(got.map((g) => g.numBuffers)).toEqual([1, 1, 1, 1]);
  got.forEach((g, i) => expect(Buffer.from(g.frame).equals(Buffer.from(sent[i]!))).toBe(true));
  const m = bed.dev.metrics().queues[0]!;
  expect(m.throttled).toBeGreaterThan(0);
  expect(m.rxKept).toBeGreaterThan(1);
  expect(m.rxDropShortBuffer + m.rxDropTooBig + m.rxDropBackend).toBe(0);
  // Four buffers used; every other chain the device popped goes back to the ring, none is lost.
  expect(await bed.dev.stopQueue(0)).toBe(4);
});

it("a Linux guest's RX ring (TSO into 1536-byte buffers): bursts hold room for one frame, not the whole ring", async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', 'CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6'],
    driver: { queueSize: 256, rxBufferSize: 1536 },
  });
  const kept = (): number => bed!.dev.metrics().queues[0]!.rxKept;
  let seq = 0;
  const batch = async (n: number): Promise<void> => {
    const sent = rawFrames(bed!, Array.from({ length: n }, () => ({ dst: bed!.guestMac, len: 100, seq: seq++ })));
    const got = await bed!.drv.waitRx(n, { timeoutMs: 5000 });
    expect(got.map((g, i) => Buffer.from(g.frame).equals(Buffer.from(sent[i]!)))).toEqual(sent.map(() => true));
  };
  // A frame may be 64 KiB: 43 of these buffers. On io_uring the first burst offers room for a burst of
  // such frames, the whole ring, and keeps what it did not use; its frames then use those up. From
  // there on the ring stages (IovecTable.stagedNext), and a burst pops a burst's chains (64), so the
  // device never holds much more. Without the hint it would pop the whole ring again each time.
  for (let i = 0; i < 14; i++) await batch(20);
  const samples: number[] = [];
  for (let i = 0; i < 15; i++) {
    await batch(20);
    samples.push(kept());
  }
  expect(Math.max(...samples), `kept after each batch: ${samples.join(' ')}`).toBeLessThanOrEqual(128);
  const m = bed.dev.metrics().queues[0]!;
  expect(m.frames).toBe(seq);
  expect(m.rxDropShortBuffer + m.rxDropTooBig + m.rxDropBackend).toBe(0);
});
