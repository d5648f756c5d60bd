/**
 * The control socket's PATCH /rate-limit (sandbox/api.ts, applyRateLimitPatch): the body as raw bytes,
 * or as JSON built from the input (keys from the schema and around it, values of every JSON type and
 * numbers at the edges of what a bucket takes), applied to limits also drawn from the input.
 * Properties:
 *   - it throws nothing but ApiError with BAD_REQUEST or BAD_RATE_LIMIT, and then changes nothing;
 *   - what it accepts is valid limits (checkRateLimit), a direction with no bucket left is null, a
 *     direction the patch leaves out is as it was, and `change` names exactly the directions given;
 *   - a merge patch is idempotent: applied again to its own result it changes nothing more.
 */
import { isDeepStrictEqual } from 'node:util';

import { checkRateLimit, type RateLimit } from '../../device/rate-limit.ts';
import { API_ERROR, ApiError, applyRateLimitPatch } from '../../sandbox/api.ts';
import { Input, type FuzzTarget } from '../target.ts';

const KEYS = ['rx', 'tx', 'bytes', 'ops', 'size', 'refillMs', '__proto__', 'RX', ''];
const NUMBERS = [0, 1, -1, 1.5, 10, 500, 3_600_000, 3_600_001, 0.001, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, 1e300];

function value(inp: Input, depth: number): unknown {
  switch (inp.u8() % (depth > 3 ? 4 : 7)) {
    case 0: return null;
    case 1: return NUMBERS[inp.u8() % NUMBERS.length];
    case 2: return inp.u32();
    case 3: return ['', 'off', '10/500'][inp.u8() % 3];
    case 4: return [value(inp, depth + 1)];
    default: {
      const o: Record<string, unknown> = {};
      const n = inp.u8() % 4;
      for (let i = 0; i < n; i++) Object.defineProperty(o, KEYS[inp.u8() % KEYS.length]!, { value: value(inp, depth + 1), enumerable: true, configurable: true, writable: true });
      return o;
    }
  }
}

function limit(inp: Input): RateLimit | undefined {
  const which = inp.u8() % 4;
  if (which === 0) return undefined;
  const bucket = () => ({ size: 1 + (inp.u32() % 1_000_000), refillMs: 1 + (inp.u16() % 5000) });
  return { ...(which & 1 ? { bytes: bucket() } : {}), ...(which & 2 ? { ops: bucket() } : {}) };
}

export default {
  about: 'control socket: PATCH /rate-limit, a JSON merge patch of the rate limits',
  maxLen: 1024,
  run(data) {
    const inp = new Input(data);
    const rx = limit(inp);
    const tx = limit(inp);
    const current = { ...(rx ? { rx } : {}), ...(tx ? { tx } : {}) };
    const before = JSON.stringify(current);
    const body = inp.u8() & 1 ? Buffer.from(inp.bytes(inp.left)).toString('utf8') : JSON.stringify(value(inp, 0)) ?? '';
    let r: ReturnType<typeof applyRateLimitPatch>;
    try {
      r = applyRateLimitPatch(current, body);
    } catch (e) {
      if (!(e instanceof ApiError) || (e.code !== API_ERROR.BAD_REQUEST && e.code !== API_ERROR.BAD_RATE_LIMIT)) throw e;
      if (JSON.stringify(current) !== before) throw new Error(`a refused patch changed the limits: ${body}`);
      return;
    }
    if (JSON.stringify(current) !== before) throw new Error(`the patch changed its input: ${body}`);
    const patch = JSON.parse(body) as Record<string, unknown>;
    for (const d of ['rx', 'tx'] as const) {
      const after = r.after[d];
      if (after !== null) {
        if (!after.bytes && !after.ops) throw new Error(`${d} has no bucket and is not null: ${body}`);
        checkRateLimit(after); // throws on an invalid limit
      }
      if (patch[d] === undefined) {
        if (d in r.change) throw new Error(`${d} was not in the patch and is in the change: ${body}`);
        if (!isDeepStrictEqual(after, current[d] ?? null)) throw new Error(`${d} was not in the patch and changed: ${body}`);
      } else if (!isDeepStrictEqual(r.change[d], after)) {
        throw new Error(`${d}: the change and the result differ: ${body}`);
      }
    }
    const again = applyRateLimitPatch({ ...(r.after.rx ? { rx: r.after.rx } : {}), ...(r.after.tx ? { tx: r.after.tx } : {}) }, body);
    if (!isDeepStrictEqual(again.after, r.after)) throw new Error(`not idempotent: ${body}`);
  },
} satisfies FuzzTarget;
