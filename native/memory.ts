/**
 * Guest memory (native/memory.cc): memfds, mmap into the process-wide registry of mappings, and
 * each thread's ArrayBuffer over a mapping by id.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { UINT32_MAX, checkInt, checkFd, checkString } from './checks.ts';
import { binding as b } from './load.ts';

/** memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING) + ftruncate(size); mmap() seals it against shrinking. */
export function memfdCreate(name: string, size: number): number {
  checkString(name, 'name');
  if (Buffer.byteLength(name) > 249) throw new RangeError('memfd name must be at most 249 bytes');
  checkInt(size, 'size', 0, Number.MAX_SAFE_INTEGER);
  return b.memfdCreate(name, size);
}

/**
 * Maps [offset, offset+length) of fd MAP_SHARED read/write into the process-wide registry and returns
 * its id. offset must be page-aligned; for a regular file (memfd) the range must lie inside the file.
 * A memfd is sealed against shrinking first (F_SEAL_SHRINK), so that nobody can truncate it under the
 * mapping (which would make accesses raise SIGBUS); a file that takes no seals is mapped as it is.
 */
export function mmap(fd: number, offset: number, length: number): number {
  checkFd(fd);
  checkInt(offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
  checkInt(length, 'length', 1, Number.MAX_SAFE_INTEGER);
  return b.mmap(fd, offset, length);
}

/** Private zeroed memory in the registry (device scratch buffers usable in batch I/O). */
export function mmapAnonymous(length: number): number {
  checkInt(length, 'length', 1, Number.MAX_SAFE_INTEGER);
  return b.mmapAnonymous(length);
}

/**
 * An external ArrayBuffer over the mapping, for the calling thread (external buffers cannot be
 * transferred: each worker calls this itself). After munmap(id) the buffer reads zeros.
 */
export function mappingBuffer(id: number): ArrayBuffer {
  checkInt(id, 'mapping id', 0, UINT32_MAX);
  return b.mappingBuffer(id);
}

export function mappingSize(id: number): number {
  checkInt(id, 'mapping id', 0, UINT32_MAX);
  return b.mappingSize(id);
}

/**
 * Releases a mapping: the id is invalid at once (NativeError EBADF/'mapping', or EFAULT/'iovec' in a
 * batch), the pages are replaced by zero pages at once, and the address range is unmapped when the
 * last ArrayBuffer over it is collected.
 */
export function munmap(id: number): void {
  checkInt(id, 'mapping id', 0, UINT32_MAX);
  b.munmap(id);
}
