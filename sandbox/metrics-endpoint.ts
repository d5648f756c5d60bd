/**
 * `lgnet serve --metrics-socket PATH`: a read-only unix socket that answers every connection with one
 * JSON document, the device's live counters, and closes it.
 *
 *   $ socat - UNIX-CONNECT:/run/lgnet.metrics        # or readMetrics(path) below
 *   {"pid":1234,"ts_ms":...,"queues":[{"index":0,"role":"rx","frames":...,...},...],"ctrl":{...}}
 *
 * The socket is bound and listening before the jail (sandbox/main.ts, step 2): afterwards serving it
 * needs only accept4, write and close, which the main-thread seccomp policy already allows. Nothing is
 * read from a client; a client that connects and never reads is dropped after a short timeout.
 * The socket file is removed on close where the jail still allows it (best effort).
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import type { DeviceMetrics } from '../device/net.ts';

/** What one connection receives (one JSON line). */
export interface MetricsDocument extends DeviceMetrics {
  /** lgnet's pid. */
  pid: number;
  /** Date.now() when the snapshot was taken. */
  ts_ms: number;
}

export interface MetricsEndpoint {
  readonly path: string;
  /** Stops listening and removes the socket file (best effort). Idempotent. */
  close(): Promise<void>;
}

/** A stale socket file from a killed lgnet is replaced; any other kind of file is an error. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // absent
  }
  if (!st.isSocket()) {
    throw Object.assign(new Error(`--metrics-socket ${path} exists and is not a socket`), { code: 'METRICS_PATH_NOT_SOCKET' });
  }
  unlinkSync(path);
}

/** Listens on `path`; resolves once it accepts connections. */
export function openMetricsEndpoint(path: string, read: () => DeviceMetrics): Promise<MetricsEndpoint> {
  removeStaleSocket(path);
  const server: Server = createServer({ allowHalfOpen: false }, (sock) => {
    sock.setTimeout(2000, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    let body: string;
    try {
      const doc: MetricsDocument = { pid: process.pid, ts_ms: Date.now(), ...read() };
      body = `${JSON.stringify(doc)}\n`;
    } catch (e) {
      body = `${JSON.stringify({ pid: process.pid, error: (e as Error).message })}\n`;
    }
    sock.end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      let closing: Promise<void> | null = null;
      resolve({
        path,
        close() {
          closing ??= new Promise<void>((done) => {
            server.close(() => done());
            try {
              unlinkSync(path);
            } catch {
              /* gone already, or the jail forbids unlink */
            }
          });
          return closing;
        },
      });
    });
  });
}

/** Reads one document from a running lgnet's metrics socket (tests, the demo, operators). */
export function readMetrics(path: string, timeoutMs = 3000): Promise<MetricsDocument> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let text = '';
    const t = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no metrics from ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (text += d));
    sock.on('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
    sock.on('end', () => {
      clearTimeout(t);
      try {
        resolve(JSON.parse(text) as MetricsDocument);
      } catch {
        reject(new Error(`bad metrics document from ${path}: ${text.slice(0, 200)}`));
      }
    });
  });
}
