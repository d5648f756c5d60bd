/**
 * Interrupt coalescing and lost-wakeup stress. Frames go to a destination MAC the namespace's kernel
 * drops early, so the device (not the host stack) is what is measured.
 */
import { expect, it } from 'vitest';
import { ethernet } from '../../harness/frames.ts';
import { createBed, udpSend, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

const OTHER = new Uint8Array([0x02, 0, 0, 0, 0, 0x99]);

function junkFrame(bed: Bed, i: number, len = 64): Uint8Array {
  const p = new Uint8Array(len - 14);
  p[0] = i & 0xff;
  return ethernet(OTHER, bed.guestMac, 0x88b5, p);
}

it('10,000 TX frames in bursts of 64 raise far fewer interrupts than frames', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'] });
  const total = 10_000;
  let sent = 0;
  while (sent < total) {
    for (let k = 0; k < 64 && sent < total; k++) {
      if (!bed.drv.send(junkFrame(bed, sent), { kick: false })) break;
      sent++;
    }
    bed.drv.flushTx();
    expect(await bed.drv.drainTx(0, 5000)).toBe(0);
  }
  const m = bed.dev.metrics().queues[1]!;
  expect(m.frames).toBe(total);
  // One interrupt per burst at most (the driver waits for each burst), so about total/64.
  expect(m.interrupts).toBeGreaterThan(0);
  expect(m.interrupts).toBeLessThanOrEqual(total / 20);
  expect(m.kicks).toBeLessThanOrEqual(total / 20);
});

it('100,000 TX frames with random pacing on the driver side all complete (no lost wake-up)', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'] });
  const total = 100_000;
  let sent = 0;
  let seed = 12345;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
  const t0 = Date.now();
  while (sent < total && Date.now() - t0 < 60_000) {
    const burst = 1 + rand(300);
    for (let k = 0; k < burst && sent < total; k++) {
      if (!bed.drv.send(junkFrame(bed, sent), { kick: false })) break;
      sent++;
    }
    bed.drv.flushTx();
    const pause = rand(10);
    if (pause < 3) await new Promise((r) => setTimeout(r, pause));
    bed.drv.reclaimTx();
  }
  expect(sent).toBe(total);
  expect(await bed.drv.drainTx(0, 5000)).toBe(0);
  expect(bed.dev.metrics().queues[1]!.frames).toBe(total);
});

it('RX under a flood with a slow, irregular guest: every frame the device took is delivered', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'], driver: { queueSize: 64 } });
  const sender = udpSend(bed, 6200, 200, 10_000, 0);
  let got = 0;
  let seed = 99;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
  const t0 = Date.now();
  let idle = 0;
  while (Date.now() - t0 < 20_000 && idle < 20) {
    const frames = bed.drv.receive();
    got += frames.length;
    idle = frames.length === 0 && sender.exitCode !== null ? idle + 1 : 0;
    if (rand(3) === 0) await new Promise((r) => setTimeout(r, 2 + rand(8)));
    else await bed.drv.rx[0]!.waitCall(50);
  }
  sender.kill();
  const m = bed.dev.metrics().queues[0]!;
  expect(got).toBeGreaterThan(1000);
  expect(m.frames).toBe(got);
  expect(m.rxNoBuffers).toBeGreaterThan(0); // the guest fell behind and the device waited for it
});

it('a queue under sustained load still stops promptly (the worker never sleeps, yet sees the command)', async () => {
  // Big frames and a long busy-poll keep the TX worker from ever reaching its sleep.
  bed = await createBed({ accept: ['VERSION_1', 'RING_EVENT_IDX', 'MAC'], mtu: 9000, device: { busyPoll: 2000 } });
  const b = bed;
  const r = b.drv.tx[0]!;
  const q = r.q;
  const frame = junkFrame(b, 0, 9000);
  const bufs: Array<[{ addr: number; len: number }]> = r.slots.map((addr) => {
    b.ram.write(addr, new Uint8Array(b.drv.hdrLen));
    b.ram.write(addr + b.drv.hdrLen, frame);
    return [{ addr, len: b.drv.hdrLen + frame.length }];
  });
  const slotOf = new Int32Array(q.size);
  for (let i = 0; i < q.size; i++) slotOf[q.add(bufs[i]!, [])] = i;
  r.publishAndKick();
  let running = true;
  const feeder = (async () => {
    while (running) {
      for (let h = q.popUsed(); h >= 0; h = q.popUsed()) slotOf[q.add(bufs[slotOf[h]!]!, [])] = slotOf[h]!;
      r.publishAndKick();
      await new Promise((res) => setImmediate(res));
    }
  })();
  let took = Infinity;
  try {
    await new Promise((res) => setTimeout(res, 300));
    expect(b.dev.metrics().queues[1]!.frames).toBeGreaterThan(1000);
    const t0 = Date.now();
    await b.dev.stopQueue(1);
    took = Date.now() - t0;
  } finally {
    running = false;
    await feeder;
  }
  expect(took).toBeLessThan(500);
  expect(b.dev.metrics().queues[1]!.running).toBe(false);
});
