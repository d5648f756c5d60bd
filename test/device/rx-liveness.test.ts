/**
 * Property: the RX loop never sleeps while it has work, and delivers every frame once, in order.
 *
 * Random steps over one RX queue (rx-rig.ts: the loop in this thread, a real tap), set up as some kind
 * of driver would (VARIANTS): frames into the tap, buffers posted by the driver, more posted by "the
 * driver's other CPU" just as a burst publishes (a frame observer), and used entries reaped. A model
 * says when the device has work: a frame for the guest waits, the buffers the device has not used
 * hold the room it asks for one frame (with MRG_RXBUF room for the largest frame, without it one
 * buffer), and the rate limit, if any, lets a frame go. When it has none, the test writes the loop's
 * control eventfd so that its sleep ends at once; when it has, a pass must not sleep at all, so every
 * pass must return well before the sleep's 1-s cap.
 *
 * Every frame for the guest must reach the driver intact, in order, with num_buffers matching; every
 * frame the RX filter refuses (another MAC, or a VLAN not in the table) must be dropped and counted.
 * A buffer too short for a frame, which a hostile driver may post, must come back empty and counted,
 * never between a frame's buffers. A pass the rate limit stops (its clock is the test's) must take
 * nothing. LGNET_FUZZ_RUNS sets the number of sequences (60).
 */
import fc from 'fast-check';
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { SLEEP_MS } from '../../device/loops.ts';
import type { FeatureName } from '../../device/features.ts';
import { MAX_FRAME_LEN } from '../../device/header.ts';
import { M } from '../../device/metrics.ts';
import { RateLimiter, type RateLimit } from '../../device/rate-limit.ts';
import type { FrameObserver, FrameView } from '../../device/service.ts';
import { fuzzRuns } from '../sandbox/vhost-user-fuzz-helpers.ts';
import { mac } from '../../harness/frames.ts';
import { LinkPool, rigFeatures, type LinkKind, type RigLink } from './rig-link.ts';
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
  /** VLAN filtering (CTRL_VLAN) with VLAN_OK in the table: frames tagged with another VLAN are dropped. */
  vlan?: boolean;
  /** Also posts, now and then, a buffer of this length: too short for any frame (below the device's minimum). */
  short?: number;
  /** A rate limit, over the test's clock; a step moves that clock by up to one refill, most steps not at all. */
  limit?: RateLimit;
  /** What the queue reads from (rig-link.ts): a tap (default), or a pair backend's ring. */
  backend?: LinkKind;
}

/** What a driver's RX buffer must hold at least: the header, and without MRG_RXBUF the Ethernet header too. */
const minChain = (v: Variant): number => (v.extra.includes('MRG_RXBUF') ? HDR : HDR + 14);

const MRG_NEED = HDR + 1500 + 14 + 4; // header, MTU, Ethernet header and a VLAN tag
const MIXED = [64, 256, 512, 1024, 1536, 2048];
const LINUX: FeatureName[] = ['MRG_RXBUF', 'CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6'];

