// vring/descriptor.ts — the defended descriptor walk: guest descriptor table → DescriptorChain.
//
// Where it sits: called by SplitQueue.pop() for every head it takes from the available ring; the packed
// ring's walker (packed-descriptor.ts) extends it and shares the buffer and indirect-table checks. This
// is where the "Descriptor walks", "Indirect descriptors" and "Buffers" items of DESIGN's untrusted-input
// checklist are enforced. Each descriptor is loaded into locals exactly once and checked there; the
// guest may rewrite the table while we walk, so nothing is ever read twice.
//
//   desc table (size entries)              indirect table (len/16 entries, §2.7.5.3)
//   ┌────┬─────┬───────┬──────┐            ┌────┬─────┬───────┬──────┐
//   │addr│ len │ flags │ next │ head ─┐    │addr│ len │ flags │ next │ 0 ─┐
//   ├────┼─────┼───────┼──────┤       │    ├────┼─────┼───────┼──────┤    │ next < entries
//   │    │     │INDIRECT (alone)│ ◀───┘──▶ │    │     │ NEXT  │  1   │ ◀──┘ no INDIRECT here
//   └────┴─────┴───────┴──────┘            └────┴─────┴───────┴──────┘
//
// Rules (virtio 1.2): head and next < size (§2.7.5); at most `size` descriptors, else it loops
// (§2.7.5: "loops in the descriptor chain are forbidden"); total length < 2^32 (§2.7.5.2); len > 0;
// no readable after writable (§2.7.5: "device-writable descriptors after device-readable ones");
// indirect only if negotiated, only on the head, never with NEXT, never nested, len a non-zero
// multiple of 16, table fully mapped (§2.7.5.3.1); every buffer fully mapped, no wrap-around.

