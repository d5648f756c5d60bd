/**
 * Test-side handle on native.worker.ts: call(op, ...args) runs a native call in the worker thread.
 * Every spawned worker is registered; terminateAllWorkers() (afterEach/afterAll) ends them.
 */
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../../device/thread.ts';

export interface WorkerError {
  name: string;
  message: string;
  code?: string;
  syscall?: string;
  errno?: number;
  isNative: boolean;
}

export class CallError extends Error {
  readonly detail: WorkerError;
  constructor(op: string, detail: WorkerError) {
    super(`worker ${op}: ${detail.name}: ${detail.message}`);
    this.detail = detail;
  }
}

export interface NativeWorker {
  call<T = unknown>(op: string, ...args: unknown[]): Promise<T>;
  terminate(): Promise<void>;
  readonly worker: Worker;
}

const live = new Set<NativeWorker>();

export function spawnNativeWorker(): NativeWorker {
  const worker = startWorker(new URL('./native.worker.ts', import.meta.url));
  let next = 1;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; op: string }>();
  const failAll = (e: Error) => {
    for (const p of pending.values()) p.reject(e);
    pending.clear();
  };
  worker.on('message', (m: { id: number; result?: unknown; error?: WorkerError }) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.error) p.reject(new CallError(p.op, m.error));
    else p.resolve(m.result);
  });
  worker.on('error', (e) => failAll(e));
  worker.on('exit', (code) => failAll(new Error(`worker exited with code ${code}`)));
  const self: NativeWorker = {
    worker,
    call<T>(op: string, ...args: unknown[]): Promise<T> {
      const id = next++;
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject, op });
        worker.postMessage({ id, op, args });
      });
    },
    async terminate() {
      live.delete(self);
      await worker.terminate();
    },
  };
  live.add(self);
  return self;
}

export async function terminateAllWorkers(): Promise<void> {
  await Promise.all([...live].map((w) => w.terminate()));
}

/** Rejects if p does not settle within ms. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]);
}
