/**
 * Tap I/O through io_uring (native/uring.cc): one io_uring_enter per burst of READVs or WRITEVs
 * instead of one readv/writev per frame. Each ring serves one tap fd for one thread, and is restricted
 * before it is enabled: READV and WRITEV only, on registered files only (the tap is slot 0), no other
 * SQE flag, no register operation afterwards but dropping its files (done as it closes). So the ring can do nothing but I/O on its tap, which is
 * what makes it safe to allow io_uring_enter inside the seccomp jail (docs/SECURITY.md).
 *
 *   main thread: uringCreate([tapFd]) ─▶ { id, fd }      (before the jail: io_uring_setup is denied there)
 *   worker:      uringWritevBatch(id, table) / uringReadvBatch(id, table)   one enter per burst
 *                uringReadvMerged(id, table, …)                             one enter per round (MRG_RXBUF)
 *   jail:        io_uring_enter allowed with arg 0 ∈ uringFds()
 *
 * The tables are IovecTables, checked entry by entry against the mapping registry exactly as
 * writevBatch/readvBatch check them (same native code), so the kernel only gets guest memory.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses.
 */
import { IovecTable } from './iovec.ts';
import { checkMerged, RxFilterSpec } from './batch.ts';
import { binding as b } from './load.ts';
import { checkBytes, checkInt, checkString, INT32_MAX, UINT32_MAX } from './checks.ts';

/** A restricted ring: its registry id (what the I/O calls take) and its fd (what the jail pins). */
export interface UringRing {
  readonly id: number;
  readonly fd: number;
}

/** Entries of a ring when not told otherwise: a burst of 32 frames (and RX rounds up to 64) fits one enter. */
export const URING_ENTRIES = 64;
/** Most entries a ring may have (uring.cc kMaxEntries). */
export const URING_MAX_ENTRIES = 256;
/** uringReadvBatch: a slot given back empty, in front of a frame that did not fit it (table.bytes). */
export const URING_SLOT_EMPTY = -1;

/**
 * Makes a ring for `fds` (registered as fixed files 0, 1, …; lgnet registers one tap fd), restricted
 * to READV/WRITEV on them and then enabled. Throws NativeError: EPERM/ENOSYS from 'io_uring_setup'
 * when io_uring is disabled (kernel.io_uring_disabled, a seccomp filter) or missing, EINVAL from
 * 'io_uring_register' when the kernel cannot restrict rings (before Linux 5.10). The caller falls back
 * to readv/writev then.
 */
export function uringCreate(fds: readonly number[], entries: number = URING_ENTRIES): UringRing {
  if (!Array.isArray(fds) || fds.length < 1 || fds.length > 64) throw new RangeError('fds: 1 to 64 fds to register');
  for (const fd of fds) checkInt(fd, 'fd', 0, INT32_MAX);
  checkInt(entries, 'entries', 1, URING_MAX_ENTRIES);
  return b.uringCreate(Int32Array.from(fds), entries);
}

/** Closes ring `id` (once no burst uses it any more). Its tap fd stays open. */
export function uringClose(id: number): void {
  checkInt(id, 'ring id', 1, UINT32_MAX);
  b.uringClose(id);
}

/** The fds of every open ring in this process: what the jail lets io_uring_enter name. */
export function uringFds(): number[] {
  return b.uringFds();
}

function checkBatch(ring: number, table: IovecTable, frames: number): void {
  checkInt(ring, 'ring id', 1, UINT32_MAX);
  if (!(table instanceof IovecTable)) throw new TypeError('table must be an IovecTable');
  checkInt(frames, 'frames', 0, table.maxFrames);
}

/**
 * One WRITEV per frame of the table, all submitted with one io_uring_enter (more only when the burst
 * exceeds the ring) and all waited for. Returns the frames submitted (all of them unless
 * io_uring_enter failed part-way); table.bytes[i] is frame i's result: bytes written, or −errno for a
 * frame the tap refused (the frames after it were still sent). Throws NativeError('io_uring_enter')
 * when the ring cannot be entered (EPERM: a jail without the ring's fd), EBUSY when another thread
 * uses the ring, and NativeError(EFAULT/EINVAL, 'iovec') for a bad entry, before anything is sent.
 */
export function uringWritevBatch(ring: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(ring, table, frames);
  return b.uringWritevBatch(ring, table.words, table.maxEntries, table.maxFrames, frames);
}

