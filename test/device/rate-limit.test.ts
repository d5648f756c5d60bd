/**
 * Rate limits (device/rate-limit.ts): the token buckets on a clock the test drives, then a real device
 * whose TX queue is limited in frames and whose RX queue is limited in bytes. A limited queue delivers
 * everything, only spread out in time, and says how often it waited. Limits changed while the queues
 * run (NetDevice.setRateLimit) take effect at once: raised, taken off, put on a queue that had none.
 */
import { describe, expect, it } from 'vitest';

import { parseBucket, RateLimiter, TokenBucket } from '../../device/rate-limit.ts';
import { ip4, udpFrame } from '../../harness/frames.ts';
import { NET_ERROR } from '../../device/errors.ts';
import { createBed, expectedPayload, udpSend, udpSink, until, type Bed } from './helpers.ts';

describe('token buckets', () => {
  it('start full, refill continuously up to the size, and lend into debt', () => {
    let t = 0;
    const b = new TokenBucket({ size: 100, refillMs: 1000 }, () => t);
    expect(b.tokens()).toBe(100);
    b.take(250); // one big frame: passes, leaves a debt
    expect(b.tokens()).toBe(-150);
    expect(b.waitMs()).toBeCloseTo(1510, 5); // until the balance is positive again
    t = 1000;
    expect(b.tokens()).toBe(-50);
    t = 5000;
    expect(b.tokens()).toBe(100); // capped at the size
    expect(b.waitMs()).toBe(0);
  });

  it('a limiter allows a burst only as large as both buckets hold (bytes in full-size frames), none while one is owed', () => {
    let t = 0;
    const l = new RateLimiter({ bytes: { size: 30_000, refillMs: 100 }, ops: { size: 8, refillMs: 100 } }, () => t);
    expect(l.allowance(32)).toBe(8); // min(32, 30000/1514 → 19, 8)
    expect(l.allowance(32, 6000)).toBe(5);
    for (let i = 0; i < 3; i++) l.charge(15_000); // 45000 bytes > 30000: in debt
    expect(l.allowance(32)).toBe(0);
    expect(l.waitMs()).toBeCloseTo((15_000 + 1) / 300, 5);
    t = 40;
    expect(l.allowance(32)).toBe(0); // bytes still owed: −15000 + 40·300 = −3000
    t = 60;
    expect(l.allowance(32)).toBe(1); // bytes +3000: one full-size frame; frames 5 + 4.8, capped at 8
  });

  it('an update replaces the buckets, full, and forgives the debt; a bucket left out is gone', () => {
    let t = 0;
    const l = new RateLimiter({ bytes: { size: 3000, refillMs: 100 } }, () => t);
    l.charge(10_000);
    expect(l.allowance(32)).toBe(0);
    l.update({ ops: { size: 4, refillMs: 100 } });
    expect(l.allowance(32)).toBe(4); // no bytes bucket any more; the frames bucket full
    for (let i = 0; i < 4; i++) l.charge(100_000);
    expect(l.allowance(32)).toBe(0);
    expect(l.waitMs()).toBeCloseTo(25, 5);
    expect(() => l.update({ ops: { size: 0, refillMs: 100 } })).toThrow(RangeError);
    expect(l.allowance(32)).toBe(0); // a refused update changed nothing
  });

  it('parses SIZE/MS and refuses anything else', () => {
    expect(parseBucket('125000000/1000')).toEqual({ size: 125_000_000, refillMs: 1000 });
    expect(parseBucket('10/0.5')).toEqual({ size: 10, refillMs: 0.5 });
    for (const bad of ['', '10', '10/', '/10', '0/100', '10/0', '-1/10', '1e3/10', '10/100/1']) expect(() => parseBucket(bad), bad).toThrow(RangeError);
  });
});

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

it('TX limited to 20 frames/s (bucket of 10): 30 frames all arrive, over at least a second', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC'], device: { rateLimit: { tx: { ops: { size: 10, refillMs: 500 } } } } });
  const sink = await udpSink(bed, 7500, 30, 10_000);
  const t0 = performance.now();
  for (let i = 0; i < 30; i++) {
    const f = udpFrame({ srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 5002, dstPort: 7500, payload: expectedPayload(64, i) });
    expect(bed.drv.send(f)).toBe(true);
  }
  expect(await bed.drv.drainTx(0, 8000)).toBe(0);
  const elapsed = performance.now() - t0;
  const got = await sink.datagrams();
  expect(got.map((d) => d.hex)).toEqual(Array.from({ length: 30 }, (_, i) => Buffer.from(expectedPayload(64, i)).toString('hex')));
  // 10 at once, then 20 more at 20/s: at least ~1 s (a little slack for the clock).
  expect(elapsed).toBeGreaterThan(900);
  const m = bed.dev.metrics().queues[1]!;
  expect(m.throttled).toBeGreaterThan(0);
  expect(m.frames).toBe(30);
}, 30_000);

