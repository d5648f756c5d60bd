/**
 * Sleeping: poll() over eventfds, waitKick() (signal, fence, re-check avail.idx, then sleep on the kick
 * fd, or on the backend fd when the guest has buffers (RX), and extras), and FdPoller on the main
 * thread's and a worker's event loop.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { afterAll, afterEach, describe, expect, it } from 'vitest';

import {
  close,
  eventfdCreate,
  eventfdRead,
  eventfdWrite,
  FdPoller,
  HAS_BUFFERS,
  mappingBuffer,
  mmapAnonymous,
  munmap,
  NativeError,
  poll,
  POLL,
  WAKE,
  waitKick,
} from '../../native/index.ts';
import { spawnNativeWorker, terminateAllWorkers, within } from './worker-client.ts';
import { nativeErrorOf } from '../helpers/errors.ts';

const fds: number[] = [];
const ids: number[] = [];
function efd(opts: Parameters<typeof eventfdCreate>[0] = { nonblocking: true }): number {
  const fd = eventfdCreate(opts);
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
  for (const id of ids.splice(0)) munmap(id);
});
afterAll(terminateAllWorkers);


/** A ring page with avail.idx at AVAIL_IDX. */
const AVAIL_IDX = 2;
function ring(): { id: number; view: DataView } {
  const id = mmapAnonymous(4096);
  ids.push(id);
  return { id, view: new DataView(mappingBuffer(id)) };
}

describe('poll', () => {
  it('reports readable fds as bits, times out with 0, ignores negative fds', () => {
    const [a, b, c] = [efd(), efd(), efd()];
    expect(poll([a, b, c], 0)).toBe(0);
    eventfdWrite(b);
    expect(poll([a, b, c], 1000)).toBe(0b010);
    eventfdWrite(c);
    expect(poll(Int32Array.of(a, b, c), 0)).toBe(0b110);
    expect(poll([-1, c], 0)).toBe(0b10);
    const t0 = performance.now();
    expect(poll([a], 60)).toBe(0);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(50);
  });

  it('a closed fd is EBADF; more than 31 fds is a RangeError', () => {
    const a = efd();
    close(a);
    fds.splice(fds.indexOf(a), 1);
    const e = nativeErrorOf(() => poll([a], 0));
    expect([e.code, e.syscall]).toEqual(['EBADF', 'poll']);
    expect(() => poll(new Array(32).fill(-1), 0)).toThrow(RangeError);
  });
});

