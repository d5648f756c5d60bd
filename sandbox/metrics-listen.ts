/**
 * `lgnet serve --metrics-listen ADDR`: the Prometheus endpoint, HTTP on a unix socket path or on a
 * loopback port (127.0.0.1:PORT, [::1]:PORT). Nothing else is accepted: the endpoint is for this host,
 * and a wider audience belongs behind a proxy that the operator chooses.
 *
 *   GET /metrics        Prometheus text format 0.0.4 (PrometheusExporter.scrape, sandbox/prometheus.ts)
 *   GET /metrics.json   the same snapshot as prom-client's JSON (what `lgnet stats` reads)
 *   GET /queues         where every queue and its ring stand (NetDevice.inspect: `lgnet stats --queues`);
 *                       each running queue's worker is woken once to answer
 *   anything else       404 (other path), 405 (other method), 400 (not HTTP: the parser gave up)
 *
 * Bound before the jail (sandbox/main.ts, step 2); the HTTP plumbing, and what it does with untrusted
 * peers, is http-listen.ts's.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { LgnetError } from '../errors/index.ts';
import * as native from '../native/index.ts';
import { listenHttp } from './http-listen.ts';
import type { HttpStatus, PrometheusExporter } from './prometheus.ts';

/** Stable codes of the metrics endpoint and of `lgnet stats`. */
export const METRICS_ERROR = {
  /** ADDR is neither a unix socket path nor 127.0.0.1:PORT / [::1]:PORT. */
  BAD_ADDRESS: 'LGNET_METRICS_BAD_ADDRESS',
  /** The unix socket path exists and is not a socket. */
  PATH_NOT_SOCKET: 'LGNET_METRICS_PATH_NOT_SOCKET',
  /** Binding the address failed (in use, no permission, no such directory). */
  LISTEN_FAILED: 'LGNET_METRICS_LISTEN_FAILED',
  /** `lgnet stats`: the endpoint did not answer, or not with metrics. */
  SCRAPE_FAILED: 'LGNET_METRICS_SCRAPE_FAILED',
} as const;

export type MetricsErrorCode = (typeof METRICS_ERROR)[keyof typeof METRICS_ERROR];

/** The metrics endpoint could not be opened or read. */
export class MetricsError extends LgnetError {
  declare readonly code: MetricsErrorCode;
  constructor(code: MetricsErrorCode, message: string, opts: { cause?: unknown } = {}) {
    super(code, message, opts);
  }
}

/** Where the endpoint listens. */
export type ListenAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: '127.0.0.1' | '::1'; port: number };

/**
 * What the endpoint is opened on: an address to bind, or a listening socket a service manager made
 * (systemd socket activation, a socket named `metrics`: sandbox/listen-fds.ts). A TCP one must be on
 * loopback, as an address given on the command line must.
 */
export type MetricsBind = ListenAddress | { kind: 'fd'; fd: number };

/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_UNIX_PATH = 107;

/**
 * Parses ADDR: `127.0.0.1:PORT`, `[::1]:PORT` (PORT 0: the kernel picks one), or a unix socket path.
 * Anything that looks like host:port with another host is refused, so that a typo cannot expose the
 * endpoint beyond this machine.
 */
export function parseListenAddress(addr: string): ListenAddress {
  const tcp = /^(?:(127\.0\.0\.1)|\[(::1)\]):(\d{1,5})$/.exec(addr);
  if (tcp) {
    const port = Number(tcp[3]);
    if (port > 65535) throw new MetricsError(METRICS_ERROR.BAD_ADDRESS, `port ${port} in '${addr}' is above 65535`);
    return { kind: 'tcp', host: tcp[1] ? '127.0.0.1' : '::1', port };
  }
  if (/^\[.*\](:\d*)?$/.test(addr) || /^[^/]*:\d*$/.test(addr)) {
    throw new MetricsError(METRICS_ERROR.BAD_ADDRESS, `'${addr}' is not a local address; use 127.0.0.1:PORT, [::1]:PORT or a unix socket path (put a proxy in front to reach it from elsewhere)`);
  }
  if (addr === '' || addr.includes('\0')) throw new MetricsError(METRICS_ERROR.BAD_ADDRESS, 'the unix socket path is empty or holds a NUL byte');
  if (Buffer.byteLength(addr) > MAX_UNIX_PATH) {
    throw new MetricsError(METRICS_ERROR.BAD_ADDRESS, `unix socket path '${addr}' is longer than ${MAX_UNIX_PATH} bytes; use a shorter path`);
  }
  return { kind: 'unix', path: addr };
}

