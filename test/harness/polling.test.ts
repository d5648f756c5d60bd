/**
 * The harness's benchmark loops as polling drivers (harness/virtio-net.ts blastTx, sinkRx): on a real
 * tap in a test-made namespace, with EVENT_IDX. While the driver polls, used-buffer notifications are
 * off, so a busy device signals it rarely; it turns them on before it sleeps, so nothing completed
 * meanwhile is missed, and it leaves them on. Every completion it counts is a frame the device moved.
 */
import { once } from 'node:events';
import { afterAll, afterEach, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { ethernet } from '../../harness/frames.ts';
import { destroyAllNetns } from '../../harness/netns.ts';
import { createBed, udpSend, type Bed } from '../device/helpers.ts';

afterAll(() => destroyAllNetns());

let bed: Bed | undefined;
afterEach(async () => {
  await bed?.close();
  bed = undefined;
});

const TX = 1;
const RX = 0;

/** Clears a call eventfd, so that a later poll sees only a new signal. */
function drainCall(fd: number): void {
  if (native.poll([fd], 0)) native.eventfdRead(fd);
}

it('blastTx polls with interrupts off: far fewer interrupts than with spinUs 0, every completion a frame sent, interrupts on after', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'RING_EVENT_IDX'], driver: { queueSize: 64 } });
  const frame = ethernet(bed.tapMac, bed.guestMac, 0x88b5, new Uint8Array(50));
  const q = () => bed!.dev.metrics().queues[TX]!;

  const run = (spinUs: number) => {
    const m0 = q();
    const r = bed!.drv.blastTx(frame, 0.4, { spinUs });
    const m1 = q();
    return { frames: r.frames, sent: m1.frames - m0.frames, interrupts: m1.interrupts - m0.interrupts };
  };
  const sleepy = run(0);
  const polling = run(5000);
  for (const r of [sleepy, polling]) {
    expect(r.frames).toBeGreaterThan(1000);
    // The device also finishes what was posted at the stop, which blastTx does not count.
    expect(r.sent).toBeGreaterThanOrEqual(r.frames);
    expect(r.sent - r.frames).toBeLessThanOrEqual(64);
  }
  // A driver that sleeps whenever a round finds nothing is woken after nearly every burst; one that
  // polls is woken only where the device stalled for the whole spin.
  expect(sleepy.interrupts).toBeGreaterThan(sleepy.frames / 200);
  expect(polling.interrupts).toBeLessThan(polling.frames / 1000);

  // Interrupts are on again: one frame sent now is signalled.
  const tx = bed.drv.tx[0]!;
  drainCall(tx.callFd);
  expect(bed.drv.send(frame)).toBe(true);
  expect(native.poll([tx.callFd], 2000)).toBe(1);
  expect(await bed.drv.drainTx()).toBe(0);
});

it('sinkRx recycles every buffer the device fills, counts exactly the frames delivered, and leaves buffers posted and interrupts on', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'RING_EVENT_IDX'], driver: { queueSize: 64 } });
  const q = () => bed!.dev.metrics().queues[RX]!;
  const rx = bed.drv.rx[0]!;
  const size = rx.q.size;
  expect(rx.q.inFlight).toBe(size);
  const m0 = q();
  // Paced (1 ms apart): unpaced, a stall of the host for ~30 ms lets the tap's queue of 1000 overflow
  // before the device reads it, and the kernel drops what the test then misses.
  const COUNT = 1000;
  const sender = udpSend(bed, 9999, 64, COUNT, 1);
  const exited = once(sender, 'exit');
  let exitedYet = false;
  void exited.then(() => (exitedYet = true));
  // Short blocking rounds, with the event loop let run between them to see the sender's exit
  // (Node's start in the namespace alone takes a few hundred ms). Bounded at 20 s.
  const r = { frames: 0 };
  const end = performance.now() + 20_000;
  while (!exitedYet && performance.now() < end) {
    r.frames += bed.drv.sinkRx(0.25).frames;
    await new Promise((res) => setImmediate(res));
  }
  r.frames += bed.drv.sinkRx(0.25).frames; // what the last datagrams still had in flight
  await exited;
  const m1 = q();
  expect(sender.exitCode).toBe(0);
  // The ring held 64 buffers: 1,000 datagrams went through only because sinkRx recycled them.
  expect(r.frames).toBeGreaterThanOrEqual(COUNT);
  // What the device completed before the loop's end and the harness did not take yet stays in the used ring.
  const untaken = rx.q.pendingUsed().length;
  expect(r.frames + untaken).toBe(m1.frames - m0.frames);
  expect(rx.q.inFlight).toBe(size);

  // Interrupts are on again: a frame arriving now is signalled.
  for (let h = rx.q.popUsed(); h >= 0; h = rx.q.popUsed()) {
    const slot = rx.slotOf[h]!;
    rx.slotOf[h] = -1;
    rx.slotOf[rx.q.add([], [{ addr: rx.slots[slot]!, len: bed.drv.rxBufferSize }])] = slot;
  }
  rx.publishAndKick();
  drainCall(rx.callFd);
  const one = udpSend(bed, 9999, 64, 1);
  expect(native.poll([rx.callFd], 5000)).toBe(1);
  await once(one, 'exit');
});
