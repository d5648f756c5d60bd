/**
 * `lgnet serve --api-socket PATH`: the control socket, HTTP on a unix socket, for what an operator
 * changes while the device serves (Firecracker's API socket, `PATCH /network-interfaces/{id}`):
 *
 *   GET   /rate-limit   the limits every queue runs under: {"rx": RateLimit | null, "tx": …}
 *   PATCH /rate-limit   a JSON merge patch (RFC 7396) of that document: a direction or a bucket given
 *                       as null is taken off, one given as an object is merged into what is there;
 *                       answers the limits after the change, once every running queue has them
 *   anything else       404 (other path), 405 (other method), 400 (not HTTP, or a patch that is not
 *                       one: code, message), 413 (a body over MAX_BODY bytes), 500 (a queue worker
 *                       did not answer: its code)
 *
 * Only a unix socket: who may change the device is who may write the socket file (created 0600, and
 * best kept in a directory only the operator reaches). Under socket activation, a socket named `api`.
 * Each peer is still untrusted: the HTTP plumbing bounds it (http-listen.ts), a body is read up to
 * MAX_BODY bytes, every field is checked (unknown keys refused, so that a typo is not a silent no-op),
 * and patches apply one at a time. Every change is logged with the limits before and after.
 */
import { chmodSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { LgnetError } from '../errors/index.ts';
import { checkRateLimit, type BucketSpec, type RateLimit } from '../device/rate-limit.ts';
import * as native from '../native/index.ts';
import { listenHttp } from './http-listen.ts';

/** Stable codes of the control socket and of `lgnet rate-limit`. */
export const API_ERROR = {
  /** --api-socket is not a usable unix socket path. */
  BAD_ADDRESS: 'LGNET_API_BAD_ADDRESS',
  /** The path exists and is not a socket. */
  PATH_NOT_SOCKET: 'LGNET_API_PATH_NOT_SOCKET',
  /** Binding the socket failed (in use, no permission, no such directory). */
  LISTEN_FAILED: 'LGNET_API_LISTEN_FAILED',
  /** The request's body is not JSON, or not a patch of the limits. */
  BAD_REQUEST: 'LGNET_API_BAD_REQUEST',
  /** The patch is well formed and the limit it makes is not one (a size of 0, a refill of an hour and more). */
  BAD_RATE_LIMIT: 'LGNET_API_BAD_RATE_LIMIT',
  /** The body is longer than MAX_BODY bytes. */
  TOO_LARGE: 'LGNET_API_TOO_LARGE',
  /** `lgnet rate-limit`: the socket did not answer, or answered with an error. */
  REQUEST_FAILED: 'LGNET_API_REQUEST_FAILED',
} as const;

export type ApiErrorCode = (typeof API_ERROR)[keyof typeof API_ERROR];

/** The control socket could not be opened, a request to it was refused, or it could not be reached. */
export class ApiError extends LgnetError {
  declare readonly code: ApiErrorCode;
  /** The HTTP status a refused request is answered with. */
  readonly status: number;
  constructor(code: ApiErrorCode, message: string, opts: { cause?: unknown; status?: number } = {}) {
    super(code, message, opts.cause === undefined ? {} : { cause: opts.cause });
    this.status = opts.status ?? 400;
  }
}

/** Largest request body read; a patch of both directions' buckets takes ~200 bytes. */
export const MAX_BODY = 4096;

/** The limits of the two directions, as GET /rate-limit answers (null: unlimited). */
export interface RateLimits {
  rx: RateLimit | null;
  tx: RateLimit | null;
}

/** What the control socket acts on: the device's limits (NetDevice.rateLimits, setRateLimit). */
export interface ApiTarget {
  rateLimits(): { rx?: RateLimit; tx?: RateLimit };
  setRateLimit(limit: { rx?: RateLimit | null; tx?: RateLimit | null }): Promise<void>;
}

/** What the endpoint tells its owner: each change made, and each request refused. */
export interface ApiEvents {
  changed?(before: RateLimits, after: RateLimits): void;
  refused?(status: number, code: string, message: string): void;
}

const DIRECTIONS = ['rx', 'tx'] as const;
const BUCKETS = ['bytes', 'ops'] as const;
const FIELDS = ['size', 'refillMs'] as const;

function bad(message: string): ApiError {
  return new ApiError(API_ERROR.BAD_REQUEST, message);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(where: string, o: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw bad(`${where}: unknown key ${JSON.stringify(k).slice(0, 40)}; it takes ${allowed.join(', ')}`);
  }
}

function bucketOf(where: string, old: BucketSpec | undefined, patch: Record<string, unknown>): BucketSpec {
  onlyKeys(where, patch, FIELDS);
  const next: Partial<BucketSpec> = { ...old };
  for (const f of FIELDS) {
    const v = patch[f];
    if (v === undefined) continue;
    if (typeof v !== 'number') throw bad(`${where}.${f} must be a number`);
    next[f] = v;
  }
  if (next.size === undefined || next.refillMs === undefined) {
    throw bad(`${where} is a new bucket: give both size and refillMs (tokens per refill time in milliseconds)`);
  }
  return { size: next.size, refillMs: next.refillMs };
}

/** A direction's limit after `patch` (RFC 7396 merge), or null for none left. */
function directionOf(where: string, old: RateLimit | undefined, patch: unknown): RateLimit | null {
  if (patch === null) return null;
  if (!isObject(patch)) throw bad(`${where} must be an object of buckets, or null to take the limit off`);
  onlyKeys(where, patch, BUCKETS);
  const next: RateLimit = { ...old };
  for (const b of BUCKETS) {
    const p = patch[b];
    if (p === undefined) continue;
    if (p === null) delete next[b];
    else if (isObject(p)) next[b] = bucketOf(`${where}.${b}`, old?.[b], p);
    else throw bad(`${where}.${b} must be an object {size, refillMs}, or null to take the bucket off`);
  }
  return next.bytes || next.ops ? next : null;
}

/** The limits as GET /rate-limit shows them. */
export function rateLimitsOf(current: { rx?: RateLimit; tx?: RateLimit }): RateLimits {
  return { rx: current.rx ?? null, tx: current.tx ?? null };
}

/**
 * Applies a JSON merge patch (the request's body) to the current limits. Returns the limits after it
 * and the directions it changes (what NetDevice.setRateLimit is given: null takes a limit off). Throws
 * ApiError (BAD_REQUEST, BAD_RATE_LIMIT) and changes nothing for anything that is not a valid patch.
 */
export function applyRateLimitPatch(current: { rx?: RateLimit; tx?: RateLimit }, body: string): { after: RateLimits; change: { rx?: RateLimit | null; tx?: RateLimit | null } } {
  let patch: unknown;
  try {
    patch = JSON.parse(body);
  } catch (e) {
    throw bad(`the body is not JSON (${(e as Error).message.slice(0, 80)}); send a merge patch such as {"tx": {"bytes": {"size": 125000000, "refillMs": 1000}}}`);
  }
  if (!isObject(patch)) throw bad('the body must be a JSON object with rx and/or tx');
  onlyKeys('the patch', patch, DIRECTIONS);
  const after = rateLimitsOf(current);
  const change: { rx?: RateLimit | null; tx?: RateLimit | null } = {};
  for (const d of DIRECTIONS) {
    if (patch[d] === undefined) continue;
    const next = directionOf(d, current[d], patch[d]);
    if (next) {
      try {
        checkRateLimit(next);
      } catch (e) {
        throw new ApiError(API_ERROR.BAD_RATE_LIMIT, `${d}: ${(e as Error).message}`);
      }
    }
    after[d] = next;
    change[d] = next;
  }
  return { after, change };
}

/** A listening control socket. */
export interface ApiListener {
  /** The socket's path (for one handed over, what the kernel says, or `fd N`). */
  readonly path: string;
  /** What the socket answered so far (lgnet_api_* metrics). */
  readonly counts: ApiCounts;
  /** Stops listening and ends open connections; removes the socket file (best effort). Idempotent. */
  close(): Promise<void>;
}

/** The control socket's answers, counted as they go out. */
export interface ApiCounts {
  /** Requests answered, by HTTP status ("200", "400", …; "400" also counts what was not HTTP). */
  readonly requests: Record<string, number>;
  /** Requests refused, by error code (API_ERROR's, or the device's on a 500). */
  readonly refusals: Record<string, number>;
  /** Patches that changed the rate limits. */
  changes: number;
}

/** Where the control socket listens: a path to bind, or a socket a service manager made. */
export type ApiBind = { kind: 'unix'; path: string } | { kind: 'fd'; fd: number };

/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_UNIX_PATH = 107;

/** Checks PATH for --api-socket (a unix socket path, nothing else); throws ApiError BAD_ADDRESS. */
export function parseApiSocket(path: string): string {
  if (path === '' || path.includes('\0')) throw new ApiError(API_ERROR.BAD_ADDRESS, 'the control socket path is empty or holds a NUL byte');
  if (/^(\[[^\]]*\]|[^/]*):\d+$/.test(path)) throw new ApiError(API_ERROR.BAD_ADDRESS, `'${path}' looks like host:port; the control socket is a unix socket path only, so that the file's permissions say who may change the device`);
  if (Buffer.byteLength(path) > MAX_UNIX_PATH) throw new ApiError(API_ERROR.BAD_ADDRESS, `unix socket path '${path}' is longer than ${MAX_UNIX_PATH} bytes; use a shorter path`);
  return path;
}

