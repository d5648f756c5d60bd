/**
 * Watching fds on a thread's event loop (native/poller.cc, libuv uv_poll): the vhost-user socket,
 * the control queue's kick.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import type { RawFdPoller } from './binding.ts';
import { NativeError } from './errors.ts';
import { binding as b } from './load.ts';
import { checkInt, checkFd } from './checks.ts';

/** uv_poll events (UV_READABLE, UV_WRITABLE, UV_DISCONNECT). */
export const POLL = { READABLE: 1, WRITABLE: 2, DISCONNECT: 4 } as const;

/**
 * Watches an fd on the calling thread's event loop (libuv uv_poll). The callback gets the POLL bits
 * that are ready, and a positive errno when libuv reported an error (then DISCONNECT is set too).
 *
 * - A started poller keeps the loop alive (unless unref()'d); stop() and close() release it.
 * - libuv sets O_NONBLOCK on the fd; an fd can have only one poller per loop (else EEXIST).
 * - Call stop() or close() before closing the fd; close() is idempotent and safe after the fd is gone.
 * - Works in worker_threads; a poller left open is closed when its thread's environment tears down.
 */
export class FdPoller {
  #raw: RawFdPoller | null;
  readonly fd: number;

  constructor(fd: number, callback: (events: number, errno: number) => void) {
    checkFd(fd);
    if (typeof callback !== 'function') throw new TypeError('callback must be a function');
    this.fd = fd;
    this.#raw = new b.FdPoller(fd, callback);
  }

  /** Starts (or changes) watching: events is a non-zero mix of POLL bits. */
  start(events: number): void {
    checkInt(events, 'events', 1, POLL.READABLE | POLL.WRITABLE | POLL.DISCONNECT);
    if (this.#raw === null) throw new NativeError(9 /* EBADF */, 'uv_poll_start', `FdPoller for fd ${this.fd} is closed`);
    this.#raw.start(events);
  }

  stop(): void {
    this.#raw?.stop();
  }

  /** Whether a started poller keeps the event loop alive (the default). */
  ref(): void {
    this.#raw?.ref();
  }

  unref(): void {
    this.#raw?.unref();
  }

  close(): void {
    const raw = this.#raw;
    this.#raw = null;
    raw?.close();
  }

  get closed(): boolean {
    return this.#raw === null;
  }
}
