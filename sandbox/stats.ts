/**
 * `lgnet stats ADDR`: what `ethtool -S` plus `top` would be for a vhost-user NIC. It reads a running
 * lgnet's metrics endpoint (`lgnet serve --metrics-listen ADDR`, GET /metrics.json: the same snapshot
 * Prometheus scrapes), takes one snapshot per interval, and shows per queue what changed in between:
 *
 *   frames/s, bytes/s     what the queue moved
 *   drops/s by reason     lgnet_queue_dropped_frames_total, plus RX stalls for want of guest buffers
 *   irq/frame, kick/frame interrupts raised and kicks taken per frame moved: batching at work (→ 0)
 *   asleep                the share of the interval the queue's worker slept
 *
 * and above them the tap as the kernel counts it (lgnet_tap_*): frames and drops each way, the drops
 * to the guest being frames lost before lgnet could read them.
 *
 * A live view redraws every interval until Ctrl-C; `--once` prints one interval and exits; `--json`
 * prints the same figures as JSON (one document per interval), for scripts.
 */
import { request } from 'node:http';
import { formatListenAddress, METRICS_ERROR, MetricsError, type ListenAddress } from './metrics-listen.ts';
import type { MetricFamily } from './prometheus.ts';
import type { QueueInspection } from '../device/net.ts';

/** What GET /metrics.json answers. */
export interface MetricsSnapshot {
  pid: number;
  ts_ms: number;
  metrics: MetricFamily[];
}

