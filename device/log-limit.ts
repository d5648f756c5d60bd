// device/log-limit.ts — a bound on the log lines a guest can cause at will.
//
// Why: some log lines follow from what the guest puts in its rings. A TX frame whose vnet header the
// tap refuses (EINVAL) followed by a good one makes a backend "failing" edge and a "works again" edge;
// a guest alternating them logged ~2,000 lines a second, each a line in the VMM's journal. The
// counters already count every frame; the log only needs to say what changed. So each key (a queue's
// backend, the control queue) logs up to `burst` lines per period; past that, events are counted and
// one summary line at the period's end says how many there were and what the last one was, so the
// last word on a state is never lost. Keys in use: a queue's backend edges, its breaks (a guest can
// break a queue again after every reset), the control queue's refusals.

/** A device log event (the shape of NetDevice's 'log' event). */
export interface LogEvent {
  level: 'error' | 'warn' | 'info' | 'debug';
  msg: string;
  [field: string]: unknown;
}

/** Lines per key and period before events are only counted (the period's summary is extra). */
export const LOG_BURST = 5;
/** The period, in ms, after which a key may log again, and when a summary of what was held is due. */
export const LOG_PERIOD_MS = 5000;

interface KeyState {
  start: number;
  logged: number;
  held: number;
  /** The summary of the events held so far, made from the last one. */
  summary: ((held: number) => LogEvent) | null;
  timer: ReturnType<typeof setTimeout> | null;
}

/** Limits log lines per key: `burst` per `periodMs`, then one summary per period of what was held. */
export class LogLimiter {
  private readonly keys = new Map<string, KeyState>();
  private closed = false;

  private readonly emit: (e: LogEvent) => void;
  private readonly burst: number;
  private readonly periodMs: number;
  private readonly now: () => number;

  constructor(emit: (e: LogEvent) => void, burst = LOG_BURST, periodMs = LOG_PERIOD_MS, now: () => number = Date.now) {
    this.emit = emit;
    this.burst = burst;
    this.periodMs = periodMs;
    this.now = now;
  }

  /**
   * Logs `e` under `key`, or, past the key's burst in this period, holds it: it is counted, and at the
   * period's end `summary(held)` of the last held event is logged instead.
   */
  log(key: string, e: LogEvent, summary: (held: number) => LogEvent): void {
    if (this.closed) return;
    const t = this.now();
    let k = this.keys.get(key);
    if (k === undefined) {
      k = { start: t, logged: 0, held: 0, summary: null, timer: null };
      this.keys.set(key, k);
    }
    if (k.timer === null && t - k.start >= this.periodMs) {
      k.start = t;
      k.logged = 0;
    }
    if (k.held === 0 && k.logged < this.burst) {
      k.logged++;
      this.emit(e);
      return;
    }
    k.held++;
    k.summary = summary;
    if (k.timer === null) {
      const state = k;
      k.timer = setTimeout(() => this.flush(state), Math.max(0, state.start + this.periodMs - t));
      k.timer.unref?.();
    }
  }

  /** Logs the summary of what `k` held and starts its next period with that line counted. */
  private flush(k: KeyState): void {
    k.timer = null;
    if (this.closed || k.held === 0 || k.summary === null) return;
    const line = k.summary(k.held);
    k.held = 0;
    k.summary = null;
    k.start = this.now();
    k.logged = 1;
    this.emit(line);
  }

  /** Logs every pending summary now and stops (no timer is left behind). */
  close(): void {
    for (const k of this.keys.values()) {
      if (k.timer !== null) clearTimeout(k.timer);
      this.flush(k);
    }
    this.closed = true;
    this.keys.clear();
  }
}
