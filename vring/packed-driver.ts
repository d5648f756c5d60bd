// vring/packed-driver.ts — PackedDriverQueue: the driver ("guest") side of a packed virtqueue.
//
// Where it sits: beside DriverQueue (driver.ts), with the same surface, for the harness and the
// vhost-user frontend when VIRTIO_F_RING_PACKED is negotiated. It plays the guest: zeroes the ring,
// writes descriptors (direct or through an indirect table) under its wrap counter, hands them over,
// decides when to kick, and takes used descriptors back in whatever order the device completes them.
//
//   add() ─▶ slots nextAvail… (tail flags now, head flags held) ─ publish() ─▶ head flags (Atomics.store)
//                                                                                   │ device pops, completes
//   popUsed() ◀─ slot nextUsed: AVAIL = USED = wrap? ─ id ─▶ skip the slots that id took ◀┘
//
// The driver keeps each buffer id's slot count (§2.8.6: "the driver needs to keep track of the size of
// the list corresponding to each buffer ID") and its free ids privately; it validates every used
// descriptor (a device is untrusted too when the harness tests a foreign backend).
//
// Spec: virtio 1.2 §2.8.21 (supplying buffers), §2.8.22 (receiving used buffers), §2.8.10 / §2.8.14
// (event suppression).

import { RingStateError, VringErrorCode } from './errors.ts';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from './layout.ts';
import type { GuestMemory } from './memory.ts';
import { checkDmaOffset, type GuestBuffer, type UsedElement } from './driver.ts';
import { mapPackedRing, packedNeedEvent } from './packed.ts';
import {
  EVENT_AREA_SIZE,
  EVENT_FLAGS,
  EVENT_OFF_WRAP,
  PACKED_DESC_ADDR,
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_LEN,
  PACKED_DESC_SIZE,
  PACKED_POS_START,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAGS_MASK,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  packedDescAreaSize,
} from './packed-layout.ts';

const TWO32 = 0x1_0000_0000;
const DESC_U16 = PACKED_DESC_SIZE / 2;
const DESC_U32 = PACKED_DESC_SIZE / 4;
const ADDR_U32 = PACKED_DESC_ADDR / 4;
const LEN_U32 = PACKED_DESC_LEN / 4;
const ID_U16 = PACKED_DESC_ID / 2;
const FLAGS_U16 = PACKED_DESC_FLAGS / 2;
const OFF_WRAP_SHIFT = EVENT_OFF_WRAP * 8;
const EVENT_FLAGS_SHIFT = EVENT_FLAGS * 8;

/** Buffer id states. */
const FREE = 0;
const ADDED = 1;
const PUBLISHED = 2;

/** Configuration of a driver-side packed queue. */
export interface PackedDriverQueueOptions {
  size: number;
  desc: number;
  /** Driver event suppression structure (this side writes it). */
  driver: number;
  /** Device event suppression structure (this side reads it). */
  device: number;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /** Added to every address written into a descriptor (buffers, indirect tables): the IOVA behind an IOMMU. Default 0. */
  dmaOffset?: number;
}

/** Driver side of a packed virtqueue over `mem`. */
export class PackedDriverQueue {
  readonly mem: GuestMemory;
  readonly size: number;
  readonly desc: number;
  readonly driver: number;
  readonly device: number;
  readonly eventIdx: boolean;
  /** What add() adds to every address it writes into a descriptor (the IOVA = gpa + dmaOffset); 0 without an IOMMU. */
  readonly dmaOffset: number;
  /** Length of the buffer returned by the last successful popUsed() (0 when the device wrote nothing). */
  lastUsedLen = 0;

  private readonly mod: number;
  private readonly descU32: Uint32Array;
  private readonly descU16: Uint16Array;
  private readonly driverEvent: Uint32Array;
  private readonly deviceEvent: Uint32Array;

  private freeIds: Uint16Array;
  private freeTop = 0;
  /** Per buffer id: FREE, ADDED (not yet published) or PUBLISHED; and the ring slots it took. */
  private idState: Uint8Array;
  private idSlots: Uint16Array;
  /** Free ring slots: size minus the slots of every outstanding id. */
  private freeSlots = 0;
  /** Linear positions (slot + (wrap ? 0 : size)): next slot to write, and next used slot to read. */
  private nextAvail = 0;
  private nextUsed = 0;
  /** nextAvail at the last publish(). */
  private publishedAvail = 0;
  /** Slots published since the last needsKick(), and slots added since the last publish(). */
  private movedSinceKick = 0;
  private unpublishedSlots = 0;
  /** Heads added since the last publish(): their slots, flags and ids, in add order. */
  private pendingSlot: Uint16Array;
  private pendingFlags: Uint16Array;
  private pendingId: Uint16Array;
  private pendingLen = 0;
  private interrupts = true;
  private driverOffWrap = PACKED_POS_START;