describe('waitKick', () => {
  it('returns AVAIL without sleeping when avail.idx moved, and writes the signal fd first', () => {
    const { id, view } = ring();
    const kick = efd({});
    const signal = efd();
    view.setUint16(AVAIL_IDX, 5, true);
    const t0 = performance.now();
    expect(waitKick(kick, id, AVAIL_IDX, 4, 10_000, undefined, signal)).toBe(WAKE.AVAIL);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(eventfdRead(signal)).toBe(1);
    // u16 wrap-around: 0 vs lastSeen 65535 is a change too.
    view.setUint16(AVAIL_IDX, 0, true);
    expect(waitKick(kick, id, AVAIL_IDX, 65535, 10_000)).toBe(WAKE.AVAIL);
    // Little-endian read at an odd offset works too.
    view.setUint16(7, 0x1234, true);
    expect(waitKick(-1, id, 7, 0x1234, 0)).toBe(0);
    expect(waitKick(-1, id, 7, 0x3412, 0)).toBe(WAKE.AVAIL);
  });

  it('times out with 0 (and still signals)', () => {
    const { id, view } = ring();
    view.setUint16(AVAIL_IDX, 9, true);
    const kick = efd();
    const signal = efd();
    const t0 = performance.now();
    expect(waitKick(kick, id, AVAIL_IDX, 9, 80, undefined, signal)).toBe(0);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(70);
    expect(eventfdRead(signal)).toBe(1);
  });

  it('blocks until a kick written from another thread, and drains it', async () => {
    const { id } = ring();
    const kick = efd({}); // blocking, as a worker's kick fd would be
    const w = spawnNativeWorker();
    await within(w.call('nop'), 10_000, 'worker start');
    const done = w.call('sleepThenEventfdWrite', 100, kick, 3);
    const t0 = performance.now();
    expect(waitKick(kick, id, AVAIL_IDX, 0, 10_000)).toBe(WAKE.KICK);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(50);
    await within(done, 5000, 'worker write');
    expect(poll([kick], 0)).toBe(0); // drained
  });

  it('a kick that is already pending returns at once', () => {
    const { id } = ring();
    const kick = efd();
    eventfdWrite(kick, 2);
    expect(waitKick(kick, id, AVAIL_IDX, 0, 10_000)).toBe(WAKE.KICK);
    expect(eventfdRead(kick)).toBe(0);
  });

  it('wakes on an extra fd (bit EXTRA0 << i) without draining it; kickFd may be -1', () => {
    const { id } = ring();
    const kick = efd();
    const extras = Int32Array.of(efd(), efd(), efd());
    eventfdWrite(extras[1]!);
    expect(waitKick(kick, id, AVAIL_IDX, 0, 10_000, extras)).toBe(WAKE.EXTRA0 << 1);
    expect(eventfdRead(extras[1]!)).toBe(1); // still there for its owner
    eventfdWrite(extras[2]!);
    eventfdWrite(kick);
    expect(waitKick(kick, id, AVAIL_IDX, 0, 10_000, extras)).toBe(WAKE.KICK | (WAKE.EXTRA0 << 2));
    eventfdRead(extras[2]!);
    eventfdWrite(extras[0]!);
    expect(waitKick(-1, id, AVAIL_IDX, 0, 10_000, extras)).toBe(WAKE.EXTRA0);
  });

  describe('with a backend fd (RX)', () => {
    it('guest has buffers (avail.idx moved): sleeps on the backend, not the kick, and signals first', () => {
      const { id, view } = ring();
      const kick = efd();
      const backend = efd();
      const signal = efd();
      view.setUint16(AVAIL_IDX, 7, true);
      eventfdWrite(kick); // a kick alone does not wake an RX worker whose guest has buffers
      let t0 = performance.now();
      expect(waitKick(kick, id, AVAIL_IDX, 5, 80, undefined, signal, backend)).toBe(WAKE.AVAIL);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(70);
      expect(eventfdRead(signal)).toBe(1);
      expect(eventfdRead(kick)).toBe(1); // not drained: it was not watched
      eventfdWrite(backend);
      t0 = performance.now();
      expect(waitKick(kick, id, AVAIL_IDX, 5, 10_000, undefined, signal, backend)).toBe(WAKE.AVAIL | WAKE.BACKEND);
      expect(performance.now() - t0).toBeLessThan(1000);
      expect(eventfdRead(backend)).toBe(1); // left for the backend's reader
      expect(eventfdRead(signal)).toBe(1);
    });

    it('HAS_BUFFERS skips the avail re-check and waits on the backend', () => {
      const { id, view } = ring();
      view.setUint16(AVAIL_IDX, 3, true);
      const backend = efd();
      eventfdWrite(backend);
      expect(waitKick(-1, id, AVAIL_IDX, HAS_BUFFERS, 10_000, undefined, -1, backend)).toBe(WAKE.AVAIL | WAKE.BACKEND);
      eventfdRead(backend);
      expect(waitKick(-1, id, AVAIL_IDX, HAS_BUFFERS, 0, undefined, -1, backend)).toBe(WAKE.AVAIL);
    });

    it('no buffers (avail.idx == lastSeen): a readable backend does not wake it; a kick does', () => {
      const { id, view } = ring();
      view.setUint16(AVAIL_IDX, 9, true);
      const kick = efd();
      const backend = efd();
      const signal = efd();
      eventfdWrite(backend);
      const t0 = performance.now();
      expect(waitKick(kick, id, AVAIL_IDX, 9, 80, undefined, signal, backend)).toBe(0);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(70);
      expect(eventfdRead(signal)).toBe(1); // the interrupt went out before the sleep all the same
      eventfdWrite(kick);
      expect(waitKick(kick, id, AVAIL_IDX, 9, 10_000, undefined, -1, backend)).toBe(WAKE.KICK);
      expect(poll([kick], 0)).toBe(0); // drained
      expect(eventfdRead(backend)).toBe(1);
    });

    it('wakes when the guest adds buffers while the device waits for them (kick from another thread)', async () => {
      const { id, view } = ring();
      view.setUint16(AVAIL_IDX, 4, true);
      const kick = efd({});
      const backend = efd();
      eventfdWrite(backend); // frames wait in the backend meanwhile
      const w = spawnNativeWorker();
      await within(w.call('nop'), 10_000, 'worker start');
      const done = w.call('sleepThenEventfdWrite', 100, kick, 1);
      const t0 = performance.now();
      expect(waitKick(kick, id, AVAIL_IDX, 4, 10_000, undefined, -1, backend)).toBe(WAKE.KICK);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(50);
      await within(done, 5000, 'worker write');
    });

    it('wakes when the backend becomes readable from another thread; extras still wake it', async () => {
      const { id } = ring();
      const backend = efd();
      const ctl = efd();
      const w = spawnNativeWorker();
      await within(w.call('nop'), 10_000, 'worker start');
      const done = w.call('sleepThenEventfdWrite', 100, backend, 1);
      const t0 = performance.now();
      expect(waitKick(-1, id, AVAIL_IDX, HAS_BUFFERS, 10_000, Int32Array.of(ctl), -1, backend)).toBe(WAKE.AVAIL | WAKE.BACKEND);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(50);
      await within(done, 5000, 'worker write');
      eventfdRead(backend);
      eventfdWrite(ctl);
      expect(waitKick(-1, id, AVAIL_IDX, HAS_BUFFERS, 10_000, Int32Array.of(ctl), -1, backend)).toBe(WAKE.AVAIL | WAKE.EXTRA0);
    });

    it('HAS_BUFFERS without a backend fd is a RangeError; a closed backend fd is EBADF', () => {
      const { id } = ring();
      expect(() => waitKick(-1, id, AVAIL_IDX, HAS_BUFFERS, 0)).toThrow(RangeError);
      const bad = efd();
      close(bad);
      fds.splice(fds.indexOf(bad), 1);
      const e = nativeErrorOf(() => waitKick(-1, id, AVAIL_IDX, HAS_BUFFERS, 0, undefined, -1, bad));
      expect([e.code, e.syscall]).toEqual(['EBADF', 'poll']);
      expect(() => waitKick(-1, id, AVAIL_IDX, 0, 0, new Int32Array(29))).toThrow(RangeError);
    });
  });

  it('takes a fractional timeout (a held interrupt sleeps less than a millisecond) and refuses a bad one', () => {
    const { id } = ring();
    const kick = efd();
    // Nothing to wake it: it returns at the timeout, which ppoll never cuts short.
    const t0 = process.hrtime.bigint();
    expect(waitKick(kick, id, AVAIL_IDX, 0, 0.3)).toBe(0);
    expect(Number(process.hrtime.bigint() - t0)).toBeGreaterThanOrEqual(300_000);
    // A kick already there ends a fractional wait as it ends any other.
    eventfdWrite(kick);
    expect(waitKick(kick, id, AVAIL_IDX, 0, 0.05)).toBe(WAKE.KICK);
    for (const bad of [-0.5, -2, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31]) {
      expect(() => waitKick(kick, id, AVAIL_IDX, 0, bad)).toThrow(RangeError);
    }
  });

  it('bounds-checks the mapping and offset before anything else', () => {
    const { id } = ring();
    const signal = efd();
    let e = nativeErrorOf(() => waitKick(-1, id, 4095, 0, 0, undefined, signal));
    expect([e.code, e.syscall]).toEqual(['EFAULT', 'mapping']);
    e = nativeErrorOf(() => waitKick(-1, id + 1, 0, 0, 0, undefined, signal));
    expect([e.code, e.syscall]).toEqual(['EBADF', 'mapping']);
    expect(eventfdRead(signal)).toBe(0); // nothing was signalled
    expect(() => waitKick(-1, id, 0, 65536, 0)).toThrow(RangeError);
    const bad = efd();
    close(bad);
    fds.splice(fds.indexOf(bad), 1);
    e = nativeErrorOf(() => waitKick(bad, id, 0, 0, 0));
    expect([e.code, e.syscall]).toEqual(['EBADF', 'poll']);
  });
});

