/**
 * lgnet's metrics in the Prometheus text exposition format (prom-client does the format): every
 * per-queue counter of device/metrics.ts, the vhost-user server's own counters, what the front-end
 * negotiated, and the process. docs/OPERATIONS.md lists every metric with its meaning.
 *
 *   scrape ──▶ PrometheusExporter.scrape()
 *                 ├─ NetDevice.metrics()     a copy of each queue's shared counters: no worker stops
 *                 ├─ VhostUserServer.metrics plain numbers on the main thread
 *                 └─ ProcessSampler.sample() jail-safe process figures (metrics-process.ts)
 *              ──▶ every family reset and set from that one snapshot ──▶ registry.metrics()
 *
 * Values are copied at scrape time, not kept up to date: the counters already live in shared memory,
 * and a scrape is rare. Families are reset first, so series of a queue or a feature that went away
 * disappear. Scrapes run one at a time, so two clients cannot interleave their snapshots.
 * Names follow the Prometheus conventions: `lgnet_` prefix, base units (seconds, bytes), `_total` on
 * counters, `_info` on info metrics, and the standard `process_*` names.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { DeviceMetrics } from '../device/net.ts';
import { names as featureNames } from '../device/features.ts';
import type { MetricName } from '../device/metrics.ts';
import type { ProcessSample, ProcessSampler } from './metrics-process.ts';
import type { TapCounters, TapDirection } from './metrics-tap.ts';
import { tokensPerSecond, type RateLimit } from '../device/rate-limit.ts';
import type { ServerMetrics } from './vhost-user/connection.ts';
import type { ApiCounts } from './api.ts';
import { F_LOG_ALL, protocolNames } from './vhost-user/messages.ts';

/** Every family a per-queue counter lands in, with its type and help text. */
export const QUEUE_FAMILIES = {
  lgnet_queue_frames_total: { type: 'counter', help: 'Frames moved: TX frames sent to the backend, RX frames delivered to the guest.' },
  lgnet_queue_bytes_total: { type: 'counter', help: 'Bytes of the frames moved (frame bytes only, no virtio_net_hdr).' },
  lgnet_queue_bursts_total: { type: 'counter', help: 'Service iterations that moved at least one chain.' },
  lgnet_queue_kicks_total: { type: 'counter', help: 'Kicks: times the guest notified the queue (kick eventfd wake-ups).' },
  lgnet_queue_interrupts_total: { type: 'counter', help: 'Interrupts raised (call eventfd writes).' },
  lgnet_queue_interrupts_suppressed_total: { type: 'counter', help: 'Completions published without an interrupt because the driver did not ask for one.' },
  lgnet_queue_interrupts_held_total: { type: 'counter', help: 'Interrupts a busy queue held back for coalescing (sent within the coalescing delay, with what came meanwhile).' },
  lgnet_queue_sleeps_total: { type: 'counter', help: 'Times the queue worker went to sleep.' },
  lgnet_queue_asleep_seconds_total: { type: 'counter', help: 'Time the queue worker spent asleep, waiting for a kick, the tap or a rate-limit refill.' },
  lgnet_queue_busy_poll_hits_total: { type: 'counter', help: 'Busy-poll rounds that found work before the worker slept.' },
  lgnet_queue_dropped_frames_total: { type: 'counter', help: 'Frames or chains dropped, by reason (docs/OPERATIONS.md lists the reasons).' },
  lgnet_queue_rx_no_buffers_total: { type: 'counter', help: 'Times RX stopped because the guest had no buffers posted (frames wait in the tap).' },
  lgnet_queue_broken_total: { type: 'counter', help: 'Times the queue was found broken (a ring rule violated) and stopped.' },
  lgnet_queue_tx_host_frames_total: { type: 'counter', help: 'TX frames the filter hook handed to the host instead of the peer.' },
  lgnet_queue_inflight_resubmitted_total: { type: 'counter', help: 'Chains taken up again from the vhost-user inflight record when the queue started (reconnect).' },
  lgnet_queue_captured_frames_total: { type: 'counter', help: 'Frames written to the pcap capture.' },
  lgnet_queue_capture_failed_frames_total: { type: 'counter', help: 'Captured frames whose write to the pcap file failed or was cut short.' },
  lgnet_queue_throttled_total: { type: 'counter', help: 'Times the queue paused a burst for its rate limit.' },
  lgnet_queue_backend_last_errno: { type: 'gauge', help: 'errno of the last backend failure counted as a backend drop (0: none yet).' },
  lgnet_queue_dirty_log_missed_pages_total: { type: 'counter', help: 'Guest pages written during dirty logging that lay beyond the end of the log (not marked).' },
  lgnet_queue_ring_base_recovered_total: { type: 'counter', help: "Times the queue started where its ring shows, not at the front-end's base, which the ring contradicted." },
  lgnet_queue_memory_faults_total: { type: 'counter', help: 'Times the queue found its guest memory shrunk under it and stopped (the device needs a reset).' },
  lgnet_queue_iotlb_misses_total: { type: 'counter', help: 'Behind an IOMMU: times the queue found no IOTLB mapping for a buffer and asked the front-end for one.' },
  lgnet_queue_io_uring: { type: 'gauge', help: 'Whether the queue moves its tap frames through a restricted io_uring ring (1) or readv/writev (0).' },
  lgnet_queue_rx_kept_buffers: { type: 'gauge', help: 'RX buffers (chains) the device holds, taken from the ring and not yet filled; given back when the queue stops.' },
} as const satisfies Record<string, { type: 'counter' | 'gauge'; help: string }>;

