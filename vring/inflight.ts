// vring/inflight.ts — InflightLog: the vhost-user inflight record of one split virtqueue.
//
// Where it sits: a SplitQueue with a log records, in a region shared with the front-end (vhost-user
// GET/SET_INFLIGHT_FD, protocol feature INFLIGHT_SHMFD), which chains it has popped and not completed.
// The region outlives the back-end process: after a crash and reconnect, a new back-end reads it and
// takes those chains up again (resubmits them) instead of trusting the front-end's SET_VRING_BASE.
//
// Layout of one queue's region (QueueRegionSplit, little-endian), 16 + 16·size bytes:
//
//   0  features u64        8  version u16 (1)   10  desc_num u16 (queue size)
//   12 last_batch_head u16 14 used_idx u16      16  desc[size]:
//        0 inflight u8 (1 = popped, not completed)   1 padding[5]   6 next u16   8 counter u64
//
// A chain's entry is indexed by its head. `counter` orders pops, so resubmission happens in the order
// the chains were first taken. Completions go in two phases around the used.idx store: before it, the
// batch is linked through `next` from `last_batch_head`; after it, each entry is cleared and used_idx
// follows used.idx. A crash between the two leaves used_idx behind used.idx, and recovery clears the
// linked batch then. The front-end is trusted more than the guest, but the region is still shared
// memory: every index read from it is bounds-checked and every walk is bounded.

import { isQueueSize } from './layout.ts';

/** Byte offsets in a queue's inflight region. */
export const INFLIGHT = {
  FEATURES: 0,
  VERSION: 8,
  DESC_NUM: 10,
  LAST_BATCH_HEAD: 12,
  USED_IDX: 14,
  /** First DescStateSplit. */
  DESC: 16,
  /** Bytes per DescStateSplit. */
  DESC_SIZE: 16,
  /** Offsets inside a DescStateSplit. */
  D_INFLIGHT: 0,
  D_NEXT: 6,
  D_COUNTER: 8,
  /** The only layout version there is. */
  VERSION_1: 1,
} as const;

/** Bytes one split queue's inflight region takes (16-byte header + 16 per descriptor, 64-aligned). */
export function inflightQueueRegionSize(queueSize: number): number {
  return Math.ceil((INFLIGHT.DESC + INFLIGHT.DESC_SIZE * queueSize) / 64) * 64;
}

/** What recover() found. */
export interface InflightRecovery {
  /** Heads popped and not completed before the crash, in the order they were first popped. */
  heads: number[];
  /** Entries of a half-committed last batch that were cleared (used_idx lagged used.idx). */
  clearedBatch: number;
  /** True when the region was fresh (version 0) or described another queue size: it was initialised. */
  initialised: boolean;
}

/** The inflight record of one split queue over its region of the shared buffer. */
export class InflightLog {
  readonly size: number;
  private readonly u8: Uint8Array;
  private readonly u16: Uint16Array;
  private readonly u32: Uint32Array;
  /** Next counter value (2^53 pops are never reached). */
  private counter = 1;

  /**
   * `region` is this queue's part of the buffer: at least inflightQueueRegionSize(size) bytes, 8-byte
   * aligned (the front-end's mmap is page aligned and queue regions are 64-byte multiples).
   */
  constructor(region: Uint8Array, size: number) {
    if (!isQueueSize(size)) {
      throw new RangeError(`inflight queue size ${size} must be a power of 2 in [1, 32768]`);
    }
    if (region.byteLength < inflightQueueRegionSize(size)) {
      throw new RangeError(`inflight region of ${region.byteLength} bytes is smaller than the ${inflightQueueRegionSize(size)} a ${size}-entry queue needs`);
    }
    if (region.byteOffset % 8 !== 0) throw new RangeError('inflight region must be 8-byte aligned');
    this.size = size;
    const len = inflightQueueRegionSize(size);
    this.u8 = new Uint8Array(region.buffer, region.byteOffset, len);
    this.u16 = new Uint16Array(region.buffer, region.byteOffset, len >> 1);
    this.u32 = new Uint32Array(region.buffer, region.byteOffset, len >> 2);
  }

  private desc(head: number): number {
    return INFLIGHT.DESC + head * INFLIGHT.DESC_SIZE;
  }

  get version(): number {
    return this.u16[INFLIGHT.VERSION >> 1]!;
  }

  get usedIdx(): number {
    return this.u16[INFLIGHT.USED_IDX >> 1]!;
  }