  /** Validates the layout (same rules as the device) and maps the ring; call init() to zero it. */
  constructor(mem: GuestMemory, opts: PackedDriverQueueOptions) {
    const locs = mapPackedRing(mem, opts.size, opts.desc, opts.driver, opts.device);
    this.mem = mem;
    this.size = opts.size;
    this.desc = opts.desc;
    this.driver = opts.driver;
    this.device = opts.device;
    this.eventIdx = opts.eventIdx ?? false;
    this.dmaOffset = checkDmaOffset(opts.dmaOffset ?? 0);
    const size = this.size;
    this.mod = 2 * size;
    this.descU32 = new Uint32Array(locs.desc.buffer, locs.desc.byteOffset, DESC_U32 * size);
    this.descU16 = new Uint16Array(locs.desc.buffer, locs.desc.byteOffset, DESC_U16 * size);
    this.driverEvent = new Uint32Array(locs.driver.buffer, locs.driver.byteOffset, 1);
    this.deviceEvent = new Uint32Array(locs.device.buffer, locs.device.byteOffset, 1);
    this.freeIds = new Uint16Array(size);
    this.idState = new Uint8Array(size);
    this.idSlots = new Uint16Array(size);
    this.pendingSlot = new Uint16Array(size);
    this.pendingFlags = new Uint16Array(size);
    this.pendingId = new Uint16Array(size);
    this.resetState(0);
  }

  private encode(lin: number): number {
    return lin < this.size ? lin | 0x8000 : lin - this.size;
  }

  private resetState(lin: number): void {
    this.freeTop = 0;
    for (let i = this.size - 1; i >= 0; i--) this.freeIds[this.freeTop++] = i;
    this.idState.fill(FREE);
    this.idSlots.fill(0);
    this.freeSlots = this.size;
    this.nextAvail = this.nextUsed = this.publishedAvail = lin;
    this.movedSinceKick = this.unpublishedSlots = this.pendingLen = 0;
    this.interrupts = true;
  }

  /**
   * Zero the ring and both event structures and forget all buffers. `start` (idx | wrap << 15, default
   * slot 0 with wrap 1) sets where both sides begin, to exercise wrap-around; the ring is then laid out
   * as if everything before it had been used. Pair it with PackedQueue.setBase(start | start << 16).
   */
  init(start: number = PACKED_POS_START): void {
    const size = this.size;
    if (!(Number.isInteger(start) && start >= 0 && start <= 0xffff && (start & 0x7fff) < size)) {
      throw new RangeError(`init(${start}): not a position of a ${size}-entry ring`);
    }
    this.mem.fill(this.desc, packedDescAreaSize(size), 0);
    this.mem.fill(this.driver, EVENT_AREA_SIZE, 0);
    this.mem.fill(this.device, EVENT_AREA_SIZE, 0);
    // Slots before the start were used in this lap, the others in the previous one.
    const idx = start & 0x7fff;
    const w = start >>> 15;
    const both = VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED;
    for (let j = 0; j < size; j++) this.descU16[j * DESC_U16 + FLAGS_U16] = (j < idx ? w : w ^ 1) !== 0 ? both : 0;
    this.resetState(idx + (w !== 0 ? 0 : size));
    this.driverOffWrap = start;
    this.storeDriverEvent(this.eventIdx ? VRING_PACKED_EVENT_FLAG_DESC : VRING_PACKED_EVENT_FLAG_ENABLE);
  }

  /** Free descriptor slots in the ring. */
  get freeCount(): number {
    return this.freeSlots;
  }

  /** Buffers added (published or not) and not yet returned as used. */
  get inFlight(): number {
    return this.size - this.freeTop;
  }

  /** Position (idx | wrap << 15) after the last descriptor published. */
  get availIdx(): number {
    return this.encode(this.publishedAvail);
  }

  /** Position (idx | wrap << 15) of the next used descriptor the driver will read. */
  get usedCursor(): number {
    return this.encode(this.nextUsed);
  }

  /** Is buffer `id` added and not yet returned? */
  isOutstanding(id: number): boolean {
    return id >= 0 && id < this.size && this.idState[id] !== FREE;
  }

