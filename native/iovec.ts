/**
 * IovecTable: the iovec table that batched frame I/O takes across the native boundary, one N-API
 * call per burst (DESIGN.md, "Batching across the native boundary"). Pure TypeScript; no addon.
 *
 *   entries   [ id | offLo | offHi | len ][ id | offLo | offHi | len ] ...   IOVEC_WORDS u32 per iovec
 *               \_______ frame 0 ______/  \___ frame 1 ...
 *   frameEnd  [ 2, 3, ... ]    frameEnd[i] = index of the first entry after frame i
 *   bytes     [ n0, n1, ... ]  written by writevBatch/readvBatch: bytes moved for frame i
 *   used      [ u0, u1, ... ]  written by readvMerged: buffers frame i took
 *   (written)  the same words, written by readvBatch/uringReadvBatch: bytes put into frame i's buffers
 *   status    [ s ]            written by readvMerged: why it stopped (MERGED_STOP), and by
 *                              uringReadvMerged also whether its ring stages next (stagedNext)
 *                              and whether its stash holds frames (stashed);
 *                              by readvBatch/uringReadvBatch: reads that failed past frame 0
 *                              (readFailures, readErrno)
 *
 * All of them are views of one buffer, `words` (in that order), which is what crosses into native: one
 * typed-array query per call instead of several. For readvMerged (MRG_RXBUF) each table "frame" is one
 * guest buffer, and bytes/used describe the frames read into them (native/batch.ts).
 *
 * `offset` is a byte offset within the mapping named by `id` (a registry id from mmap()/
 * mmapAnonymous()), split into 32-bit halves so no BigInt is needed. Entries are written with push(),
 * or in bulk by vring's DescriptorChain.appendIovecs (which then sets `count`; endFrame() closes the
 * frame), and read with entryMapping/entryOffset/entryLength: nothing else decodes the words.
 *
 * Native code bounds-checks every entry against its mapping before any syscall. A backend that moves
 * frame bytes itself (the pair backend copies them) does it with readFrame()/writeFrame(), which make
 * the same check against the same mappings and refuse the same way, NativeError(EFAULT, 'iovec'): the
 * device then counts a refused frame alike whichever side moved the bytes. The mapping bytes come
 * from a MappingResolver the caller holds (native.mappingBuffer in a worker, a plain ArrayBuffer in a
 * test), so this file stays free of the addon.
 */
import { NativeError } from './errors.ts';

/** u32 words per iovec entry: [mappingId, offsetLo, offsetHi, length]. */
export const IOVEC_WORDS = 4;

const TWO_32 = 0x1_0000_0000;
/** The status word's stagedNext bit (native/batch.h kStatusStaged). */
const STATUS_STAGED = 0x100;
/** The status word's stashed bit (native/batch.h kStatusStashed). */
const STATUS_STASHED = 0x200;
/** errno EFAULT: what native/batch.cc throws for an entry outside its mapping. */
const EFAULT = 14;

/** This thread's bytes of a native mapping, by registry id. */
export type MappingResolver = (mappingId: number) => ArrayBufferLike;

/**
 * Byte views of mappings, made once per id on first use. Each view holds its mapping alive, so the
 * owner clears them when the memory they were made for is replaced (the worker, on every memory
 * change).
 */
export class MappingViews {
  private readonly resolve: MappingResolver;
  private readonly views = new Map<number, Uint8Array>();

  constructor(resolve: MappingResolver) {
    this.resolve = resolve;
  }

  /** All the bytes of mapping `id`; its length is the mapping's size. */
  bytes(id: number): Uint8Array {
    let v = this.views.get(id);
    if (v === undefined) {
      v = new Uint8Array(this.resolve(id));
      this.views.set(id, v);
    }
    return v;
  }

  /** Forgets every view (the memory changed): the old mappings can go, new ids get new views. */
  clear(): void {
    this.views.clear();
  }
}

/**
 * Tables given back (IovecTable.giveBack) for this thread's next table of the same shape. A queue's
 * start makes a table of up to 270 KiB; each restart (every driver reset, every migration) would leave
 * the old one for a collector that V8 runs only once 64 MiB of such buffers have built up.
 */
const spares = new Map<string, IovecTable[]>();
/** Tables kept per shape: a device's queues of one kind, restarted one after the other. */
const SPARES_PER_SHAPE = 4;

export class IovecTable {
  readonly maxEntries: number;
  readonly maxFrames: number;
  /** The one buffer behind entries, frameEnd and bytes, in that order. */
  readonly words: Uint32Array;
  readonly entries: Uint32Array;
  readonly frameEnd: Uint32Array;
  readonly bytes: Int32Array;
  /** readvMerged's output: how many buffers frame i took (0: dropped, its buffers took the next frame). */
  readonly used: Uint32Array;
  /**
   * readvBatch/uringReadvBatch's output (the words of `used`, which those calls do not use): the bytes
   * the call put into frame i's buffers, whatever bytes[i] says. It can be more: io_uring reads a frame
   * into one slot and copies it down into an earlier one; a read that failed part-way. The device logs
   * them for migration.
   */
  readonly written: Uint32Array;
  /** Entries pushed so far (over all frames). */
  count = 0;
  /** Frames ended so far. */
  frames = 0;

