/**
 * Interrupt coalescing at device level (device/coalesce.ts, interrupt.ts, loops.ts), over a real tap:
 * an idle queue signals at once, a busy one holds its interrupt and still sends it, and a stream of
 * frames raises fewer interrupts than frames. The hold is made long (100 ms) where a test must tell
 * "at once" from "held", so the assertions rest on the counters and on which came first, not on speed.
 */
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { ethernet, icmpEchoRequest, ip4, isIcmpEchoReply } from '../../harness/frames.ts';
import type { DeviceMetrics } from '../../device/net.ts';
import { createBed, udpSend, type Bed } from './helpers.ts';
import { MAX_BACKOFF } from '../../device/coalesce.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

/** The longest hold there is: an interrupt that comes within 80 ms was not held, and the counters say so too. */
const LONG = { rxUsecs: 100_000, txUsecs: 100_000, buffers: 32 };
const OTHER = new Uint8Array([0x02, 0, 0, 0, 0, 0x99]);
const ACCEPT = ['VERSION_1', 'RING_EVENT_IDX', 'MAC'] as const;

/** A frame to a MAC nobody has: the namespace's kernel drops it, so the tap stays quiet. */
function junkFrame(b: Bed, i: number): Uint8Array {
  const p = new Uint8Array(50);
  p[0] = i & 0xff;
  return ethernet(OTHER, b.guestMac, 0x88b5, p);
}

const q = (m: DeviceMetrics, i: number) => m.queues[i]!;

/** Reads queue `i`'s counters until `ok` holds (polled, 5 s at most). */
async function metricsWhen(b: Bed, i: number, ok: (m: DeviceMetrics['queues'][number]) => boolean): Promise<DeviceMetrics['queues'][number]> {
  const until = Date.now() + 5000;
  for (;;) {
    const m = q(b.dev.metrics(), i);
    if (ok(m)) return m;
    if (Date.now() > until) throw new Error(`queue ${i} counters never matched: ${JSON.stringify(m)}`);
    await new Promise((r) => setImmediate(r));
  }
}

it('TX: a frame on an idle queue is signalled at once; one right after it is held, then signalled; idle again signals at once', async () => {
  bed = await createBed({ accept: [...ACCEPT], device: { coalesce: LONG } });
  const tx = bed.drv.tx[0]!;
  // 1. Idle: the interrupt comes with the completion, not after the 100-ms hold.
  expect(bed.drv.send(junkFrame(bed, 0))).toBe(true);
  expect(await tx.waitCall(80)).toBe(true);
  let m = q(bed.dev.metrics(), 1);
  expect(m.interrupts).toBe(1);
  expect(m.interruptsHeld).toBe(0);
  expect(bed.drv.reclaimTx()).toBe(1);
  // 2. Busy (it decided an interrupt < 100 ms ago): the frame is completed, its interrupt held. The
  // driver does not reap it (that would move used_event past it, and the held interrupt would rightly
  // be found unwanted), so it still wants the interrupt.
  expect(bed.drv.send(junkFrame(bed, 1))).toBe(true);
  m = await metricsWhen(bed, 1, (x) => x.frames === 2 && x.interruptsHeld === 1);
  expect(m.interrupts).toBe(1);
  // ...and not lost: it goes out by the deadline although no more work comes, because the worker's
  // sleep ends there (without that bound it would wait for the 1-s sleep cap, SLEEP_MS, past 500 ms).
  expect(await tx.waitCall(500)).toBe(true);
  m = q(bed.dev.metrics(), 1);
  expect(m.interrupts).toBe(2);
  expect(bed.drv.reclaimTx()).toBe(1);
  // 3. Quiet for longer than the hold: at once again.
  await new Promise((r) => setTimeout(r, 150));
  expect(bed.drv.send(junkFrame(bed, 2))).toBe(true);
  expect(await tx.waitCall(80)).toBe(true);
  m = q(bed.dev.metrics(), 1);
  expect(m.interruptsHeld).toBe(1);
  expect(m.interrupts).toBe(3);
});

