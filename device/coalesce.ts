/**
 * The interrupt coalescing rule, as a pure class on a clock its caller passes in (microseconds), so
 * that it can be driven and tested without threads or time. interrupt.ts (PendingUsed) applies it
 * when a worker goes to sleep; loops.ts sleeps until the deadline it gives.
 *
 *   completions pending, worker about to sleep
 *     ├─ coalescing off (usecs 0), or ≥ `buffers` pending ─────────────▶ decide now
 *     ├─ last decision ≥ `usecs` ago (the queue was idle) ─────────────▶ decide now: no added latency
 *     ├─ busy, but backing off (the last holds bought nothing) ─────────▶ decide now
 *     └─ last decision < `usecs` ago (the queue is busy) ──────────────▶ hold until last decision + usecs
 *   "decide" asks the ring whether the driver wants the interrupt (EVENT_IDX, NO_INTERRUPT).
 *
 * So a busy queue raises at most one interrupt per `usecs` (an interrupt throttle rate, as e1000's ITR
 * or `ethtool -C rx-usecs` on many NICs), a queue that was quiet for `usecs` signals at once, and no
 * completion waits longer than `usecs`. The clock starts at a decision, not at an interrupt: a driver
 * that reaped the held completions itself (Linux's TX path frees them on its next transmit) has moved
 * used_event past them, the decision sends nothing, and the queue stays busy.
 *
 * A hold pays off when something joins it: more completions, or a driver that no longer wants the
 * interrupt when it ends. A hold that ends with the interrupt still wanted for just the completions
 * that started it bought nothing and only delayed them: request/response traffic (the driver waits
 * for this very completion before it sends the next request) looks busy but never fills a hold. After
 * such a hold the rule decides the next busy completions at once, 1, 2, 4 … up to MAX_BACKOFF of them
 * (each fruitless hold doubles it), then tries one hold again; a hold that pays off ends the backoff.
 * Streaming traffic keeps its holds; request/response pays one hold in MAX_BACKOFF + 1 at most.
 */

/** The coalescing parameters of one queue (what Coalescer takes). */
export interface CoalesceOptions {
  /**
   * Microseconds a busy queue holds its next interrupt after the last one it decided; also how long a
   * queue must have been quiet to signal at once. 0 turns coalescing off (signal at every sleep).
   */
  usecs: number;
  /** Used buffers (used-ring entries) pending that end a hold at once, so a driver short of buffers is not kept waiting. */
  buffers: number;
}

/**
 * The device's coalescing options (NetDevice option `coalesce`; `lgnet serve --coalesce-rx-usecs`,
 * `--coalesce-tx-usecs`, `--coalesce-buffers`), after `ethtool -C rx-usecs tx-usecs`: each RX queue
 * holds for `rxUsecs`, each TX queue for `txUsecs`. Both 0 turns coalescing off.
 */
export interface DeviceCoalesce {
  rxUsecs: number;
  txUsecs: number;
  buffers: number;
}

/** The defaults, measured in docs/PERFORMANCE.md, "Coalescing". */
export const DEFAULT_COALESCE: Readonly<DeviceCoalesce> = { rxUsecs: 2000, txUsecs: 4000, buffers: 64 };

/** Upper bound of a hold: a held interrupt must go out well before a worker's one-second sleep cap. */
export const MAX_COALESCE_USECS = 100_000;

/** Upper bound of `buffers`: the largest ring. */
export const MAX_COALESCE_BUFFERS = 32768;

function checkUsecs(v: number, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > MAX_COALESCE_USECS) {
    throw new RangeError(`${what} must be an integer in [0, ${MAX_COALESCE_USECS}], got ${v}`);
  }
}

function checkBuffers(v: number): void {
  if (!Number.isInteger(v) || v < 1 || v > MAX_COALESCE_BUFFERS) {
    throw new RangeError(`coalesce buffers must be an integer in [1, ${MAX_COALESCE_BUFFERS}], got ${v}`);
  }
}

/** Checks one queue's options; throws RangeError on a value out of range. */
export function checkCoalesce(o: CoalesceOptions): CoalesceOptions {
  checkUsecs(o.usecs, 'coalesce usecs');
  checkBuffers(o.buffers);
  return o;
}

/** Checks the device's options; throws RangeError on a value out of range. */
export function checkDeviceCoalesce(o: DeviceCoalesce): DeviceCoalesce {
  checkUsecs(o.rxUsecs, 'coalesce rxUsecs');
  checkUsecs(o.txUsecs, 'coalesce txUsecs');
  checkBuffers(o.buffers);
  return o;
}

/** One queue's options out of the device's. */
export function queueCoalesce(o: DeviceCoalesce, role: 'rx' | 'tx'): CoalesceOptions {
  return { usecs: role === 'rx' ? o.rxUsecs : o.txUsecs, buffers: o.buffers };
}

/** `due()` answer: decide now. */
export const NOW = 0;

/** The longest run of busy decisions taken at once after fruitless holds, before one hold is tried again. */
export const MAX_BACKOFF = 256;

/** One queue's coalescing state: when it last decided an interrupt, and whether its holds pay off. */
export class Coalescer {
  private readonly usecs: number;
  private readonly buffers: number;
  /** Clock time (µs) of the last decision, or -Infinity before the first. */
  private last = -Infinity;
  /** Completions pending when the current hold began; 0 when not holding. */
  private holdStart = 0;
  /** Busy decisions still to be taken at once before the next hold. */
  private skip = 0;
  /** Length of the current backoff (0: holds pay off). */
  private backoff = 0;

  constructor(o: CoalesceOptions) {
    checkCoalesce(o);
    this.usecs = o.usecs;
    this.buffers = o.buffers;
  }

  /** Whether the rule can ever hold (usecs > 0). */
  get enabled(): boolean {
    return this.usecs > 0;
  }

  /**
   * When `pending` (> 0) used buffers should be decided: NOW, or the clock time (µs, > now) to hold
   * until. The clock is the caller's, in µs, never negative. The caller calls decided(now) when it
   * does decide.
   */
  due(now: number, pending: number): number {
    if (this.usecs === 0 || pending >= this.buffers) return NOW;
    const at = this.last + this.usecs;
    if (at <= now) return NOW;
    if (this.holdStart === 0) {
      if (this.skip > 0) {
        this.skip--;
        return NOW;
      }
      this.holdStart = pending;
    }
    return at;
  }

  /**
   * Records a decision at `now` on `pending` completions: `wanted`, the driver wanted an interrupt
   * for them (sent), or not. A decision that ends a hold also tells whether the hold paid off.
   */
  decided(now: number, pending: number, wanted: boolean): void {
    if (this.holdStart > 0) {
      if (!wanted || pending > this.holdStart) {
        this.backoff = 0;
      } else {
        this.backoff = Math.min(MAX_BACKOFF, this.backoff * 2 || 1);
        this.skip = this.backoff;
      }
      this.holdStart = 0;
    }
    this.last = now;
  }

  /** Busy decisions left to take at once before the next hold (for tests). */
  get backingOff(): number {
    return this.skip;
  }
}