import type { DescriptorChain } from './chain.ts';
import { DescriptorError, MemoryError, VringErrorCode } from './errors.ts';
import { IOTLB_ACCESS } from './iotlb.ts';
import { DESC_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from './layout.ts';
import { ADDR_LIMIT, PieceList, type GuestMemory } from './memory.ts';

const TWO32 = 0x1_0000_0000;
/** High halves ≥ this put an address at or above 2^53: never mapped. */
const HI_LIMIT = ADDR_LIMIT / TWO32;
const MAX_CHAIN_BYTES = 0xffff_ffff;

/** A DescriptorError about the chain at `where` ("head 7", "ring position 3"). */
export function descError(code: (typeof VringErrorCode)[keyof typeof VringErrorCode], where: string, what: string): DescriptorError {
  return new DescriptorError(code, `descriptor chain at ${where}: ${what}; the queue is marked broken`);
}

/** The error for a buffer whose 64-bit address (lo, hi) + len cannot be mapped. */
function addrError(where: string, lo: number, hi: number, len: number): MemoryError {
  const addr = '0x' + hi.toString(16) + lo.toString(16).padStart(8, '0');
  // Wraps past 2^64 only if hi is all ones and lo + len carries out.
  if (hi === 0xffff_ffff && lo + len > TWO32) {
    return new MemoryError(VringErrorCode.ADDR_WRAP, `descriptor chain at ${where}: buffer ${addr} + ${len} wraps around 2^64; the queue is marked broken`);
  }
  return new MemoryError(VringErrorCode.UNMAPPED, `descriptor chain at ${where}: buffer ${addr} (+${len}) is not in guest memory; the queue is marked broken`);
}

/**
 * Walks and validates chains of one queue. Holds the queue's descriptor-table views (set at attach)
 * and a little scratch; allocation-free per chain.
 */
export class DescriptorWalker {
  /** Descriptor table as u32: [4i] addr lo, [4i+1] addr hi, [4i+2] len, [4i+3] flags | next << 16. */
  desc: Uint32Array = new Uint32Array(0);
  size = 0;
  indirectAllowed = false;
  mem: GuestMemory | null = null;
  /** How messages name the chain's first descriptor (the packed walker says "ring position"). */
  protected label = 'head';
  private tablePieces = new PieceList(2);
  private readonly tmp = new Uint8Array(DESC_SIZE);
  private readonly tmpDv = new DataView(this.tmp.buffer);
  /** The open indirect table's bytes: entry i is at tableEntry(i). */
  protected tableDv: DataView = this.tmpDv;
  private tableBase = 0;

  /** Bind to a queue's table (called from SplitQueue.attach). */
  bind(mem: GuestMemory, desc: Uint32Array, size: number, indirectAllowed: boolean): void {
    this.mem = mem;
    this.desc = desc;
    this.size = size;
    this.indirectAllowed = indirectAllowed;
    // A range touches each region at most once (behind an IOMMU, once per page it spans): the table
    // can never outgrow this.
    this.tablePieces = new PieceList(mem.regions.length + 1, mem.regions.length + 1 + (mem.iotlb ? 4096 : 0));
  }

  /** "head 7": where messages say the chain starts. */
  protected where(head: number): string {
    return `${this.label} ${head}`;
  }

  /** Walk the chain starting at `head` (already checked < size) into `c`. Throws VringError. */
  walk(head: number, c: DescriptorChain): void {
    c.reset(head);
    const d = this.desc;
    const size = this.size;
    let idx = head;
    let ttl = size;
    for (;;) {
      if (ttl === 0) throw descError(VringErrorCode.DESC_LOOP, this.where(head), `more than ${size} descriptors: the chain loops (CVE-2019-9547 class)`);
      ttl--;
      // Copy the descriptor into locals once; only these are checked and used.
      const w = idx << 2;
      const lo = d[w]!;
      const hi = d[w + 1]!;
      const len = d[w + 2]!;
      const fn = d[w + 3]!;
      const flags = fn & 0xffff;
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (idx !== head || c.descCount !== 0) {
          throw descError(VringErrorCode.INDIRECT_NOT_HEAD, this.where(head), `descriptor ${idx} has INDIRECT but is not the head of its chain`);
        }
        this.walkIndirect(c, head, lo, hi, len, flags);
        return;
      }
      this.buffer(c, head, lo, hi, len, flags);
      if ((flags & VRING_DESC_F_NEXT) === 0) return;
      const next = fn >>> 16;
      if (next >= size) throw descError(VringErrorCode.NEXT_OUT_OF_RANGE, this.where(head), `descriptor ${idx} has next ${next} ≥ queue size ${size}`);
      idx = next;
    }
  }

  /**
   * Check one buffer descriptor and translate it into the chain's readable or writable pieces: len > 0,
   * total < 2^32, mapped without wrap-around, nothing readable after something writable. Both ring
   * formats use it (the packed walker too).
   */
  protected buffer(c: DescriptorChain, head: number, lo: number, hi: number, len: number, flags: number): void {
    if (len === 0) throw descError(VringErrorCode.ZERO_LEN, this.where(head), 'a descriptor has length 0');
    if (c.readableLen + c.writableLen + len > MAX_CHAIN_BYTES) {
      throw descError(VringErrorCode.CHAIN_TOO_LONG, this.where(head), 'buffers add up to 2^32 bytes or more');
    }
    if (hi >= HI_LIMIT) throw addrError(this.where(head), lo, hi, len);
    const addr = hi * TWO32 + lo;
    const mem = this.mem!;
    if ((flags & VRING_DESC_F_WRITE) !== 0) {
      mem.translate(addr, len, c.writable, IOTLB_ACCESS.WRITE);
      c.writableLen += len;
    } else {
      if (c.writableLen !== 0) {
        throw descError(VringErrorCode.READ_AFTER_WRITE, this.where(head), 'a device-readable descriptor follows a device-writable one');
      }
      mem.translate(addr, len, c.readable, IOTLB_ACCESS.READ);
      c.readableLen += len;
    }
    c.descCount++;
  }

  /**
   * Validate and map the indirect table that (lo, hi, len) describes: a non-zero multiple of 16 bytes,
   * every byte mapped (§2.7.5.3.1, §2.8.7). Returns its entry count; entry i is then read at byte
   * tableEntry(i) of tableDv.
   */
  protected openTable(head: number, lo: number, hi: number, len: number): number {
    if (len === 0 || (len & (DESC_SIZE - 1)) !== 0) {
      throw descError(VringErrorCode.INDIRECT_BAD_LEN, this.where(head), `indirect table length ${len} is not a non-zero multiple of 16`);
    }
    if (hi >= HI_LIMIT) throw addrError(this.where(head), lo, hi, len);
    const tp = this.tablePieces;
    tp.reset();
    this.mem!.translate(hi * TWO32 + lo, len, tp); // the whole table must be mapped
    // Common case: the table lies in one region and is read in place.
    if (tp.count === 1) {
      this.tableDv = this.mem!.regions[tp.region[0]!]!.dv;
      this.tableBase = tp.offset[0]!;
    } else {
      this.tableDv = this.tmpDv;
      this.tableBase = -1;
    }
    return len >>> 4;
  }

  /** Byte offset of entry `idx` of the open table in tableDv (copied to scratch if the table spans regions). */
  protected tableEntry(idx: number): number {
    if (this.tableBase >= 0) return this.tableBase + idx * DESC_SIZE;
    this.loadSpanning(idx * DESC_SIZE);
    return 0;
  }

  /** Follow the indirect table described by the head descriptor (lo, hi, len, flags). */
  private walkIndirect(c: DescriptorChain, head: number, lo: number, hi: number, len: number, flags: number): void {
    if (!this.indirectAllowed) {
      throw descError(VringErrorCode.INDIRECT_NOT_NEGOTIATED, this.where(head), 'INDIRECT used but VIRTIO_F_INDIRECT_DESC was not negotiated');
    }
    if ((flags & VRING_DESC_F_NEXT) !== 0) throw descError(VringErrorCode.INDIRECT_WITH_NEXT, this.where(head), 'INDIRECT and NEXT on the same descriptor');
    const entries = this.openTable(head, lo, hi, len);
    const dv = this.tableDv;
    c.indirect = true;
    let idx = 0;
    let ttl = entries;
    for (;;) {
      if (ttl === 0) throw descError(VringErrorCode.DESC_LOOP, this.where(head), `indirect table walk exceeds its ${entries} entries: it loops`);
      ttl--;
      const base = this.tableEntry(idx);
      const dlo = dv.getUint32(base, true);
      const dhi = dv.getUint32(base + 4, true);
      const dlen = dv.getUint32(base + 8, true);
      const dflags = dv.getUint16(base + 12, true);
      const dnext = dv.getUint16(base + 14, true);
      if ((dflags & VRING_DESC_F_INDIRECT) !== 0) {
        throw descError(VringErrorCode.INDIRECT_NESTED, this.where(head), `entry ${idx} of the indirect table is itself INDIRECT`);
      }
      this.buffer(c, head, dlo, dhi, dlen, dflags);
      if ((dflags & VRING_DESC_F_NEXT) === 0) return;
      if (dnext >= entries) {
        throw descError(VringErrorCode.NEXT_OUT_OF_RANGE, this.where(head), `indirect entry ${idx} has next ${dnext} ≥ table entries ${entries}`);
      }
      idx = dnext;
    }
  }

  /** Copy the 16 bytes at table offset `off` of a table that spans regions into tmp. */
  private loadSpanning(off: number): void {
    const tp = this.tablePieces;
    const regions = this.mem!.regions;
    let start = 0;
    let got = 0;
    for (let i = 0; i < tp.count && got < DESC_SIZE; i++) {
      const n = tp.length[i]!;
      const want = off + got;
      if (want < start + n) {
        const u8 = regions[tp.region[i]!]!.u8;
        let o = tp.offset[i]! + (want - start);
        const end = tp.offset[i]! + n;
        while (got < DESC_SIZE && o < end) this.tmp[got++] = u8[o++]!;
      }
      start += n;
    }
  }
}