type QueueFamily = keyof typeof QUEUE_FAMILIES;

/** How one per-queue counter is exposed. */
interface QueueSeries {
  /** The family it lands in. */
  metric: QueueFamily;
  /** The `reason` label, for the dropped-frames family. */
  reason?: string;
  /** Only queues of this direction have it (the others would always show 0). */
  only?: 'rx' | 'tx';
  /** Factor to the base unit (nanoseconds → seconds). */
  scale?: number;
}


const drop = (reason: string, only: 'rx' | 'tx'): QueueSeries => ({ metric: 'lgnet_queue_dropped_frames_total', reason, only });

/**
 * Every counter of device/metrics.ts and where it goes. Typed over MetricName, so a counter added
 * there does not compile until it is exposed here.
 */
export const QUEUE_SERIES: Readonly<Record<MetricName, QueueSeries>> = {
  frames: { metric: 'lgnet_queue_frames_total' },
  bytes: { metric: 'lgnet_queue_bytes_total' },
  bursts: { metric: 'lgnet_queue_bursts_total' },
  kicks: { metric: 'lgnet_queue_kicks_total' },
  interrupts: { metric: 'lgnet_queue_interrupts_total' },
  interruptsSuppressed: { metric: 'lgnet_queue_interrupts_suppressed_total' },
  interruptsHeld: { metric: 'lgnet_queue_interrupts_held_total' },
  sleeps: { metric: 'lgnet_queue_sleeps_total' },
  blockedNs: { metric: 'lgnet_queue_asleep_seconds_total', scale: 1e-9 },
  busyPollHits: { metric: 'lgnet_queue_busy_poll_hits_total' },
  txDropShort: drop('short', 'tx'),
  txDropTooBig: drop('too_big', 'tx'),
  txDropGsoNotNegotiated: drop('gso_not_negotiated', 'tx'),
  txDropCsumOutOfRange: drop('csum_out_of_range', 'tx'),
  txDropCsumNotNegotiated: drop('csum_not_negotiated', 'tx'),
  txDropWritable: drop('writable_descriptor', 'tx'),
  txDropGsoWithoutCsum: drop('gso_without_csum', 'tx'),
  txDropBackend: drop('backend', 'tx'),
  txDropFiltered: drop('filtered', 'tx'),
  txDropDisabled: drop('ring_disabled', 'tx'),
  txDropTooManyPieces: drop('too_many_pieces', 'tx'),
  rxDropShortBuffer: drop('short_buffer', 'rx'),
  rxDropTooBig: drop('too_big', 'rx'),
  rxDropFiltered: drop('filtered', 'rx'),
  rxDropBackend: drop('backend', 'rx'),
  rxDropTooManyPieces: drop('too_many_pieces', 'rx'),
  rxDropStopped: drop('stopped', 'rx'),
  rxDropDetached: drop('detached', 'rx'),
  rxNoBuffers: { metric: 'lgnet_queue_rx_no_buffers_total', only: 'rx' },
  queueBroken: { metric: 'lgnet_queue_broken_total' },
  txHost: { metric: 'lgnet_queue_tx_host_frames_total', only: 'tx' },
  inflightResubmitted: { metric: 'lgnet_queue_inflight_resubmitted_total' },
  captured: { metric: 'lgnet_queue_captured_frames_total' },
  captureFailed: { metric: 'lgnet_queue_capture_failed_frames_total' },
  throttled: { metric: 'lgnet_queue_throttled_total' },
  backendErrno: { metric: 'lgnet_queue_backend_last_errno' },
  dirtyLogMissed: { metric: 'lgnet_queue_dirty_log_missed_pages_total' },
  ringBaseRecovered: { metric: 'lgnet_queue_ring_base_recovered_total' },
  memoryFaults: { metric: 'lgnet_queue_memory_faults_total' },
  iotlbMisses: { metric: 'lgnet_queue_iotlb_misses_total' },
  ioUring: { metric: 'lgnet_queue_io_uring' },
  rxKept: { metric: 'lgnet_queue_rx_kept_buffers', only: 'rx' },
};