describe('FdPoller', () => {
  it('calls back on the main thread when an eventfd becomes readable; stop and close are safe', async () => {
    const fd = efd();
    const events: number[] = [];
    let wake: () => void = () => {};
    const p = new FdPoller(fd, (ev) => {
      events.push(ev);
      eventfdRead(fd);
      wake();
    });
    p.start(POLL.READABLE);
    const first = new Promise<void>((r) => (wake = r));
    eventfdWrite(fd);
    await within(first, 5000, 'poller callback');
    expect(events).toEqual([POLL.READABLE]);
    p.stop();
    eventfdWrite(fd);
    await new Promise((r) => setTimeout(r, 50));
    expect(events.length).toBe(1); // stopped: no callback
    const second = new Promise<void>((r) => (wake = r));
    p.start(POLL.READABLE); // restart: the pending value fires at once
    await within(second, 5000, 'poller callback after restart');
    expect(events.length).toBe(2);
    p.close();
    p.close();
    expect(p.closed).toBe(true);
    expect(() => p.start(POLL.READABLE)).toThrow(NativeError);
    close(fd);
    fds.splice(fds.indexOf(fd), 1);
    p.close(); // after the fd is gone too
  });

  it('close() after the fd was closed (poller stopped first) is safe', () => {
    const fd = eventfdCreate({ nonblocking: true });
    const p = new FdPoller(fd, () => {});
    p.start(POLL.READABLE);
    p.stop();
    close(fd);
    p.close();
    p.close();
  });

  it('refuses a bad fd, and a second poller on the same fd and loop', () => {
    const fd = efd();
    const p = new FdPoller(fd, () => {});
    expect(() => new FdPoller(fd, () => {})).toThrow(NativeError);
    p.close();
    const bad = efd();
    close(bad);
    fds.splice(fds.indexOf(bad), 1);
    expect(nativeErrorOf(() => new FdPoller(bad, () => {})).code).toBe('EBADF');
    expect(() => new FdPoller(fd, 'x' as never)).toThrow(TypeError);
  });

  it('works in a worker_thread, and a worker exiting with a started poller is clean', async () => {
    const fd = efd();
    const w = spawnNativeWorker();
    await within(w.call('nop'), 10_000, 'worker start');
    const got = w.call<number>('pollerOnce', fd);
    await new Promise((r) => setTimeout(r, 50));
    eventfdWrite(fd);
    expect(await within(got, 5000, 'worker poller')).toBe(POLL.READABLE);
    const fd2 = efd();
    await w.call('leakPoller', fd2);
    await w.terminate(); // the async cleanup hook closes the handle; no abort
    eventfdWrite(fd2); // and nothing fires into a dead environment
  });

  const child = fileURLToPath(new URL('./children/poller-exit.ts', import.meta.url));
  function runChild(mode: string): { status: number | null; out: string; ms: number } {
    const t0 = performance.now();
    const r = spawnSync(process.execPath, ['--import', 'tsx', child, mode], { encoding: 'utf8', timeout: 20_000 });
    return { status: r.status, out: r.stdout + r.stderr, ms: performance.now() - t0 };
  }

  it('does not keep the event loop alive after stop(), close() or unref()', () => {
    for (const mode of ['stopped', 'closed', 'unref', 'never-closed']) {
      const r = runChild(mode);
      expect(r.status, `${mode}: ${r.out}`).toBe(0);
      expect(r.out).toMatch(/exit after \d+ ms/);
    }
    const started = runChild('started');
    expect(started.status, started.out).toBe(0);
    expect(Number(/exit after (\d+) ms/.exec(started.out)?.[1])).toBeGreaterThanOrEqual(250);
  });
});
