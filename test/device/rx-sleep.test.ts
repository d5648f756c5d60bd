/**
 * How the RX loop (device/loops.ts) sleeps, seen from the guest: one native waitKick that raises the
 * pending interrupt first (lguest's rule: before a tap read would block), then waits on the tap while
 * the guest has buffers, or on the kick while it has none, so frames waiting in the tap with nowhere to
 * go never spin the worker.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { expect, it } from 'vitest';
import { createBed, udpSend, until, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves when the child has exited (at once if it already has). */
async function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
}

it('one frame on an idle queue: its interrupt goes out as the worker goes back to sleep on the tap', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'] });
  const rx = () => bed!.dev.metrics().queues[0]!;
  await until('the RX worker asleep', () => rx().sleeps > 0);
  const m0 = rx();
  const sender = udpSend(bed, 6300, 100, 1);
  expect(await bed.drv.rx[0]!.waitCall(5000)).toBe(true);
  await exited(sender);
  await sleep(100);
  const m1 = rx();
  expect(m1.frames - m0.frames).toBe(1);
  expect(m1.interrupts - m0.interrupts).toBe(1);
  expect(m1.sleeps - m0.sleeps).toBeGreaterThanOrEqual(1); // the signal rode on that sleep
  expect(bed.drv.receive().length).toBe(1);
});

it('frames waiting in the tap with no RX buffers: the worker sleeps (no spin) until the guest gives buffers', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'], driver: { queueSize: 8 } });
  const rx = () => bed!.dev.metrics().queues[0]!;
  const sender = udpSend(bed, 6301, 100, 40);
  await until('the ring full', () => rx().frames === 8);
  await exited(sender);
  await sleep(50);
  const m0 = rx();
  await sleep(400);
  const m1 = rx();
  expect(m1.frames).toBe(8); // the guest gave nothing back: the other frames wait in the tap
  // Asleep on the kick, not the readable tap: at most one wake-up per sleep timeout (1 s).
  expect(m1.sleeps - m0.sleeps).toBeLessThanOrEqual(1);
  expect(m1.rxNoBuffers - m0.rxNoBuffers).toBeLessThanOrEqual(1);
  // Buffers back (a kick): the waiting frames flow in.
  const got = await bed.drv.waitRx(40, { timeoutMs: 5000 });
  expect(got.length).toBe(40);
  expect(rx().frames).toBe(40);
});
