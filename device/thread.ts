/**
 * Starting worker threads. What ships is compiled JavaScript: a worker module is a sibling .js file and
 * starts directly. Tests and scripts run lgnet from its .ts sources (vitest, tsx); Node 20 ignores
 * `--import` in a Worker's execArgv, so a .ts worker starts as a small eval'd bootstrap that loads the
 * file through tsx's tsImport(). tsx is a development dependency: it is resolved only on that path.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

let tsxApi: string | undefined;

function tsxApiUrl(): string {
  tsxApi ??= pathToFileURL(join(dirname(createRequire(import.meta.url).resolve('tsx/package.json')), 'dist/esm/api/index.mjs')).href;
  return tsxApi;
}

/**
 * The URL of the worker module `name` (without extension) beside the module at `base`: `name.js` when
 * `base` is compiled, `name.ts` when lgnet runs from source.
 */
export function siblingModule(name: string, base: string): URL {
  // tsx may add a query to a module's URL: look at the path alone.
  return new URL(`./${name}${new URL(base).pathname.endsWith('.ts') ? '.ts' : '.js'}`, base);
}

/** `new Worker(file, opts)` that also works when `file` is a TypeScript module. */
export function startWorker(file: URL, opts: WorkerOptions = {}): Worker {
  if (!file.pathname.endsWith('.ts')) return new Worker(file, opts);
  const api = JSON.stringify(tsxApiUrl());
  const href = JSON.stringify(file.href);
  return new Worker(`import(${api}).then((api) => api.tsImport(${href}, ${href}));`, { ...opts, eval: true });
}
