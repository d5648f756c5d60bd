// vring/chain.ts — DescriptorChain: one popped, validated descriptor chain and the only way device
// code touches its bytes.
//
// Where it sits: SplitQueue.pop() walks the guest's descriptors (descriptor.ts), translates every
// buffer through GuestMemory and leaves the result here: the device-readable part and the
// device-writable part as two lists of memory pieces. device/ then reads headers with locate()
// (the m_pulldown idea: make [off, off+len) contiguous, copying into a small scratch only when it
// spans pieces), writes results with writeBytes()/setU16()/…, and hands payload ranges to native
// readv/writev with appendIovecs(). Nothing here can reach outside the translated pieces.
//
//   chain (head 7):  desc 7 ─NEXT─▶ desc 3 ─NEXT─▶ desc 9        (virtio 1.2 §2.7.5, §2.6.4)
//                    readable       readable       writable
//   readable pieces: [r0: 12 bytes][r1: 1500 bytes]  ← header may straddle r0|r1 (ANY_LAYOUT)
//   writable pieces: [w0: 1 byte]                    ← status / used length
//
// Objects are owned by the queue and reused: one per head index, valid from pop() until the chain is
// completed with addUsed() (or rewound). Do not keep references past that.

import { MemoryError, VringErrorCode } from './errors.ts';
import { gatherFrom, scatterTo } from './io.ts';
import { PieceList, type GuestMemory, type Region } from './memory.ts';

/** Largest range locate() can make contiguous: virtio_net_hdr plus L2/L3/L4 headers fit easily. */
export const LOCATE_MAX = 256;

/** Initial piece capacity per direction; lists grow on demand up to the queue's cap. */
export const PIECES_INITIAL = 8;

const EMPTY = new Uint8Array(0);
const EMPTY_DV = new DataView(EMPTY.buffer);
const TWO32 = 0x1_0000_0000;

/** A validated descriptor chain: its head and its translated readable and writable pieces. */
export class DescriptorChain {
  /** Head descriptor index: what addUsed() takes. */
  head = 0;
  /** Device-readable pieces, in chain order. */
  readable: PieceList;
  /** Device-writable pieces, in chain order. */
  writable: PieceList;
  /** Total bytes of the readable part. */
  readableLen = 0;
  /** Total bytes of the writable part. */
  writableLen = 0;
  /** Number of descriptors walked (indirect table entries count, the indirect descriptor does not). */
  descCount = 0;
  /** True if the chain came through an indirect table. */
  indirect = false;

  /** After a successful locate(): view holding the range. Read byte off+k at `pos + k`. */
  dv: DataView = EMPTY_DV;
  /** After a successful locate(): same bytes as `dv`. */
  u8: Uint8Array = EMPTY;
  /** After a successful locate(): index of byte `off` in `dv` / `u8`. */
  pos = 0;

  /** Memory the pieces refer to; set by the queue at attach time. */
  mem: GuestMemory | null = null;
  private scratch: Uint8Array | null = null;
  private scratchDv: DataView = EMPTY_DV;
  private readonly tmp = new Uint8Array(4);
  private readonly tmpDv = new DataView(this.tmp.buffer);

  constructor(maxPieces: number) {
    this.readable = new PieceList(Math.min(PIECES_INITIAL, maxPieces), maxPieces);
    this.writable = new PieceList(Math.min(PIECES_INITIAL, maxPieces), maxPieces);
  }

  /** Clear for a new walk (the queue does this). */
  reset(head: number): void {
    this.head = head;
    this.readable.reset();
    this.writable.reset();
    this.readableLen = 0;
    this.writableLen = 0;
    this.descCount = 0;
    this.indirect = false;
  }

  /** Give back piece storage a large chain made us grow (called on completion). */
  trim(): void {
    if (this.readable.capacity > 8 * PIECES_INITIAL) this.readable.shrink(PIECES_INITIAL);
    if (this.writable.capacity > 8 * PIECES_INITIAL) this.writable.shrink(PIECES_INITIAL);
  }

  private regions(): readonly Region[] {
    return this.mem!.regions;
  }

  // ---- Reader side (device-readable part)

  /**
   * Make readable bytes [off, off+len) addressable as one span. On success sets `dv`, `u8` and `pos`
   * so that `dv.getUint16(pos + k, true)` reads byte off+k, and returns true. Zero copy when the range
   * lies in one piece; otherwise copies into this chain's scratch (≤ LOCATE_MAX bytes), valid until the
   * next locate() on this chain. Returns false if the range goes past the readable length.
   */
  locate(off: number, len: number): boolean {
    if (!(off >= 0 && len >= 0 && len <= LOCATE_MAX)) {
      throw new RangeError(`locate(${off}, ${len}): offset must be ≥ 0 and length in [0, ${LOCATE_MAX}]`);
    }
    if (off + len > this.readableLen) return false;
    if (len === 0) {
      this.dv = EMPTY_DV;
      this.u8 = EMPTY;
      this.pos = 0;
      return true;
    }
    const p = this.readable;
    const lens = p.length;
    let i = 0;
    let start = 0;
    while (i < p.count - 1 && start + lens[i]! <= off) {
      start += lens[i]!;
      i++;
    }
    const inPiece = off - start;
    if (inPiece + len <= lens[i]!) {
      const r = this.mem!.regions[p.region[i]!]!;
      this.dv = r.dv;
      this.u8 = r.u8;
      this.pos = p.offset[i]! + inPiece;
      return true;
    }
    // The range spans pieces: copy it out (the m_pulldown case).
    let s = this.scratch;
    if (s === null) {
      s = this.scratch = new Uint8Array(LOCATE_MAX);
      this.scratchDv = new DataView(s.buffer);
    }
    gatherFrom(this.regions(), p, off, s, 0, len);
    this.dv = this.scratchDv;
    this.u8 = s;
    this.pos = 0;
    return true;
  }

