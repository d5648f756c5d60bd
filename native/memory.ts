/**
 * Guest memory (native/memory.cc): memfds, mmap into the process-wide registry of mappings, and
 * each thread's ArrayBuffer over a mapping by id; and the SIGBUS guard over them (native/guard.cc):
 * a mapped file that shrinks turns into zero pages and a fault count, not a dead process.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { UINT32_MAX, checkInt, checkFd, checkString } from './checks.ts';
import { binding as b } from './load.ts';

/**
 * memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING) + ftruncate(size); mmap() seals it against
 * shrinking. `sealable: false` leaves out MFD_ALLOW_SEALING, so that the memfd can shrink after it is
 * mapped (what a careless or hostile front-end sends; tests use it).
 */
export function memfdCreate(name: string, size: number, opts: { sealable?: boolean } = {}): number {
  checkString(name, 'name');
  if (Buffer.byteLength(name) > 249) throw new RangeError('memfd name must be at most 249 bytes');
  checkInt(size, 'size', 0, Number.MAX_SAFE_INTEGER);
  return b.memfdCreate(name, size, opts.sealable !== false);
}

/**
 * Maps [offset, offset+length) of fd MAP_SHARED read/write into the process-wide registry and returns
 * its id. offset must be page-aligned; for a regular file (memfd) the range must lie inside the file.
 * A memfd is sealed against shrinking first (F_SEAL_SHRINK), so that nobody can truncate it under the
 * mapping; a file that takes no seals (an unsealable memfd, tmpfs, hugetlbfs) is mapped as it is, and
 * the SIGBUS guard covers it: if it shrinks, the first access past its end replaces the whole mapping
 * with private zero pages and counts a fault (mappingFaults, memoryFaults) instead of killing the process.
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

/**
 * SIGBUS faults the guard absorbed in this mapping (0 for anonymous memory, or while its file is
 * whole). Nonzero: the file shrank under it and the mapping now reads zeros; whoever serves it must
 * stop trusting it (the device marks itself NEEDS_RESET).
 */
export function mappingFaults(id: number): number {
  checkInt(id, 'mapping id', 0, UINT32_MAX);
  return b.mappingFaults(id);
}

/** A mapping's faults; 0 for one already released (its pages are zero pages: it cannot fault any more). */
function faultsOf(id: number): number {
  try {
    return b.mappingFaults(id);
  } catch (e) {
    if ((e as { code?: string }).code === 'EBADF') return 0;
    throw e;
  }
}

/** This thread's view of the process-wide fault count (one external ArrayBuffer per thread). */
let faultWord: Int32Array | null = null;

/**
 * Faults the guard absorbed in any mapping of the process so far: one shared-memory load, no call into
 * the addon, so a worker can look once per burst. When it moves, ask mappingFaults() which mapping.
 */
export function memoryFaults(): number {
  faultWord ??= new Int32Array(b.faultCounter());
  // A plain load: one aligned 32-bit read, so never torn. Atomics.load on a buffer that is not a
  // SharedArrayBuffer is a runtime call (~25 ns against ~2 ns); a count that moves a moment late only
  // delays the look by one pass, and the handler publishes the mapping's count before this one.
  return faultWord[0]! >>> 0;
}

/**
 * The guard's state: `installed` is false when something replaced lgnet's SIGBUS handler after the
 * addon loaded (an embedder's own handler; Node's process.on('SIGBUS')), and unsealed memory is then
 * unprotected. `guards`: file mappings covered now.
 */
export function memoryGuard(): { installed: boolean; faults: number; guards: number } {
  return b.memoryGuard();
}

/**
 * Watches a set of mappings for faults. check() costs one load while no fault happened anywhere in
 * the process since the last look; otherwise (or when the set changed) it asks each mapping.
 */
export class FaultWatch {
  private ids: ReadonlyArray<number> = [];
  /** The process-wide count when the set was last found clean; -1: look at every mapping. */
  private seen = -1;

  /**
   * The first of `ids` that took a fault, or -1. Pass a new array when the set changes (the same array
   * is taken to hold the same set: the hot path is one compare and one load).
   */
  check(ids: ReadonlyArray<number>): number {
    if (ids !== this.ids) {
      if (ids.length !== this.ids.length || ids.some((id, i) => id !== this.ids[i])) this.seen = -1;
      this.ids = ids;
    }
    const now = memoryFaults();
    if (now === this.seen) return -1;
    for (const id of this.ids) if (faultsOf(id) > 0) return id;
    this.seen = now; // faults elsewhere in the process (another device, the harness), not in these
    return -1;
  }
}

/**
 * A full garbage collection of the calling thread's isolate, now (through V8's external memory count:
 * N-API has no direct call). For a thread whose heap is small but that lets go of large buffers at
 * known moments (a queue worker when its queue stops), which V8 would otherwise keep until 64 MiB of
 * them had built up.
 */
export function collectGarbage(): void {
  b.collectGarbage();
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
