/**
 * Batched frame I/O (native/batch.cc): one native call per burst, one readv/writev per frame,
 * every iovec bounds-checked against its mapping first.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { IovecTable } from './iovec.ts';
import { binding as b } from './load.ts';
import { checkInt, checkFd } from './checks.ts';

function checkBatch(fd: number, table: IovecTable, frames: number): void {
  checkFd(fd);
  if (!(table instanceof IovecTable)) throw new TypeError('table must be an IovecTable');
  checkInt(frames, 'frames', 0, table.maxFrames);
}

/**
 * One writev per frame of the table, in one native call. Returns frames done; table.bytes[i] holds
 * the bytes of frame i. EAGAIN ends the batch early; an error on a later frame ends it too (the count
 * says where); an error on frame 0 throws NativeError('writev'). A bad entry throws NativeError
 * (EFAULT/EINVAL, 'iovec') before anything is written.
 */
export function writevBatch(fd: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(fd, table, frames);
  return b.writevBatch(fd, table.words, table.maxEntries, table.maxFrames, frames);
}

/** One readv per frame (each frame's iovecs receive one tap frame); as writevBatch otherwise. */
export function readvBatch(fd: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(fd, table, frames);
  return b.readvBatch(fd, table.words, table.maxEntries, table.maxFrames, frames);
}
