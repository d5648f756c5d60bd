/**
 * userfaultfd (native/userfault.cc), for postcopy live migration: lgnet registers its mappings of
 * guest memory, and a thread that touches a page the migration has not brought yet waits until the
 * front-end, which holds the same fd, has fetched it.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { UINT32_MAX, checkFd, checkInt } from './checks.ts';
import { binding as b } from './load.ts';

/**
 * Opens /dev/userfaultfd (Linux 6.1+), the way to make userfaultfds that also catch faults taken in
 * the kernel (tap I/O into guest memory). Open it before the jail; it throws a NativeError (ENOENT:
 * too old a kernel; EACCES: the device's permissions) where it cannot be had.
 */
export function userfaultfdDevice(): number {
  return b.userfaultfdDevice();
}

/** A new userfaultfd from the device fd (close-on-exec, nonblocking), its UFFDIO_API handshake done. */
export function userfaultfdNew(deviceFd: number): number {
  checkFd(deviceFd);
  return b.userfaultfdNew(deviceFd);
}

/**
 * Registers a mapping's whole extent for missing-page faults with `uffd` and returns its address (the
 * base a front-end translates fault addresses with). Register before anything touches the mapping.
 */
export function userfaultRegister(uffd: number, mappingId: number): number {
  checkFd(uffd);
  checkInt(mappingId, 'mapping id', 0, UINT32_MAX);
  return b.userfaultRegister(uffd, mappingId);
}

/** Undoes userfaultRegister; a thread waiting on a fault there retries it. A released mapping is a no-op. */
export function userfaultUnregister(uffd: number, mappingId: number): void {
  checkFd(uffd);
  checkInt(mappingId, 'mapping id', 0, UINT32_MAX);
  b.userfaultUnregister(uffd, mappingId);
}

/** Front-end side: the address of the next pending missing-page fault, or -1 when there is none. */
export function userfaultRead(uffd: number): number {
  checkFd(uffd);
  return b.userfaultRead(uffd);
}

/** Front-end side: wakes the threads waiting on faults in [address, address + length). */
export function userfaultWake(uffd: number, address: number, length: number): void {
  checkFd(uffd);
  checkInt(address, 'address', 0, Number.MAX_SAFE_INTEGER);
  checkInt(length, 'length', 1, Number.MAX_SAFE_INTEGER);
  b.userfaultWake(uffd, address, length);
}
