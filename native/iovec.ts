/**
 * IovecTable: the iovec table that batched frame I/O takes across the native boundary, one N-API
 * call per burst (DESIGN.md, "Batching across the native boundary"). Pure TypeScript; no addon.
 *
 *   entries   [ id | offLo | offHi | len ][ id | offLo | offHi | len ] ...   IOVEC_WORDS u32 per iovec
 *               \_______ frame 0 ______/  \___ frame 1 ...
 *   frameEnd  [ 2, 3, ... ]    frameEnd[i] = index of the first entry after frame i
 *   bytes     [ n0, n1, ... ]  written by writevBatch/readvBatch: bytes moved for frame i
 *
 * All three arrays are views of one buffer, `words` (entries, then frameEnd, then bytes), which is what
 * crosses into native: one typed-array query per call instead of three.
 *
 * `offset` is a byte offset within the mapping named by `id` (a registry id from mmap()/
 * mmapAnonymous()), split into 32-bit halves so no BigInt is needed. Native code bounds-checks every
 * entry against its mapping before any syscall. Device code may fill `entries`/`frameEnd` directly and
 * set `count`/`frames`; push()/endFrame() are the checked way.
 */

/** u32 words per iovec entry: [mappingId, offsetLo, offsetHi, length]. */
export const IOVEC_WORDS = 4;

const TWO_32 = 0x1_0000_0000;

export class IovecTable {
  readonly maxEntries: number;
  readonly maxFrames: number;
  /** The one buffer behind entries, frameEnd and bytes, in that order. */
  readonly words: Uint32Array;
  readonly entries: Uint32Array;
  readonly frameEnd: Uint32Array;
  readonly bytes: Int32Array;
  /** Entries pushed so far (over all frames). */
  count = 0;
  /** Frames ended so far. */
  frames = 0;

  constructor(maxEntries: number, maxFrames: number) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1 || maxEntries > 0x100000) {
      throw new RangeError(`maxEntries must be an integer in [1, 1048576], got ${maxEntries}`);
    }
    if (!Number.isInteger(maxFrames) || maxFrames < 1 || maxFrames > maxEntries) {
      throw new RangeError(`maxFrames must be an integer in [1, maxEntries], got ${maxFrames}`);
    }
    this.maxEntries = maxEntries;
    this.maxFrames = maxFrames;
    const entryWords = maxEntries * IOVEC_WORDS;
    this.words = new Uint32Array(entryWords + 2 * maxFrames);
    this.entries = this.words.subarray(0, entryWords);
    this.frameEnd = this.words.subarray(entryWords, entryWords + maxFrames);
    this.bytes = new Int32Array(this.words.buffer, (entryWords + maxFrames) * 4, maxFrames);
  }

  reset(): void {
    this.count = 0;
    this.frames = 0;
  }

  /** Appends one iovec to the current frame. */
  push(mappingId: number, offset: number, length: number): void {
    if (this.count >= this.maxEntries) throw new RangeError(`iovec table full (${this.maxEntries} entries)`);
    if (this.frames >= this.maxFrames) throw new RangeError(`iovec table full (${this.maxFrames} frames)`);
    if (!Number.isInteger(mappingId) || mappingId < 0 || mappingId >= TWO_32) throw new RangeError(`bad mapping id ${mappingId}`);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`bad offset ${offset}`);
    if (!Number.isInteger(length) || length < 0 || length >= TWO_32) throw new RangeError(`bad length ${length}`);
    const w = this.count * IOVEC_WORDS;
    this.entries[w] = mappingId;
    this.entries[w + 1] = offset % TWO_32;
    this.entries[w + 2] = Math.floor(offset / TWO_32);
    this.entries[w + 3] = length;
    this.count++;
  }

  /** Ends the current frame (it must have at least one entry). */
  endFrame(): void {
    const start = this.frames === 0 ? 0 : this.frameEnd[this.frames - 1]!;
    if (this.count === start) throw new RangeError('a frame needs at least one iovec');
    this.frameEnd[this.frames] = this.count;
    this.frames++;
  }

  /** Entries in frame i. */
  frameEntries(i: number): number {
    return this.frameEnd[i]! - (i === 0 ? 0 : this.frameEnd[i - 1]!);
  }
}
