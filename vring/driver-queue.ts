// vring/driver-queue.ts — DriverVirtqueue: what the driver side of a virtqueue offers, split or packed.
//
// Where it sits: the harness's guest driver (harness/virtio-net.ts) drives every queue through this
// surface and need not know which ring format was negotiated (VIRTIO_F_RING_PACKED picks a packed ring,
// else split), the way device/ serves a DeviceQueue (device-queue.ts). DriverQueue (driver.ts) and
// PackedDriverQueue (packed-driver.ts) already share most of it; the two small subclasses here add what
// a caller must otherwise read from ring memory itself, and pin down where the formats differ:
//
//   handle     add() and popUsed() return a "head" (split: the first descriptor's index) or a buffer
//              "id" (packed); both are < size and name the buffer until it comes back
//   position   split: a free-running u16 index; packed: idx | wrap << 15 (packed-layout.ts)
//   init()     with no argument starts a fresh ring: split index 0, packed slot 0 with wrap 1
//   freeCount  descriptor slots free: a direct chain of n buffers takes n, an indirect one 1, in both
//   base       the vhost-user SET_VRING_BASE `num` a device starts from: split last_avail_idx, packed
//              QEMU's two-position encoding (encodePackedRingBase)
//   areas      split: desc table, avail ring, used ring; packed: descriptor ring (both sides
//              write it), driver event area, device event area — vhost-user's desc/avail/used
//
// pendingUsed() lists the completions the device has published and the driver has not taken, without
// taking them (a dirty-log audit must know which buffers the device wrote before the driver reuses
// them). For a packed ring that needs the slot count of every outstanding id, which the packed
// subclass records as add() hands ids out.

import { DriverQueue, type GuestBuffer, type UsedElement } from './driver.ts';
import {
  USED_ELEM_ID,
  USED_ELEM_LEN,
  USED_ELEM_SIZE,
  USED_IDX,
  USED_RING,
  VRING_DESC_F_WRITE,
  availAreaSize,
  descAreaSize,
  splitRingLayout,
  usedAreaSize,
} from './layout.ts';
import type { GuestMemory } from './memory.ts';
import { PackedDriverQueue, type PackedDriverQueueOptions } from './packed-driver.ts';
import {
  EVENT_AREA_SIZE,
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_LEN,
  PACKED_DESC_SIZE,
  PACKED_POS_START,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  encodePackedRingBase,
  packedDescAreaSize,
  packedPosIdx,
  packedPosWrap,
  packedRingLayout,
} from './packed-layout.ts';

/** Which ring layout a queue uses: split (virtio 1.2 §2.7) or packed (§2.8, VIRTIO_F_RING_PACKED). */
export type RingFormat = 'split' | 'packed';

/** One area of a ring in guest memory, and who writes it. */
export interface RingArea {
  gpa: number;
  len: number;
  /** 'desc table', 'avail ring', 'used ring' (split); 'descriptor ring', 'driver event area', 'device event area' (packed). */
  what: string;
  /** The packed descriptor ring is written by both sides: the driver's descriptors, the device's used ones. */
  writer: 'driver' | 'device' | 'both';
}

/** A completion the device published and the driver has not taken (see DriverVirtqueue.pendingUsed). */
export interface PendingCompletion {
  /** Where it is: the used ring position (split, free-running u16) or descriptor ring position (packed, idx | wrap << 15). */
  pos: number;
  /** The head or buffer id the device returned, as written: it may be one the driver does not hold. */
  id: number;
  /** Bytes the device says it wrote (packed: 0 when it did not set WRITE). */
  len: number;
}

/** Where a ring goes: the three addresses a device is given (packed: avail = driver area, used = device area). */
export interface DriverRingAddresses {
  desc: number;
  avail: number;
  used: number;
}

/** Configuration of a driver-side queue of either format. */
export interface DriverVirtqueueOptions extends DriverRingAddresses {
  format: RingFormat;
  size: number;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /**
   * Added to every address written into a descriptor, buffers and indirect tables (default 0): behind
   * an IOMMU the device sees I/O virtual addresses gpa + dmaOffset; the driver still uses the gpa.
   */
  dmaOffset?: number;
}

