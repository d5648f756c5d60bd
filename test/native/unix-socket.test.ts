/**
 * Unix sockets with fd passing: an eventfd sent with SCM_RIGHTS still wakes its reader on the other
 * side; extra fds beyond maxFds are closed and reported; nothing leaks (counted in /proc/self/fd).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, afterEach, describe, expect, it } from 'vitest';

import {
  close,
  eventfdCreate,
  eventfdRead,
  eventfdWrite,
  NativeError,
  poll,
  recvMsg,
  sendMsg,
  setNonblocking,
  shutdown,
  SOCK,
  socketInfo,
  unixAccept,
  unixConnect,
  unixDgramConnect,
  unixListen,
  unixSocketpair,
} from '../../native/index.ts';
import { stuckReceiver } from '../helpers/notify.ts';
import { spawnNativeWorker, terminateAllWorkers, within } from './worker-client.ts';

const fds = new Set<number>();
function track<T extends number | number[]>(v: T): T {
  for (const fd of ([] as number[]).concat(v)) fds.add(fd);
  return v;
}
function untrack(fd: number): void {
  fds.delete(fd);
}
const dirs: string[] = [];

afterEach(async () => {
  await terminateAllWorkers();
  for (const fd of fds) {
    try {
      close(fd);
    } catch {
      /* already closed */
    }
  }
  fds.clear();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
afterAll(terminateAllWorkers);

const openFds = (): number => readdirSync('/proc/self/fd').length;