  get lastBatchHead(): number {
    return this.u16[INFLIGHT.LAST_BATCH_HEAD >> 1]!;
  }

  /** Is the chain at `head` recorded as popped and not completed? */
  isInflight(head: number): boolean {
    return head >= 0 && head < this.size && this.u8[this.desc(head) + INFLIGHT.D_INFLIGHT] === 1;
  }

  /** The pop order recorded for `head`. */
  counterOf(head: number): number {
    const w = (this.desc(head) + INFLIGHT.D_COUNTER) >> 2;
    return this.u32[w]! + this.u32[w + 1]! * 2 ** 32;
  }

  /** Empties the record for a queue that starts fresh at used index `usedIdx`. */
  init(usedIdx: number): void {
    this.u8.fill(0);
    this.u16[INFLIGHT.VERSION >> 1] = INFLIGHT.VERSION_1;
    this.u16[INFLIGHT.DESC_NUM >> 1] = this.size;
    this.u16[INFLIGHT.USED_IDX >> 1] = usedIdx & 0xffff;
    this.counter = 1;
  }

  /** A chain was popped: record it, with the next counter value. */
  begin(head: number): void {
    const d = this.desc(head);
    const w = (d + INFLIGHT.D_COUNTER) >> 2;
    const c = this.counter++;
    this.u32[w] = c >>> 0;
    this.u32[w + 1] = Math.floor(c / 2 ** 32);
    this.u8[d + INFLIGHT.D_INFLIGHT] = 1;
  }

  /** A popped chain was given back (rewind): it is no longer taken. */
  cancel(head: number): void {
    this.u8[this.desc(head) + INFLIGHT.D_INFLIGHT] = 0;
  }

  /** Before used.idx is published: link the batch heads[0..n) from last_batch_head. */
  prepareBatch(heads: Uint16Array, n: number): void {
    if (n === 0) return;
    for (let i = 0; i + 1 < n; i++) this.u16[(this.desc(heads[i]!) + INFLIGHT.D_NEXT) >> 1] = heads[i + 1]!;
    this.u16[INFLIGHT.LAST_BATCH_HEAD >> 1] = heads[0]!;
  }

  /** After used.idx is published as `usedIdx`: the batch is complete. */
  commitBatch(heads: Uint16Array, n: number, usedIdx: number): void {
    for (let i = 0; i < n; i++) this.u8[this.desc(heads[i]!) + INFLIGHT.D_INFLIGHT] = 0;
    this.u16[INFLIGHT.USED_IDX >> 1] = usedIdx & 0xffff;
  }

  /**
   * After a reconnect: reconcile the record with the used ring's index `ringUsedIdx`, and return the
   * chains to take up again in their original order. A region that is fresh or was laid out for
   * another queue size is initialised instead (nothing to resubmit). Continues the counter after the
   * highest one found.
   */
  recover(ringUsedIdx: number): InflightRecovery {
    ringUsedIdx &= 0xffff;
    if (this.version !== INFLIGHT.VERSION_1 || this.u16[INFLIGHT.DESC_NUM >> 1] !== this.size) {
      this.init(ringUsedIdx);
      return { heads: [], clearedBatch: 0, initialised: true };
    }
    let cleared = 0;
    const lag = (ringUsedIdx - this.usedIdx) & 0xffff;
    if (lag !== 0) {
      // The last batch reached the used ring but its entries were not cleared: walk it (bounded).
      let h = this.lastBatchHead;
      for (let i = 0; i < lag && i < this.size && h < this.size; i++) {
        if (this.isInflight(h)) cleared++;
        this.cancel(h);
        h = this.u16[(this.desc(h) + INFLIGHT.D_NEXT) >> 1]!;
      }
      this.u16[INFLIGHT.USED_IDX >> 1] = ringUsedIdx;
    }
    const heads: number[] = [];
    let top = 0;
    for (let h = 0; h < this.size; h++) {
      const flag = this.u8[this.desc(h) + INFLIGHT.D_INFLIGHT]!;
      if (flag === 0) continue;
      if (flag !== 1) {
        this.cancel(h); // not a value a back-end writes: treat as not taken
        continue;
      }
      heads.push(h);
      top = Math.max(top, this.counterOf(h));
    }
    heads.sort((a, b) => this.counterOf(a) - this.counterOf(b));
    this.counter = top + 1;
    return { heads, clearedBatch: cleared, initialised: false };
  }
}
