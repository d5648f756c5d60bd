// vring/dirty-log.ts — the dirty log of live migration: one bit per 4 KiB guest-physical page that the
// device wrote.
//
// Where it sits: a VMM migrating a guest copies its RAM while the guest runs, then copies again every
// page written since. Pages the device writes behind the VMM's back (RX buffers, the used ring) are
// invisible to it unless the device marks them here. The log is a bitmap in memory the VMM shares
// (vhost-user SET_LOG_BASE, or an embedding VMM's buffer); page p = gpa >> 12 is bit (p & 7) of byte
// p >> 3, which is the same bit as QEMU's little-endian u64 words.
//
//   device writes [gpa, gpa+len) ─▶ mark(): Atomics.or one bit per page ─▶ VMM collects (fetch-and-clear)
//
// Marks are atomic because several queue workers and the VMM share the bytes. Mark after the write:
// a VMM that collects between a mark and the write it stands for would copy the page too early.
// Spec: QEMU docs/interop/vhost-user.rst, "Migration" and "Dirty log"; virtio has no word on it.

import type { GuestMemory, PieceList } from './memory.ts';

/** log2 of the page size the log tracks. */
export const LOG_PAGE_SHIFT = 12;
/** Bytes per logged page. */
export const LOG_PAGE_SIZE = 1 << LOG_PAGE_SHIFT;

/**
 * Bytes a log needs to cover guest physical addresses [0, end): one bit per page, rounded up to whole
 * u64 words as QEMU allocates it.
 */
export function dirtyLogSize(end: number): number {
  const pages = Math.ceil(end / LOG_PAGE_SIZE);
  return Math.ceil(pages / 64) * 8;
}

/** A dirty bitmap over shared bytes. Marks are atomic; nothing is ever written outside the bytes. */
export class DirtyLog {
  /** The bitmap. */
  readonly bytes: Uint8Array;
  /** Pages past the end of the bitmap that were written and could not be marked (counted, never written). */
  missed = 0;
  private readonly pages: number;

  private readonly onMissed: ((pages: number) => void) | undefined;

  /**
   * A log over `size` bytes of `buffer` from `byteOffset` (an mmap'd external buffer, or any
   * ArrayBuffer). `onMissed` hears of pages that lay beyond the log (a log smaller than memory).
   */
  constructor(buffer: ArrayBufferLike, byteOffset: number, size: number, onMissed?: (pages: number) => void) {
    this.bytes = new Uint8Array(buffer, byteOffset, size);
    this.pages = size * 8;
    this.onMissed = onMissed;
  }

  /** Marks every page that [gpa, gpa+len) touches. */
  mark(gpa: number, len: number): void {
    if (len <= 0) return;
    const first = Math.floor(gpa / LOG_PAGE_SIZE);
    const last = Math.floor((gpa + len - 1) / LOG_PAGE_SIZE);
    const b = this.bytes;
    for (let p = first; p <= last; p++) {
      if (p >= this.pages) {
        this.missed += last - p + 1;
        this.onMissed?.(last - p + 1);
        return;
      }
      Atomics.or(b, p >>> 3, 1 << (p & 7));
    }
  }

  /** Marks the first `len` bytes of a chain's pieces (what the device wrote into a writable chain). */
  markPieces(mem: GuestMemory, pieces: PieceList, len: number): void {
    const regions = mem.regions;
    for (let i = 0; i < pieces.count && len > 0; i++) {
      const n = Math.min(pieces.length[i]!, len);
      this.mark(regions[pieces.region[i]!]!.gpa + pieces.offset[i]!, n);
      len -= n;
    }
  }

  /** Whether the page holding `gpa` is marked. */
  isDirty(gpa: number): boolean {
    const p = Math.floor(gpa / LOG_PAGE_SIZE);
    return p < this.pages && (Atomics.load(this.bytes, p >>> 3) & (1 << (p & 7))) !== 0;
  }

  /**
   * Takes the marked pages and clears them, a byte at a time with an atomic exchange (a mark racing
   * with the collection lands either in this answer or in the next). Returns their guest physical
   * addresses, in order.
   */
  collect(): number[] {
    const out: number[] = [];
    const b = this.bytes;
    for (let i = 0; i < b.length; i++) {
      if (b[i] === 0) continue;
      const v = Atomics.exchange(b, i, 0);
      for (let bit = 0; bit < 8; bit++) if (v & (1 << bit)) out.push((i * 8 + bit) * LOG_PAGE_SIZE);
    }
    return out;
  }
}
