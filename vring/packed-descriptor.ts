// vring/packed-descriptor.ts — the defended walk of a packed ring's chain: descriptor ring → DescriptorChain.
//
// Where it sits: called by PackedQueue.pop() once it has seen the descriptor at its next position made
// available. It extends the split walker (descriptor.ts) and shares its buffer checks (len > 0, 2^32
// bytes, mapped, no wrap-around, nothing readable after writable, piece cap) and its indirect-table
// mapping; what differs is how a packed chain is laid out:
//
//   ring slots:  … │ i: head NEXT │ i+1: NEXT │ i+2: last, id │ …     (wraps at size: the lap flips)
//                     AVAIL=w        AVAIL=w'     AVAIL=w''          each AVAIL = the wrap of its own lap,
//                     USED=!w        USED=!w'     USED=!w''          USED its inverse (§2.8.1, §2.8.6)
//
// Rules (virtio 1.2 §2.8): a chain is consecutive slots linked by NEXT and its buffer id sits in its
// last descriptor (§2.8.6); every descriptor after the head must be available in the lap it sits in —
// the driver writes them before the head, so one that is not was seen out of wrap order (§2.8.17); a
// chain holds at most `size` descriptors (§2.8.17: "MUST NOT create a descriptor list longer than the
// Queue Size"); INDIRECT only if negotiated, never with NEXT nor inside a NEXT list (§2.8.19); an
// indirect table is a non-zero multiple of 16 bytes, fully mapped, walked entry by entry in order, its
// entries' NEXT and id ignored as the spec says (§2.8.7), and none of them INDIRECT (no nesting).
// Each descriptor's id|flags word is read once, with Atomics, before the rest of it.

import type { DescriptorChain } from './chain.ts';
import { DescriptorWalker, descError } from './descriptor.ts';
import { VringErrorCode } from './errors.ts';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT } from './layout.ts';
import { PACKED_DESC_ADDR, PACKED_DESC_FLAGS, PACKED_DESC_ID, PACKED_DESC_LEN } from './packed-layout.ts';

/** Bit position of AVAIL and USED in a descriptor's flags (VRING_PACKED_DESC_F_AVAIL / _USED). */
const AVAIL_SHIFT = 7;
const USED_SHIFT = 15;
// The ring is read as u32 words, 4 per descriptor: addr lo, addr hi, len, id | flags << 16.
const ADDR_U32 = PACKED_DESC_ADDR / 4;
const LEN_U32 = PACKED_DESC_LEN / 4;
/** The word holding id (low half) and flags (high half). */
export const ID_FLAGS_U32 = PACKED_DESC_ID / 4;
/** Shift of flags in that word. */
export const FLAGS_SHIFT = (PACKED_DESC_FLAGS - PACKED_DESC_ID) * 8;

/** Is a descriptor with these flags available in the lap whose wrap counter is `wrap` (§2.8.1)? */
export function packedAvailable(flags: number, wrap: number): boolean {
  return ((flags >>> AVAIL_SHIFT) & 1) === wrap && ((flags >>> USED_SHIFT) & 1) !== wrap;
}

/** Walks and validates chains of one packed ring. Allocation-free per chain. */
export class PackedDescriptorWalker extends DescriptorWalker {
  protected override label = 'ring position';
  /** Ring slots the last walk() consumed: its descriptor count, or 1 for an indirect chain. */
  ringCount = 0;

  /**
   * Walk the chain whose first descriptor is at slot `idx` of the lap with wrap counter `wrap`. `word` is
   * that descriptor's id|flags u32, already read (once) by the caller and found available. Fills `c`,
   * with `c.head` = the buffer id (not yet checked against the queue), and sets ringCount. Throws
   * VringError.
   */
  walkPacked(idx: number, wrap: number, word: number, c: DescriptorChain): void {
    c.reset(0);
    const d = this.desc;
    const size = this.size;
    const start = idx;
    let n = 0;
    for (;;) {
      // The flags were loaded first (Atomics); the rest of the descriptor is read after them.
      const w = idx << 2;
      const lo = d[w + ADDR_U32]!;
      const hi = d[w + ADDR_U32 + 1]!;
      const len = d[w + LEN_U32]!;
      const flags = word >>> FLAGS_SHIFT;
      n++;
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (n > 1) {
          throw descError(VringErrorCode.INDIRECT_NOT_HEAD, this.where(start), `slot ${idx} has INDIRECT inside a list linked by NEXT`);
        }
        if ((flags & VRING_DESC_F_NEXT) !== 0) throw descError(VringErrorCode.INDIRECT_WITH_NEXT, this.where(start), 'INDIRECT and NEXT on the same descriptor');
        if (!this.indirectAllowed) {
          throw descError(VringErrorCode.INDIRECT_NOT_NEGOTIATED, this.where(start), 'INDIRECT used but VIRTIO_F_INDIRECT_DESC was not negotiated');
        }
        this.walkTable(c, start, lo, hi, len);
        break;
      }
      this.buffer(c, start, lo, hi, len, flags);
      if ((flags & VRING_DESC_F_NEXT) === 0) break;
      if (n === size) {
        throw descError(VringErrorCode.DESC_LOOP, this.where(start), `NEXT runs on past all ${size} descriptors of the ring: the list is longer than the queue`);
      }
      if (++idx === size) {
        idx = 0;
        wrap ^= 1;
      }
      word = Atomics.load(d, (idx << 2) + ID_FLAGS_U32);
      if (!packedAvailable(word >>> FLAGS_SHIFT, wrap)) {
        throw descError(
          VringErrorCode.WRAP_ORDER,
          this.where(start),
          `slot ${idx}, which continues the list, is not available in this lap (flags 0x${(word >>> FLAGS_SHIFT).toString(16)}, wrap ${wrap}): the driver must make a list's tail available before its head`,
        );
      }
    }
    c.head = word & 0xffff; // the id of the last descriptor (or of the indirect one)
    this.ringCount = n;
  }

  /** Walk an indirect table entry by entry (§2.8.7: no `next`; only WRITE counts among the flags). */
  private walkTable(c: DescriptorChain, start: number, lo: number, hi: number, len: number): void {
    const entries = this.openTable(start, lo, hi, len);
    const dv = this.tableDv;
    c.indirect = true;
    // Bounded by the entry count; each entry also adds a piece, so maxPieces stops a huge table early.
    for (let i = 0; i < entries; i++) {
      const base = this.tableEntry(i);
      const dflags = dv.getUint16(base + PACKED_DESC_FLAGS, true);
      if ((dflags & VRING_DESC_F_INDIRECT) !== 0) {
        throw descError(VringErrorCode.INDIRECT_NESTED, this.where(start), `entry ${i} of the indirect table is itself INDIRECT`);
      }
      const blo = dv.getUint32(base + PACKED_DESC_ADDR, true);
      const bhi = dv.getUint32(base + PACKED_DESC_ADDR + 4, true);
      this.buffer(c, start, blo, bhi, dv.getUint32(base + PACKED_DESC_LEN, true), dflags);
    }
  }
}
