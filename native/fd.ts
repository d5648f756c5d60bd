/**
 * File descriptors: close, O_NONBLOCK, plain read/write (native/fd.cc), and a no-op call that
 * measures one N-API crossing.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { NativeError } from './errors.ts';
import { binding as b } from './load.ts';
import { checkFd, checkBytes } from './checks.ts';

/** Does nothing natively: the cost of one N-API call (scripts/bench/native.ts). */
export const nop: () => void = b.nop;

export function close(fd: number): void {
  checkFd(fd);
  b.close(fd);
}

/**
 * Closes fd if it is one (≥ 0), ignoring a failed close (it was already closed): for teardown paths
 * that release whatever they still hold. Anything but a NativeError is a bug and is rethrown.
 */
export function closeQuietly(fd: number): void {
  if (fd < 0) return;
  try {
    close(fd);
  } catch (e) {
    if (!(e instanceof NativeError)) throw e;
  }
}

export function setNonblocking(fd: number, on: boolean): void {
  checkFd(fd);
  if (typeof on !== 'boolean') throw new TypeError('on must be a boolean');
  b.setNonblocking(fd, on);
}

/** FD_CLOEXEC on or off: an fd handed down by another process is not handed on to a child of ours. */
export function setCloexec(fd: number, on: boolean): void {
  checkFd(fd);
  if (typeof on !== 'boolean') throw new TypeError('on must be a boolean');
  b.setCloexec(fd, on);
}

/** read(2) into buf: bytes read, 0 on EOF, -1 on EAGAIN. */
export function fdRead(fd: number, buf: Uint8Array): number {
  checkFd(fd);
  checkBytes(buf, 'buf');
  return b.fdRead(fd, buf);
}

/** write(2) of buf: bytes written, -1 on EAGAIN. */
export function fdWrite(fd: number, buf: Uint8Array): number {
  checkFd(fd);
  checkBytes(buf, 'buf');
  return b.fdWrite(fd, buf);
}
