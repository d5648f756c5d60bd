/**
 * `lgnet rate-limit SOCKET [--{rx,tx}-rate-{bytes,ops} SIZE/MS|off] [--json]`: the client of the
 * control socket (api.ts). Without a change it shows the limits (GET /rate-limit); with one it sends
 * it as a merge patch (PATCH /rate-limit) and shows the limits lgnet answers with, which every running
 * queue has by then.
 */
import { request } from 'node:http';
import { tokensPerSecond, type BucketSpec, type RateLimit } from '../device/rate-limit.ts';
import { API_ERROR, ApiError, MAX_BODY, type RateLimits } from './api.ts';
import type { RateLimitOptions } from './cli.ts';

/** One request to the control socket; resolves with the status and the parsed JSON body. */
export function apiRequest(socket: string, method: 'GET' | 'PATCH', path: string, body?: unknown, timeoutMs = 10_000): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const fail = (why: string, cause?: unknown) => reject(new ApiError(API_ERROR.REQUEST_FAILED, `${socket}: ${why}; is lgnet serving with --api-socket ${socket}?`, { cause }));
    const req = request({
      socketPath: socket, method, path, timeout: timeoutMs,
      headers: text === undefined ? {} : { 'Content-Type': 'application/merge-patch+json', 'Content-Length': Buffer.byteLength(text) },
    }, (res) => {
      const chunks: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        if (n <= MAX_BODY * 4) chunks.push(c);
      });
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown });
        } catch (e) {
          fail(`answered ${res.statusCode ?? '?'} with a body that is not JSON`, e);
        }
      });
      res.on('error', (e) => fail(e.message, e));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on('error', (e) => fail(e.message, e));
    req.end(text);
  });
}

function rate(b: BucketSpec, unit: 'bytes' | 'frames'): string {
  const perSecond = tokensPerSecond(b);
  let human: string;
  if (unit === 'bytes') {
    const bits = perSecond * 8;
    const [v, u] = bits >= 1e9 ? [bits / 1e9, 'Gbit/s'] : bits >= 1e6 ? [bits / 1e6, 'Mbit/s'] : bits >= 1e3 ? [bits / 1e3, 'kbit/s'] : [bits, 'bit/s'];
    human = `${Number(v.toPrecision(4))} ${u}`;
  } else {
    human = `${Number(perSecond.toPrecision(4))} frames/s`;
  }
  return `${unit} ${b.size}/${b.refillMs} ms (${human})`;
}

function direction(l: RateLimit | null): string {
  if (!l) return 'unlimited';
  return [l.bytes ? rate(l.bytes, 'bytes') : 'bytes unlimited', l.ops ? rate(l.ops, 'frames') : 'frames unlimited'].join(', ');
}

/** The limits as `lgnet rate-limit` prints them, one line a direction. */
export function formatRateLimits(l: RateLimits): string {
  return `rx: ${direction(l.rx)}\ntx: ${direction(l.tx)}\n`;
}

/** Runs `lgnet rate-limit`; throws ApiError when lgnet cannot be reached or refuses the change. */
export async function runRateLimit(opts: RateLimitOptions, out: NodeJS.WritableStream): Promise<void> {
  const r = opts.patch ? await apiRequest(opts.socket, 'PATCH', '/rate-limit', opts.patch) : await apiRequest(opts.socket, 'GET', '/rate-limit');
  if (r.status !== 200) {
    const err = (r.body as { error?: { code?: string; message?: string } }).error;
    throw new ApiError(API_ERROR.REQUEST_FAILED, `lgnet refused (${r.status} ${err?.code ?? ''}): ${err?.message ?? JSON.stringify(r.body)}`);
  }
  const limits = r.body as RateLimits;
  out.write(opts.json ? `${JSON.stringify(limits)}\n` : formatRateLimits(limits));
}
