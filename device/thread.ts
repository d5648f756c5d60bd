/**
 * Starting worker threads from TypeScript sources. lgnet runs from its .ts files (through tsx), and
 * Node 20 ignores `--import` in a Worker's execArgv, so a .ts worker is started as a small eval'd
 * bootstrap that loads the file through tsx's tsImport(). A compiled .js worker starts directly.
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

/** `new Worker(file, opts)` that also works when `file` is a TypeScript module. */
export function startWorker(file: URL, opts: WorkerOptions = {}): Worker {
  if (!file.pathname.endsWith('.ts')) return new Worker(file, opts);
  const api = JSON.stringify(tsxApiUrl());
  const href = JSON.stringify(file.href);
  return new Worker(`import(${api}).then((api) => api.tsImport(${href}, ${href}));`, { ...opts, eval: true });
}