/** The driver side of one virtqueue: what createDriverQueue() returns, for either ring format. */
export interface DriverVirtqueue {
  readonly format: RingFormat;
  readonly mem: GuestMemory;
  readonly size: number;
  readonly eventIdx: boolean;
  /** What add() adds to every address it writes into a descriptor (0 without an IOMMU). */
  readonly dmaOffset: number;
  /** Length of the completion returned by the last successful popUsed(). */
  lastUsedLen: number;
  /** Free descriptor slots: a direct chain of n buffers needs n, an indirect one 1. */
  readonly freeCount: number;
  /** Buffers added (published or not) and not yet returned. */
  readonly inFlight: number;
  /** Position after the last buffer published (split: avail.idx; packed: idx | wrap << 15). */
  readonly availIdx: number;
  /** Position of the next completion the driver will take, in the same form. */
  readonly usedCursor: number;
  /** The vhost-user ring base (SET_VRING_BASE `num`) from which a device serves this ring as init() laid it out. */
  readonly initBase: number;
  /**
   * Zero the ring and forget every buffer. `start` is a position (split: u16 index, default 0; packed:
   * idx | wrap << 15, default slot 0 wrap 1) at which both sides begin, to exercise wrap-around.
   */
  init(start?: number): void;
  /**
   * Add a buffer: `readable` then `writable` elements, direct or through an indirect table at
   * `opts.indirectAt`. Returns its head / id (< size), or -1 when it does not fit now. It reaches the
   * device at the next publish().
   */
  add(readable: readonly GuestBuffer[], writable: readonly GuestBuffer[], opts?: { indirectAt?: number }): number;
  /** Make everything added since the last publish() visible to the device. */
  publish(): void;
  /** Should the driver kick for what publish() made visible (event suppression decides)? */
  needsKick(): boolean;
  /** Take one completion: its head / id, with lastUsedLen set, or -1. Throws RingStateError on a bad one. */
  popUsed(): number;
  /** Take one completion, or null. */
  getUsed(): UsedElement | null;
  /** Turn used-buffer notifications (interrupts) on or off. */
  setInterrupts(on: boolean): void;
  /** Is this head / id added and not yet returned? */
  isOutstanding(id: number): boolean;
  /**
   * The completions the device has published and the driver has not taken yet, in the order popUsed()
   * will take them, at most `max` (default size), taking none. Ids are listed as written; a packed ring
   * stops at one the driver does not hold (listed last): where the next used slot is cannot be known
   * past it.
   */
  pendingUsed(max?: number): PendingCompletion[];
  /** The ring's areas in guest memory and who writes each. */
  areas(): RingArea[];
}

/** Bytes a ring of `format` and `size` needs from a 16-aligned base (split: with the legacy 4096 used-ring alignment). */
export function driverRingSpan(format: RingFormat, size: number): number {
  return format === 'packed' ? packedRingLayout(size, 0).end : splitRingLayout(size, 0).end;
}

/** The addresses of a ring of `format` laid out compactly at `base` (16-aligned; split: used ring 4096-aligned). */
export function driverRingLayout(format: RingFormat, size: number, base: number): DriverRingAddresses & { end: number } {
  if (format === 'packed') {
    const l = packedRingLayout(size, base);
    return { desc: l.desc, avail: l.driver, used: l.device, end: l.end };
  }
  const l = splitRingLayout(size, base);
  return { desc: l.desc, avail: l.avail, used: l.used, end: l.end };
}

/** The driver side of a ring of either format over `mem`; validates the layout. Call init() before use. */
export function createDriverQueue(mem: GuestMemory, opts: DriverVirtqueueOptions): DriverVirtqueue {
  const base = { size: opts.size, desc: opts.desc, eventIdx: opts.eventIdx ?? false, dmaOffset: opts.dmaOffset ?? 0 };
  return opts.format === 'packed'
    ? new PackedDriverVirtqueue(mem, { ...base, driver: opts.avail, device: opts.used })
    : new SplitDriverVirtqueue(mem, { ...base, avail: opts.avail, used: opts.used });
}

/** DriverQueue as a DriverVirtqueue. */
class SplitDriverVirtqueue extends DriverQueue implements DriverVirtqueue {
  readonly format = 'split';
  private start = 0;