describe('unix sockets', () => {
  it('socketpair: data and an eventfd cross; the received fd wakes a worker blocked on it', async () => {
    const w = spawnNativeWorker();
    await within(w.call('nop'), 10_000, 'worker start');
    const before = openFds();
    const [a, b] = track(unixSocketpair());
    const ev = eventfdCreate();
    expect(sendMsg(a, new TextEncoder().encode('kick'), [ev])).toBe(4);
    close(ev); // the receiver's copy keeps the eventfd alive
    const buf = new Uint8Array(64);
    const r = recvMsg(b, buf);
    expect(r.bytes).toBe(4);
    expect(new TextDecoder().decode(buf.subarray(0, 4))).toBe('kick');
    expect(r.ctrunc).toBe(false);
    expect(r.fds.length).toBe(1);
    const got = r.fds[0]!;
    // A worker blocks reading the received fd; we wake it through a second descriptor of the same
    // eventfd, passed back over the socket the other way.
    expect(sendMsg(b, Uint8Array.of(1), [got])).toBe(1);
    const back = recvMsg(a, buf);
    expect(back.fds.length).toBe(1);
    const read = w.call<number>('eventfdRead', got);
    await new Promise((res) => setTimeout(res, 50));
    eventfdWrite(back.fds[0]!, 5);
    expect(await within(read, 5000, 'worker read of passed eventfd')).toBe(5);
    close(back.fds[0]!);
    close(got);
    close(a);
    close(b);
    untrack(a);
    untrack(b);
    expect(openFds()).toBe(before);
  });

  it('listen/connect/accept by path; EAGAIN and EOF', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lgnet-'));
    dirs.push(dir);
    const path = join(dir, 'sock');
    const before = openFds();
    const l = track(unixListen(path));
    setNonblocking(l, true);
    expect(unixAccept(l)).toBe(-1);
    const c = track(unixConnect(path));
    expect(poll([l], 2000)).toBe(1);
    const s = track(unixAccept(l));
    expect(s).toBeGreaterThan(0);
    const ev = track(eventfdCreate({ nonblocking: true }));
    sendMsg(c, Uint8Array.of(7, 8), [ev]);
    setNonblocking(s, true);
    const buf = new Uint8Array(8);
    const r = recvMsg(s, buf, 8);
    expect(r.bytes).toBe(2);
    const passed = r.fds[0]!;
    eventfdWrite(passed, 2);
    expect(eventfdRead(ev)).toBe(2); // same eventfd on both sides
    close(passed);
    expect(recvMsg(s, buf).bytes).toBe(-1); // EAGAIN
    shutdown(c);
    expect(recvMsg(s, buf).bytes).toBe(0); // EOF
    for (const fd of [l, c, s, ev]) {
      close(fd);
      untrack(fd);
    }
    expect(openFds()).toBe(before);
    // Nothing listens any more.
    const e = (() => {
      try {
        unixConnect(path);
      } catch (err) {
        return err as NativeError;
      }
    })();
    expect(e).toBeInstanceOf(NativeError);
    expect(e!.code).toBe('ECONNREFUSED');
    expect(e!.syscall).toBe('connect');
  });

  it('more fds than maxFds: the extras are closed and excess is set (not ctrunc: the kernel passed them all); no leaks', () => {
    const [a, b] = track(unixSocketpair());
    const before = openFds();
    const sent = Array.from({ length: 12 }, () => eventfdCreate({ nonblocking: true }));
    expect(sendMsg(a, Uint8Array.of(1), sent)).toBe(1);
    for (const fd of sent) close(fd);
    const r = recvMsg(b, new Uint8Array(16), 8);
    expect(r.bytes).toBe(1);
    expect(r.fds.length).toBe(8);
    expect(r).toMatchObject({ excess: true, ctrunc: false });
    for (const fd of r.fds) close(fd);
    expect(openFds()).toBe(before);

    // maxFds 0 refuses all of them.
    const two = [eventfdCreate(), eventfdCreate()];
    sendMsg(a, Uint8Array.of(2), two);
    for (const fd of two) close(fd);
    const none = recvMsg(b, new Uint8Array(16), 0);
    expect(none).toMatchObject({ bytes: 1, fds: [], excess: true, ctrunc: false });
    expect(openFds()).toBe(before);
  });

  it('errors: fds without data, a closed peer (EPIPE, no SIGPIPE), a bad fd', () => {
    const [a, b] = track(unixSocketpair());
    expect(() => sendMsg(a, new Uint8Array(0), [a])).toThrow(RangeError);
    close(b);
    untrack(b);
    const e = (() => {
      try {
        sendMsg(a, Uint8Array.of(1));
      } catch (err) {
        return err as NativeError;
      }
    })();
    expect(e).toBeInstanceOf(NativeError);
    expect([e!.code, e!.syscall]).toEqual(['EPIPE', 'sendmsg']);
    const bad = (() => {
      try {
        recvMsg(b, new Uint8Array(1));
      } catch (err) {
        return err as NativeError;
      }
    })();
    expect([bad!.code, bad!.syscall]).toEqual(['EBADF', 'recvmsg']);
  });

  it('socketInfo: a listening socket with its path, a connected pair, and what is not a socket', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lgnet-sockinfo-'));
    dirs.push(dir);
    const path = join(dir, 's.sock');
    const l = track(unixListen(path));
    expect(socketInfo(l)).toEqual({ domain: SOCK.AF_UNIX, type: SOCK.STREAM, listening: true, path });
    const [a] = track(unixSocketpair());
    expect(socketInfo(a)).toEqual({ domain: SOCK.AF_UNIX, type: SOCK.STREAM, listening: false, path: '' });
    const c = track(unixConnect(path));
    expect(socketInfo(c).listening).toBe(false);
    const e = track(eventfdCreate({ nonblocking: true }));
    let err: unknown;
    try {
      socketInfo(e);
    } catch (x) {
      err = x;
    }
    expect(err).toBeInstanceOf(NativeError);
    expect((err as NativeError).code).toBe('ENOTSOCK');
  });

  it('unixDgramConnect: a nonblocking, close-on-exec datagram socket to a path or an @abstract name; what cannot be reached throws', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lgnet-dgram-'));
    dirs.push(dir);
    const path = join(dir, 'd.sock');
    // A receiver that binds both forms and never reads (Node has no unix datagram sockets).
    const abstract = `@lgnet-dgram-${process.pid}`;
    const py = await stuckReceiver([path, abstract]);
    try {
      for (const to of [path, abstract]) {
        const fd = track(unixDgramConnect(to));
        expect(socketInfo(fd)).toMatchObject({ domain: SOCK.AF_UNIX, type: SOCK.DGRAM, listening: false });
        const flags = parseInt(/flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
        expect(flags & 0o2000000, 'O_CLOEXEC').not.toBe(0);
        expect(flags & 0o4000, 'O_NONBLOCK').not.toBe(0);
        // Nobody reads: the queue fills and a send says so (-1) instead of blocking.
        let sent = 0;
        while (sendMsg(fd, new Uint8Array([1])) > 0) if (++sent > 10_000) break;
        expect(sent).toBeGreaterThan(0);
        expect(sent).toBeLessThan(10_000);
      }
    } finally {
      process.kill(py.pid!, 'SIGKILL');
    }
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        return (e as NativeError).code;
      }
      return undefined;
    };
    expect(code(() => unixDgramConnect(join(dir, 'none.sock')))).toBe('ENOENT');
    expect(code(() => unixDgramConnect(`@lgnet-nobody-${process.pid}`))).toBe('ECONNREFUSED');
    expect(() => unixDgramConnect('@')).toThrow(RangeError);
  });
});
