// vring/io.ts — scatter/gather copies between a PieceList and a flat byte array.
//
// Where it sits: below DescriptorChain (chain.ts). A chain's readable or writable part is a list of
// pieces in guest memory; device code reads a header that may straddle pieces (VIRTIO_F_ANY_LAYOUT,
// virtio 1.2 §2.6.4 "Message Framing": the device must not assume any particular buffer layout) and
// writes results back across pieces. These helpers walk the piece list and copy; they never compute a
// guest address, only offsets inside regions that GuestMemory.translate() has already bounds-checked.
//
//   logical offset:   0        p0.len        p0.len+p1.len
//                     ├── piece 0 ──┼──── piece 1 ────┼─ piece 2 ─┤
//   copy [off, off+len) ──────▶ visits only the pieces the range overlaps

import type { Region, PieceList } from './memory.ts';

/**
 * Copy `len` bytes starting at logical offset `off` of `pieces` into `dst[dstOff…]`.
 * The caller has checked off + len ≤ total length of the pieces.
 */
export function gatherFrom(
  regions: readonly Region[],
  pieces: PieceList,
  off: number,
  dst: Uint8Array,
  dstOff: number,
  len: number,
): void {
  const count = pieces.count;
  let i = 0;
  let start = 0;
  // Skip whole pieces before `off`.
  while (i < count && start + pieces.length[i]! <= off) {
    start += pieces.length[i]!;
    i++;
  }
  let inPiece = off - start;
  let left = len;
  let at = dstOff;
  while (left > 0 && i < count) {
    const u8 = regions[pieces.region[i]!]!.u8;
    const o = pieces.offset[i]! + inPiece;
    const n = Math.min(left, pieces.length[i]! - inPiece);
    if (n < 16) {
      for (let k = 0; k < n; k++) dst[at + k] = u8[o + k]!;
    } else {
      dst.set(u8.subarray(o, o + n), at);
    }
    at += n;
    left -= n;
    inPiece = 0;
    i++;
  }
}

/**
 * Copy `len` bytes from `src[srcOff…]` to logical offset `off` of `pieces`.
 * The caller has checked off + len ≤ total length of the pieces.
 */
export function scatterTo(
  regions: readonly Region[],
  pieces: PieceList,
  off: number,
  src: Uint8Array,
  srcOff: number,
  len: number,
): void {
  const count = pieces.count;
  let i = 0;
  let start = 0;
  while (i < count && start + pieces.length[i]! <= off) {
    start += pieces.length[i]!;
    i++;
  }
  let inPiece = off - start;
  let left = len;
  let at = srcOff;
  while (left > 0 && i < count) {
    const u8 = regions[pieces.region[i]!]!.u8;
    const o = pieces.offset[i]! + inPiece;
    const n = Math.min(left, pieces.length[i]! - inPiece);
    if (n < 16) {
      for (let k = 0; k < n; k++) u8[o + k] = src[at + k]!;
    } else {
      u8.set(src.subarray(at, at + n), o);
    }
    at += n;
    left -= n;
    inPiece = 0;
    i++;
  }
}
