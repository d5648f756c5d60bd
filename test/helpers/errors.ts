/** Catching the typed error a call must throw, for assertions on its fields. */
import { NativeError } from '../../native/index.ts';

/** Runs fn and returns the NativeError it throws; fails when it throws nothing or something else. */
export function nativeErrorOf(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (e) {
    if (e instanceof NativeError) return e;
    throw e;
  }
  throw new Error('expected a NativeError');
}
