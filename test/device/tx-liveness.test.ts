/**
 * Property: the TX loop never sleeps while it has work, sends every good frame once, in order and
 * intact, and completes and counts every chain it must not send.
 *
 * Random steps over one TX queue (tx-rig.ts: the loop in this thread, a real tap, an AF_PACKET socket
 * on the namespace's side), set up as some kind of driver would (VARIANTS): chains posted by the
 * driver, cut into buffers at random places (the header too) and, where negotiated, through indirect
 * tables; more posted by "the driver's other CPU" while a burst is on (a frame observer); a clock
 * moved for the rate limit. Some chains are malformed as a hostile driver may make them: too short,
 * with a device-writable buffer, or with a header that asks for what was not negotiated or points
 * outside the frame. Each must be completed with length 0 and counted under its reason, and never
 * reach the tap.
 *
 * The model: the device has work when the driver posted chains it has not consumed and the rate
 * limit, if any, lets a frame go. Then a pass must consume (all of them without a limit), and must not
 * sleep; else the test writes the loop's control eventfd so that its sleep ends at once. A pass the
 * rate limit stops must consume nothing. LGNET_FUZZ_RUNS sets the number of sequences (40).
 *
 * Over a pair backend (an embedding VMM's two devices back to back) the frames go into a ring of a few
 * slots that the other side reads only now and then, through a filter hook that refuses some frames.
 * A frame that meets a full ring is completed and counted as the backend's drop; one the filter
 * refuses is counted as filtered; neither is a frame sent. So `frames` plus the drop counters is
 * every chain consumed, and what the other side reads is exactly the frames the model let in.
 */
import fc from 'fast-check';
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { SLEEP_MS } from '../../device/loops.ts';
import type { FeatureName } from '../../device/features.ts';
import { GSO, HDR, HDR_F } from '../../device/header.ts';
import { M } from '../../device/metrics.ts';
import { VERDICT } from '../../device/pair-backend.ts';
import type { FrameFilter } from '../../device/backend.ts';
import { RateLimiter, type RateLimit } from '../../device/rate-limit.ts';
import type { FrameObserver } from '../../device/service.ts';
import { ethernet, mac } from '../../harness/frames.ts';
import { fuzzRuns } from '../sandbox/vhost-user-fuzz-helpers.ts';
import { LinkPool, rigFeatures, type LinkKind, type RigLink } from './rig-link.ts';
import { MAX_PIECES, txRig, type TxChain, type TxRig } from './tx-rig.ts';

const HDR_LEN = HDR.LEN_V1;
const TYPE = 0x88b5;
/** EtherTypes the pair's filter hook refuses: DENY, and HOST with no host tap (both counted as filtered). */
const DENY_TYPE = 0x88b6;
const HOST_TYPE = 0x88b7;
/** Slots of a pair's rings here: fewer than a burst, so that the ring fills. */
const PAIR_SLOTS = 8;

const verdicts: FrameFilter = (b, off) => {
  const t = (b[off + 12]! << 8) | b[off + 13]!;
  return t === DENY_TYPE ? VERDICT.DENY : t === HOST_TYPE ? VERDICT.HOST : VERDICT.ACCEPT;
};
const SRC = mac('52:54:00:12:34:56');
const DST = mac('02:00:00:00:00:01');

/**
 * What a chain is: a frame that must go out, or a malformed chain and the counter it must land in.
 * `csum`: NEEDS_CSUM with a checksum place inside the frame (needs CSUM); `csumOut`: one past its end;
 * `gso`: TCPv4 segmentation without NEEDS_CSUM. `deny`, `host`: good chains the pair's filter refuses.
 */
type Kind = 'good' | 'csum' | 'short' | 'writable' | 'csumOut' | 'gso' | 'deny' | 'host';