it('RX: a frame from the host to an idle queue is signalled at once', async () => {
  bed = await createBed({ accept: [...ACCEPT], device: { coalesce: LONG } });
  const rx = bed.drv.rx[0]!;
  const before = q(bed.dev.metrics(), 0);
  expect(before.frames).toBe(0);
  const sender = udpSend(bed, 6300, 64, 1, 0);
  // The only frame the queue has seen (the sender starts a process first, hence the wait for it): the
  // interrupt must not wait for the 100-ms hold.
  await metricsWhen(bed, 0, (x) => x.frames === 1);
  expect(await rx.waitCall(80)).toBe(true);
  const frames = bed.drv.receive();
  expect(frames.length).toBe(1);
  const m = q(bed.dev.metrics(), 0);
  expect(m.frames).toBe(1);
  expect(m.interrupts).toBe(1);
  expect(m.interruptsHeld).toBe(0);
  sender.kill();
});

it('TX: a stream of frames raises fewer interrupts than frames with coalescing, about one per frame without', async () => {
  const frames = 200;
  const run = async (usecs: number) => {
    bed = await createBed({ accept: [...ACCEPT], device: { coalesce: { rxUsecs: usecs, txUsecs: usecs, buffers: 64 } } });
    const b = bed;
    const tx = b.drv.tx[0]!;
    // A driver that reaps only when interrupted, as NAPI does: each reap re-arms used_event, so the
    // next completion is wanted. Frames go one at a time, each once the device has sent the last.
    for (let i = 0; i < frames; i++) {
      expect(b.drv.send(junkFrame(b, i))).toBe(true);
      await metricsWhen(b, 1, (x) => x.frames === i + 1);
      // A moment for the worker to reach its sleep, where it signals (or holds).
      const t = performance.now() + 0.2;
      while (performance.now() < t) await new Promise((r) => setImmediate(r));
      if (native.poll([tx.callFd], 0)) {
        native.eventfdRead(tx.callFd);
        b.drv.reclaimTx();
      }
    }
    // Past the last hold's deadline: its decision is in the counters.
    await new Promise((r) => setTimeout(r, (2 * usecs) / 1000 + 20));
    const m = q(b.dev.metrics(), 1);
    await b.close();
    bed = undefined;
    return m;
  };
  const off = await run(0);
  const on = await run(5000);
  expect(off.frames).toBe(frames);
  expect(on.frames).toBe(frames);
  expect(off.interruptsHeld).toBe(0);
  expect(off.interrupts).toBeGreaterThan(frames * 0.5);
  expect(on.interruptsHeld).toBeGreaterThan(0);
  expect(on.interrupts).toBeLessThan(off.interrupts / 4);
});

it('request/response: back-to-back echoes answered by the host are not each held (a hold that bought nothing backs off)', async () => {
  bed = await createBed({ accept: [...ACCEPT], device: { coalesce: LONG } });
  const b = bed;
  const rx = b.drv.rx[0]!;
  const exchanges = 150;
  let replies = 0;
  // Each echo goes out when the last reply is in: the RX queue is always busy (< 100 ms since its
  // last decision), but nothing else ever joins a hold, so each one only delays its reply.
  for (let i = 0; i < exchanges; i++) {
    const echo = icmpEchoRequest({ srcMac: b.guestMac, dstMac: b.tapMac, srcIp: ip4(b.guestIp), dstIp: ip4(b.hostIp), seq: i });
    expect(b.drv.send(echo)).toBe(true);
    // A driver that reaps on its interrupt (NAPI): it takes the reply only once signalled.
    let called = false;
    for (let w = 0; w < 20 && !called; w++) called = await rx.waitCall(100);
    expect(called).toBe(true);
    expect(b.drv.receive().some((f) => isIcmpEchoReply(f.frame))).toBe(true);
    replies++;
    b.drv.reclaimTx();
  }
  expect(replies).toBe(exchanges);
  const m = q(b.dev.metrics(), 0);
  // Holds tried: after the 1st busy reply, then after backoffs of 1, 2, 4 … (8 within 150 exchanges
  // for MAX_BACKOFF 256). Without the backoff every reply after the first would be held: 149.
  expect(MAX_BACKOFF).toBeGreaterThanOrEqual(128);
  expect(m.interruptsHeld).toBeGreaterThanOrEqual(1);
  expect(m.interruptsHeld).toBeLessThanOrEqual(9);
  expect(m.interrupts).toBeGreaterThanOrEqual(exchanges);
});
