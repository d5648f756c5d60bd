/**
 * NetDevice.setCallFd (vhost-user SET_VRING_CALL on a running ring): the queue keeps serving and
 * signals the new eventfd from the next interrupt on, never the old one, which its owner may close as
 * soon as the call resolves. −1 leaves the driver to poll: frames still arrive, no fd is written.
 */
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { waitReadable } from '../../harness/virtio-net.ts';
import { createBed, udpSend, until, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

it('a running RX queue moves its interrupts to the new call fd at once, and never writes the old one again', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'] });
  const b = bed;
  const rx = () => b.dev.metrics().queues[0]!;
  const oldFd = b.drv.rx[0]!.callFd;
  await until('the RX worker asleep', () => rx().sleeps > 0);

  udpSend(b, 6310, 100, 1);
  expect(await b.drv.rx[0]!.waitCall(5000), 'the first frame signals the driver\'s own fd').toBe(true);
  expect(b.drv.receive().length).toBe(1);

  const newFd = native.eventfdCreate({ nonblocking: true });
  try {
    await b.dev.setCallFd(0, newFd);
    for (let i = 1; i <= 3; i++) {
      udpSend(b, 6310, 100, 1);
      expect(await waitReadable(newFd, 5000), `frame ${i + 1} signals the new fd`).toBe(true);
      native.eventfdRead(newFd);
      await until(`frame ${i + 1} in the used ring`, () => rx().frames === i + 1);
      b.drv.receive();
    }
    expect(await waitReadable(oldFd, 200), 'the old fd is never written after the change').toBe(false);
    expect(rx().frames).toBe(4);
  } finally {
    // Back to the driver's fd before the bed closes: the new one is closed here.
    await b.dev.setCallFd(0, oldFd);
    native.close(newFd);
  }

  // And back: the driver's own fd works again, with the one just closed never touched (no EBADF).
  udpSend(b, 6310, 100, 1);
  expect(await b.drv.rx[0]!.waitCall(5000)).toBe(true);
  await until('frame 5 in the used ring', () => rx().frames === 5);
  expect(rx().queueBroken).toBe(0);
});

it('call fd −1 on a running queue: frames still arrive, counted as interrupts not sent, and no fd is written', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'] });
  const b = bed;
  const rx = () => b.dev.metrics().queues[0]!;
  await until('the RX worker asleep', () => rx().sleeps > 0);
  await b.dev.setCallFd(0, -1);
  const m0 = rx();
  udpSend(b, 6311, 100, 5, 20);
  await until('5 frames in the used ring', () => rx().frames - m0.frames === 5);
  await sleep(100);
  const m1 = rx();
  expect(m1.interrupts - m0.interrupts).toBe(0);
  expect(m1.interruptsSuppressed - m0.interruptsSuppressed).toBeGreaterThanOrEqual(1);
  expect(await waitReadable(b.drv.rx[0]!.callFd, 100)).toBe(false);
  expect(b.drv.receive().length).toBe(5);
});

it('a queue that is not running takes the new fd when it starts', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'] });
  const b = bed;
  const rx = () => b.dev.metrics().queues[0]!;
  const oldFd = b.drv.rx[0]!.callFd;
  const newFd = native.eventfdCreate({ nonblocking: true });
  try {
    await b.dev.stopQueue(0);
    await b.dev.setCallFd(0, newFd);
    await b.dev.startQueue(0);
    await until('the RX worker asleep', () => rx().sleeps > 0);
    udpSend(b, 6312, 100, 1);
    expect(await waitReadable(newFd, 5000)).toBe(true);
    expect(await waitReadable(oldFd, 100)).toBe(false);
  } finally {
    await b.dev.stopQueue(0);
    await b.dev.setCallFd(0, oldFd);
    native.close(newFd);
  }
});
