/**
 * Two ways an RX queue could leave a frame waiting while it had room for it.
 *
 * 1. An RX queue that runs out of buffers mid-frame (MRG_RXBUF, a frame spanning two) while the driver
 * adds more: the driver publishes after the device's pop found the ring empty and before the device
 * sleeps. Under EVENT_IDX that publish need not kick (avail_event is stale then), and the driver, out
 * of buffers, waits for frames. The device must see those buffers before it sleeps, else the frame
 * waiting in the tap sits there until the sleep's timeout (loops.ts SLEEP_MS, 1 s).
 *
 *    The loop runs in this thread (rx-rig.ts), so that the driver's publish lands in that window every
 *    time: a frame observer, called as the burst publishes its used entries, is the driver's other CPU.
 *
 * 2. On io_uring, a frame read ahead that found no room waits in the ring's stash (docs/ARCHITECTURE.md,
 *    "The stage"). If the next buffers each hold the largest frame, MRG_RXBUF without GSO would take
 *    the batched path, which reads the tap and knows nothing of the stash: the frame would wait until
 *    a smaller buffer came, and frames read after it would pass it.
 *
 * 3. A burst that a rate limit keeps to one chain, and that chain too short for a frame, read nothing
 *    from the backend. It said the backend was empty, so the loop slept on the backend's fd. A pair
 *    backend's port reads its eventfd before it looks at the ring, so a frame that an earlier burst
 *    (kept to one frame by the limit) left behind does not ring it again: the frame waited for the
 *    sleep's cap although a buffer for it was in the ring.
 *
 * rx-liveness.test.ts checks all three in random sequences.
 */
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { SLEEP_MS } from '../../device/loops.ts';
import { M } from '../../device/metrics.ts';
import { RateLimiter } from '../../device/rate-limit.ts';
import type { FrameObserver } from '../../device/service.ts';
import { makeLink, rigFeatures } from './rig-link.ts';
import { rxRig } from './rx-rig.ts';

const lens = (used: Array<{ len: number }>): number[] => used.map((u) => u.len);

for (const format of ['split', 'packed'] as const) {
  it(`${format}: buffers added between the pop that ran dry and the sleep, without a kick, take the waiting frame at once`, () => {
    const r = rxRig({ format, size: 8, slotSize: 1024, extra: ['MRG_RXBUF'] });
    // Three buffers of 1024 bytes; two frames of 1400 bytes (with the header, each needs two).
    r.post([1024, 1024, 1024]);
    native.eventfdRead(r.drv.kickFd); // that kick is not the one this test is about
    r.send(1400, 1);
    r.send(1400, 2);
    // The driver's other CPU: as the device publishes the first frame, two more buffers arrive.
    let racedKick: boolean | undefined;
    const driverCpu: FrameObserver = {
      beginBurst() {},
      onFrame() {},
      endBurst() {
        if (racedKick === undefined) racedKick = r.post([1024, 1024]);
      },
    };
    r.ctx.plug(driverCpu);
    const t0 = performance.now();
    r.loop.pass(); // frame 1 into buffers 1–2; frame 2 does not fit buffer 3: no buffers
    const first = performance.now() - t0;
    // The race happened as meant: buffers published after the pop, and no kick for them.
    expect(racedKick).toBe(false);
    expect(r.c[M.rxNoBuffers]).toBe(1);
    expect(lens(r.used())).toEqual([1024, 1412 - 1024]); // header + frame 1 in two buffers
    // The loop saw the new buffers instead of sleeping past them for a kick that never comes.
    expect(first).toBeLessThan(SLEEP_MS / 2);
    expect(r.c[M.sleeps]).toBe(0);
    // Frame 2 goes into the kept buffer and a new one; the loop then runs dry for good and sleeps,
    // and the control eventfd ends that sleep at once.
    native.eventfdWrite(r.ctlFd, 1);
    r.loop.pass();
    const u = r.used();
    expect(lens(u)).toEqual([1024, 1412 - 1024]);
    expect(u[0]!.head[12 + 14]).toBe(2);
    expect(r.c[M.frames]).toBe(2);
    expect(r.c[M.kicks]).toBe(0);
  });
}

it('a frame read ahead and left without room is delivered first when room comes, whatever path the new buffers pick', () => {
  const r = rxRig({ format: 'split', size: 16, slotSize: 2048, extra: ['MRG_RXBUF'] });
  // 1664 bytes of small buffers: room for one frame (1530), so the burst reads both frames; the first
  // (629 + 12 bytes) takes all five buffers, the second finds none left.
  r.post([64, 64, 256, 256, 1024]);
  r.send(629, 1);
  r.send(60, 2);
  native.eventfdWrite(r.ctlFd, 1); // the sleep that follows ends at once
  r.loop.pass();
  expect(lens(r.used())).toEqual([64, 64, 256, 256, 1]);
  expect(r.c[M.frames]).toBe(1);
  // Buffers that each hold the largest frame, and a third frame behind the second.
  r.post([2048, 2048, 2048, 2048]);
  r.send(100, 3);
  for (let i = 0; i < 3 && r.c[M.frames] < 3; i++) {
    native.eventfdWrite(r.ctlFd, 1);
    r.loop.pass();
  }
  const u = r.used();
  expect(lens(u)).toEqual([72, 112]);
  expect(u.map((x) => x.head[12 + 14])).toEqual([2, 3]); // in order
  expect(r.c[M.rxDropBackend] + r.c[M.rxDropStopped]).toBe(0);
});

it('a burst that takes only a short buffer does not sleep on a pair backend while a frame waits', () => {
  const link = makeLink('lgrxrig', rigFeatures('split'), 'pair');
  const r = rxRig({ format: 'split', size: 8, slotSize: 2048, link });
  let now = 0;
  r.ctx.limit(new RateLimiter({ ops: { size: 1, refillMs: 10 } }, () => now)); // one frame per burst
  r.post([2048, 20, 2048]); // the second is too short for a frame (header + Ethernet header: 26)
  r.send(60, 1);
  r.send(60, 2);
  r.loop.pass(); // frame 1; frame 2 stays in the pair's ring
  expect(r.c[M.frames]).toBe(1);
  now += 10;
  const t0 = performance.now();
  r.loop.pass(); // the short buffer, given back empty
  expect(performance.now() - t0, 'the pass slept with a frame and a buffer for it').toBeLessThan(SLEEP_MS / 2);
  expect(r.c[M.rxDropShortBuffer]).toBe(1);
  now += 10;
  r.loop.pass();
  const u = r.used();
  expect(lens(u)).toEqual([72, 0, 72]);
  expect(u[2]!.head[12 + 14]).toBe(2);
});