const VARIANTS: Variant[] = [
  // MRG_RXBUF without GSO (DPDK's virtio PMD).
  { name: 'MRG_RXBUF, mixed buffers', size: 16, extra: ['MRG_RXBUF'], bufs: MIXED, need: MRG_NEED, short: 8 },
  // Plain RX: one buffer a frame, each large enough.
  { name: 'plain', size: 16, extra: [], bufs: [2048], need: 0, short: 20 },
  // A Linux guest: MRG_RXBUF with GSO, so room for the largest GSO frame (the staged path on io_uring).
  { name: "a Linux guest's features", size: 64, extra: LINUX, bufs: [1536, 2048], need: HDR + MAX_FRAME_LEN, short: 8 },
  // The RX filter on (CTRL_RX, CTRL_VLAN): the merged path, stopping at frames it must judge.
  { name: 'MRG_RXBUF with a filter', size: 16, extra: ['MRG_RXBUF'], bufs: MIXED, need: MRG_NEED, filter: true },
  { name: 'plain with MAC and VLAN filters', size: 16, extra: ['CTRL_VQ', 'CTRL_RX', 'CTRL_VLAN'], bufs: [2048], need: 0, filter: true, vlan: true, short: 20 },
  { name: 'MRG_RXBUF with VLAN filtering', size: 16, extra: ['MRG_RXBUF', 'CTRL_VQ', 'CTRL_VLAN'], bufs: MIXED, need: MRG_NEED, vlan: true, short: 8 },
  // Rate limits (Firecracker's buckets): frames on the batched path, bytes on the merged one.
  { name: 'plain with a frames limit', size: 16, extra: [], bufs: [2048], need: 0, short: 20, limit: { ops: { size: 2, refillMs: 10 } } },
  { name: 'MRG_RXBUF with a bytes limit', size: 16, extra: ['MRG_RXBUF'], bufs: MIXED, need: MRG_NEED, short: 8, limit: { bytes: { size: 1500, refillMs: 10 } } },
  // The pair backend (an embedding VMM's two devices back to back): its port has no merged read, so
  // MRG_RXBUF and the filters take the per-frame path, and plain RX the batched one.
  { name: 'MRG_RXBUF over a pair', size: 16, extra: ['MRG_RXBUF'], bufs: MIXED, need: MRG_NEED, short: 8, backend: 'pair' },
  { name: 'plain with MAC and VLAN filters over a pair', size: 16, extra: ['CTRL_VQ', 'CTRL_RX', 'CTRL_VLAN'], bufs: [2048], need: 0, filter: true, vlan: true, short: 20, backend: 'pair' },
  { name: 'plain with a frames limit over a pair', size: 16, extra: [], bufs: [2048], need: 0, short: 20, limit: { ops: { size: 2, refillMs: 10 } }, backend: 'pair' },
];

/** A unicast address the filter does not hold. */
const OTHER = mac('52:54:00:aa:bb:cc');
/** The VLAN the filter's table holds, and one it does not. */
const VLAN_OK = 5;
const VLAN_DENIED = 7;

type Kind = 'guest' | 'other' | 'tagged' | 'denied';

interface Step {
  frames: Array<{ len: number; kind: Kind }>;
  post: number[];
  race: number[];
  reap: boolean;
  /** Milliseconds the rate limit's clock moves before the pass. */
  dt: number;
}

const stepArb = (v: Variant): fc.Arbitrary<Step> => {
  const kinds: Array<fc.WeightedArbitrary<Kind>> = [{ arbitrary: fc.constant('guest'), weight: 3 }];
  if (v.filter) kinds.push({ arbitrary: fc.constant('other'), weight: 1 });
  if (v.vlan) kinds.push({ arbitrary: fc.constant('tagged'), weight: 1 }, { arbitrary: fc.constant('denied'), weight: 1 });
  const buf = v.short === undefined
    ? fc.constantFrom(...v.bufs)
    : fc.oneof({ arbitrary: fc.constantFrom(...v.bufs), weight: 7 }, { arbitrary: fc.constant(v.short), weight: 1 });
  const refill = Math.max(v.limit?.ops?.refillMs ?? 0, v.limit?.bytes?.refillMs ?? 0);
  return fc.record({
    frames: fc.array(fc.record({ len: fc.integer({ min: 60, max: 1514 }), kind: fc.oneof(...kinds) }), { maxLength: 3 }),
    post: fc.array(buf, { maxLength: v.size >> 1 }),
    race: fc.array(buf, { maxLength: v.size >> 2 }),
    reap: fc.boolean(),
    // Mostly no time at all, so that the buckets run dry.
    dt: fc.oneof({ arbitrary: fc.constant(0), weight: 2 }, { arbitrary: fc.integer({ min: 0, max: refill }), weight: 1 }),
  });
};

/** Drains an eventfd's count (nonblocking; nothing to read is fine). */
function drain(fd: number): void {
  if (native.poll(Int32Array.of(fd), 0)) native.eventfdRead(fd);
}

interface Sent {
  len: number;
  seq: number;
  /** The filter refuses it (another MAC, or a VLAN not in the table). */
  drop: boolean;
  vid?: number;
}

