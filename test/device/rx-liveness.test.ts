/**
 * Property: the RX loop never sleeps while it has work, and delivers every frame once, in order.
 *
 * Random steps over one RX queue (rx-rig.ts: the loop in this thread, a real tap), set up as three
 * kinds of driver would, two of them also with the RX filter on (VARIANTS): frames into the tap,
 * buffers posted by the driver, more posted by "the driver's other CPU" just as a burst publishes (a
 * frame observer), and used entries reaped. A model says when the device has work: a frame for the
 * guest waits, and the buffers the device has not used hold the room it asks for one frame (with
 * MRG_RXBUF room for the largest frame, without it one buffer). When it has none, the test writes the
 * loop's control eventfd so that its sleep ends at once; when it has, a pass must not sleep at all,
 * so every pass must return well before the sleep's 1-s cap. Every frame for the guest must reach
 * the driver intact, in order, with num_buffers matching; every other one must be dropped and counted.
 * LGNET_FUZZ_RUNS sets the number of sequences (20).
 */
import fc from 'fast-check';
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { SLEEP_MS } from '../../device/loops.ts';
import type { FeatureName } from '../../device/features.ts';
import { MAX_FRAME_LEN } from '../../device/header.ts';
import { M } from '../../device/metrics.ts';
import type { FrameObserver, FrameView } from '../../device/service.ts';
import { fuzzRuns } from '../sandbox/vhost-user-fuzz-helpers.ts';
import { mac } from '../../harness/frames.ts';
import { GUEST_MAC, rxRig, type RxRig } from './rx-rig.ts';

const HDR = 12;

/**
 * A queue as some driver sets it up: its ring, the features it accepts, the buffer sizes it posts, and
 * the room the device asks for one frame (`need`; 0: any one buffer, as without MRG_RXBUF).
 */
interface Variant {
  name: string;
  size: number;
  extra: FeatureName[];
  bufs: readonly number[];
  need: number;
  /** Not promiscuous: frames to another MAC (a quarter of them) are dropped and counted, and take no buffer. */
  filter?: boolean;
}

const VARIANTS: Variant[] = [
  // MRG_RXBUF without GSO (DPDK's virtio PMD): room for header, MTU, Ethernet header and a VLAN tag.
  { name: 'MRG_RXBUF, mixed buffers', size: 16, extra: ['MRG_RXBUF'], bufs: [64, 256, 512, 1024, 1536, 2048], need: HDR + 1500 + 14 + 4 },
  // Plain RX: one buffer a frame, each large enough.
  { name: 'plain', size: 16, extra: [], bufs: [2048], need: 0 },
  // A Linux guest: MRG_RXBUF with GSO, so room for the largest GSO frame (the staged path on io_uring).
  { name: "a Linux guest's features", size: 64, extra: ['MRG_RXBUF', 'CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6'], bufs: [1536, 2048], need: HDR + MAX_FRAME_LEN },
  // The same two with the RX filter on (CTRL_RX): the merged path, stopping at frames it must judge.
  { name: 'MRG_RXBUF with a filter', size: 16, extra: ['MRG_RXBUF'], bufs: [64, 256, 512, 1024, 1536, 2048], need: HDR + 1500 + 14 + 4, filter: true },
  { name: 'plain with a filter', size: 16, extra: [], bufs: [2048], need: 0, filter: true },
];

/** A unicast address the filter does not hold. */
const OTHER = mac('52:54:00:aa:bb:cc');

interface Step {
  frames: Array<{ len: number; other: boolean }>;
  post: number[];
  race: number[];
  reap: boolean;
}

const stepArb = (v: Variant): fc.Arbitrary<Step> =>
  fc.record({
    frames: fc.array(fc.record({ len: fc.integer({ min: 60, max: 1514 }), other: v.filter ? fc.integer({ min: 0, max: 3 }).map((x) => x === 0) : fc.constant(false) }), { maxLength: 3 }),
    post: fc.array(fc.constantFrom(...v.bufs), { maxLength: v.size >> 1 }),
    race: fc.array(fc.constantFrom(...v.bufs), { maxLength: v.size >> 2 }),
    reap: fc.boolean(),
  });

/** Drains an eventfd's count (nonblocking; nothing to read is fine). */
function drain(fd: number): void {
  if (native.poll(Int32Array.of(fd), 0)) native.eventfdRead(fd);
}

/** The test's side: what was sent and posted, what the device took (seen by the observer), what the driver got. */
class Model {
  /** Frames in the tap (or read ahead by the port) that the device has not consumed, in order. */
  readonly waiting: Array<{ len: number; seq: number; other: boolean }> = [];
  /** Frames the device delivered that the driver has not reaped. */
  readonly delivered: Array<{ len: number; seq: number }> = [];
  /** Lengths of posted buffers the device has not filled, in ring order. */
  readonly unused: number[] = [];
  seq = 0;
  /** Frames to another MAC the device has dropped so far (rxDropFiltered as last synced). */
  private filtered = 0;
  private readonly need: number;

  constructor(need: number) {
    this.need = need;
  }

  room(): number {
    return this.unused.reduce((a, b) => a + b, 0);
  }

  /** Whether the device has a frame to deliver and room for it (frames it drops come first, in order). */
  hasWork(): boolean {
    return this.waiting.some((f) => !f.other) && (this.need === 0 ? this.unused.length > 0 : this.room() >= this.need);
  }

