/**
 * What a fuzz target is: one module under fuzz/targets/ whose default export is a FuzzTarget. The
 * same object runs under libFuzzer (fuzz/fuzz-one.ts, with coverage) and under vitest, which replays
 * the committed corpus and every regression input through it (test/fuzz).
 */
import { rng } from '../test/vring/fuzz-case.ts';

export interface FuzzTarget {
  /** One line: what the target exercises. */
  readonly about: string;
  /** libFuzzer's -max_len: the longest input worth trying. */
  readonly maxLen: number;
  /**
   * Runs one input. Bad input is what the target exists to feed, so the code under test answering it
   * with its typed error is a pass; run throws only when a property is broken (a finding).
   */
  run(data: Uint8Array): void | Promise<void>;
  /** True when run returns a promise (libFuzzer then runs on its own thread; slower per input). */
  readonly async?: boolean;
  /** Releases what the module set up (devices, fds), for a test that replays inputs and goes on. */
  close?(): Promise<void>;
}

/**
 * A byte source for structure-aware targets: numbers drawn from the fuzzer's input, so that
 * libFuzzer's mutations steer the generator. When the input runs out it continues with a PRNG seeded
 * by what was read, so a short input still makes a whole case, and the same input always the same one.
 */
export function byteRand(data: Uint8Array): () => number {
  let i = 0;
  let h = 0x811c9dc5; // FNV-1a of what was read, the PRNG's seed once the bytes run out
  let prng: (() => number) | null = null;
  return () => {
    if (i + 4 <= data.length) {
      let v = 0;
      for (let k = 0; k < 4; k++) {
        const b = data[i++]!;
        h = Math.imul(h ^ b, 0x01000193);
        v = v * 256 + b;
      }
      return v / 0x1_0000_0000;
    }
    prng ??= rng(h >>> 0);
    return prng();
  };
}


/** Reads fields off a fuzzer's input in order; past its end every read is 0. */
export class Input {
  private at = 0;
  private readonly data: Uint8Array;

  constructor(data: Uint8Array) {
    this.data = data;
  }

  get left(): number {
    return Math.max(0, this.data.length - this.at);
  }

  u8(): number {
    return this.at < this.data.length ? this.data[this.at++]! : 0;
  }

  u16(): number {
    return this.u8() | (this.u8() << 8);
  }

  u32(): number {
    return (this.u16() | (this.u16() << 16)) >>> 0;
  }

  /**
   * Feature bits from the input: one input bit per entry of `bits` (bit numbers, as device/features.ts
   * F), read as ⌈bits.length / 8⌉ bytes.
   */
  features(bits: readonly number[]): bigint {
    let mask = 0;
    for (let k = 0; k < bits.length; k += 8) mask |= this.u8() << k;
    let out = 0n;
    bits.forEach((b, i) => {
      if (mask & (1 << i)) out |= 1n << BigInt(b);
    });
    return out;
  }

  /** `n` bytes (fewer if the input ends first, then zeros). */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    const k = Math.min(n, this.left);
    out.set(this.data.subarray(this.at, this.at + k));
    this.at += k;
    return out;
  }
}

/** Whether two byte arrays hold the same bytes (what the targets compare frames with). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
