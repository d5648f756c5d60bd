/**
 * The module hook that gives fuzz targets coverage (registered by fuzz/fuzz-one.ts). It runs on
 * Node's hooks thread, after tsx has turned TypeScript into JavaScript: modules under the directories
 * it is given get jazzer.js's edge counters and comparison hooks, as babel plugins. The counters are
 * numbered here; the main thread learns how many exist through the port, and sizes libFuzzer's
 * counter region to match before the target runs.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { MessagePort } from 'node:worker_threads';

const require = createRequire(import.meta.url);
// The plugins only, not the instrumentor's entry point: that one loads the fuzzer addon, which must
// live on the main thread alone (it registers the counters with libFuzzer).
const { transformSync } = require('@babel/core') as {
  transformSync(code: string, opts: Record<string, unknown>): { code?: string | null } | null;
};
const { codeCoverage } = require('@jazzer.js/instrumentor/dist/plugins/codeCoverage.js');
const { compareHooks } = require('@jazzer.js/instrumentor/dist/plugins/compareHooks.js');

interface HookData {
  port: MessagePort;
  /** file: URLs of the directories whose modules are instrumented. */
  include: string[];
}

let port: MessagePort;
let include: string[] = [];
let nextEdge = 0;
const ids = {
  nextEdgeId: (): number => nextEdge++,
  startForSourceFile: (): void => {},
  commitIdCount: (): void => {},
};

export function initialize(data: HookData): void {
  port = data.port;
  include = data.include;
}

interface LoadResult {
  format?: string | null;
  source?: string | ArrayBuffer | Uint8Array | null;
  shortCircuit?: boolean;
}
type NextLoad = (url: string, context: unknown) => Promise<LoadResult>;

export async function load(url: string, context: unknown, nextLoad: NextLoad): Promise<LoadResult> {
  const r = await nextLoad(url, context);
  if (r.format !== 'module' || r.source == null || !include.some((d) => url.startsWith(d))) return r;
  const code = typeof r.source === 'string' ? r.source : Buffer.from(r.source as Uint8Array).toString('utf8');
  const out = transformSync(code, {
    filename: fileURLToPath(url),
    babelrc: false,
    configFile: false,
    sourceMaps: 'inline',
    plugins: [codeCoverage(ids), compareHooks],
  });
  port.postMessage({ edges: nextEdge });
  return { ...r, source: out?.code ?? code };
}
