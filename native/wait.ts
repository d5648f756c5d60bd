/**
 * Sleeping (native/wait.cc): poll, and waitKick, the worker's sleep that closes the notification
 * race (signal, fence, re-read avail.idx, block) in one call: on the kick fd when the guest has no new
 * buffers, on the backend's fd (RX) when it has. device/loops.ts is its caller.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { INT32_MAX, UINT32_MAX, checkInt, toInt32Array } from './checks.ts';
import { binding as b } from './load.ts';

/**
 * poll(2) for readability: bit i set when fds[i] is readable, errored or hung up; 0 on timeout.
 * At most 31 fds; negative fds are ignored; timeoutMs -1 waits forever. A closed fd throws EBADF.
 */
export function poll(fds: Int32Array | readonly number[], timeoutMs: number): number {
  const arr = toInt32Array(fds, 'fds', 31);
  checkInt(timeoutMs, 'timeoutMs', -1, INT32_MAX);
  return b.poll(arr, timeoutMs);
}

/**
 * waitKick results. AVAIL: avail.idx differed from lastSeen (the guest has buffers); KICK: the kick fd
 * fired (and was drained); BACKEND: the backend fd is readable (not drained); EXTRA0 << i: extraFds[i]
 * is readable (not drained).
 */
export const WAKE = { AVAIL: 1, KICK: 2, BACKEND: 4, EXTRA0: 8 } as const;

/** lastSeen for waitKick when the caller already knows the guest has buffers (RX, with a backend fd). */
export const HAS_BUFFERS = -1;

/**
 * The worker's sleep, closing the notification race in one place (the reasoning is in wait.cc): write
 * 1 to signalFd (if ≥ 0; the pending interrupt), full fence, re-read the LE u16 avail.idx at
 * (mappingId, offset). Then:
 * - avail.idx == lastSeen (no new buffers): poll kickFd (if ≥ 0) and extraFds up to timeoutMs (-1:
 *   forever; fractional milliseconds are kept to the nanosecond, for held interrupts), drain a
 *   readable kickFd; returns KICK and EXTRA bits, 0 on timeout.
 * - avail.idx != lastSeen, no backendFd (TX): return AVAIL at once.
 * - avail.idx != lastSeen, or lastSeen HAS_BUFFERS, with a backendFd (RX): poll backendFd and extraFds
 *   instead; returns AVAIL with BACKEND and EXTRA bits. The kick fd is not watched then.
 * The kick fd must have a single reader (it is drained with a read that would block if another
 * thread emptied it first).
 */
export function waitKick(
  kickFd: number,
  mappingId: number,
  offset: number,
  lastSeen: number,
  timeoutMs: number,
  extraFds?: Int32Array,
  signalFd = -1,
  backendFd = -1,
): number {
  checkInt(kickFd, 'kickFd', -1, INT32_MAX);
  checkInt(mappingId, 'mapping id', 0, UINT32_MAX);
  checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
  checkInt(lastSeen, 'lastSeen', -1, 0xffff);
  if (typeof timeoutMs !== 'number' || !(timeoutMs === -1 || (timeoutMs >= 0 && timeoutMs <= INT32_MAX))) {
    throw new RangeError(`timeoutMs must be -1 or a number in [0, ${INT32_MAX}]`);
  }
  if (extraFds !== undefined && !(extraFds instanceof Int32Array)) throw new TypeError('extraFds must be an Int32Array');
  if (extraFds !== undefined && extraFds.length > 28) throw new RangeError('extraFds: at most 28 fds');
  checkInt(signalFd, 'signalFd', -1, INT32_MAX);
  checkInt(backendFd, 'backendFd', -1, INT32_MAX);
  if (lastSeen === HAS_BUFFERS && backendFd < 0) throw new RangeError('lastSeen HAS_BUFFERS (-1) needs a backendFd to wait on');
  return b.waitKick(kickFd, mappingId, offset, lastSeen, timeoutMs, extraFds, signalFd, backendFd);
}
