/**
 * eventfds (native/eventfd.cc): how workers are kicked and how they signal the guest.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { UINT32_MAX, checkInt, checkFd } from './checks.ts';
import { binding as b } from './load.ts';

export interface EventfdOptions {
  nonblocking?: boolean;
  semaphore?: boolean;
  initval?: number;
}

/** eventfd2 with EFD_CLOEXEC. */
export function eventfdCreate(opts: EventfdOptions = {}): number {
  const initval = opts.initval ?? 0;
  checkInt(initval, 'initval', 0, UINT32_MAX);
  return b.eventfdCreate(initval, opts.nonblocking === true, opts.semaphore === true);
}

/** Reads (and so resets) the counter. A blocking fd blocks this thread; a nonblocking fd returns 0 when it is zero. */
export function eventfdRead(fd: number): number {
  checkFd(fd);
  return b.eventfdRead(fd);
}

/** Adds value (default 1) to the counter, waking a reader. */
export function eventfdWrite(fd: number, value = 1): void {
  checkFd(fd);
  checkInt(value, 'value', 1, Number.MAX_SAFE_INTEGER);
  b.eventfdWrite(fd, value);
}