  /**
   * The device dropped frames to another MAC up to `count` in all: the earliest such frames leave
   * `waiting`. Not only at its head: on io_uring a frame read ahead may wait in the ring's stash for
   * room while a later one is dropped.
   */
  syncFiltered(count: number): void {
    expect(count, 'a drop the device did not count').toBeGreaterThanOrEqual(this.filtered);
    for (; this.filtered < count; this.filtered++) {
      const i = this.waiting.findIndex((f) => f.other);
      expect(i, 'the device dropped a frame the filter accepts').toBeGreaterThanOrEqual(0);
      this.waiting.splice(i, 1);
    }
  }

  /** The device delivered the oldest waiting frame to the guest's MAC into `count` buffers. */
  took(v: FrameView): void {
    while (this.waiting[0]?.other) {
      this.waiting.shift(); // read before it, so dropped: checked against the counter at the next sync
      this.filtered++;
    }
    const f = this.waiting.shift();
    expect(f, 'the device delivered a frame nobody sent').toBeDefined();
    expect(v.len).toBe(f!.len);
    expect(v.count).toBeLessThanOrEqual(this.unused.length);
    this.unused.splice(0, v.count);
    this.delivered.push(f!);
  }

  /** The drops the device counted must be those the model took off. */
  checkFiltered(count: number): void {
    expect(count).toBe(this.filtered);
  }
}

/** Reaps the used ring: each frame's num_buffers entries, its length and payload checked. */
function reap(r: RxRig, m: Model): void {
  const used = r.used();
  for (let i = 0; i < used.length; ) {
    const first = used[i]!;
    const n = first.head[10]! | (first.head[11]! << 8);
    expect(n).toBeGreaterThanOrEqual(1);
    expect(i + n, 'a frame announced more buffers than were used').toBeLessThanOrEqual(used.length);
    let total = 0;
    for (let k = 0; k < n; k++) total += used[i + k]!.len;
    const f = m.delivered.shift();
    expect(f, 'the driver got a frame the device did not report').toBeDefined();
    expect(total).toBe(f!.len + HDR);
    expect(first.head[HDR + 14]).toBe(f!.seq & 0xff);
    i += n;
  }
}

function run(v: Variant, format: 'split' | 'packed', steps: Step[]): void {
  const r = rxRig({ format, size: v.size, slotSize: 2048, extra: v.extra });
  if (v.filter) r.filter.promisc = false;
  const m = new Model(v.need);
  let race: number[] = [];
  const driverCpu: FrameObserver = {
    beginBurst() {},
    onFrame(v) {
      m.took(v);
    },
    endBurst() {
      m.syncFiltered(r.c[M.rxDropFiltered]!);
      // The driver's other CPU posts as the burst publishes; then, with nothing left to do, the
      // loop's sleep is made to end at once (a sleep with work left would last the full cap).
      const lens = race.slice(0, r.freeSlots());
      race = [];
      if (lens.length > 0) {
        r.post(lens);
        m.unused.push(...lens);
      }
      if (!m.hasWork()) native.eventfdWrite(r.ctlFd, 1);
    },
  };
  r.ctx.plug(driverCpu);
  const pass = (what: string): void => {
    if (!m.hasWork()) native.eventfdWrite(r.ctlFd, 1);
    const t0 = performance.now();
    r.loop.pass();
    const ms = performance.now() - t0;
    drain(r.ctlFd);
    m.syncFiltered(r.c[M.rxDropFiltered]!);
    expect(ms, `${what}: the pass slept with work to do (${JSON.stringify({ waiting: m.waiting.length, room: m.room() })})`).toBeLessThan(SLEEP_MS / 2);
  };
  for (const [i, s] of steps.entries()) {
    if (s.reap || r.freeSlots() < s.post.length) reap(r, m);
    for (const { len, other } of s.frames) {
      if (m.waiting.length >= 24) break; // well under the tap's queue
      r.send(len, ++m.seq, other ? OTHER : GUEST_MAC);
      m.waiting.push({ len, seq: m.seq, other });
    }
    const lens = s.post.slice(0, r.freeSlots());
    if (lens.length > 0) {
      r.post(lens);
      m.unused.push(...lens);
    }
    race = s.race;
    pass(`step ${i}`);
  }
  // Everything still waiting arrives once there is room.
  for (let i = 0; m.waiting.length > 0 && i < 64; i++) {
    reap(r, m);
    const lens = new Array<number>(r.freeSlots()).fill(2048);
    if (lens.length > 0) {
      r.post(lens);
      m.unused.push(...lens);
    }
    race = [];
    pass(`drain ${i}`);
  }
  reap(r, m);
  expect(m.waiting).toEqual([]);
  expect(m.delivered).toEqual([]);
  m.checkFiltered(r.c[M.rxDropFiltered]!);
  expect(r.c[M.frames]! + r.c[M.rxDropFiltered]!).toBe(m.seq);
  expect(r.c[M.rxDropTooBig]! + r.c[M.rxDropShortBuffer]! + r.c[M.rxDropBackend]!).toBe(0);
  r.close();
}

for (const v of VARIANTS) {
  for (const format of ['split', 'packed'] as const) {
    it(`${v.name}, ${format}: the RX loop never sleeps with work to do, and every frame arrives once, in order`, () => {
      fc.assert(fc.property(fc.array(stepArb(v), { minLength: 1, maxLength: 30 }), (steps) => run(v, format, steps)), { numRuns: fuzzRuns(20) });
    }, 120_000);
  }
}
