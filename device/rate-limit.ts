/**
 * Rate limiting of a queue, as Firecracker's rate limiter does it: two token buckets, one for bytes
 * and one for operations (frames), each `size` tokens refilled at `size` per `refillMs`, continuously.
 *
 * A frame may go while both buckets hold a positive balance; it then takes its tokens even if that
 * runs the balance below zero (a debt the refill pays back first). So a frame larger than the bucket
 * still passes, no frame needs its size known in advance (RX learns it only after the read), and the
 * long-run rate is exact. A queue that meets an empty bucket stops its burst, leaves the rest in the
 * ring (or in the tap), and sleeps until the refill makes the balance positive again.
 *
 * On the data path a RateLimiter sits in a queue's service context (service.ts) twice: as the gate a
 * service asks before each burst (allowance), and as a frame observer that charges each frame that
 * crossed (onFrame). The loop (loops.ts) sleeps for waitMs() when the gate closes.
 */
import type { BurstGate, FrameObserver, FrameView } from './service.ts';

/** One bucket: `size` tokens, refilled at `size` per `refillMs`. */
export interface BucketSpec {
  size: number;
  refillMs: number;
}

/** A queue's limits: bytes and/or frames. */
export interface RateLimit {
  bytes?: BucketSpec;
  ops?: BucketSpec;
}

/** The long-run rate a bucket allows, in tokens a second. */
export function tokensPerSecond(b: BucketSpec): number {
  return (b.size * 1000) / b.refillMs;
}

function checkSpec(what: string, b: BucketSpec): void {
  if (!(Number.isSafeInteger(b.size) && b.size > 0)) throw new RangeError(`${what} bucket size ${b.size} must be a positive integer`);
  if (!(Number.isFinite(b.refillMs) && b.refillMs > 0 && b.refillMs <= 3_600_000)) {
    throw new RangeError(`${what} refill time ${b.refillMs} ms must be in (0, 3600000]`);
  }
}

/** Validates a RateLimit (throws RangeError); returns it. */
export function checkRateLimit(r: RateLimit): RateLimit {
  if (r.bytes) checkSpec('bytes', r.bytes);
  if (r.ops) checkSpec('ops', r.ops);
  return r;
}

/**
 * Parses `SIZE/MS` (e.g. `125000000/1000`: 125 MB per second, a 1 Gbit/s link) into a BucketSpec.
 * Throws RangeError with what was expected.
 */
export function parseBucket(text: string): BucketSpec {
  const m = /^(\d+)\/(\d+(?:\.\d+)?)$/.exec(text.trim());
  if (!m) throw new RangeError(`'${text}' is not SIZE/MS (tokens per refill time in milliseconds), e.g. 125000000/1000`);
  const spec = { size: Number(m[1]), refillMs: Number(m[2]) };
  checkSpec('rate', spec);
  return spec;
}

/** A token bucket over a clock in milliseconds. */
export class TokenBucket {
  readonly size: number;
  readonly refillMs: number;
  private balance: number;
  private last: number;
  private readonly now: () => number;

  constructor(spec: BucketSpec, now: () => number = () => performance.now()) {
    checkSpec('token', spec);
    this.size = spec.size;
    this.refillMs = spec.refillMs;
    this.now = now;
    this.balance = spec.size;
    this.last = now();
  }

  private refill(): void {
    const t = this.now();
    if (t > this.last) {
      this.balance = Math.min(this.size, this.balance + ((t - this.last) * this.size) / this.refillMs);
      this.last = t;
    }
  }

  /** Tokens now (negative: a debt). */
  tokens(): number {
    this.refill();
    return this.balance;
  }

  /** Takes n tokens, into debt if need be. */
  take(n: number): void {
    this.refill();
    this.balance -= n;
  }

  /** Milliseconds until the balance is positive (0 if it is). */
  waitMs(): number {
    this.refill();
    return this.balance > 0 ? 0 : ((-this.balance + 1) * this.refillMs) / this.size;
  }
}

/** A queue's limiter: the buckets its RateLimit asks for. */
export class RateLimiter implements FrameObserver, BurstGate {
  private bytes: TokenBucket | null = null;
  private ops: TokenBucket | null = null;
  private readonly now: (() => number) | undefined;

  constructor(limit: RateLimit, now?: () => number) {
    this.now = now;
    this.update(limit);
  }

  /**
   * Replaces the buckets with `limit`'s, as Firecracker's update of a rate limiter does: each bucket
   * it names starts full, one it leaves out is gone. A debt the old buckets held is forgiven.
   */
  update(limit: RateLimit): void {
    checkRateLimit(limit);
    this.bytes = limit.bytes ? new TokenBucket(limit.bytes, this.now) : null;
    this.ops = limit.ops ? new TokenBucket(limit.ops, this.now) : null;
  }

  /**
   * How many frames may go in this burst: 0 while a bucket is empty, else at least 1 and at most what
   * the frames bucket holds and what the bytes bucket holds in frames of `frameHint` bytes (a burst
   * is read or sent before its sizes are charged, so this keeps the overshoot to about one frame).
   */
  allowance(max: number, frameHint: number = 1514): number {
    let n = max;
    if (this.bytes) {
      const t = this.bytes.tokens();
      if (t <= 0) return 0;
      n = Math.min(n, Math.max(1, Math.floor(t / frameHint)));
    }
    if (this.ops) {
      const t = this.ops.tokens();
      if (t <= 0) return 0;
      n = Math.min(n, Math.max(1, Math.floor(t)));
    }
    return n;
  }

  /** Charges one frame of `len` bytes. */
  charge(len: number): void {
    this.bytes?.take(len);
    this.ops?.take(1);
  }

  /** Milliseconds until a frame may go again. */
  waitMs(): number {
    return Math.max(this.bytes?.waitMs() ?? 0, this.ops?.waitMs() ?? 0);
  }

  /** As an observer: each frame that crossed is charged. */
  onFrame(frame: FrameView): void {
    this.charge(frame.len);
  }

  beginBurst(): void {}

  endBurst(): void {}
}