  override init(startIdx: number = 0): void {
    super.init(startIdx);
    this.start = startIdx & 0xffff;
  }

  get initBase(): number {
    return this.start;
  }

  pendingUsed(max: number = this.size): PendingCompletion[] {
    const mem = this.mem;
    const cursor = this.usedCursor;
    // Never more than a ring's worth, whatever a hostile used.idx says.
    const n = Math.min((mem.readU16(this.used + USED_IDX) - cursor) & 0xffff, this.size, max);
    const out: PendingCompletion[] = [];
    for (let k = 0; k < n; k++) {
      const pos = (cursor + k) & 0xffff;
      const at = this.used + USED_RING + USED_ELEM_SIZE * (pos & (this.size - 1));
      const id = mem.readU32(at + USED_ELEM_ID);
      out.push({ pos, id, len: mem.readU32(at + USED_ELEM_LEN) });
    }
    return out;
  }

  areas(): RingArea[] {
    return [
      { gpa: this.desc, len: descAreaSize(this.size), what: 'desc table', writer: 'driver' },
      { gpa: this.avail, len: availAreaSize(this.size), what: 'avail ring', writer: 'driver' },
      { gpa: this.used, len: usedAreaSize(this.size), what: 'used ring', writer: 'device' },
    ];
  }
}

/** PackedDriverQueue as a DriverVirtqueue; it records each id's slot count for pendingUsed(). */
class PackedDriverVirtqueue extends PackedDriverQueue implements DriverVirtqueue {
  readonly format = 'packed';
  private start = PACKED_POS_START;
  private readonly slotsOf: Uint16Array;

  constructor(mem: GuestMemory, opts: PackedDriverQueueOptions) {
    super(mem, opts);
    this.slotsOf = new Uint16Array(opts.size);
  }

  override init(start?: number): void {
    super.init(start);
    this.start = start ?? PACKED_POS_START;
  }

  get initBase(): number {
    // The device pops and writes used descriptors from where init() put both sides.
    const idx = packedPosIdx(this.start);
    const wrap = packedPosWrap(this.start);
    return encodePackedRingBase({ lastAvailIdx: idx, availWrap: wrap, lastUsedIdx: idx, usedWrap: wrap });
  }

  override add(readable: readonly GuestBuffer[], writable: readonly GuestBuffer[], opts?: { indirectAt?: number }): number {
    const id = super.add(readable, writable, opts);
    if (id >= 0) this.slotsOf[id] = opts?.indirectAt !== undefined ? 1 : readable.length + writable.length;
    return id;
  }

  pendingUsed(max: number = this.size): PendingCompletion[] {
    const size = this.size;
    const mem = this.mem;
    let idx = this.usedCursor & 0x7fff;
    let wrap = this.usedCursor >>> 15;
    const out: PendingCompletion[] = [];
    // Each used descriptor stands for a whole chain: the next one is that chain's slot count further on.
    for (let seen = 0; out.length < Math.min(max, size) && seen < size; ) {
      const at = this.desc + idx * PACKED_DESC_SIZE;
      const flags = mem.readU16(at + PACKED_DESC_FLAGS);
      const used = wrap ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0;
      if ((flags & (VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED)) !== used) break;
      const id = mem.readU16(at + PACKED_DESC_ID);
      out.push({ pos: idx | (wrap << 15), id, len: (flags & VRING_DESC_F_WRITE) !== 0 ? mem.readU32(at + PACKED_DESC_LEN) : 0 });
      if (!this.isOutstanding(id)) break;
      const step = this.slotsOf[id]!;
      seen += step;
      idx += step;
      if (idx >= size) {
        idx -= size;
        wrap ^= 1;
      }
    }
    return out;
  }

  areas(): RingArea[] {
    return [
      { gpa: this.desc, len: packedDescAreaSize(this.size), what: 'descriptor ring', writer: 'both' },
      { gpa: this.driver, len: EVENT_AREA_SIZE, what: 'driver event area', writer: 'driver' },
      { gpa: this.device, len: EVENT_AREA_SIZE, what: 'device event area', writer: 'device' },
    ];
  }
}