interface Variant {
  name: string;
  size: number;
  extra: FeatureName[];
  kinds: readonly Kind[];
  /** The counter each malformed kind lands in, with these features. */
  drops: Partial<Record<Kind, number>>;
  indirect?: boolean;
  limit?: RateLimit;
  /** The link (a tap by default). */
  backend?: LinkKind;
}

const PLAIN_DROPS = { short: M.txDropShort, writable: M.txDropWritable, csum: M.txDropCsumNotNegotiated, gso: M.txDropGsoNotNegotiated };
const LINUX: FeatureName[] = ['CSUM', 'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'RING_INDIRECT_DESC', 'MRG_RXBUF'];
const LINUX_DROPS = { short: M.txDropShort, writable: M.txDropWritable, csumOut: M.txDropCsumOutOfRange, gso: M.txDropGsoWithoutCsum };

const VARIANTS: Variant[] = [
  // No offloads: a checksum or segmentation request is one the driver did not negotiate.
  { name: 'plain', size: 16, extra: [], kinds: ['good', 'short', 'writable', 'csum', 'gso'], drops: PLAIN_DROPS },
  // A Linux guest's TX features: partial checksums go out; indirect tables.
  { name: "a Linux guest's features", size: 64, extra: LINUX, kinds: ['good', 'csum', 'short', 'writable', 'csumOut', 'gso'], drops: LINUX_DROPS, indirect: true },
  // Rate limits (Firecracker's buckets).
  { name: 'plain with a frames limit', size: 16, extra: [], kinds: ['good', 'short', 'writable'], drops: PLAIN_DROPS, limit: { ops: { size: 2, refillMs: 10 } } },
  { name: "a Linux guest's features with a bytes limit", size: 64, extra: LINUX, kinds: ['good', 'csum', 'short'], drops: LINUX_DROPS, indirect: true, limit: { bytes: { size: 1500, refillMs: 10 } } },
  // A pair backend (no offloads): filter verdicts, and a frame ring that fills.
  { name: 'over a pair with a filter', size: 16, extra: [], kinds: ['good', 'short', 'writable', 'csum', 'deny', 'host'], drops: { ...PLAIN_DROPS, deny: M.txDropFiltered, host: M.txDropFiltered }, backend: 'pair' },
];

interface Spec {
  kind: Kind;
  len: number;
  /** Cut points as fractions of the chain's bytes (deduplicated, sorted, within it). */
  cuts: number[];
  indirect: boolean;
}

interface Step {
  post: Spec[];
  race: Spec[];
  /** Milliseconds the rate limit's clock moves before the pass. */
  dt: number;
  /** Over a pair: the other side reads its ring after the pass. */
  drain: boolean;
}

/** Whether a chain of this kind must reach the tap. */
const sends = (v: Variant, k: Kind): boolean => v.drops[k] === undefined;

const stepArb = (v: Variant): fc.Arbitrary<Step> => {
  const kind = fc.oneof({ arbitrary: fc.constantFrom(...v.kinds.filter((k) => sends(v, k))), weight: 3 }, { arbitrary: fc.constantFrom(...v.kinds), weight: 1 });
  const spec = fc.record({
    kind,
    len: fc.integer({ min: 60, max: 1514 }),
    cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: MAX_PIECES - 1 }),
    indirect: v.indirect ? fc.boolean() : fc.constant(false),
  });
  const refill = Math.max(v.limit?.ops?.refillMs ?? 0, v.limit?.bytes?.refillMs ?? 0);
  return fc.record({
    post: fc.array(spec, { maxLength: v.size >> 1 }),
    race: fc.array(spec, { maxLength: v.size >> 2 }),
    // Mostly no time at all, so that the buckets run dry.
    dt: fc.oneof({ arbitrary: fc.constant(0), weight: 2 }, { arbitrary: fc.integer({ min: 0, max: refill }), weight: 1 }),
    drain: fc.boolean(),
  });
};

