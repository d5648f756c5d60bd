/** Catching the typed error a call must throw, for assertions on its fields. */
import { NativeError } from '../../native/index.ts';

/** Runs fn and returns the error of class `cls` it throws; fails when it throws nothing or something else. */
export function thrownBy<T extends Error>(fn: () => unknown, cls: abstract new (...args: never[]) => T): T {
  try {
    fn();
  } catch (e) {
    if (e instanceof cls) return e;
    throw e;
  }
  throw new Error(`expected a ${cls.name}`);
}

/** Runs fn and returns the NativeError it throws; fails when it throws nothing or something else. */
export function nativeErrorOf(fn: () => unknown): NativeError {
  return thrownBy(fn, NativeError);
}