/** The test's side: what was sent and posted, what the device took (seen by the observer), what the driver got. */
class Model {
  /** Frames in the tap (or read ahead by the port) that the device has not consumed, in order. */
  readonly waiting: Sent[] = [];
  /** Frames the device delivered that the driver has not reaped. */
  readonly delivered: Sent[] = [];
  /** Lengths of posted buffers the device has not filled, in ring order (short ones too, until a frame passes them). */
  readonly unused: number[] = [];
  seq = 0;
  /** Short buffers the driver got back empty. */
  shortsBack = 0;
  /** Frames the filter refused that the device has dropped so far (rxDropFiltered as last synced). */
  private filtered = 0;

  private readonly need: number;
  private readonly minChain: number;

  constructor(need: number, minChain: number) {
    this.need = need;
    this.minChain = minChain;
  }

  usable(len: number): boolean {
    return len >= this.minChain;
  }

  room(): number {
    return this.unused.reduce((a, b) => a + (this.usable(b) ? b : 0), 0);
  }

  /** Whether the device has a frame to deliver, room for it, and leave to (frames it drops come first, in order). */
  hasWork(open: boolean): boolean {
    if (!open || !this.waiting.some((f) => !f.drop)) return false;
    return this.need === 0 ? this.unused.some((b) => this.usable(b)) : this.room() >= this.need;
  }

  /**
   * The device dropped refused frames up to `count` in all: the earliest such frames leave `waiting`.
   * Not only at its head: on io_uring a frame read ahead may wait in the ring's stash for room while a
   * later one is dropped.
   */
  syncFiltered(count: number): void {
    expect(count, 'a drop the device did not count').toBeGreaterThanOrEqual(this.filtered);
    for (; this.filtered < count; this.filtered++) {
      const i = this.waiting.findIndex((f) => f.drop);
      expect(i, 'the device dropped a frame the filter accepts').toBeGreaterThanOrEqual(0);
      this.waiting.splice(i, 1);
    }
  }

  /**
   * The device delivered the oldest waiting frame for the guest into `count` buffers: the first
   * `count` usable ones not used yet (short ones before and between them come back empty).
   */
  took(v: FrameView): void {
    while (this.waiting[0]?.drop) {
      this.waiting.shift(); // read before it, so dropped: checked against the counter at the next sync
      this.filtered++;
    }
    const f = this.waiting.shift();
    expect(f, 'the device delivered a frame nobody sent').toBeDefined();
    expect(v.len).toBe(f!.len);
    let k = 0;
    for (let usable = 0; usable < v.count; k++) {
      expect(k, 'the device used more buffers than were posted').toBeLessThan(this.unused.length);
      if (this.usable(this.unused[k]!)) usable++;
    }
    this.unused.splice(0, k);
    this.delivered.push(f!);
  }

  /** The drops the device counted must be those the model took off. */
  checkFiltered(count: number): void {
    expect(count).toBe(this.filtered);
  }
}

/** Reaps the used ring: each frame's num_buffers entries, its length and payload checked; short buffers back empty. */
function reap(r: RxRig, m: Model): void {
  const used = r.used();
  for (let i = 0; i < used.length; ) {
    const first = used[i]!;
    if (first.len === 0) {
      expect(m.usable(first.cap), `a ${first.cap}-byte buffer came back empty`).toBe(false);
      m.shortsBack++;
      i++;
      continue;
    }
    const n = first.head[10]! | (first.head[11]! << 8);
    expect(n).toBeGreaterThanOrEqual(1);
    expect(i + n, 'a frame announced more buffers than were used').toBeLessThanOrEqual(used.length);
    let total = 0;
    for (let k = 0; k < n; k++) total += used[i + k]!.len;
    const f = m.delivered.shift();
    expect(f, 'the driver got a frame the device did not report').toBeDefined();
    expect(total).toBe(f!.len + HDR);
    if (f!.vid === undefined) {
      expect(first.head[HDR + 14]).toBe(f!.seq & 0xff);
    } else {
      expect([...first.head.subarray(HDR + 12, HDR + 16)]).toEqual([0x81, 0x00, f!.vid >> 8, f!.vid & 0xff]);
      expect(first.head[HDR + 18]).toBe(f!.seq & 0xff);
    }
    i += n;
  }
}

