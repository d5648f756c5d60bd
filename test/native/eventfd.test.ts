/**
 * eventfd across threads: a write from one thread wakes another blocked in a native eventfdRead.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';

import { close, eventfdCreate, eventfdRead, eventfdWrite, NativeError, setNonblocking } from '../../native/index.ts';
import { spawnNativeWorker, terminateAllWorkers, within } from './worker-client.ts';

const fds: number[] = [];
function track(fd: number): number {
  fds.push(fd);
  return fd;
}

afterEach(async () => {
  await terminateAllWorkers();
  for (const fd of fds.splice(0)) {
    try {
      close(fd);
    } catch {
      /* closed by the test */
    }
  }
});
afterAll(terminateAllWorkers);

describe('eventfd', () => {
  it('nonblocking read returns 0 when the counter is zero, and the sum otherwise', () => {
    const fd = track(eventfdCreate({ nonblocking: true }));
    expect(eventfdRead(fd)).toBe(0);
    eventfdWrite(fd);
    eventfdWrite(fd, 41);
    expect(eventfdRead(fd)).toBe(42);
    expect(eventfdRead(fd)).toBe(0);
  });

  it('semaphore mode reads 1 at a time; initval counts', () => {
    const fd = track(eventfdCreate({ nonblocking: true, semaphore: true, initval: 2 }));
    expect(eventfdRead(fd)).toBe(1);
    expect(eventfdRead(fd)).toBe(1);
    expect(eventfdRead(fd)).toBe(0);
  });

  it('a main-thread write wakes a worker blocked in eventfdRead', async () => {
    const fd = track(eventfdCreate());
    const w = spawnNativeWorker();
    await w.call('nop'); // worker is up
    const read = w.call<number>('eventfdRead', fd);
    let settled = false;
    void read.then(() => (settled = true));
    await new Promise((r) => setTimeout(r, 100));
    expect(settled).toBe(false); // really blocked
    eventfdWrite(fd, 7);
    expect(await within(read, 5000, 'worker eventfdRead')).toBe(7);
  });

  it('a worker write wakes the main thread blocked in eventfdRead', async () => {
    const fd = track(eventfdCreate());
    const w = spawnNativeWorker();
    await w.call('nop');
    const done = w.call('sleepThenEventfdWrite', 50, fd, 3);
    const t0 = performance.now();
    expect(eventfdRead(fd)).toBe(3); // blocks this thread until the worker writes
    expect(performance.now() - t0).toBeGreaterThanOrEqual(30);
    await within(done, 5000, 'worker write');
  });

  it('setNonblocking switches a blocking eventfd', () => {
    const fd = track(eventfdCreate());
    setNonblocking(fd, true);
    expect(eventfdRead(fd)).toBe(0);
    setNonblocking(fd, false);
    eventfdWrite(fd, 2);
    expect(eventfdRead(fd)).toBe(2);
  });

  it('bad fds and values fail with typed errors', () => {
    const fd = track(eventfdCreate({ nonblocking: true }));
    close(fd);
    fds.pop();
    const e = (() => {
      try {
        eventfdRead(fd);
      } catch (err) {
        return err;
      }
    })() as NativeError;
    expect(e).toBeInstanceOf(NativeError);
    expect(e.code).toBe('EBADF');
    expect(e.errno).toBe(9);
    expect(e.syscall).toBe('read');
    expect(() => eventfdWrite(-1)).toThrow(RangeError);
    expect(() => eventfdWrite(0, 0)).toThrow(RangeError);
    expect(() => eventfdCreate({ initval: -1 })).toThrow(RangeError);
  });
});