  /** A table of this shape, as new: one given back on this thread if there is one, else a new one. */
  static take(maxEntries: number, maxFrames: number): IovecTable {
    const t = spares.get(`${maxEntries}/${maxFrames}`)?.pop();
    if (t === undefined) return new IovecTable(maxEntries, maxFrames);
    t.words.fill(0);
    t.count = 0;
    t.frames = 0;
    return t;
  }

  /** Gives this table back for a later take() on this thread; its last user no longer touches it. */
  giveBack(): void {
    const key = `${this.maxEntries}/${this.maxFrames}`;
    let list = spares.get(key);
    if (list === undefined) spares.set(key, (list = []));
    if (list.length < SPARES_PER_SHAPE && !list.includes(this)) list.push(this);
  }

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
    this.words = new Uint32Array(entryWords + 3 * maxFrames + 1);
    this.entries = this.words.subarray(0, entryWords);
    this.frameEnd = this.words.subarray(entryWords, entryWords + maxFrames);
    this.bytes = new Int32Array(this.words.buffer, (entryWords + maxFrames) * 4, maxFrames);
    this.used = this.words.subarray(entryWords + 2 * maxFrames, entryWords + 3 * maxFrames);
    this.written = this.used;
  }

  /** readvMerged's output: why the last call stopped (MERGED_STOP in native/batch.ts). */
  get status(): number {
    return this.words[this.words.length - 1]! & 0xff;
  }

  /**
   * uringReadvMerged's output: its ring reads the next call's frames through its stage (one READV per
   * frame, each into the buffer it takes), so that call needs room for one frame only, where copy-down
   * rounds need room for one frame per READV. False after any other call.
   */
  get stagedNext(): boolean {
    return (this.words[this.words.length - 1]! & STATUS_STAGED) !== 0;
  }

  /**
   * uringReadvMerged's output: its ring's stash holds frames it read and could not place (no room), so
   * the queue's next read must be uringReadvMerged again, which places them first; a read that does
   * not know the stash (a batch) would pass them over. False after any other call.
   */
  get stashed(): boolean {
    return (this.words[this.words.length - 1]! & STATUS_STASHED) !== 0;
  }

  /**
   * readvBatch/uringReadvBatch/uringReadvMerged's output: frames the call took from the tap and lost
   * that neither its result nor its exception stands for. For the batches, reads that failed (other
   * than EAGAIN) past the call's first frame; when nothing was read, every failure but the one thrown.
   * For uringReadvMerged, likewise beyond the one MERGED_STOP.ERROR or the exception stands for, and
   * the frames a round read after a failed READV (not placed: their buffers would be the ones that
   * failed). The caller counts each as lost. Saturates at 255.
   */
  get readFailures(): number {
    return (this.words[this.words.length - 1]! >>> 16) & 0xff;
  }

  /** The errno of the first read readFailures counts (0: none). */
  get readErrno(): number {
    return this.words[this.words.length - 1]! >>> 24;
  }

  /**
   * Writes readFailures and readErrno as the native batch reads do (native/batch.h SetReadFailures):
   * for a port that reads in JavaScript, and (0, 0) before a call that may throw before writing them.
   */
  setReadFailures(failures: number, errno: number): void {
    this.words[this.words.length - 1] = failures === 0 ? 0 : (((errno & 0xff) << 24) | (Math.min(failures, 255) << 16)) >>> 0;
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

  /**
   * Makes this table hold frames first … src.frames − 1 of `src` (renumbered from 0): how a port
   * resumes a burst after a frame the backend refused. This table must be at least as large as src.
   */
  copyFramesFrom(src: IovecTable, first: number): void {
    if (!(Number.isInteger(first) && first >= 0 && first <= src.frames)) {
      throw new RangeError(`frame ${first} is not in the source table (${src.frames} frames)`);
    }
    if (this.maxEntries < src.maxEntries || this.maxFrames < src.maxFrames) {
      throw new RangeError('copyFramesFrom: this table is smaller than the source');
    }
    const from = src.frameStart(first);
    this.entries.set(src.entries.subarray(from * IOVEC_WORDS, src.count * IOVEC_WORDS));
    this.count = src.count - from;
    this.frames = 0;
    for (let f = first; f < src.frames; f++) this.frameEnd[this.frames++] = src.frameEnd[f]! - from;
  }

  /** Drops frames 0 … first − 1: the frames after them move to the front, renumbered from 0. */
  dropFrames(first: number): void {
    if (!(Number.isInteger(first) && first >= 0 && first <= this.frames)) {
      throw new RangeError(`frame ${first} is not in the table (${this.frames} frames)`);
    }
    const from = this.frameStart(first);
    this.entries.copyWithin(0, from * IOVEC_WORDS, this.count * IOVEC_WORDS);
    this.count -= from;
    for (let f = first; f < this.frames; f++) this.frameEnd[f - first] = this.frameEnd[f]! - from;
    this.frames -= first;
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
    return this.frameEnd[i]! - this.frameStart(i);
  }

  /** First entry of frame f: its entries are frameStart(f) … frameEnd[f] − 1. */
  frameStart(f: number): number {
    return f === 0 ? 0 : this.frameEnd[f - 1]!;
  }

  /** Mapping id of entry i (i < count). */
  entryMapping(i: number): number {
    return this.entries[i * IOVEC_WORDS]!;
  }

  /** Byte offset of entry i within its mapping (i < count). */
  entryOffset(i: number): number {
    const w = i * IOVEC_WORDS;
    return this.entries[w + 1]! + this.entries[w + 2]! * TWO_32;
  }

  /** Length in bytes of entry i (i < count). */
  entryLength(i: number): number {
    return this.entries[i * IOVEC_WORDS + 3]!;
  }

  /** Bytes frame f describes: the sum of its entries' lengths. */
  frameLength(f: number): number {
    let n = 0;
    for (let k = this.frameStart(f), end = this.frameEnd[f]!; k < end; k++) n += this.entryLength(k);
    return n;
  }

  /**
   * Copies bytes [pos, pos+len) of frame f, its entries read as one byte stream, into
   * dst[dstOff, dstOff+len). Returns the bytes copied: fewer than len when the frame ends first.
   * Every entry of the frame is checked against its mapping before a byte moves; see checkFrame().
   */
  readFrame(f: number, pos: number, dst: Uint8Array, dstOff: number, len: number, maps: MappingViews): number {
    return this.copy(f, pos, dst, dstOff, len, maps, false);
  }

  /**
   * Copies src[srcOff, srcOff+len) into bytes [pos, pos+len) of frame f, its entries read as one byte
   * stream. Returns the bytes copied: fewer than len when the frame's buffers end first. Checked as
   * readFrame() is.
   */
  writeFrame(f: number, pos: number, src: Uint8Array, srcOff: number, len: number, maps: MappingViews): number {
    return this.copy(f, pos, src, srcOff, len, maps, true);
  }

  /**
   * Throws NativeError(EFAULT, 'iovec'), as writevBatch/readvBatch would, unless every entry of frame f
   * lies inside its mapping. A mapping id the resolver does not know throws what the resolver throws
   * (native.mappingBuffer: NativeError EBADF, 'mapping').
   */
  checkFrame(f: number, maps: MappingViews): void {
    if (!(Number.isInteger(f) && f >= 0 && f < this.frames)) throw new RangeError(`frame ${f} is not in the table (${this.frames} frames)`);
    for (let k = this.frameStart(f), end = this.frameEnd[f]!; k < end; k++) {
      const id = this.entryMapping(k);
      const off = this.entryOffset(k);
      const len = this.entryLength(k);
      const size = maps.bytes(id).length;
      if (off > size || len > size - off) {
        throw new NativeError(EFAULT, 'iovec', `entry ${k} [${off}, +${len}) lies outside mapping ${id} of ${size} bytes`);
      }
    }
  }

  /** readFrame/writeFrame: `intoFrame` says which way the bytes go; everything else is shared. */
  private copy(f: number, pos: number, bytes: Uint8Array, at: number, len: number, maps: MappingViews, intoFrame: boolean): number {
    if (!(Number.isSafeInteger(pos) && pos >= 0)) throw new RangeError(`bad frame position ${pos}`);
    if (!(Number.isInteger(at) && Number.isInteger(len) && at >= 0 && len >= 0 && at + len <= bytes.length)) {
      throw new RangeError(`[${at}, +${len}) is outside the ${bytes.length}-byte array`);
    }
    this.checkFrame(f, maps);
    const stop = pos + len;
    let want = pos; // next byte of the frame's stream to move
    let p = 0; // stream position of entry k's first byte
    for (let k = this.frameStart(f), end = this.frameEnd[f]!; k < end && want < stop; k++) {
      const q = p + this.entryLength(k);
      if (q > want) {
        const n = Math.min(q, stop) - want;
        const view = maps.bytes(this.entryMapping(k));
        const off = this.entryOffset(k) + (want - p);
        if (intoFrame) view.set(bytes.subarray(at, at + n), off);
        else bytes.set(view.subarray(off, off + n), at);
        at += n;
        want += n;
      }
      p = q;
    }
    return want - pos;
  }
}