/** GETs `path` from a running lgnet's endpoint and parses it as JSON. Throws MetricsError (SCRAPE_FAILED). */
function fetchJson<T>(addr: ListenAddress, path: string, what: string, timeoutMs: number, valid: (doc: T) => boolean): Promise<T> {
  const where = formatListenAddress(addr);
  return new Promise((resolve, reject) => {
    const fail = (why: string, cause?: unknown) =>
      reject(new MetricsError(METRICS_ERROR.SCRAPE_FAILED, `no ${what} from ${where}: ${why}; is lgnet serve running with --metrics-listen ${where}?`, { cause }));
    const req = request(
      { ...(addr.kind === 'unix' ? { socketPath: addr.path } : { host: addr.host, port: addr.port }), path, method: 'GET', timeout: timeoutMs },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
          if (body.length > 16 << 20) res.destroy(new Error('answer larger than 16 MiB'));
        });
        res.on('error', (e) => fail(e.message, e));
        res.on('end', () => {
          if (res.statusCode !== 200) return fail(`HTTP ${res.statusCode}: ${body.slice(0, 200)}`);
          try {
            const doc = JSON.parse(body) as T;
            if (!valid(doc)) return fail('the answer is not an lgnet document');
            resolve(doc);
          } catch (e) {
            fail('the answer is not JSON', e);
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (e) => fail(e.message, e));
    req.end();
  });
}

/** Reads one snapshot from a running lgnet's endpoint. Throws MetricsError (SCRAPE_FAILED). */
export function fetchSnapshot(addr: ListenAddress, timeoutMs = 3000): Promise<MetricsSnapshot> {
  return fetchJson<MetricsSnapshot>(addr, '/metrics.json', 'metrics', timeoutMs, (d) => typeof d.pid === 'number' && typeof d.ts_ms === 'number' && Array.isArray(d.metrics));
}

/** What GET /queues answers: NetDevice.inspect() of the serving process. */
export interface QueuesDocument {
  pid: number;
  ts_ms: number;
  queues: QueueInspection[];
}

/** Reads where every queue of a running lgnet stands (GET /queues). Throws MetricsError (SCRAPE_FAILED). */
export function fetchQueues(addr: ListenAddress, timeoutMs = 3000): Promise<QueuesDocument> {
  return fetchJson<QueuesDocument>(addr, '/queues', 'queue inspection', timeoutMs, (d) => typeof d.pid === 'number' && Array.isArray(d.queues));
}

/** A position as a person reads it: split, the u16; packed, idx and the wrap counter (12/w1). */
function pos(format: 'split' | 'packed', p: number): string {
  return format === 'split' ? String(p) : `${p & 0x7fff}/w${p >>> 15}`;
}

/**
 * `lgnet stats ADDR --queues`: one line per queue, where the device and the driver stand in its ring.
 *
 *   driver      the driver's producer position (split avail.idx; packed, the end of what it made available)
 *   device      the device's next position to pop
 *   pending     made available and not popped (a queue asleep on a kick with some pending missed it)
 *   in flight   popped and not completed (RX: buffers kept for the next frames)
 *   used        the used position the driver sees, and the one of the last interrupt decision
 *   irq         'owed': the driver asked to hear of something published and was not told; 'held': coalescing
 *   slept on    what the worker waited on last, and how long
 */
export function renderQueues(where: string, doc: QueuesDocument): string {
  const cols = ['queue', 'state', 'ring', 'driver', 'device', 'pending', 'in flight', 'used', 'signalled', 'irq', 'slept on'];
  const rows = doc.queues.map((q) => {
    const r = q.ring;
    const f = r?.format ?? 'split';
    return [
      `${q.index} ${q.role}`,
      q.state,
      r ? `${r.format} ${r.size}` : '-',
      r ? pos(f, r.driverAvail) : '-',
      r ? pos(f, r.lastAvail) : '-',
      r ? String(r.availPending) : '-',
      r ? String(r.inFlight) : '-',
      r ? pos(f, r.publishedUsed) : '-',
      r && r.signalledUsed !== null ? pos(f, r.signalledUsed) : '-',
      [r?.interruptOwed ? 'owed' : '', q.interruptHeld ? 'held' : ''].filter(Boolean).join(',') || '-',
      q.lastSleep ? `${q.lastSleep.on} ${q.lastSleep.ms.toFixed(1)} ms` : '-',
    ];
  });
  const errors = doc.queues.filter((q) => q.error).map((q) => `queue ${q.index}: ${q.error}`);
  const width = cols.map((c, i) => Math.max(c.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(width[i]!)).join('  ').trimEnd();
  return [`lgnet ${doc.pid} at ${where}: queues`, '', line(cols), ...rows.map(line), ...errors].join('\n') + '\n';
}

/** One queue over one interval. Rates are per second; ratios are null when no frame moved. */
export interface QueueStats {
  queue: number;
  direction: string;
  running: boolean;
  frames_per_s: number;
  bytes_per_s: number;
  /** Drops per second by reason, only reasons that dropped something in the interval. */
  drops_per_s: Record<string, number>;
  /** RX only: times per second the guest had no buffers posted. */
  rx_no_buffers_per_s: number;
  interrupts_per_frame: number | null;
  kicks_per_frame: number | null;
  /** Share of the interval the worker slept, 0..1. */
  asleep: number;
  frames_total: number;
  bytes_total: number;
  /** Drops since lgnet started, by reason (reasons with a count only). */
  drops_total: Record<string, number>;
}

export interface StatsReport {
  pid: number;
  /** The endpoint read. */
  address: string;
  ts_ms: number;
  interval_s: number;
  queues: QueueStats[];
  vhost_user: { connected: boolean; connections_total: number; reconnects_total: number; messages_total: number; errors_total: number } | null;
  process: { rss_bytes: number | null; open_fds: number | null; threads: number | null; cpu_ratio: number; cpu_seconds_total: number };
  /** The tap's kernel counters (lgnet_tap_*), null when lgnet does not serve them. */
  tap: { interface: string; to_guest: TapStats; from_guest: TapStats } | null;
  /**
   * Each queue's rate limit per direction (lgnet_rate_limit_tokens_per_second): bytes and frames a
   * second, a bucket absent where it has none; null for an unlimited direction.
   */
  rate_limits: Record<'rx' | 'tx', { bytes_per_s?: number; frames_per_s?: number } | null>;
}

/** One direction of the tap over one interval, as the kernel counts it. */
export interface TapStats {
  frames_per_s: number;
  dropped_per_s: number;
  dropped_total: number;
}

/** Sample values of a family, keyed by the labels given (joined with '/'). */
function series(s: MetricsSnapshot, name: string, ...keys: string[]): Map<string, number> {
  const out = new Map<string, number>();
  const fam = s.metrics.find((m) => m.name === name);
  for (const v of fam?.values ?? []) out.set(keys.map((k) => String(v.labels[k] ?? '')).join('/'), v.value);
  return out;
}

function scalar(s: MetricsSnapshot, name: string): number | null {
  return s.metrics.find((m) => m.name === name)?.values[0]?.value ?? null;
}

/** Rates to 0.1, ratios to 1e-4: finer digits are noise at one-second intervals. */
const rate = (v: number) => Math.round(v * 10) / 10;
const share = (v: number) => Math.round(v * 1e4) / 1e4;

/** The figures between two snapshots of the same lgnet. */
export function computeStats(address: string, a: MetricsSnapshot, b: MetricsSnapshot): StatsReport {
  const dt = Math.max((b.ts_ms - a.ts_ms) / 1000, 1e-3);
  const get = (name: string) => [series(a, name, 'queue', 'direction'), series(b, name, 'queue', 'direction')] as const;
  const [f0, f1] = get('lgnet_queue_frames_total');
  const [by0, by1] = get('lgnet_queue_bytes_total');
  const [k0, k1] = get('lgnet_queue_kicks_total');
  const [i0, i1] = get('lgnet_queue_interrupts_total');
  const [s0, s1] = get('lgnet_queue_asleep_seconds_total');
  const [n0, n1] = get('lgnet_queue_rx_no_buffers_total');
  const [, run] = get('lgnet_queue_running');
  const d0 = series(a, 'lgnet_queue_dropped_frames_total', 'queue', 'direction', 'reason');
  const d1 = series(b, 'lgnet_queue_dropped_frames_total', 'queue', 'direction', 'reason');
  const delta = (m0: Map<string, number>, m1: Map<string, number>, k: string) => Math.max(0, (m1.get(k) ?? 0) - (m0.get(k) ?? 0));

  const queues: QueueStats[] = [...f1.keys()].map((key) => {
    const [q, direction] = key.split('/') as [string, string];
    const frames = delta(f0, f1, key);
    const dropsPerS: Record<string, number> = {};
    const dropsTotal: Record<string, number> = {};
    for (const [dk, v] of d1) {
      if (!dk.startsWith(`${key}/`)) continue;
      const reason = dk.slice(key.length + 1);
      if (v > 0) dropsTotal[reason] = v;
      const d = delta(d0, d1, dk);
      if (d > 0) dropsPerS[reason] = rate(d / dt);
    }
    return {
      queue: Number(q),
      direction,
      running: run.get(key) === 1,
      frames_per_s: rate(frames / dt),
      bytes_per_s: rate(delta(by0, by1, key) / dt),
      drops_per_s: dropsPerS,
      rx_no_buffers_per_s: rate(delta(n0, n1, key) / dt),
      interrupts_per_frame: frames > 0 ? share(delta(i0, i1, key) / frames) : null,
      kicks_per_frame: frames > 0 ? share(delta(k0, k1, key) / frames) : null,
      asleep: share(Math.min(1, delta(s0, s1, key) / dt)),
      frames_total: f1.get(key) ?? 0,
      bytes_total: by1.get(key) ?? 0,
      drops_total: dropsTotal,
    };
  }).sort((x, y) => x.queue - y.queue);

  const connected = scalar(b, 'lgnet_vhost_user_connected');
  const sum = (name: string) => [...series(b, name, 'request', 'code').values()].reduce((x, y) => x + y, 0);
  const cpu0 = scalar(a, 'process_cpu_seconds_total') ?? 0;
  const cpu1 = scalar(b, 'process_cpu_seconds_total') ?? 0;
  const tf0 = series(a, 'lgnet_tap_frames_total', 'interface', 'direction');
  const tf1 = series(b, 'lgnet_tap_frames_total', 'interface', 'direction');
  const td0 = series(a, 'lgnet_tap_dropped_frames_total', 'interface', 'direction');
  const td1 = series(b, 'lgnet_tap_dropped_frames_total', 'interface', 'direction');
  const ifname = [...tf1.keys()][0]?.split('/')[0];
  const tapDir = (dir: string): TapStats => {
    const k = `${ifname}/${dir}`;
    return { frames_per_s: rate(delta(tf0, tf1, k) / dt), dropped_per_s: rate(delta(td0, td1, k) / dt), dropped_total: td1.get(k) ?? 0 };
  };
  return {
    pid: b.pid,
    address,
    ts_ms: b.ts_ms,
    interval_s: dt,
    queues,
    vhost_user: connected === null ? null : {
      connected: connected === 1,
      connections_total: scalar(b, 'lgnet_vhost_user_connections_total') ?? 0,
      reconnects_total: scalar(b, 'lgnet_vhost_user_reconnects_total') ?? 0,
      messages_total: sum('lgnet_vhost_user_messages_total'),
      errors_total: sum('lgnet_vhost_user_errors_total'),
    },
    process: {
      rss_bytes: scalar(b, 'process_resident_memory_bytes'),
      open_fds: scalar(b, 'process_open_fds'),
      threads: scalar(b, 'process_threads'),
      cpu_ratio: share(Math.max(0, cpu1 - cpu0) / dt),
      cpu_seconds_total: cpu1,
    },
    tap: ifname === undefined ? null : { interface: ifname, to_guest: tapDir('to_guest'), from_guest: tapDir('from_guest') },
    rate_limits: rateLimitsIn(b),
  };
}

function rateLimitsIn(s: MetricsSnapshot): StatsReport['rate_limits'] {
  const r = series(s, 'lgnet_rate_limit_tokens_per_second', 'direction', 'bucket');
  const one = (d: 'rx' | 'tx') => {
    const bytes = r.get(`${d}/bytes`);
    const frames = r.get(`${d}/ops`);
    if (bytes === undefined && frames === undefined) return null;
    return { ...(bytes !== undefined ? { bytes_per_s: bytes } : {}), ...(frames !== undefined ? { frames_per_s: frames } : {}) };
  };
  return { rx: one('rx'), tx: one('tx') };
}

// ---- the terminal view ----------------------------------------------------------------------------

function si(v: number, unit: string): string {
  const steps = ['', 'k', 'M', 'G', 'T'];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < steps.length - 1) {
    v /= 1000;
    i++;
  }
  const n = v.toFixed(v >= 100 || i === 0 ? 0 : 1);
  return unit ? `${n} ${steps[i]}${unit}` : `${n}${steps[i]}`;
}

function ratio(v: number | null): string {
  return v === null ? '-' : v.toFixed(2);
}

/** The report as a table for a terminal. */
export function renderStats(r: StatsReport): string {
  const p = r.process;
  const head = [
    `lgnet pid ${r.pid} at ${r.address}, over ${r.interval_s.toFixed(2)} s`,
    `process  cpu ${(p.cpu_ratio * 100).toFixed(1)}%  rss ${p.rss_bytes === null ? '?' : `${(p.rss_bytes / 2 ** 20).toFixed(1)} MiB`}  fds ${p.open_fds ?? '?'}  threads ${p.threads ?? '?'}`,
  ];
  const v = r.vhost_user;
  if (v) {
    head.push(`vhost-user  ${v.connected ? 'connected' : 'no front-end'}  connections ${v.connections_total} (reconnects ${v.reconnects_total})  messages ${v.messages_total}  errors ${v.errors_total}`);
  }
  const t = r.tap;
  if (t) {
    const dir = (x: TapStats) => `${si(x.frames_per_s, '')} frames/s, dropped ${si(x.dropped_per_s, '')}/s (${x.dropped_total} in all)`;
    head.push(`tap ${t.interface}  to guest ${dir(t.to_guest)}  from guest ${dir(t.from_guest)}`);
  }
  const rl = r.rate_limits;
  if (rl.rx || rl.tx) {
    const dir = (x: { bytes_per_s?: number; frames_per_s?: number } | null) =>
      x ? [x.bytes_per_s !== undefined ? si(x.bytes_per_s * 8, 'bit/s') : '', x.frames_per_s !== undefined ? `${si(x.frames_per_s, '')} frames/s` : ''].filter(Boolean).join(', ') : 'none';
    head.push(`rate limit per queue  rx ${dir(rl.rx)}  tx ${dir(rl.tx)}`);
  }
  const cols = ['queue', 'dir', 'frames/s', 'bytes/s', 'irq/frame', 'kick/frame', 'asleep', 'drops/s'];
  const rows = r.queues.map((q) => {
    const drops = Object.entries(q.drops_per_s).map(([k, n]) => `${k} ${si(n, '')}`);
    if (q.rx_no_buffers_per_s > 0) drops.push(`no_buffers ${si(q.rx_no_buffers_per_s, '')}`);
    return [
      String(q.queue), q.running ? q.direction : `${q.direction} (stopped)`, si(q.frames_per_s, ''), si(q.bytes_per_s, 'B/s'),
      ratio(q.interrupts_per_frame), ratio(q.kicks_per_frame), `${(q.asleep * 100).toFixed(0)}%`, drops.length ? drops.join(', ') : '-',
    ];
  });
  const width = cols.map((c, i) => Math.max(c.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : i < 2 ? c.padEnd(width[i]!) : c.padStart(width[i]!))).join('  ');
  return [...head, '', line(cols), ...rows.map(line)].join('\n') + '\n';
}

// ---- the command --------------------------------------------------------------------------------

export interface StatsOptions {
  address: ListenAddress;
  once: boolean;
  json: boolean;
  /** Print where every queue stands in its ring, once (GET /queues), instead of rates. */
  queues?: boolean;
  /** Interval between snapshots, ms. */
  intervalMs: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `lgnet stats`. With `once`, resolves after one interval; otherwise runs until `signal` aborts
 * (Ctrl-C). Throws MetricsError when the endpoint cannot be read at the start.
 */
export async function runStats(o: StatsOptions, out: NodeJS.WritableStream = process.stdout, signal?: AbortSignal): Promise<void> {
  const where = formatListenAddress(o.address);
  if (o.queues) {
    const doc = await fetchQueues(o.address);
    out.write(o.json ? `${JSON.stringify(doc, null, 2)}\n` : renderQueues(where, doc));
    return;
  }
  let prev = await fetchSnapshot(o.address);
  const tty = (out as { isTTY?: boolean }).isTTY === true;
  while (!signal?.aborted) {
    await sleep(o.intervalMs);
    if (signal?.aborted) break;
    let next: MetricsSnapshot;
    try {
      next = await fetchSnapshot(o.address);
    } catch (e) {
      if (o.once) throw e;
      out.write(o.json ? `${JSON.stringify({ error: (e as Error).message })}\n` : `${(e as Error).message}\n`);
      continue;
    }
    if (next.pid !== prev.pid) {
      prev = next; // lgnet restarted: its counters start again, rates from the next interval on
      continue;
    }
    const report = computeStats(where, prev, next);
    prev = next;
    if (o.json) out.write(`${JSON.stringify(report, null, o.once ? 2 : undefined)}\n`);
    else out.write((tty && !o.once ? '\x1b[H\x1b[2J' : '') + renderStats(report) + (tty || o.once ? '' : '\n'));
    if (o.once) break;
  }
}
