// vring/driver.ts — DriverQueue: the driver ("guest") side of a split virtqueue.
//
// Where it sits: the public test harness (like QEMU's libqos / vm-virtio's MockSplitQueue) and, later,
// the vhost-user frontend that drives lgnet or another backend. It plays the guest: lays out and
// zeroes the rings, fills descriptors (direct or indirect), makes heads available, decides when to
// kick, and takes completions back from the used ring.
//
//   add() ─▶ desc table + avail.ring[shadow & mask] ─ publish() ─▶ avail.idx (Atomics.store)
//                                                                        │ device pops, completes
//   getUsed() ◀─ used.ring[lastUsed & mask] ◀──── used.idx (Atomics.load) ◀┘
//
// The driver keeps its own free list and chain shapes in private arrays: it never trusts what the
// device might have scribbled over the descriptor table, and validates what comes back in the used
// ring (a device is untrusted too when the harness tests a foreign backend).
//
// Spec: virtio 1.2 §2.7.13 (supplying buffers), §2.7.14 (receiving used buffers), §2.7.7 / §2.7.10
// (notification suppression, EVENT_IDX).

import { RingStateError, VringErrorCode } from './errors.ts';
import {
  AVAIL_RING,
  DESC_SIZE,
  USED_RING,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_USED_F_NO_NOTIFY,
  availAreaSize,
  descAreaSize,
  usedAreaSize,
} from './layout.ts';
import type { GuestMemory } from './memory.ts';
import { mapRing, needEvent } from './queue.ts';

const TWO32 = 0x1_0000_0000;

/** A guest buffer: guest physical address and length. */
export interface GuestBuffer {
  addr: number;
  len: number;
}

/** Configuration of a driver-side queue. */
export interface DriverQueueOptions {
  size: number;
  desc: number;
  avail: number;
  used: number;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /**
   * Added to every address written into a descriptor (buffers and indirect tables), default 0: behind
   * an IOMMU (VIRTIO_F_ACCESS_PLATFORM) the device is given I/O virtual addresses, here gpa + dmaOffset,
   * while the driver itself still reads and writes the bytes at the guest physical address.
   */
  dmaOffset?: number;
}

/** Checks a dmaOffset option: a non-negative integer below 2^53. */
export function checkDmaOffset(off: number): number {
  if (!Number.isSafeInteger(off) || off < 0) throw new RangeError(`dmaOffset ${off}: not an integer in [0, 2^53)`);
  return off;
}

/** A completion taken from the used ring. */
export interface UsedElement {
  head: number;
  len: number;
}

/** Driver side of a split virtqueue over `mem`. */
export class DriverQueue {
  readonly mem: GuestMemory;
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  readonly eventIdx: boolean;
  /** What add() adds to every address it writes into a descriptor (the IOVA = gpa + dmaOffset); 0 without an IOMMU. */
  readonly dmaOffset: number;
  /** Length of the element returned by the last successful popUsed(). */
  lastUsedLen = 0;

  private readonly mask: number;
  /** Descriptor table as u32: [4i] addr lo, [4i+1] addr hi, [4i+2] len, [4i+3] flags | next << 16. */
  private readonly descU32: Uint32Array;
  private readonly availU16: Uint16Array;
  private readonly usedU16: Uint16Array;
  private readonly usedElems: Uint32Array;
  private readonly usedEventIdx: number;
  private readonly availEventIdx: number;

  private freeStack: Uint16Array;
  private freeTop = 0;
  /** Private copy of each descriptor's next, and of each head's chain length (0: not in flight). */
  private nextOf: Uint16Array;
  private chainLen: Uint16Array;
  private availShadow = 0;
  private publishedAvail = 0;
  private kickedAvail = 0;
  private lastUsed = 0;
  private interrupts = true;

  /** Validates the layout (same rules as the device) and maps the rings; call init() to zero them. */
  constructor(mem: GuestMemory, opts: DriverQueueOptions) {
    const locs = mapRing(mem, opts.size, opts.desc, opts.avail, opts.used);
    this.mem = mem;
    this.size = opts.size;
    this.desc = opts.desc;
    this.avail = opts.avail;
    this.used = opts.used;
    this.eventIdx = opts.eventIdx ?? false;
    this.dmaOffset = checkDmaOffset(opts.dmaOffset ?? 0);
    const size = this.size;
    this.mask = size - 1;
    this.descU32 = new Uint32Array(locs.desc.buffer, locs.desc.byteOffset, 4 * size);
    this.availU16 = new Uint16Array(locs.avail.buffer, locs.avail.byteOffset, availAreaSize(size) / 2);
    this.usedU16 = new Uint16Array(locs.used.buffer, locs.used.byteOffset, usedAreaSize(size) / 2);
    this.usedElems = new Uint32Array(locs.used.buffer, locs.used.byteOffset + USED_RING, 2 * size);
    this.usedEventIdx = (AVAIL_RING >> 1) + size;
    this.availEventIdx = (USED_RING + 8 * size) >> 1;
    this.freeStack = new Uint16Array(size);
    this.nextOf = new Uint16Array(size);
    this.chainLen = new Uint16Array(size);
    this.resetState(0);
  }