/** What the vhost-user server offers the exporter (VhostUserServer satisfies it). */
export interface ServerSource {
  readonly metrics: ServerMetrics;
  readonly connection: { readonly features: bigint; readonly featuresSet: boolean; readonly protocolFeatures: bigint } | null;
}

export interface ExporterSources {
  /** The device's live counters (NetDevice.metrics()). */
  device: () => DeviceMetrics;
  /** The vhost-user server, when there is one (`lgnet serve`). */
  server?: ServerSource;
  /** Process figures; omitted, no process_* metrics are served. */
  process?: ProcessSampler;
  /** The tap interface's kernel counters; omitted, no lgnet_tap_* metrics are served. */
  tap?: TapCounters;
  /** lgnet's version, for lgnet_build_info. */
  version?: string;
  /** The rate limits in effect (NetDevice.rateLimits()); omitted, no lgnet_rate_limit_* metrics are served. */
  rateLimits?: () => { rx?: RateLimit; tx?: RateLimit };
  /** The control socket's counts (--api-socket; undefined until it listens); omitted, no lgnet_api_* metrics are served. */
  api?: () => ApiCounts | undefined;
}

/** The HTTP endpoint's answers, counted by status code (metrics-listen.ts). */
export type HttpStatus = 200 | 400 | 404 | 405 | 500;

/** Names of device feature bits, with the vhost-user bits that sit in the same word. */
function deviceFeatureNames(bits: bigint): string[] {
  return featureNames(bits).map((n) => (n === `bit${F_LOG_ALL}` ? 'LOG_ALL' : n));
}

/** Builds the registry and fills it from its sources at every scrape. */
export class PrometheusExporter {
  readonly registry = new Registry();
  private readonly queue = new Map<QueueFamily, Counter | Gauge>();
  private readonly http: Counter<'code'>;
  private readonly update: Array<() => void> = [];
  private chain: Promise<unknown> = Promise.resolve();

