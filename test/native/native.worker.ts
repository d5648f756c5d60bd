/**
 * A worker_thread that runs native calls for tests: each message { id, op, args } runs `op` (a
 * function exported by native/index.ts, or one of the helpers below) synchronously in this thread,
 * blocking it if the call blocks, and answers { id, result } or { id, error }.
 */
import { parentPort } from 'node:worker_threads';

import * as native from '../../native/index.ts';

type Op = (...args: never[]) => unknown;

// Per-thread ArrayBuffers over mappings (external buffers cannot be transferred, so each thread
// takes its own).
const buffers = new Map<number, ArrayBuffer>();

const helpers: Record<string, Op> = {
  /** Takes this thread's own ArrayBuffer over a mapping. */
  attach: ((id: number) => {
    buffers.set(id, native.mappingBuffer(id));
    return buffers.get(id)!.byteLength;
  }) as Op,
  /** Drops this thread's buffer and asks for a GC if exposed. */
  detach: ((id: number) => buffers.delete(id)) as Op,
  peek: ((id: number, offset: number, length: number) => Array.from(new Uint8Array(buffers.get(id)!, offset, length))) as Op,
  poke: ((id: number, offset: number, bytes: number[]) => new Uint8Array(buffers.get(id)!, offset, bytes.length).set(bytes)) as Op,
  sleep: ((ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)) as Op,
  sleepThenEventfdWrite: ((ms: number, fd: number, value: number) => {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
    native.eventfdWrite(fd, value);
  }) as Op,
  /** Watches fd with an FdPoller on this worker's loop and reports the first event. */
  pollerOnce: ((fd: number) =>
    new Promise<number>((resolve) => {
      const p = new native.FdPoller(fd, (events) => {
        p.close();
        resolve(events);
      });
      p.start(native.POLL.READABLE);
    })) as Op,
  /** Leaves an FdPoller started on purpose: the environment teardown must close it. */
  leakPoller: ((fd: number) => {
    new native.FdPoller(fd, () => {}).start(native.POLL.READABLE);
  }) as Op,
};

parentPort!.on('message', async (msg: { id: number; op: string; args: unknown[] }) => {
  try {
    const fn = (helpers[msg.op] ?? (native as unknown as Record<string, Op>)[msg.op]) as ((...a: unknown[]) => unknown) | undefined;
    if (typeof fn !== 'function') throw new Error(`unknown op ${msg.op}`);
    const result = await fn(...msg.args);
    parentPort!.postMessage({ id: msg.id, result });
  } catch (e) {
    const err = e as Error & { code?: string; syscall?: string; errno?: number };
    parentPort!.postMessage({
      id: msg.id,
      error: { name: err.name, message: err.message, code: err.code, syscall: err.syscall, errno: err.errno, isNative: e instanceof native.NativeError },
    });
  }
});