  private resetState(idx: number): void {
    this.freeTop = 0;
    for (let i = this.size - 1; i >= 0; i--) this.freeStack[this.freeTop++] = i;
    this.chainLen.fill(0);
    this.availShadow = this.publishedAvail = this.kickedAvail = this.lastUsed = idx;
    this.interrupts = true;
  }

  /**
   * Zero the three ring areas and forget all buffers. `startIdx` (default 0) sets every ring index to
   * that value, to exercise u16 wrap-around; pair it with SplitQueue.setBase(startIdx).
   */
  init(startIdx: number = 0): void {
    this.mem.fill(this.desc, descAreaSize(this.size), 0);
    this.mem.fill(this.avail, availAreaSize(this.size), 0);
    this.mem.fill(this.used, usedAreaSize(this.size), 0);
    const i = startIdx & 0xffff;
    this.availU16[1] = i;
    this.usedU16[1] = i;
    if (this.eventIdx) {
      this.availU16[this.usedEventIdx] = i;
      this.usedU16[this.availEventIdx] = i;
    }
    this.resetState(i);
  }

  /** Free descriptors in the table. */
  get freeCount(): number {
    return this.freeTop;
  }

  /** Heads made available (published or not) and not yet returned through the used ring. */
  get inFlight(): number {
    let n = 0;
    for (let i = 0; i < this.size; i++) if (this.chainLen[i] !== 0) n++;
    return n;
  }

  /** avail.idx as last published. */
  get availIdx(): number {
    return this.publishedAvail;
  }

  /** Index of the next used-ring entry the driver will consume. */
  get usedCursor(): number {
    return this.lastUsed;
  }

  /** Is `head` made available and not yet returned? */
  isOutstanding(head: number): boolean {
    return head >= 0 && head < this.size && this.chainLen[head] !== 0;
  }

  private writeDesc(i: number, addr: number, len: number, flags: number, next: number): void {
    const w = i << 2;
    const lo = addr >>> 0;
    this.descU32[w] = lo;
    this.descU32[w + 1] = (addr - lo) / TWO32;
    this.descU32[w + 2] = len;
    this.descU32[w + 3] = (flags & 0xffff) | (next << 16);
  }