  constructor(sources: ExporterSources) {
    const r = [this.registry];
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) => new Counter<L>({ name, help, labelNames, registers: r });
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) => new Gauge<L>({ name, help, labelNames, registers: r });

    gauge('lgnet_build_info', 'lgnet version and Node.js version; always 1.', ['version', 'nodejs']).set({ version: sources.version ?? 'unknown', nodejs: process.version }, 1);

    // ── per queue ──
    for (const [name, f] of Object.entries(QUEUE_FAMILIES) as Array<[QueueFamily, (typeof QUEUE_FAMILIES)[QueueFamily]]>) {
      const labels = name === 'lgnet_queue_dropped_frames_total' ? ['queue', 'direction', 'reason'] : ['queue', 'direction'];
      this.queue.set(name, f.type === 'counter' ? counter(name, f.help, labels) : gauge(name, f.help, labels));
    }
    const running = gauge('lgnet_queue_running', 'Whether the queue is running (1) or stopped (0).', ['queue', 'direction']);
    const brokenInfo = gauge('lgnet_queue_broken_info', 'Present (1) while the queue is broken, with the error code that broke it.', ['queue', 'direction', 'code']);
    const ctrlCommands = counter('lgnet_ctrl_commands_total', 'Control-queue commands served (embedded mode; QEMU keeps the control queue over vhost-user).');
    const ctrlErrors = counter('lgnet_ctrl_errors_total', 'Control-queue commands answered VIRTIO_NET_ERR.');
    this.update.push(() => {
      const m = sources.device();
      for (const f of this.queue.values()) f.reset();
      running.reset();
      brokenInfo.reset();
      for (const q of m.queues) {
        const base = { queue: String(q.index), direction: q.role };
        for (const [key, s] of Object.entries(QUEUE_SERIES) as Array<[MetricName, QueueSeries]>) {
          if (s.only && s.only !== q.role) continue;
          const v = q[key] * (s.scale ?? 1);
          const labels = s.reason ? { ...base, reason: s.reason } : base;
          const fam = this.queue.get(s.metric)!;
          if (fam instanceof Counter) fam.inc(labels, v);
          else fam.set(labels, v);
        }
        running.set(base, q.running ? 1 : 0);
        if (q.broken) brokenInfo.set({ ...base, code: q.broken.split(':', 1)[0]! }, 1);
      }
      setCounter(ctrlCommands, m.ctrl.commands);
      setCounter(ctrlErrors, m.ctrl.errors);
    });

    // ── the vhost-user server ──
    const server = sources.server;
    if (server) {
      const connected = gauge('lgnet_vhost_user_connected', 'Whether a vhost-user front-end is attached (1) or not (0).');
      const connections = counter('lgnet_vhost_user_connections_total', 'vhost-user connections accepted (server mode) or made (client mode).');
      const reconnects = counter('lgnet_vhost_user_reconnects_total', 'vhost-user connections after the first: a front-end that came back (or, in client mode, that lgnet reached again).');
      const messages = counter('lgnet_vhost_user_messages_total', 'vhost-user messages dispatched, by request.', ['request']);
      const errors = counter('lgnet_vhost_user_errors_total', 'vhost-user messages refused (each drops the connection), by request and error code.', ['request', 'code']);
      const rarp = counter('lgnet_vhost_user_rarp_requests_total', 'SEND_RARP requests served (each broadcasts a RARP announce on the backend when it can).');
      const feature = gauge('lgnet_vhost_user_negotiated_feature_info', 'A device feature bit the front-end negotiated (SET_FEATURES); present while connected.', ['feature']);
      const protocol = gauge('lgnet_vhost_user_negotiated_protocol_feature_info', 'A vhost-user protocol feature the front-end negotiated (SET_PROTOCOL_FEATURES); present while connected.', ['feature']);
      this.update.push(() => {
        const sm = server.metrics;
        const c = server.connection;
        connected.set(c ? 1 : 0);
        setCounter(connections, sm.connections);
        setCounter(reconnects, sm.reconnects);
        messages.reset();
        for (const [request, n] of Object.entries(sm.requests)) messages.inc({ request }, n);
        errors.reset();
        for (const [request, byCode] of Object.entries(sm.refusals)) {
          for (const [code, n] of Object.entries(byCode)) errors.inc({ request, code }, n as number);
        }
        setCounter(rarp, sm.rarp);
        feature.reset();
        protocol.reset();
        if (c?.featuresSet) for (const name of deviceFeatureNames(c.features)) feature.set({ feature: name }, 1);
        if (c) for (const name of protocolNames(c.protocolFeatures)) protocol.set({ feature: name }, 1);
      });
    }

    // ── the process (the standard client-library names) ──
    const proc = sources.process;
    if (proc) {
      // A figure this process cannot read (no /proc) is left out rather than shown as 0.
      const first = proc.sample();
      const optional = (name: string, help: string, read: (s: ProcessSample) => number | undefined): ((s: ProcessSample) => void) => {
        if (read(first) === undefined) return () => {};
        const g = gauge(name, help);
        return (s) => {
          const v = read(s);
          if (v !== undefined) g.set(v);
        };
      };
      const sets = [
        optional('process_resident_memory_bytes', 'Resident memory size in bytes.', (s) => s.residentBytes),
        optional('process_open_fds', 'Number of open file descriptors.', (s) => s.openFds),
        optional('process_max_fds', 'Maximum number of open file descriptors (RLIMIT_NOFILE).', (s) => s.maxFds),
        optional('process_threads', "Threads of the process (the main thread, one per data queue, the runtime's own).", (s) => s.threads),
      ];
      const cpu = counter('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds.');
      const cpuUser = counter('process_cpu_user_seconds_total', 'User CPU time spent in seconds.');
      const cpuSystem = counter('process_cpu_system_seconds_total', 'System CPU time spent in seconds.');
      const start = gauge('process_start_time_seconds', 'Start time of the process since the Unix epoch in seconds.');
      this.update.push(() => {
        const s = proc.sample();
        for (const set of sets) set(s);
        setCounter(cpu, s.cpuUserSeconds + s.cpuSystemSeconds);
        setCounter(cpuUser, s.cpuUserSeconds);
        setCounter(cpuSystem, s.cpuSystemSeconds);
        start.set(s.startTimeSeconds);
      });
    }

    // ── the tap, as the kernel counts it ──
    const tap = sources.tap;
    if (tap) {
      const labels = ['interface', 'direction'] as const;
      const families: Array<[Counter<(typeof labels)[number]>, keyof TapDirection]> = [
        [counter('lgnet_tap_frames_total', 'Frames the kernel counted on the tap interface: to_guest, queued for lgnet to read (its transmit side); from_guest, written by lgnet (its receive side).', labels), 'frames'],
        [counter('lgnet_tap_bytes_total', 'Bytes of those frames, as the kernel counted them on the tap interface.', labels), 'bytes'],
        [counter('lgnet_tap_dropped_frames_total', 'Frames the kernel dropped on the tap interface: to_guest, before lgnet could read them (its queue to lgnet was full: the guest gave no RX buffers, or lgnet fell behind); from_guest, after lgnet wrote them.', labels), 'dropped'],
        [counter('lgnet_tap_errors_total', 'Errors the kernel counted on the tap interface.', labels), 'errors'],
      ];
      this.update.push(() => {
        const s = tap.sample();
        for (const [c] of families) c.reset();
        if (!s) return; // the interface is gone or renamed: no series rather than zeros
        for (const [c, key] of families) {
          c.inc({ interface: tap.name, direction: 'to_guest' }, s.toGuest[key]);
          c.inc({ interface: tap.name, direction: 'from_guest' }, s.fromGuest[key]);
        }
      });
    }

    // ── the rate limits in effect (they change through --api-socket) ──
    const limits = sources.rateLimits;
    if (limits) {
      const labels = ['direction', 'bucket'] as const;
      const rate = gauge('lgnet_rate_limit_tokens_per_second', 'The rate limit of each queue of a direction, per bucket (bytes, ops: frames), in tokens a second; absent where unlimited.', labels);
      const size = gauge('lgnet_rate_limit_bucket_size', 'The size of each queue\'s token bucket (the largest burst it lets through at once), per direction and bucket; absent where unlimited.', labels);
      this.update.push(() => {
        rate.reset();
        size.reset();
        const l = limits();
        for (const direction of ['rx', 'tx'] as const) {
          for (const bucket of ['bytes', 'ops'] as const) {
            const b = l[direction]?.[bucket];
            if (!b) continue;
            rate.set({ direction, bucket }, tokensPerSecond(b));
            size.set({ direction, bucket }, b.size);
          }
        }
      });
    }

    // ── the control socket (--api-socket) ──
    const api = sources.api;
    if (api) {
      const requests = counter('lgnet_api_requests_total', 'Requests to the control socket, by HTTP status answered (400 also counts what was not HTTP).', ['code']);
      const refusals = counter('lgnet_api_refusals_total', 'Control socket requests refused, by error code (LGNET_API_*, or the device\'s when a queue did not take a change).', ['error']);
      const changes = counter('lgnet_api_rate_limit_changes_total', 'Patches through the control socket that changed the rate limits.');
      this.update.push(() => {
        const c = api();
        requests.reset();
        refusals.reset();
        if (!c) return;
        for (const [code, n] of Object.entries(c.requests)) requests.inc({ code }, n);
        for (const [error, n] of Object.entries(c.refusals)) refusals.inc({ error }, n);
        setCounter(changes, c.changes);
      });
    }

    // ── the endpoint itself ──
    this.http = counter('lgnet_metrics_http_requests_total', 'Requests to this metrics endpoint, by HTTP status answered (400: not HTTP).', ['code']);
  }

  /** The Content-Type of scrape()'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Counts one answer of the HTTP endpoint. */
  countRequest(code: HttpStatus): void {
    this.http.inc({ code: String(code) });
  }

  /** The metrics as Prometheus text, from one fresh snapshot of every source. */
  scrape(): Promise<string> {
    return this.serialized(() => this.registry.metrics());
  }

  /** The same snapshot as prom-client's JSON (what `lgnet stats` reads). */
  scrapeJson(): Promise<MetricFamily[]> {
    return this.serialized(async () =>
      (await this.registry.getMetricsAsJSON()).map((m) => ({
        name: m.name, help: m.help, type: String(m.type), values: m.values.map((v) => ({ value: v.value, labels: { ...v.labels } as Record<string, string | number> })),
      })));
  }

  private serialized<T>(render: () => Promise<T>): Promise<T> {
    const run = this.chain.then(() => {
      for (const u of this.update) u();
      return render();
    });
    this.chain = run.catch(() => {});
    return run;
  }
}

/** One family in prom-client's JSON form (Registry.getMetricsAsJSON). */
export interface MetricFamily {
  name: string;
  help: string;
  type: string;
  values: Array<{ value: number; labels: Record<string, string | number> }>;
}

function setCounter(c: Counter, v: number): void {
  c.reset();
  c.inc(v);
}
