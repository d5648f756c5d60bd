/**
 * The mapping registry: one memfd mapped once, seen by the main thread and two worker_threads through
 * their own ArrayBuffers; munmap invalidates the id everywhere at once, and stale views read zeros.
 */
import { readFileSync } from 'node:fs';

import { afterAll, afterEach, describe, expect, it } from 'vitest';

import {
  close,
  collectGarbage,
  IovecTable,
  mappingBuffer,
  mappingSize,
  memfdCreate,
  mmap,
  mmapAnonymous,
  munmap,
  waitKick,
  writevBatch,
  eventfdCreate,
} from '../../native/index.ts';
import { CallError, spawnNativeWorker, terminateAllWorkers, within } from './worker-client.ts';
import { nativeErrorOf } from '../helpers/errors.ts';

const fds: number[] = [];
const ids: number[] = [];

afterEach(async () => {
  await terminateAllWorkers();
  for (const id of ids.splice(0)) {
    try {
      munmap(id);
    } catch {
      /* released by the test */
    }
  }
  for (const fd of fds.splice(0)) close(fd);
});
afterAll(terminateAllWorkers);


describe('mapping registry', () => {
  it('memfd + mmap: the main thread and two workers see each other\'s writes', async () => {
    const fd = memfdCreate('lgnet-test', 1 << 16);
    fds.push(fd);
    const id = mmap(fd, 0, 1 << 16);
    ids.push(id);
    expect(mappingSize(id)).toBe(1 << 16);
    const main = new Uint8Array(mappingBuffer(id));
    const [w1, w2] = [spawnNativeWorker(), spawnNativeWorker()];
    expect(await within(w1.call('attach', id), 10_000, 'w1 attach')).toBe(1 << 16);
    expect(await within(w2.call('attach', id), 10_000, 'w2 attach')).toBe(1 << 16);

    main.set([1, 2, 3], 100);
    expect(await w1.call('peek', id, 100, 3)).toEqual([1, 2, 3]);
    expect(await w2.call('peek', id, 100, 3)).toEqual([1, 2, 3]);
    await w1.call('poke', id, 0xfff0, [9, 8, 7]);
    expect(Array.from(main.subarray(0xfff0, 0xfff3))).toEqual([9, 8, 7]);
    expect(await w2.call('peek', id, 0xfff0, 3)).toEqual([9, 8, 7]);
    await w2.call('poke', id, 200, [0xaa]);
    expect(main[200]).toBe(0xaa);
    expect(await w1.call('peek', id, 200, 1)).toEqual([0xaa]);

    // Two buffers over one mapping in the same thread are fine too.
    const again = new Uint8Array(mappingBuffer(id));
    expect(again[100]).toBe(1);
  });

  it('munmap: the id dies everywhere at once; stale views read zeros and do not crash', async () => {
    const name = `lgnet-detach-${process.pid}`;
    const fd = memfdCreate(name, 8192);
    fds.push(fd);
    const id = mmap(fd, 0, 8192);
    const mapped = (): boolean => readFileSync('/proc/self/maps', 'utf8').includes(`memfd:${name}`);
    expect(mapped()).toBe(true);
    const view = new Uint8Array(mappingBuffer(id));
    view.fill(0x5a);
    const w = spawnNativeWorker();
    await within(w.call('attach', id), 10_000, 'attach');
    expect(await w.call('peek', id, 10, 2)).toEqual([0x5a, 0x5a]);

    munmap(id);
    // The guest pages are detached at once, although views over the range are still alive.
    expect(mapped()).toBe(false);

    // Every native call naming the id fails.
    for (const call of [() => mappingSize(id), () => mappingBuffer(id), () => munmap(id)]) {
      const e = nativeErrorOf(call);
      expect(e.code).toBe('EBADF');
      expect(e.syscall).toBe('mapping');
    }
    const t = new IovecTable(1, 1);
    t.push(id, 0, 10);
    t.endFrame();
    const kick = eventfdCreate({ nonblocking: true });
    fds.push(kick);
    const be = nativeErrorOf(() => writevBatch(kick, t));
    expect(be.code).toBe('EFAULT');
    expect(be.syscall).toBe('iovec');
    expect(nativeErrorOf(() => waitKick(kick, id, 0, 0, 0)).code).toBe('EBADF');
    // ... in a worker too.
    const we = await w.call('mappingSize', id).catch((e: CallError) => e.detail);
    expect(we).toMatchObject({ isNative: true, code: 'EBADF', syscall: 'mapping' });

    // Stale views: reads give zeros, writes land in private zero pages; nothing faults.
    expect(view[10]).toBe(0);
    view[10] = 1;
    expect(view[10]).toBe(1);
    // (The zero pages are one process-wide range, so the worker's stale view sees the same scratch.)
    expect(await w.call('peek', id, 10, 2)).toEqual([1, 0]);
    expect(await w.call('peek', id, 30, 2)).toEqual([0, 0]);
    await w.call('poke', id, 20, [3]);
    // The memfd itself still holds the data: the pages were detached, not zeroed.
    const id2 = mmap(fd, 0, 8192);
    ids.push(id2);
    expect(mapped()).toBe(true);
    expect(id2).not.toBe(id);
    expect(new Uint8Array(mappingBuffer(id2))[10]).toBe(0x5a);
    // A worker can drop its stale buffer and exit cleanly (its finalizer drops the last reference).
    await w.call('detach', id);
    await w.terminate();
  });

  it('anonymous mappings work as scratch and are bounds-checked like any other', () => {
    const id = mmapAnonymous(4096);
    ids.push(id);
    const v = new Uint8Array(mappingBuffer(id));
    expect(v.length).toBe(4096);
    expect(v.every((b) => b === 0)).toBe(true);
  });

  it('refuses bad arguments', () => {
    const fd = memfdCreate('lgnet-test', 4096);
    fds.push(fd);
    // Past the end of the file would SIGBUS on access: refused up front.
    expect(nativeErrorOf(() => mmap(fd, 0, 8192)).code).toBe('EINVAL');
    expect(nativeErrorOf(() => mmap(fd, 4096, 1)).code).toBe('EINVAL');
    // Unaligned offset.
    expect(nativeErrorOf(() => mmap(fd, 1, 100)).syscall).toBe('mmap');
    expect(nativeErrorOf(() => mmap(12345, 0, 4096)).code).toBe('EBADF');
    expect(() => mmap(fd, 0, 0)).toThrow(RangeError);
    expect(() => mmap(fd, -1, 10)).toThrow(RangeError);
    expect(() => mappingBuffer(1.5)).toThrow(RangeError);
    expect(nativeErrorOf(() => mappingSize(0)).code).toBe('EBADF');
    expect(nativeErrorOf(() => mappingSize(0xffffffff)).code).toBe('EBADF');
  });

  it('released ids are not reused while their slot generation lasts', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 100; i++) {
      const id = mmapAnonymous(4096);
      expect(seen.has(id)).toBe(false);
      seen.add(id);
      munmap(id);
    }
  });
});

describe('collectGarbage', () => {
  it('collects what this thread dropped, now: a finalizer runs without any allocation to prompt it', async () => {
    const finalized: string[] = [];
    const registry = new FinalizationRegistry((what: string) => finalized.push(what));
    // An old-space object (it survives a young collection first), as a stopped queue's tables are.
    let held: { bytes: Uint8Array } | null = { bytes: new Uint8Array(300 << 10) };
    registry.register(held, 'dropped');
    collectGarbage();
    await new Promise((r) => setTimeout(r, 20));
    expect(finalized, 'still referenced: not collected').toEqual([]);
    held = null;
    collectGarbage();
    for (let i = 0; i < 20 && finalized.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(finalized).toEqual(['dropped']);
    expect(held).toBeNull();
  });
});