/**
 * One READV per frame slot of the table, in rounds of one io_uring_enter each, until the tap is empty
 * or every slot is filled. Returns the slots settled, 0 … n − 1: table.bytes[i] is the frame length
 * (header included; the slot's room + 1 for a frame longer than it, as readvBatch), or
 * URING_SLOT_EMPTY for a slot given back empty so that frames keep their order (uring.cc draws the
 * case; it needs a frame to arrive mid-round and buffers of different sizes). Slots from n on are
 * untouched in table.bytes. table.written[i], for every slot i < frames, is what the call put into
 * slot i's buffers: more than bytes[i] (or anything past n) where a frame was read into a slot and
 * then copied down into an earlier one; what it wrote must still be logged for migration. A READV
 * error with nothing read throws NativeError('readv'); table.readFailures counts the other READVs that
 * failed (each lost the frame it was copying) and readErrno names the first. The other errors are
 * those of uringWritevBatch.
 */
export function uringReadvBatch(ring: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(ring, table, frames);
  return b.uringReadvBatch(ring, table.words, table.maxEntries, table.maxFrames, frames);
}

/**
 * readvMerged's contract (native/batch.ts) through ring `ring`: frames go into whole buffers of
 * `table` from buffer `first` on, each starting after the last buffer the previous one took, and
 * table.bytes/used/status say what came. It differs in three ways:
 *
 * - Rounds of READVs, one io_uring_enter each: every READV gets the fewest buffers from where the
 *   previous one's ended that hold `need`; a frame that takes fewer is followed by the next one copied
 *   down behind it, so buffers are taken in order with no gap.
 * - `filter` is the whole RX filter, applied here: a rejected frame takes no buffer and is recorded
 *   with used 0 and bytes = −its length (header included). MERGED_STOP.PEEK never comes.
 * - The kernel and the copies may write into any buffer offered, taken or not: the caller logs them
 *   all for migration.
 * - Where one frame's `need` spans many buffers (TSO into 1536-byte buffers), rounds read frames into
 *   host memory of the ring's (the stage) and copy each into its buffers. Frames read that do not fit
 *   the buffers left stay there (the stash; status NO_ROOM) and go first at the next call: see
 *   uringRxStash for what the caller must do with them when it stops.
 *
 * A READV error with nothing recorded throws NativeError('readv'). A frame a round read after a failed
 * READV is not placed (its buffers would be the ones that failed): it is lost, and table.readFailures
 * counts it with the failed READVs that the ERROR stop or the exception does not stand for. The other
 * errors are those of uringReadvBatch.
 */
export function uringReadvMerged(
  ring: number,
  table: IovecTable,
  first: number,
  buffers: number,
  frames: number,
  need: number,
  maxLen: number,
  filter: RxFilterSpec | null = null,
): number {
  checkInt(ring, 'ring id', 1, UINT32_MAX);
  checkMerged(table, first, buffers, frames, need, maxLen);
  if (filter !== null && !(filter instanceof RxFilterSpec)) throw new TypeError('filter must be an RxFilterSpec or null');
  return b.uringReadvMerged(ring, table.words, table.maxEntries, table.maxFrames, first, buffers, frames, need, maxLen, filter === null ? undefined : filter.bytes);
}

/**
 * The frames uringReadvMerged read into ring `ring`'s stage and has not delivered yet (they go first at
 * its next call). With `discard` they are dropped: a queue that stops calls it so, and counts them as
 * lost (rxDropStopped). Throws NativeError EBADF for a ring not open, EBUSY while another thread uses it.
 */
export function uringRxStash(ring: number, discard: boolean): number {
  checkInt(ring, 'ring id', 1, UINT32_MAX);
  if (typeof discard !== 'boolean') throw new TypeError('discard must be a boolean');
  return b.uringRxStash(ring, discard);
}

/** SQE kinds uringTry can submit. */
export type UringTryOp = 'nop' | 'readv' | 'writev' | 'read' | 'close' | 'openat' | 'connect';

/**
 * Submits one SQE of any kind on ring `id` and returns its completion's result (−errno when refused):
 * for tests and diagnostics of the restrictions, which decide whatever is asked. `fixed`: fd is a
 * registered slot (IOSQE_FIXED_FILE) rather than an fd. readv/writev/read use `buf` as their buffer;
 * openat takes `buf` as a NUL-terminated path (fd −100: the cwd); connect takes it as a sockaddr.
 */
export function uringTry(id: number, op: UringTryOp, opts: { fd: number; fixed?: boolean; buf?: Uint8Array }): number {
  checkInt(id, 'ring id', 1, UINT32_MAX);
  checkString(op, 'op');
  checkInt(opts.fd, 'fd', -100, INT32_MAX);
  if (opts.buf !== undefined) checkBytes(opts.buf, 'buf');
  return b.uringTry(id, op, opts.fd, opts.fixed === true, opts.buf);
}

/** io_uring_register(ring, op, NULL, 0), for tests: a restricted ring refuses every op (EACCES). */
export function uringRegister(id: number, op: number): void {
  checkInt(id, 'ring id', 1, UINT32_MAX);
  checkInt(op, 'op', 0, 255);
  b.uringRegister(id, op);
}
