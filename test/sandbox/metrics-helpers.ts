/**
 * Client side of the metrics endpoint for the tests (metrics-listen.test.ts, operations.test.ts): a
 * parser of the text format as far as lgnet writes it, HTTP and raw-socket requests, and promtool.
 */
import { spawnSync } from 'node:child_process';
import { request } from 'node:http';
import { createConnection } from 'node:net';
import type { ListenAddress } from '../../sandbox/metrics-listen.ts';

/** One sample of the text format. */
export interface Sample { name: string; labels: Record<string, string>; value: number }

/** Parses the text exposition format as far as lgnet writes it (labels with plain values). */
export function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of one series, or undefined when it is not in the text. */
export function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const hit = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hit.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${hit.length} series`);
  return hit[0]?.value;
}

/** An HTTP request to the endpoint; resolves with status, content type and body. */
export function httpGet(addr: ListenAddress, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ ...(addr.kind === 'unix' ? { socketPath: addr.path } : { host: addr.host, port: addr.port }), path, method, timeout: 5000, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', reject);
    req.end();
  });
}

/** Writes raw bytes on a fresh connection and returns everything the endpoint answered before closing. */
export function rawExchange(addr: ListenAddress, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = addr.kind === 'unix' ? createConnection(addr.path) : createConnection(addr.port, addr.host);
    let got = '';
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`the endpoint did not close the connection: ${got}`));
    }, 5000);
    s.setEncoding('utf8');
    s.on('data', (d: string) => (got += d));
    s.on('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
    s.on('close', () => {
      clearTimeout(t);
      resolve(got);
    });
    s.write(bytes);
  });
}

/** `promtool check metrics` on the text; returns its exit status and what it printed. */
export function promtool(text: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 20_000 });
  if (r.error) throw new Error(`promtool is missing (${r.error.message}): run scripts/install-deps.sh, which installs Debian's prometheus package`);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}