  private writeDesc(slot: number, addr: number, len: number, id: number): void {
    const w = slot * DESC_U32;
    const lo = addr >>> 0;
    this.descU32[w + ADDR_U32] = lo;
    this.descU32[w + ADDR_U32 + 1] = (addr - lo) / TWO32;
    this.descU32[w + LEN_U32] = len;
    this.descU16[slot * DESC_U16 + ID_U16] = id;
  }

  /** AVAIL = the lap's wrap counter, USED its inverse (§2.8.1). */
  private availBits(lin: number): number {
    return lin < this.size ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED;
  }

  /**
   * Add a buffer: `readable` elements (device reads) then `writable` ones (device writes), in
   * consecutive slots linked by NEXT, or through an indirect table written at guest address
   * `opts.indirectAt` (16 bytes per element) in one slot. Returns its buffer id, or -1 when there are
   * not enough free slots or ids. The tail is written now; the head's flags, which hand the buffer over,
   * at the next publish(). Lengths and addresses are written as given (u32 / < 2^53), plus dmaOffset.
   */
  add(readable: readonly GuestBuffer[], writable: readonly GuestBuffer[], opts?: { indirectAt?: number }): number {
    const n = readable.length + writable.length;
    if (n === 0) throw new RangeError('add: a buffer needs at least one element');
    const off = this.dmaOffset;
    for (let i = 0; i < n; i++) {
      const b = i < readable.length ? readable[i]! : writable[i - readable.length]!;
      if (!Number.isSafeInteger(b.addr + off) || b.addr < 0 || (b.len >>> 0) !== b.len) throw new RangeError(`add: bad buffer ${b.addr}/${b.len}`);
    }
    const indirect = opts?.indirectAt !== undefined;
    if (indirect && off !== 0 && !Number.isSafeInteger(opts.indirectAt! + off)) throw new RangeError(`add: bad indirect table address ${opts.indirectAt}`);
    const slots = indirect ? 1 : n;
    if (this.freeTop === 0 || this.freeSlots < slots) return -1;
    const id = this.freeIds[--this.freeTop]!;
    const size = this.size;
    const first = this.nextAvail;
    const firstSlot = first < size ? first : first - size;
    let headFlags: number;
    if (indirect) {
      const table = opts.indirectAt!;
      const bytes = new Uint8Array(n * PACKED_DESC_SIZE);
      const dv = new DataView(bytes.buffer);
      for (let i = 0; i < n; i++) {
        const b = i < readable.length ? readable[i]! : writable[i - readable.length]!;
        const o = i * PACKED_DESC_SIZE;
        const a = b.addr + off;
        dv.setUint32(o + PACKED_DESC_ADDR, a >>> 0, true);
        dv.setUint32(o + PACKED_DESC_ADDR + 4, Math.floor(a / TWO32), true);
        dv.setUint32(o + PACKED_DESC_LEN, b.len, true);
        // §2.8.7: WRITE is the only flag an indirect entry carries; id is reserved.
        dv.setUint16(o + PACKED_DESC_FLAGS, i >= readable.length ? VRING_DESC_F_WRITE : 0, true);
      }
      this.mem.write(table, bytes);
      this.writeDesc(firstSlot, table + off, n * PACKED_DESC_SIZE, id);
      headFlags = VRING_DESC_F_INDIRECT | this.availBits(first);
    } else {
      headFlags = 0;
      let lin = first;
      for (let i = 0; i < n; i++) {
        const b = i < readable.length ? readable[i]! : writable[i - readable.length]!;
        const slot = lin < size ? lin : lin - size;
        // Every element carries the id; the spec reads it from the last (§2.8.6).
        this.writeDesc(slot, b.addr + off, b.len, id);
        const f = (i >= readable.length ? VRING_DESC_F_WRITE : 0) | (i < n - 1 ? VRING_DESC_F_NEXT : 0) | this.availBits(lin);
        if (i === 0) headFlags = f;
        else Atomics.store(this.descU16, slot * DESC_U16 + FLAGS_U16, f);
        if (++lin === this.mod) lin = 0;
      }
    }
    this.pendingSlot[this.pendingLen] = firstSlot;
    this.pendingFlags[this.pendingLen] = headFlags;
    this.pendingId[this.pendingLen++] = id;
    this.idState[id] = ADDED;
    this.idSlots[id] = slots;
    this.freeSlots -= slots;
    this.unpublishedSlots += slots;
    this.nextAvail = (first + slots) % this.mod;
    return id;
  }

