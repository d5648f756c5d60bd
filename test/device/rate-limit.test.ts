/**
 * Rate limits (device/rate-limit.ts): the token buckets on a clock the test drives, then a real device
 * whose TX queue is limited in frames and whose RX queue is limited in bytes. A limited queue delivers
 * everything, only spread out in time, and says how often it waited.
 */
import { describe, expect, it } from 'vitest';

import { parseBucket, RateLimiter, TokenBucket } from '../../device/rate-limit.ts';
import { ip4, udpFrame } from '../../harness/frames.ts';
import { createBed, expectedPayload, udpSend, udpSink, type Bed } from './helpers.ts';

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
