/**
 * Sleeping (native/wait.cc): poll, and waitKick, the worker's sleep that closes the notification
 * race (fence, re-read avail.idx, signal, block) in one call.
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

/** waitKick results. EXTRA0 << i: extraFds[i] became readable. */
export const WAKE = { AVAIL: 1, KICK: 2, EXTRA0: 4 } as const;

/**
 * The worker's sleep, closing the notification race in one place: write 1 to signalFd (if ≥ 0; the
 * pending interrupt), full fence, re-read the LE u16 at (mappingId, offset); if it differs from
 * lastSeen return WAKE.AVAIL at once; else poll kickFd (if ≥ 0) and extraFds up to timeoutMs (-1:
 * forever), drain a readable kickFd, and return WAKE bits (0 on timeout). The kick fd must have a single
 * reader (it is drained with a read that would block if another thread emptied it first).
 */
export function waitKick(
  kickFd: number,
  mappingId: number,
  offset: number,
  lastSeen: number,
  timeoutMs: number,
  extraFds?: Int32Array,
  signalFd = -1,
): number {
  checkInt(kickFd, 'kickFd', -1, INT32_MAX);
  checkInt(mappingId, 'mapping id', 0, UINT32_MAX);
  checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
  checkInt(lastSeen, 'lastSeen', 0, 0xffff);
  checkInt(timeoutMs, 'timeoutMs', -1, INT32_MAX);
  if (extraFds !== undefined && !(extraFds instanceof Int32Array)) throw new TypeError('extraFds must be an Int32Array');
  if (extraFds !== undefined && extraFds.length > 29) throw new RangeError('extraFds: at most 29 fds');
  checkInt(signalFd, 'signalFd', -1, INT32_MAX);
  return b.waitKick(kickFd, mappingId, offset, lastSeen, timeoutMs, extraFds, signalFd);
}