/** Opens the control socket on `bind`; resolves once it accepts connections. */
export async function openApiListener(bind: ApiBind, target: ApiTarget, events: ApiEvents = {}): Promise<ApiListener> {
  let path = bind.kind === 'unix' ? bind.path : '';
  if (bind.kind === 'fd') {
    // Handed over by a manager: it must be a unix socket as well, or anyone on the host could reach it.
    let info: { domain: number; path: string } | undefined;
    try {
      info = native.socketInfo(bind.fd);
    } catch { /* not a socket: listen() says so below */ }
    if (info && info.domain !== native.SOCK.AF_UNIX) {
      throw new ApiError(API_ERROR.BAD_ADDRESS, `the control socket handed over as fd ${bind.fd} is not a unix socket; make it one (ListenStream=/run/lgnet/NAME.api in the .socket unit), so that the file's permissions say who may change the device`);
    }
    path = info?.path || `fd ${bind.fd}`;
  }
  let queue: Promise<unknown> = Promise.resolve();
  // Patches apply one at a time: each merges into what the one before left.
  const serialized = <T>(f: () => Promise<T>): Promise<T> => {
    const run = queue.then(f, f);
    queue = run.catch(() => {});
    return run;
  };
  const counts: ApiCounts = { requests: {}, refusals: {}, changes: 0 };
  // The counts see every answer before the owner's events do.
  const counted: ApiEvents = {
    changed: (before, after) => {
      counts.changes++;
      events.changed?.(before, after);
    },
    refused: (status, code, message) => {
      bump(counts.refusals, code);
      events.refused?.(status, code, message);
    },
  };
  const endpoint = await listenHttp(bind, (req, res) => void answer(req, res, target, counted, serialized, counts), {
    flag: '--api-socket',
    pathNotSocket: (m) => new ApiError(API_ERROR.PATH_NOT_SOCKET, m),
    listenFailed: (m, cause) => new ApiError(API_ERROR.LISTEN_FAILED, m, { cause }),
    onBadRequest: () => {
      bump(counts.requests, '400');
      counted.refused!(400, API_ERROR.BAD_REQUEST, 'not an HTTP request');
    },
    mode: 0o600,
  });
  if (bind.kind === 'unix') {
    // Bound under a umask that leaves 0600 already; made so whatever the file system did with it.
    try {
      chmodSync(bind.path, 0o600);
    } catch (e) {
      await endpoint.close();
      throw new ApiError(API_ERROR.LISTEN_FAILED, `cannot make ${bind.path} private (chmod 0600): ${(e as Error).message}`, { cause: e });
    }
  }
  return { path, counts, close: () => endpoint.close() };
}