/** ADDR as a person types it (and as `lgnet stats` takes it). */
export function formatListenAddress(a: ListenAddress): string {
  return a.kind === 'unix' ? a.path : a.host === '::1' ? `[::1]:${a.port}` : `${a.host}:${a.port}`;
}

export interface MetricsListener {
  /** Where it listens; for TCP with port 0, the port the kernel picked. */
  readonly address: ListenAddress;
  /** Stops listening, ends open connections, removes a unix socket file (best effort). Idempotent. */
  close(): Promise<void>;
}

export { MAX_CONNECTIONS } from './http-listen.ts';

/** What GET /queues answers with: the device's inspection (NetDevice.inspect), or none served. */
export type QueuesSource = () => Promise<unknown>;

/** Opens the endpoint; resolves once it accepts connections. */
export async function openMetricsListener(address: MetricsBind, exporter: PrometheusExporter, queues?: QueuesSource): Promise<MetricsListener> {
  const endpoint = await listenHttp(address, (req, res) => void answer(req, res, exporter, queues), {
    flag: '--metrics-listen',
    pathNotSocket: (m) => new MetricsError(METRICS_ERROR.PATH_NOT_SOCKET, m),
    listenFailed: (m, cause) => new MetricsError(METRICS_ERROR.LISTEN_FAILED, m, { cause }),
    onBadRequest: () => exporter.countRequest(400),
  });
  const bound = endpoint.bound;
  let actual: ListenAddress;
  if (address.kind === 'fd') {
    if (typeof bound === 'string' || bound === null) {
      // Node names a pipe it did not bind ''; the kernel knows its path.
      let path = bound || '';
      try {
        path ||= native.socketInfo(address.fd).path;
      } catch { /* named by its fd below */ }
      actual = { kind: 'unix', path: path || `fd ${address.fd}` };
    } else if (bound.address === '127.0.0.1' || bound.address === '::1') {
      actual = { kind: 'tcp', host: bound.address, port: bound.port };
    } else {
      // The same rule as for an address on the command line: the endpoint is for this host.
      await endpoint.close();
      throw new MetricsError(METRICS_ERROR.BAD_ADDRESS, `the metrics socket handed over as fd ${address.fd} listens on ${bound.address}:${bound.port}, not on loopback; make it listen on 127.0.0.1, [::1] or a unix path (ListenStream=127.0.0.1:${bound.port})`);
    }
  } else {
    actual = address.kind === 'tcp' && bound && typeof bound === 'object' ? { ...address, port: bound.port } : address;
  }
  return { address: actual, close: () => endpoint.close() };
}

async function answer(req: IncomingMessage, res: ServerResponse, exporter: PrometheusExporter, queues?: QueuesSource): Promise<void> {
  const send = (code: HttpStatus, type: string, body: string, extra: Record<string, string> = {}) => {
    exporter.countRequest(code);
    res.writeHead(code, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), ...extra });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  const path = (req.url ?? '').split('?', 1)[0];
  if (path !== '/metrics' && path !== '/metrics.json' && !(path === '/queues' && queues)) {
    send(404, 'text/plain; charset=utf-8', `lgnet serves GET /metrics (Prometheus text), GET /metrics.json${queues ? ' and GET /queues' : ''}\n`);
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    send(405, 'text/plain; charset=utf-8', `${req.method ?? ''} is not served; use GET\n`, { Allow: 'GET, HEAD' });
    return;
  }
  try {
    if (path === '/metrics') send(200, exporter.contentType, await exporter.scrape());
    else if (path === '/queues') send(200, 'application/json', `${JSON.stringify({ pid: process.pid, ts_ms: Date.now(), queues: await queues!() })}\n`);
    else send(200, 'application/json', `${JSON.stringify({ pid: process.pid, ts_ms: Date.now(), metrics: await exporter.scrapeJson() })}\n`);
  } catch (e) {
    if (!res.headersSent) send(500, 'text/plain; charset=utf-8', `metrics unavailable: ${(e as Error).message}\n`);
  }
}