  /**
   * Add a chain: `readable` buffers (device reads) then `writable` ones (device writes). Direct, or
   * through an indirect table written at guest address `opts.indirectAt` (16 bytes per buffer).
   * Returns the head, or -1 when there are not enough free descriptors. The head is made available
   * to the device only at the next publish(). Lengths and addresses are written as given (u32 / < 2^53),
   * plus dmaOffset: the harness can build invalid chains on purpose.
   */
  add(readable: readonly GuestBuffer[], writable: readonly GuestBuffer[], opts?: { indirectAt?: number }): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('add: a chain needs at least one buffer');
    const off = this.dmaOffset;
    for (let i = 0; i < n; i++) {
      const b = i < readable.length ? readable[i]! : writable[i - readable.length]!;
      if (!Number.isSafeInteger(b.addr + off) || b.addr < 0 || (b.len >>> 0) !== b.len) throw new RangeError(`add: bad buffer ${b.addr}/${b.len}`);
    }
    let head: number;
    if (opts?.indirectAt !== undefined) {
      if (this.freeTop < 1) return -1;
      const table = opts.indirectAt;
      if (off !== 0 && !Number.isSafeInteger(table + off)) throw new RangeError(`add: bad indirect table address ${table}`);
      const bytes = new Uint8Array(n * DESC_SIZE);
      const dv = new DataView(bytes.buffer);
      for (let i = 0; i < n; i++) {
        const b = i < readable.length ? readable[i]! : writable[i - readable.length]!;
        const flags = (i >= readable.length ? VRING_DESC_F_WRITE : 0) | (i < n - 1 ? VRING_DESC_F_NEXT : 0);
        const o = i * DESC_SIZE;
        const a = b.addr + off;
        dv.setUint32(o, a >>> 0, true);
        dv.setUint32(o + 4, Math.floor(a / TWO32), true);
        dv.setUint32(o + 8, b.len, true);
        dv.setUint16(o + 12, flags, true);
        dv.setUint16(o + 14, i < n - 1 ? i + 1 : 0, true);
      }
      this.mem.write(table, bytes);
      head = this.freeStack[--this.freeTop]!;
      this.writeDesc(head, table + off, n * DESC_SIZE, VRING_DESC_F_INDIRECT, 0);
      this.chainLen[head] = 1;
    } else {
      if (this.freeTop < n) return -1;
      head = this.freeStack[this.freeTop - 1]!;
      let prev = -1;
      for (let i = 0; i < n; i++) {
        const d = this.freeStack[--this.freeTop]!;
        if (prev >= 0) {
          this.nextOf[prev] = d;
          this.descU32[(prev << 2) + 3] = this.descU32[(prev << 2) + 3]! | VRING_DESC_F_NEXT | (d << 16);
        }
        const b = i < readable.length ? readable[i]! : writable[i - readable.length]!;
        this.writeDesc(d, b.addr + off, b.len, i >= readable.length ? VRING_DESC_F_WRITE : 0, 0);
        prev = d;
      }
      this.chainLen[head] = n;
    }
    this.availU16[2 + (this.availShadow & this.mask)] = head;
    this.availShadow = (this.availShadow + 1) & 0xffff;
    return head;
  }

  /** Make everything added since the last publish() visible: one avail.idx store (Atomics, release). */
  publish(): void {
    Atomics.store(this.availU16, 1, this.availShadow);
    this.publishedAvail = this.availShadow;
  }

  /**
   * Should the driver kick (notify) the device for what publish() made available? With EVENT_IDX:
   * vring_need_event(avail_event, published, published at the previous call); without: something was
   * published since the previous call and used.flags lacks NO_NOTIFY. Moves the "previous" cursor.
   */
  needsKick(): boolean {
    const now = this.publishedAvail;
    const old = this.kickedAvail;
    this.kickedAvail = now;
    // Atomics.load after publish()'s Atomics.store: the barrier §2.7.13.4 asks for.
    if (this.eventIdx) return needEvent(Atomics.load(this.usedU16, this.availEventIdx), now, old);
    return now !== old && (Atomics.load(this.usedU16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /**
   * Take one completion from the used ring: returns its head (its descriptors are free again) and sets
   * lastUsedLen, or returns -1 when there is none. Allocation-free. Throws RingStateError if the device
   * moved used.idx too far or returned a head the driver does not have outstanding.
   */
  popUsed(): number {
    const idx = Atomics.load(this.usedU16, 1);
    if (idx === this.lastUsed) return -1;
    if (((idx - this.lastUsed) & 0xffff) > this.size) {
      throw new RingStateError(VringErrorCode.USED_IDX_JUMP, `used.idx ${idx} is more than the queue size ahead of ${this.lastUsed}`);
    }
    const e = (this.lastUsed & this.mask) << 1;
    const head = this.usedElems[e]!;
    const len = this.usedElems[e + 1]!;
    if (head >= this.size || this.chainLen[head] === 0) {
      throw new RingStateError(VringErrorCode.USED_BAD_ID, `used ring returned head ${head}, which the driver does not have outstanding`);
    }
    let d = head;
    for (let k = this.chainLen[head]!; k > 0; k--) {
      this.freeStack[this.freeTop++] = d;
      d = this.nextOf[d]!;
    }
    this.chainLen[head] = 0;
    this.lastUsed = (this.lastUsed + 1) & 0xffff;
    this.lastUsedLen = len;
    // Like Linux virtqueue_get_buf: ask for an interrupt at the next entry while interrupts are on.
    if (this.eventIdx && this.interrupts) Atomics.store(this.availU16, this.usedEventIdx, this.lastUsed);
    return head;
  }

  /** Take one completion, or null. See popUsed() for the allocation-free variant. */
  getUsed(): UsedElement | null {
    const head = this.popUsed();
    return head < 0 ? null : { head, len: this.lastUsedLen };
  }

  /**
   * Turn used-buffer notifications on or off. Without EVENT_IDX: avail.flags NO_INTERRUPT. With it:
   * used_event = next entry (on), or one behind the consumed index so need_event stays false for a
   * full wrap (off).
   */
  setInterrupts(on: boolean): void {
    this.interrupts = on;
    if (this.eventIdx) {
      Atomics.store(this.availU16, this.usedEventIdx, on ? this.lastUsed : (this.lastUsed - 1) & 0xffff);
    } else {
      Atomics.store(this.availU16, 0, on ? 0 : VRING_AVAIL_F_NO_INTERRUPT);
    }
  }
}