/** Reads a request's body, up to MAX_BODY bytes. */
function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > MAX_BODY) {
        reject(new ApiError(API_ERROR.TOO_LARGE, `the body is longer than ${MAX_BODY} bytes; a patch of the limits is a few hundred`, { status: 413 }));
        req.removeAllListeners('data');
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    // A peer that goes before its body ends ('error' with "aborted", then 'close'): settled here, so
    // nothing waits on it; both are no-ops after 'end'.
    req.on('error', (e) => reject(new ApiError(API_ERROR.BAD_REQUEST, `the request's body could not be read: ${e.message}`)));
    req.on('close', () => reject(new ApiError(API_ERROR.BAD_REQUEST, 'the connection closed before the body ended')));
  });
}

/** One more of `key` in a count table. */
function bump(table: Record<string, number>, key: string): void {
  table[key] = (table[key] ?? 0) + 1;
}

async function answer(req: IncomingMessage, res: ServerResponse, target: ApiTarget, events: ApiEvents, serialized: <T>(f: () => Promise<T>) => Promise<T>, counts: ApiCounts): Promise<void> {
  const send = (status: number, body: unknown, extra: Record<string, string> = {}) => {
    if (res.headersSent || res.destroyed) return;
    bump(counts.requests, String(status));
    const text = `${JSON.stringify(body)}\n`;
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...(status >= 400 ? { Connection: 'close' } : {}), ...extra });
    res.end(text);
  };
  const refuse = (status: number, code: string, message: string, extra: Record<string, string> = {}) => {
    events.refused?.(status, code, message);
    send(status, { error: { code, message } }, extra);
  };
  const path = (req.url ?? '').split('?', 1)[0];
  if (path !== '/rate-limit') {
    refuse(404, API_ERROR.BAD_REQUEST, 'lgnet serves GET and PATCH /rate-limit');
    return;
  }
  if (req.method === 'GET') {
    send(200, rateLimitsOf(target.rateLimits()));
    return;
  }
  if (req.method !== 'PATCH') {
    refuse(405, API_ERROR.BAD_REQUEST, `${String(req.method).slice(0, 16)} is not served on /rate-limit; use GET or PATCH`, { Allow: 'GET, PATCH' });
    return;
  }
  try {
    const body = await readBody(req);
    const after = await serialized(async () => {
      const current = target.rateLimits();
      const p = applyRateLimitPatch(current, body);
      await target.setRateLimit(p.change);
      const now = rateLimitsOf(target.rateLimits());
      if (Object.keys(p.change).length > 0) events.changed?.(rateLimitsOf(current), now);
      return now;
    });
    send(200, after);
  } catch (e) {
    if (e instanceof ApiError) refuse(e.status, e.code, e.message);
    // The device's side (a queue worker that did not answer): the limits are recorded, and a queue
    // that missed them takes them when it starts again.
    else if (e instanceof LgnetError) refuse(500, e.code, `not every running queue took the change: ${e.message}`);
    else refuse(500, API_ERROR.REQUEST_FAILED, `the change could not be made: ${(e as Error).message}`);
  }
}