/** A chain as the driver lays it out; `frame` is what must reach the tap (null: nothing). */
function build(v: Variant, s: Spec, seq: number): { chain: TxChain; frame: Uint8Array | null; kind: Kind } {
  const len = s.kind === 'short' ? 1 + (seq % 13) : s.len; // a short chain's frame: under an Ethernet header
  const body = new Uint8Array(Math.max(0, len - 14)).fill(seq & 0xff);
  const type = s.kind === 'deny' ? DENY_TYPE : s.kind === 'host' ? HOST_TYPE : TYPE;
  const frame = len >= 14 ? ethernet(DST, SRC, type, body) : new Uint8Array(len).fill(seq & 0xff);
  const hdr = new Uint8Array(HDR_LEN);
  const dv = new DataView(hdr.buffer);
  if (s.kind === 'csum' || s.kind === 'csumOut') {
    hdr[HDR.FLAGS] = HDR_F.NEEDS_CSUM;
    // csum_start past where an IPv4 header would end (a tap refuses a transport offset before it, EINVAL),
    // csum_offset that of TCP's checksum, or one byte too far for the frame.
    dv.setUint16(HDR.CSUM_START, 34, true);
    dv.setUint16(HDR.CSUM_OFFSET, s.kind === 'csum' ? 16 : len - 34 - 1, true);
  }
  if (s.kind === 'gso') {
    hdr[HDR.GSO_TYPE] = GSO.TCPV4;
    dv.setUint16(HDR.GSO_SIZE, 1400, true);
  }
  const bytes = new Uint8Array(HDR_LEN + len);
  bytes.set(hdr);
  bytes.set(frame, HDR_LEN);
  const cuts = [...new Set(s.cuts.map((x) => Math.floor(x * bytes.length)).filter((x) => x > 0 && x < bytes.length))].sort((a, b) => a - b);
  const chain: TxChain = { bytes, cuts, indirect: s.indirect, writable: s.kind === 'writable' ? 64 : undefined };
  return { chain, frame: sends(v, s.kind) ? frame : null, kind: s.kind };
}

interface Posted {
  frame: Uint8Array | null;
  kind: Kind;
}