it('RX limited to 30 kB/s (bucket of 3000 bytes): 20 datagrams of 1000 bytes all arrive, over at least half a second', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC'], device: { rateLimit: { rx: { bytes: { size: 3000, refillMs: 100 } } } } });
  const isOurs = (f: Uint8Array) => f.length >= 42 && f[23] === 17 && ((f[36]! << 8) | f[37]!) === 7510;
  const t0 = performance.now();
  const sender = udpSend(bed, 7510, 1000, 20, 0);
  const got: Uint8Array[] = [];
  while (got.length < 20 && performance.now() - t0 < 8000) got.push(...(await bed.drv.waitRx(1, { timeoutMs: 200 })).map((r) => r.frame).filter(isOurs));
  const elapsed = performance.now() - t0;
  sender.kill();
  expect(got.length).toBe(20);
  // 20 × 1042 bytes: 3000 at once, the rest at 30 kB/s: at least ~0.6 s.
  expect(elapsed).toBeGreaterThan(500);
  const m = bed.dev.metrics().queues[0]!;
  expect(m.throttled).toBeGreaterThan(0);
}, 30_000);

it('limits changed while the queues run: TX raised then taken off, RX put on a queue that had none, a bad one refused', async () => {
  // 10 frames an hour (the bed's own first frames among them): after those, the rest would wait.
  bed = await createBed({ accept: ['VERSION_1', 'MAC'], device: { rateLimit: { tx: { ops: { size: 10, refillMs: 3_600_000 } } } } });
  const dev = bed.dev;
  const txFrames = (): number => dev.metrics().queues[1]!.frames;
  const send = (n: number, from: number): void => {
    for (let i = 0; i < n; i++) {
      const f = udpFrame({ srcMac: bed!.guestMac, dstMac: bed!.tapMac, srcIp: ip4(bed!.guestIp), dstIp: ip4(bed!.hostIp), srcPort: 5003, dstPort: 7520, payload: expectedPayload(64, from + i) });
      expect(bed!.drv.send(f, { kick: true })).toBe(true);
    }
  };
  /** The TX frame count once it has not moved for 400 ms. */
  const settled = async (): Promise<number> => {
    for (let last = -1, n = txFrames(); ; last = n, n = txFrames()) {
      if (n === last) return n;
      await new Promise((r) => setTimeout(r, 400));
    }
  };
  send(30, 0);
  // A bucket lets its size through, and one frame more once its balance, drained to zero, is any
  // above it again (a frame goes on a positive balance and may leave a debt).
  const first = await settled();
  expect(first).toBeGreaterThanOrEqual(10);
  expect(first).toBeLessThanOrEqual(11);
  expect(dev.metrics().queues[1]!.throttled).toBeGreaterThan(0);

  // Raised: a new bucket of 15, full at once, and the old debt forgiven.
  await dev.setRateLimit({ tx: { ops: { size: 15, refillMs: 3_600_000 } } });
  const second = await settled();
  expect(second - first).toBeGreaterThanOrEqual(15);
  expect(second - first).toBeLessThanOrEqual(16);

  // Refused: nothing changes, the queue still waits.
  await expect(dev.setRateLimit({ tx: { ops: { size: -1, refillMs: 10 } } })).rejects.toMatchObject({ code: NET_ERROR.BAD_RATE_LIMIT });
  await new Promise((r) => setTimeout(r, 400));
  expect(txFrames()).toBe(second);

  // Taken off: the last 5 go at once, and later frames are not held.
  await dev.setRateLimit({ tx: null });
  await until('every frame', () => txFrames() === 30);
  send(20, 30);
  await until('20 frames more, unlimited', () => txFrames() === 50);
  expect(await bed.drv.drainTx(0, 5000)).toBe(0);

  // RX had no limit: 2 frames an hour from now on. The host sends 6; 2 reach the guest.
  await dev.setRateLimit({ rx: { ops: { size: 2, refillMs: 3_600_000 } } });
  const isOurs = (f: Uint8Array) => f.length >= 42 && f[23] === 17 && ((f[36]! << 8) | f[37]!) === 7521;
  const sender = udpSend(bed, 7521, 100, 6, 0);
  const got: Uint8Array[] = [];
  const t0 = performance.now();
  while (got.length < 2 && performance.now() - t0 < 5000) got.push(...(await bed.drv.waitRx(1, { timeoutMs: 200 })).map((r) => r.frame).filter(isOurs));
  for (let i = 0; i < 5; i++) got.push(...(await bed.drv.waitRx(1, { timeoutMs: 100 })).map((r) => r.frame).filter(isOurs));
  expect(got.length).toBeGreaterThanOrEqual(2);
  expect(got.length).toBeLessThanOrEqual(3);
  // TX keeps what it had (none): setting RX left it alone.
  send(5, 50);
  await until('5 TX frames, still unlimited', () => txFrames() === 55);
  await dev.setRateLimit({ rx: null });
  const t1 = performance.now();
  while (got.length < 6 && performance.now() - t1 < 5000) got.push(...(await bed.drv.waitRx(1, { timeoutMs: 200 })).map((r) => r.frame).filter(isOurs));
  sender.kill();
  expect(got.length).toBe(6);
}, 30_000);