function run(v: Variant, format: 'split' | 'packed', steps: Step[], link: RigLink): void {
  const r = rxRig({ format, size: v.size, slotSize: 2048, extra: v.extra, link });
  if (v.filter) r.filter.promisc = false;
  if (v.vlan) {
    r.filter.vlanFiltering = true;
    r.filter.vlans[VLAN_OK >>> 5]! |= 1 << (VLAN_OK & 31);
  }
  let now = 0;
  const limiter = v.limit ? new RateLimiter(v.limit, () => now) : null;
  const open = (): boolean => limiter === null || limiter.allowance(1) > 0;
  const m = new Model(v.need, minChain(v));
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
      if (!m.hasWork(open())) native.eventfdWrite(r.ctlFd, 1);
    },
  };
  r.ctx.plug(driverCpu);
  if (limiter) r.ctx.limit(limiter);
  const pass = (what: string): void => {
    const gate = open();
    if (!m.hasWork(gate)) native.eventfdWrite(r.ctlFd, 1);
    const frames = r.c[M.frames]!;
    const throttled = r.c[M.throttled]!;
    const t0 = performance.now();
    r.loop.pass();
    const ms = performance.now() - t0;
    drain(r.ctlFd);
    m.syncFiltered(r.c[M.rxDropFiltered]!);
    expect(ms, `${what}: the pass slept with work to do (${JSON.stringify({ waiting: m.waiting.length, room: m.room() })})`).toBeLessThan(SLEEP_MS / 2);
    if (!gate) {
      expect(r.c[M.frames], `${what}: a frame went past the rate limit`).toBe(frames);
      expect(r.c[M.throttled]).toBe(throttled + 1);
    }
  };
  for (const [i, s] of steps.entries()) {
    if (s.reap || r.freeSlots() < s.post.length) reap(r, m);
    for (const { len, kind } of s.frames) {
      if (m.waiting.length >= 24) break; // well under the tap's queue
      const vid = kind === 'tagged' ? VLAN_OK : kind === 'denied' ? VLAN_DENIED : undefined;
      r.send(len, ++m.seq, kind === 'other' ? OTHER : GUEST_MAC, vid);
      m.waiting.push({ len, seq: m.seq, drop: kind === 'other' || kind === 'denied', vid });
    }
    const lens = s.post.slice(0, r.freeSlots());
    if (lens.length > 0) {
      r.post(lens);
      m.unused.push(...lens);
    }
    race = s.race;
    now += s.dt;
    pass(`step ${i}`);
  }
  // Everything still waiting arrives once there is room (and, with a rate limit, time).
  for (let i = 0; m.waiting.length > 0 && i < 64; i++) {
    reap(r, m);
    const lens = new Array<number>(r.freeSlots()).fill(2048);
    if (lens.length > 0) {
      r.post(lens);
      m.unused.push(...lens);
    }
    race = [];
    now += 10;
    pass(`drain ${i}`);
  }
  reap(r, m);
  expect(m.waiting).toEqual([]);
  expect(m.delivered).toEqual([]);
  m.checkFiltered(r.c[M.rxDropFiltered]!);
  expect(r.c[M.frames]! + r.c[M.rxDropFiltered]!).toBe(m.seq);
  expect(r.c[M.rxDropShortBuffer], 'short buffers counted and those the driver got back empty').toBe(m.shortsBack);
  expect(r.c[M.rxDropTooBig]! + r.c[M.rxDropBackend]!).toBe(0);
  r.close();
}

for (const v of VARIANTS) {
  for (const format of ['split', 'packed'] as const) {
    it(`${v.name}, ${format}: the RX loop never sleeps with work to do, and every frame arrives once, in order`, () => {
      // One tap for the runs while they end clean: each run is a driver reset over the same backend.
      const pool = new LinkPool('lgrxrig', rigFeatures(format, v.extra), v.backend);
      fc.assert(fc.property(fc.array(stepArb(v), { minLength: 1, maxLength: 30 }), (steps) => run(v, format, steps, pool.take())), { numRuns: fuzzRuns(60) });
    }, 120_000);
  }
}