function run(v: Variant, format: 'split' | 'packed', steps: Step[], link: RigLink): void {
  const pair = v.backend === 'pair';
  const r: TxRig = txRig({ format, size: v.size, extra: v.extra, link, ...(pair ? { frameFilter: verdicts } : {}) });
  let now = 0;
  const limiter = v.limit ? new RateLimiter(v.limit, () => now) : null;
  const open = (): boolean => limiter === null || limiter.allowance(1) > 0;
  /** Chains posted and not consumed, in ring order. */
  const pending: Posted[] = [];
  const dropped = new Map<number, number>();
  let seq = 0;
  let good = 0;
  /** Over a pair: frames in its ring that the other side has not read, in order. */
  const inRing: Uint8Array[] = [];
  const count = (counter: number): void => {
    dropped.set(counter, (dropped.get(counter) ?? 0) + 1);
  };
  /** Compares what the link got with what the model sent, in order and byte for byte. */
  const check = (what: string, frames: Uint8Array[], got: Uint8Array[]): void => {
    expect(got.length, `${what}: frames the link got`).toBe(frames.length);
    // Buffer.compare: a deep toEqual of every frame would take most of the run's time.
    for (let i = 0; i < frames.length; i++) expect(Buffer.compare(got[i]!, frames[i]!), `${what}: frame ${i} differs`).toBe(0);
  };
  /** Over a pair: the other side reads its whole ring. */
  const drain = (what: string): void => {
    check(what, inRing, r.received(TYPE, inRing.length + 1, 0));
    inRing.length = 0;
  };
  const post = (specs: Spec[]): void => {
    let added = 0;
    for (const s of specs) {
      const b = build(v, s, ++seq);
      if (!r.fits(b.chain)) break;
      r.add(b.chain);
      pending.push({ frame: b.frame, kind: b.kind });
      added++;
    }
    if (added > 0) r.publish();
  };
  let race: Spec[] = [];
  const driverCpu: FrameObserver = {
    beginBurst() {},
    onFrame() {},
    endBurst() {
      // The driver's other CPU posts while the burst is on (it was popped; these are after it).
      post(race);
      race = [];
    },
  };
  r.ctx.plug(driverCpu);
  if (limiter) r.ctx.limit(limiter);
  const pass = (what: string, drainAfter: boolean): void => {
    const gate = open();
    const before = pending.length;
    const work = gate && before > 0;
    if (!work) native.eventfdWrite(r.ctlFd, 1);
    const throttled = r.c[M.throttled]!;
    const t0 = performance.now();
    r.loop.pass();
    const ms = performance.now() - t0;
    if (native.poll(Int32Array.of(r.ctlFd), 0)) native.eventfdRead(r.ctlFd);
    expect(ms, `${what}: the pass slept with work to do (${before} chains)`).toBeLessThan(SLEEP_MS / 2);
    // TX completes every chain it pops within the pass, so the used entries say how far it got.
    const used = r.used();
    expect(used.every((len) => len === 0), 'a TX chain completed with a length').toBe(true);
    const consumed = used.length;
    expect(consumed, `${what}: completions for chains the driver did not post`).toBeLessThanOrEqual(before);
    if (!gate) {
      expect(consumed, `${what}: a chain went past the rate limit`).toBe(0);
      if (before > 0) expect(r.c[M.throttled]).toBe(throttled + 1);
    } else if (limiter === null) {
      expect(consumed, `${what}: chains left in the ring`).toBe(before);
    } else if (work) {
      expect(consumed, `${what}: a pass with work consumed nothing`).toBeGreaterThan(0);
    }
    const frames: Uint8Array[] = [];
    for (const p of pending.splice(0, consumed)) {
      const refused = p.kind === 'deny' || p.kind === 'host';
      if (p.frame === null && !refused) count(v.drops[p.kind]!); // malformed: never reaches the backend
      else if (pair && inRing.length >= PAIR_SLOTS) count(M.txDropBackend); // a full ring takes nothing, refused or not
      else if (refused) count(M.txDropFiltered);
      else {
        (pair ? inRing : frames).push(p.frame!);
        good++;
      }
    }
    if (pair) {
      if (drainAfter) drain(`${what}, the other side`);
    } else {
      check(what, frames, r.received(TYPE, frames.length, 2000));
    }
  };
  for (const [i, s] of steps.entries()) {
    post(s.post);
    race = s.race;
    now += s.dt;
    pass(`step ${i}`, s.drain);
  }
  race = [];
  for (let i = 0; pending.length > 0 && i < 64; i++) {
    now += 10;
    pass(`drain ${i}`, true);
  }
  expect(pending).toEqual([]);
  if (pair) drain('at the end');
  expect(r.received(TYPE, 1, 20), 'frames the device should not have sent').toEqual([]);
  // Every chain consumed is a frame sent or one drop, under its reason.
  expect(r.c[M.frames], 'frames sent').toBe(good);
  for (const counter of new Set([...Object.values(v.drops), M.txDropBackend])) expect(r.c[counter], `counter ${counter}`).toBe(dropped.get(counter) ?? 0);
  expect(r.c[M.txDropTooManyPieces]! + r.c[M.txDropTooBig]!).toBe(0);
  r.close();
}

for (const v of VARIANTS) {
  for (const format of ['split', 'packed'] as const) {
    it(`${v.name}, ${format}: the TX loop never sleeps with work to do, sends every good frame once, in order, and counts the rest`, () => {
      // One tap for the runs while they end clean: each run is a driver reset over the same backend.
      const pool = new LinkPool('lgtxrig', rigFeatures(format, v.extra), v.backend, PAIR_SLOTS);
      fc.assert(fc.property(fc.array(stepArb(v), { minLength: 1, maxLength: 30 }), (steps) => run(v, format, steps, pool.take())), { numRuns: fuzzRuns(40) });
    }, 120_000);
  }
}
