/**
 * NetDevice.inspect() on a real device: queue workers on a real tap answer with their ring read
 * between two passes, what they last slept on, and whether an interrupt is held; stopped queues and
 * the control queue are reported without a worker.
 */
import { describe, expect, it } from 'vitest';
import { createBed, udpSend, until, type Bed } from './helpers.ts';
import { PACKED_POS_START } from '../../vring/index.ts';
import type { FeatureName } from '../../device/features.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const FRAME = new Uint8Array(60).fill(0xab);

describe.each([
  { format: 'split' as const, start: 0 },
  { format: 'packed' as const, start: PACKED_POS_START },
])('NetDevice.inspect(), $format rings', ({ format, start }) => {
  const accept: FeatureName[] = ['VERSION_1', 'RING_EVENT_IDX', 'MAC', 'CTRL_VQ', ...(format === 'packed' ? ['RING_PACKED' as const] : [])];

  it('every queue answers: RX asleep on the tap with buffers, TX on the kick, control read on the main thread', async () => {
    bed = await createBed({ accept, driver: { queueSize: 64, ctrl: { maxPairs: 1 } } });
    const m = () => bed!.dev.metrics().queues;
    await until('both workers asleep', () => m()[0]!.sleeps > 0 && m()[1]!.sleeps > 0);
    const [rx, tx, ctrl] = await bed.dev.inspect();
    expect(rx).toMatchObject({ index: 0, role: 'rx', state: 'running', interruptHeld: false });
    expect(rx!.lastSleep?.on).toBe('backend');
    // The guest filled the ring; the device took what it keeps for the next frames (rxKept).
    // (A packed ring's whole lap ends at slot 0 of the next, wrap counter flipped.)
    expect(rx!.ring).toMatchObject({ format, size: 64, driverAvail: format === 'split' ? 64 : start ^ 0x8000 });
    expect(rx!.ring!.inFlight).toBe(m()[0]!.rxKept);
    expect(rx!.ring!.inFlight + rx!.ring!.availPending).toBe(64);
    expect(tx).toMatchObject({ index: 1, role: 'tx', state: 'running' });
    expect(tx!.lastSleep?.on).toBe('kick');
    expect(tx!.ring).toMatchObject({ format, lastAvail: start, availPending: 0, inFlight: 0, interruptOwed: false });
    expect(ctrl).toMatchObject({ index: 2, role: 'ctrl', state: 'running', lastSleep: null });
    expect(ctrl!.ring).toMatchObject({ format, lastAvail: start, availPending: 0 });
  });

  it('chains the driver made available without a kick show as pending; the woken worker then serves them', async () => {
    bed = await createBed({ accept, driver: { queueSize: 64, ctrl: { maxPairs: 1 } } });
    const frames = () => bed!.dev.metrics().queues[1]!.frames;
    await until('the TX worker asleep', () => bed!.dev.metrics().queues[1]!.sleeps > 0);
    // The worker also wakes every second by itself and would serve them: try again if it did here.
    let pending = 0;
    for (let attempt = 0; attempt < 3 && pending === 0; attempt++) {
      const before = frames();
      for (let i = 0; i < 3; i++) expect(bed.drv.send(FRAME, { kick: false })).toBe(true);
      bed.drv.tx[0]!.q.publish(); // made available; the kick is left out
      const tx = (await bed.dev.inspect())[1]!;
      expect(tx.state).toBe('running');
      // (The worker serves them right after it answers, so the counters may have moved by now.)
      if (tx.ring!.availPending === 3) {
        pending = tx.ring!.availPending;
        expect(tx.lastSleep?.on).toBe('kick');
        expect(tx.ring!.driverAvail).not.toBe(tx.ring!.lastAvail);
      }
      await until('the three frames sent', () => frames() === before + 3);
    }
    expect(pending).toBe(3);
    const after = (await bed.dev.inspect())[1]!;
    expect(after.ring).toMatchObject({ availPending: 0, inFlight: 0 });
    expect(after.ring!.publishedUsed).toBe(after.ring!.lastAvail);
  });

  it('a held interrupt shows as held, and goes out by its deadline', async () => {
    // A long hold (100 ms) so that the inspection falls inside it.
    bed = await createBed({ accept, driver: { queueSize: 64 }, device: { coalesce: { rxUsecs: 100_000, txUsecs: 0, buffers: 64 } } });
    const rxm = () => bed!.dev.metrics().queues[0]!;
    await until('the RX worker asleep', () => rxm().sleeps > 0);
    let held = false;
    // The hold is the longest the device allows (100 ms); under a loaded machine the second frame or
    // the inspection can miss it, so the pair of frames is sent again until one is caught in it.
    for (let attempt = 0; attempt < 20 && !held; attempt++) {
      const f0 = rxm().frames;
      // Two frames: the first interrupts at once (an idle queue), the second lands within the hold.
      udpSend(bed, 6400, 100, 2);
      await until('two frames delivered', () => rxm().frames >= f0 + 2);
      const rx = (await bed.dev.inspect())[0]!;
      if (rx.interruptHeld) {
        held = true;
        expect(rx.ring!.publishedUsed).not.toBe(rx.ring!.signalledUsed);
      }
      bed.drv.receive();
      await new Promise((r) => setTimeout(r, 150));
    }
    expect(held).toBe(true);
    const rx = (await bed.dev.inspect())[0]!;
    expect(rx.interruptHeld).toBe(false);
    expect(rx.ring!.interruptOwed).toBe(false);
    expect(bed.dev.metrics().queues[0]!.interruptsHeld).toBeGreaterThan(0);
  });

  it('a stopped queue is reported without asking a worker', async () => {
    bed = await createBed({ accept, driver: { queueSize: 64, ctrl: { maxPairs: 1 } } });
    await bed.dev.stopQueue(1);
    const ins = await bed.dev.inspect();
    expect(ins[1]).toMatchObject({ index: 1, role: 'tx', state: 'stopped', ring: null, lastSleep: null });
    expect(ins[0]!.state).toBe('running');
  });
});