  /** Copy readable bytes [off, off+len) into dst[dstOff…]. False (nothing copied) if past the end. */
  readBytes(off: number, dst: Uint8Array, dstOff: number, len: number): boolean {
    if (!(off >= 0 && len >= 0 && dstOff >= 0 && dstOff + len <= dst.length)) throw new RangeError('readBytes: bad range');
    if (off + len > this.readableLen) return false;
    gatherFrom(this.regions(), this.readable, off, dst, dstOff, len);
    return true;
  }

  /**
   * Reads one byte of every 4-KiB page of every piece, readable and writable, and returns their sum.
   * The device calls it when the kernel refused one of the chain's buffers with EFAULT although the
   * buffer lies inside its mapping: the file behind the mapping was shrunk. Touched here, in the
   * thread's own code, the missing page raises SIGBUS, which the guard takes (native/guard.cc), and the
   * worker then breaks the queue with a memory fault instead of failing frame after frame.
   */
  touch(): number {
    let sum = 0;
    const regions = this.mem!.regions;
    for (const p of [this.readable, this.writable]) {
      for (let i = 0; i < p.count; i++) {
        const u8 = regions[p.region[i]!]!.u8;
        const end = p.offset[i]! + p.length[i]!;
        for (let o = p.offset[i]!; o < end; o = (o | 4095) + 1) sum += u8[o]!;
      }
    }
    return sum;
  }

  // ---- Writer side (device-writable part)

  /** Copy src[srcOff, srcOff+len) to writable offset `off`. False (nothing written) if past the end. */
  writeBytes(off: number, src: Uint8Array, srcOff: number, len: number): boolean {
    if (!(off >= 0 && len >= 0 && srcOff >= 0 && srcOff + len <= src.length)) throw new RangeError('writeBytes: bad range');
    if (off + len > this.writableLen) return false;
    scatterTo(this.regions(), this.writable, off, src, srcOff, len);
    return true;
  }

  /**
   * Copy writable bytes [off, off+len) into dst[dstOff…] — what the device (or the backend's readv) put
   * there. False (nothing copied) if past the end.
   */
  readWritable(off: number, dst: Uint8Array, dstOff: number, len: number): boolean {
    if (!(off >= 0 && len >= 0 && dstOff >= 0 && dstOff + len <= dst.length)) throw new RangeError('readWritable: bad range');
    if (off + len > this.writableLen) return false;
    gatherFrom(this.regions(), this.writable, off, dst, dstOff, len);
    return true;
  }

  /** Store one byte at writable offset `off`. False if past the end. */
  setU8(off: number, v: number): boolean {
    this.tmp[0] = v;
    return this.writeBytes(off, this.tmp, 0, 1);
  }

  /** Store a little-endian u16 at writable offset `off` (may straddle pieces). False if past the end. */
  setU16(off: number, v: number): boolean {
    // Every RX frame stores num_buffers here, nearly always inside the first piece: store it in place.
    const w = this.writable;
    if (w.count > 0 && off >= 0 && off + 2 <= w.length[0]!) {
      this.mem!.regions[w.region[0]!]!.dv.setUint16(w.offset[0]! + off, v, true);
      return true;
    }
    this.tmpDv.setUint16(0, v, true);
    return this.writeBytes(off, this.tmp, 0, 2);
  }

  /** Store a little-endian u32 at writable offset `off` (may straddle pieces). False if past the end. */
  setU32(off: number, v: number): boolean {
    this.tmpDv.setUint32(0, v, true);
    return this.writeBytes(off, this.tmp, 0, 4);
  }

  // ---- Native batch table

  /**
   * Append the pieces of the readable or writable part to a native iovec batch table, 4 u32 per entry:
   * [mappingId, offsetLo, offsetHi, length], offset being the byte offset in the native mapping. The
   * first `skip` bytes are left out and at most `limit` bytes are described. Returns the new entry
   * index. Throws MemoryError (VRING_NO_MAPPING) if a piece's region has no mapping id, and RangeError
   * if `table` has no room: size it for `pieces.count` more entries.
   */
  appendIovecs(
    table: Uint32Array,
    at: number,
    which: 'readable' | 'writable',
    skip: number,
    limit: number,
    mem: GuestMemory,
  ): number {
    const p = which === 'readable' ? this.readable : this.writable;
    const regions = mem.regions;
    let skipLeft = skip;
    let left = limit;
    for (let i = 0; i < p.count && left > 0; i++) {
      let n = p.length[i]!;
      if (skipLeft >= n) {
        skipLeft -= n;
        continue;
      }
      const o = p.offset[i]! + skipLeft;
      n -= skipLeft;
      skipLeft = 0;
      if (n > left) n = left;
      const r = regions[p.region[i]!]!;
      if (r.mappingId < 0) {
        throw new MemoryError(
          VringErrorCode.NO_MAPPING,
          `guest region at 0x${r.gpa.toString(16)} has no native mapping id, so it cannot be passed to readv/writev`,
        );
      }
      const base = at * 4;
      if (base + 4 > table.length) throw new RangeError(`iovec table full at entry ${at}`);
      const mo = r.mappingOffset + o;
      const lo = mo >>> 0;
      table[base] = r.mappingId;
      table[base + 1] = lo;
      table[base + 2] = (mo - lo) / TWO32;
      table[base + 3] = n;
      at++;
      left -= n;
    }
    return at;
  }
}
