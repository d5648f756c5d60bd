/**
 * Argument checks of native/'s facade: TypeScript validates before anything crosses into C++ (which
 * checks again), so a bad fd, id, offset or length is a TypeError or RangeError, never a crash.
 */

export const INT32_MAX = 0x7fff_ffff;
export const UINT32_MAX = 0xffff_ffff;
/** Most CPUs a thread's affinity names (glibc's CPU_SETSIZE). */
export const MAX_CPUS = 1024;

export function checkInt(v: unknown, what: string, lo: number, hi: number): asserts v is number {
  if (typeof v !== 'number') throw new TypeError(`${what} must be a number, got ${typeof v}`);
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`${what} must be an integer in [${lo}, ${hi}], got ${v}`);
}
export function checkFd(fd: unknown, what = 'fd'): asserts fd is number {
  checkInt(fd, what, 0, INT32_MAX);
}
export function checkString(s: unknown, what: string): asserts s is string {
  if (typeof s !== 'string') throw new TypeError(`${what} must be a string`);
  if (s.includes('\0')) throw new TypeError(`${what} must not contain NUL`);
}
export function checkBytes(buf: unknown, what: string): asserts buf is Uint8Array {
  if (!(buf instanceof Uint8Array)) throw new TypeError(`${what} must be a Uint8Array`);
}
export function toInt32Array(fds: Int32Array | readonly number[], what: string, max: number): Int32Array {
  if (fds instanceof Int32Array) {
    if (fds.length > max) throw new RangeError(`${what}: at most ${max} fds`);
    return fds;
  }
  if (!Array.isArray(fds)) throw new TypeError(`${what} must be an Int32Array or an array of fds`);
  if (fds.length > max) throw new RangeError(`${what}: at most ${max} fds`);
  for (const fd of fds) checkInt(fd, `${what} entry`, -1, INT32_MAX);
  return Int32Array.from(fds);
}