  /**
   * Hand over everything added since the last publish(): write the held head flags, the first buffer's
   * last (Atomics.store), so a device polling its next slot sees the whole batch once it sees anything.
   */
  publish(): void {
    const n = this.pendingLen;
    if (n === 0) return;
    for (let i = n - 1; i >= 0; i--) {
      Atomics.store(this.descU16, this.pendingSlot[i]! * DESC_U16 + FLAGS_U16, this.pendingFlags[i]!);
      this.idState[this.pendingId[i]!] = PUBLISHED;
    }
    this.pendingLen = 0;
    this.movedSinceKick += this.unpublishedSlots;
    this.unpublishedSlots = 0;
    this.publishedAvail = this.nextAvail;
  }

  /**
   * Should the driver kick (notify) the device for what publish() handed over? The device event
   * structure decides: DISABLE never; DESC (with EVENT_IDX) when the descriptor at its off_wrap was among
   * those published since the previous call; otherwise (ENABLE, or DESC without EVENT_IDX, or the
   * reserved 3) when anything was. Moves the "previous" cursor.
   */
  needsKick(): boolean {
    const moved = this.movedSinceKick;
    this.movedSinceKick = 0;
    // Atomics.load after publish()'s Atomics.store: the barrier §2.8.21.2.1 asks for.
    const ev = Atomics.load(this.deviceEvent, 0);
    const flags = (ev >>> EVENT_FLAGS_SHIFT) & VRING_PACKED_EVENT_FLAGS_MASK;
    if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) return false;
    if (flags === VRING_PACKED_EVENT_FLAG_DESC && this.eventIdx) return packedNeedEvent((ev >>> OFF_WRAP_SHIFT) & 0xffff, this.encode(this.publishedAvail), moved, this.size);
    return moved > 0;
  }

  /**
   * Take one used buffer: returns its id (its slots and the id are free again) and sets lastUsedLen, or
   * returns -1 when the device has not used the next slot. Ids come back in any order. Allocation-free.
   * Throws RingStateError (VRING_USED_BAD_ID) if the device returned an id the driver did not hand over.
   */
  popUsed(): number {
    const size = this.size;
    const pos = this.nextUsed;
    const slot = pos < size ? pos : pos - size;
    const wrap = pos < size ? 1 : 0;
    const flags = Atomics.load(this.descU16, slot * DESC_U16 + FLAGS_U16);
    if (((flags & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0) !== wrap || ((flags & VRING_PACKED_DESC_F_USED) !== 0 ? 1 : 0) !== wrap) return -1;
    const id = this.descU16[slot * DESC_U16 + ID_U16]!;
    if (id >= size || this.idState[id] !== PUBLISHED) {
      throw new RingStateError(VringErrorCode.USED_BAD_ID, `used descriptor at slot ${slot} returned buffer id ${id}, which the driver has not handed over`);
    }
    // §2.8.4: len is meaningful only when the device set WRITE.
    const len = (flags & VRING_DESC_F_WRITE) !== 0 ? this.descU32[slot * DESC_U32 + LEN_U32]! : 0;
    const slots = this.idSlots[id]!;
    this.idState[id] = FREE;
    this.idSlots[id] = 0;
    this.freeIds[this.freeTop++] = id;
    this.freeSlots += slots;
    this.nextUsed = (pos + slots) % this.mod;
    this.lastUsedLen = len;
    // Like Linux's virtqueue_get_buf: under EVENT_IDX, ask for an interrupt at the next used slot.
    if (this.eventIdx && this.interrupts) {
      this.driverOffWrap = this.encode(this.nextUsed);
      this.storeDriverEvent(VRING_PACKED_EVENT_FLAG_DESC);
    }
    return id;
  }

  /** Take one used buffer, or null. See popUsed() for the allocation-free variant. */
  getUsed(): UsedElement | null {
    const head = this.popUsed();
    return head < 0 ? null : { head, len: this.lastUsedLen };
  }

  /**
   * Turn used-buffer notifications on or off: driver event flags DISABLE (off), or ENABLE (on), or
   * under EVENT_IDX DESC with off_wrap = the next used slot (on).
   */
  setInterrupts(on: boolean): void {
    this.interrupts = on;
    if (!on) this.storeDriverEvent(VRING_PACKED_EVENT_FLAG_DISABLE);
    else if (this.eventIdx) {
      this.driverOffWrap = this.encode(this.nextUsed);
      this.storeDriverEvent(VRING_PACKED_EVENT_FLAG_DESC);
    } else this.storeDriverEvent(VRING_PACKED_EVENT_FLAG_ENABLE);
  }

  private storeDriverEvent(flags: number): void {
    Atomics.store(this.driverEvent, 0, ((this.driverOffWrap << OFF_WRAP_SHIFT) | (flags << EVENT_FLAGS_SHIFT)) >>> 0);
  }
}
