// vring/packed.ts — PackedQueue: the device side of a packed virtqueue (virtio 1.2 §2.8).
//
// Where it sits: in place of a SplitQueue when VIRTIO_F_RING_PACKED was negotiated, with the same
// surface (device-queue.ts), driven by the queue's worker the same way: pop chains, complete them with
// addUsed(), publish once per burst with flush(), ask needsNotification() whether to signal.
//
// One ring, walked in order by both sides, each with a position and a wrap counter (§2.8.1):
//
//               usedPos (staged)          availPos (next to pop)
//                    ▼                         ▼
//   slots:   │ used │ in flight … in flight │ avail │ avail │ (not yet) │ used │ …
//   written by:  device     (popped, held)        driver, AVAIL=w USED=!w   device, AVAIL=USED=w'
//
// pop() checks the descriptor at availPos: available when AVAIL equals the lap's wrap counter and USED
// does not. It walks the chain (packed-descriptor.ts), which may run over the ring's end into the next
// lap, and moves availPos past it. addUsed(id, len) stages a used descriptor for usedPos and moves
// usedPos on by the slots that chain took, whatever order chains complete in (§2.8.6: "the device only
// writes out a single used descriptor for the whole list. It then skips forward"). flush() writes the
// batch's ids and lengths, then its flags, the first one last (§2.8.9), so the driver, which polls only
// the next slot (§2.8.2), never sees part of a batch; and a back-end killed before flush() leaves every
// unpublished chain as the driver wrote it, for its successor to take up (packed-resume.ts).
//
// Positions are kept linear in [0, 2·size): slot + (wrap ? 0 : size), so the distance between two of
// them is a subtraction mod 2·size. The public form is `idx | wrap << 15`, the spec's off_wrap and the
// halves of vhost-user's packed ring base (packed-layout.ts).
//
// Every guest-provided value is validated (DESIGN "Untrusted input"); a violation throws a typed
// VringError and marks the queue broken, and a broken queue rethrows it and touches no memory until
// reset(). The consume loop is SplitQueue's (queue.ts); enableNotification() stores the event
// structure with Atomics and re-reads the descriptor at the watched position, which closes the race
// with a driver that makes a buffer available just as the worker goes to sleep.

import { DescriptorChain } from './chain.ts';
import { RingLayoutError, RingStateError, DescriptorError, MemoryError, VringError, VringErrorCode } from './errors.ts';
import { IotlbMiss } from './iotlb.ts';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from './layout.ts';
import type { RingInspection } from './ring-inspection.ts';
import type { DirtyLog } from './dirty-log.ts';
import type { InflightLog, InflightRecovery } from './inflight.ts';
import type { GuestMemory, RangeLocation } from './memory.ts';
import { resumePackedBase } from './packed-resume.ts';
import { FLAGS_SHIFT, ID_FLAGS_U32, PackedDescriptorWalker, packedAvailable } from './packed-descriptor.ts';
import {
  EVENT_ALIGN,
  EVENT_AREA_SIZE,
  EVENT_FLAGS,
  EVENT_OFF_WRAP,
  MAX_PACKED_QUEUE_SIZE,
  PACKED_DESC_ALIGN,
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
  decodePackedRingBase,
  encodePackedRingBase,
  packedDescAreaSize,
} from './packed-layout.ts';
import { DEFAULT_MAX_PIECES, type QueueWatch } from './queue.ts';

// Layout offsets as typed-array indices, computed once. The ring as u16: 8 per descriptor.
const DESC_U16 = PACKED_DESC_SIZE / 2;
const ID_U16 = PACKED_DESC_ID / 2;
const FLAGS_U16 = PACKED_DESC_FLAGS / 2;
// The ring as u32: 4 per descriptor.
const DESC_U32 = PACKED_DESC_SIZE / 4;
const LEN_U32 = PACKED_DESC_LEN / 4;
// An event suppression structure is read and written as one u32, off_wrap in the low half.
const OFF_WRAP_SHIFT = EVENT_OFF_WRAP * 8;
const EVENT_FLAGS_SHIFT = EVENT_FLAGS * 8;

/** Configuration of one packed virtqueue, as set by the driver (§4.1.4.3 / vhost-user SET_VRING_*). */
export interface PackedQueueOptions {
  /** Queue size: 1…32768 (not necessarily a power of 2), ≤ maxSize. */
  size: number;
  /** Guest physical address of the descriptor ring. */
  desc: number;
  /** Guest physical address of the driver event suppression structure (vhost-user: the avail address). */
  driver: number;
  /** Guest physical address of the device event suppression structure (vhost-user: the used address). */
  device: number;
  /** VIRTIO_F_RING_EVENT_IDX negotiated: event suppression may name a descriptor (flags DESC). */
  eventIdx?: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirect?: boolean;
  /** Largest size the device offered (QueueNumMax); default 32768. */
  maxSize?: number;
  /** Cap on memory pieces per direction of one chain; default 1024. */
  maxPieces?: number;
}

/** Host locations of the three areas of a packed ring. */
export interface PackedRingLocations {
  desc: RangeLocation;
  driver: RangeLocation;
  device: RangeLocation;
}

/** Where a packed ring's three areas are: guest physical, or front-end virtual for packedRingUaddrToGpa(). */
export interface PackedRingAddresses {
  desc: number;
  driver: number;
  device: number;
}

function layoutError(code: (typeof VringErrorCode)[keyof typeof VringErrorCode], msg: string): never {
  throw new RingLayoutError(code, `${msg}; the queue cannot be used until the driver reconfigures it`);
}

/**
 * Validate a packed ring's shape and placement (§2.8, §2.8.10.1) and locate its areas: size an integer
 * in 1…min(32768, maxSize); descriptor ring 16-aligned, event structures 4-aligned; each area inside
 * one region and aligned in the host mapping too. Throws RingLayoutError.
 */
export function mapPackedRing(mem: GuestMemory, size: number, desc: number, driver: number, device: number, maxSize: number = MAX_PACKED_QUEUE_SIZE): PackedRingLocations {
  if (!Number.isInteger(size) || size <= 0) layoutError(VringErrorCode.BAD_SIZE, `queue size ${size} is zero or not an integer`);
  if (size > MAX_PACKED_QUEUE_SIZE) layoutError(VringErrorCode.BAD_SIZE, `queue size ${size} exceeds the packed-ring maximum ${MAX_PACKED_QUEUE_SIZE}`);
  if (size > maxSize) layoutError(VringErrorCode.BAD_SIZE, `queue size ${size} exceeds the device maximum ${maxSize}`);
  const areas = [
    ['descriptor ring', desc, PACKED_DESC_ALIGN, packedDescAreaSize(size)],
    ['driver event suppression structure', driver, EVENT_ALIGN, EVENT_AREA_SIZE],
    ['device event suppression structure', device, EVENT_ALIGN, EVENT_AREA_SIZE],
  ] as const;
  const locs: RangeLocation[] = [];
  for (const [name, gpa, align, len] of areas) {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || gpa % align !== 0) {
      layoutError(VringErrorCode.MISALIGNED, `${name} address 0x${Number(gpa).toString(16)} is not ${align}-byte aligned`);
    }
    let loc: RangeLocation;
    try {
      loc = mem.contiguous(gpa, len);
    } catch (e) {
      if (!(e instanceof MemoryError)) throw e;
      layoutError(VringErrorCode.RING_UNMAPPED, `${name} [0x${gpa.toString(16)}, +${len}) is not inside one guest memory region`);
    }
    if (loc.byteOffset % align !== 0) {
      layoutError(VringErrorCode.MISALIGNED, `${name} is ${align}-aligned in the guest but not in the host mapping (region offset)`);
    }
    locs.push(loc);
  }
  return { desc: locs[0]!, driver: locs[1]!, device: locs[2]! };
}

/**
 * vhost-user SET_VRING_ADDR gives a packed ring as front-end virtual addresses: desc_user_addr is the
 * descriptor ring, avail_user_addr the driver area, used_user_addr the device area. Translate each,
 * sized as mapPackedRing sizes it, then validate the result as mapPackedRing does. Returns guest
 * physical addresses. Throws MemoryError (an area not inside one region) or RingLayoutError.
 */
export function packedRingUaddrToGpa(mem: GuestMemory, size: number, uaddr: PackedRingAddresses, maxSize: number = MAX_PACKED_QUEUE_SIZE): PackedRingAddresses {
  const gpa = {
    desc: mem.uaddrToGpa(uaddr.desc, packedDescAreaSize(size)),
    driver: mem.uaddrToGpa(uaddr.driver, EVENT_AREA_SIZE),
    device: mem.uaddrToGpa(uaddr.device, EVENT_AREA_SIZE),
  };
  mapPackedRing(mem, size, gpa.desc, gpa.driver, gpa.device, maxSize);
  return gpa;
}

/** A position (idx | wrap << 15) as a linear value in [0, 2·size): slot, plus size in laps with wrap 0. */
function linearPos(pos: number, size: number): number {
  return (pos & 0x7fff) + ((pos & 0x8000) !== 0 ? 0 : size);
}

/**
 * The packed ring's need_event (§2.8.10 with EVENT_IDX): the other side asked, with off_wrap, to hear
 * when the descriptor at that position is made available (or used). `now` is the position after the
 * last one written (idx | wrap << 15) and `moved` how many positions were written since the previous
 * decision: true when off_wrap is one of them. 2·size or more moved covers every position.
 */
export function packedNeedEvent(offWrap: number, now: number, moved: number, size: number): boolean {
  if (moved <= 0) return false;
  const m = 2 * size;
  if (moved >= m) return true;
  const d = (linearPos(now, size) - linearPos(offWrap, size) - 1) % m;
  return (d < 0 ? d + m : d) < moved;
}

/** Device side of a packed virtqueue. See the file header for the data path. */
export class PackedQueue {
  readonly size: number;
  readonly desc: number;
  readonly driver: number;
  readonly device: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly maxSize: number;
  readonly maxPieces: number;

  /** Chains popped and not yet completed or rewound. */
  inFlight = 0;
  /** The error that broke this queue, or null. Once set, every call throws it. */
  broken: VringError | null = null;

  private mem: GuestMemory | null = null;
  /** 2·size: positions are linear mod this. */
  private readonly mod: number;
  /** The ring as u32 (4 per descriptor: addr lo, addr hi, len, id | flags << 16) and as u16 (8 each). */
  private descU32: Uint32Array = new Uint32Array(0);
  private descU16: Uint16Array = new Uint16Array(0);
  /** The two event suppression structures, each one u32: off_wrap | flags << 16. */
  private driverEvent: Uint32Array = new Uint32Array(1);
  private deviceEvent: Uint32Array = new Uint32Array(1);

  /** Linear position of the next descriptor to pop. */
  private availPos = 0;
  /** Linear position of the next used descriptor to write (staged). */
  private usedPos = 0;
  /** usedPos as of the last flush(): what the driver can see. */
  private publishedPos = 0;
  /** Slots addUsed() moved usedPos by since the last flush. */
  private unpublished = 0;

  /** Per buffer id: ring slots its chain took (0: not in flight). */
  private idSlots: Uint16Array = new Uint16Array(0);
  /** Per buffer id: linear position it was popped at (rewind checks it). */
  private idPos: Int32Array = new Int32Array(0);
  /** The ids of the last `size` pops, in pop order (a ring; rewind reads it, never the guest's ring). */
  private popOrder: Uint16Array = new Uint16Array(0);
  private popTop = 0;
  /** Per buffer id: the chain object holding it while in flight. */
  private chains: (DescriptorChain | undefined)[] = [];
  /** The object the next walk fills; swapped in for its id once the id checks out. */
  private spare: DescriptorChain | null = null;
  private readonly walker = new PackedDescriptorWalker();

  /** Used descriptors staged since the last flush: their slots and the flags flush() writes. */
  private batchSlot: Uint16Array = new Uint16Array(0);
  private batchFlags: Uint16Array = new Uint16Array(0);
  private batchId: Uint16Array = new Uint16Array(0);
  private batchBytes: Uint32Array = new Uint32Array(0);
  private batchLen = 0;

  /** A needsNotification() has been answered since setBase/attach/reset. */
  private signalledValid = false;
  /** Something was published since the last notification this queue asked for (flags ENABLE). */
  private pendingSignal = false;
  /** Positions published since the last needsNotification() (flags DESC). */
  private movedSinceCheck = 0;
  /** publishedPos when the last notification went out (inspect() shows it). */
  private signalledPos = 0;
  private notifyEnabled = true;
  /** off_wrap as this queue last wrote it into the device area. */
  private deviceOffWrap = PACKED_POS_START;

  private dirty: DirtyLog | null = null;
  /** Guest physical address at which device-area writes are logged, or -1: ring writes not logged. */
  private usedLog = -1;

  constructor(opts: PackedQueueOptions) {
    this.size = opts.size;
    this.desc = opts.desc;
    this.driver = opts.driver;
    this.device = opts.device;
    this.eventIdx = opts.eventIdx ?? false;
    this.indirect = opts.indirect ?? false;
    this.maxSize = opts.maxSize ?? MAX_PACKED_QUEUE_SIZE;
    this.maxPieces = opts.maxPieces ?? DEFAULT_MAX_PIECES;
    this.mod = 2 * this.size;
    if (!(Number.isInteger(this.maxPieces) && this.maxPieces >= 1)) throw new RangeError('maxPieces must be an integer ≥ 1');
  }

  /** Next position to pop, as idx | wrap << 15 (what vhost-user's ring base and off_wrap carry). */
  get lastAvail(): number {
    return this.encode(this.availPos);
  }

  /** Next position a used descriptor goes to (staged; flush() publishes), as idx | wrap << 15. */
  get usedIdx(): number {
    return this.encode(this.usedPos);
  }

  private encode(lin: number): number {
    return lin < this.size ? lin | 0x8000 : lin - this.size;
  }

  /** Mark broken with `e` (if it is ours) and return it for throwing. */
  private fail(e: unknown): unknown {
    if (e instanceof VringError && this.broken === null) this.broken = e;
    return e;
  }

  /**
   * Bind to guest memory: validate size, alignment and placement, and cache typed-array views over the
   * ring and the two event structures. Call again after every memory table change (with the workers
   * quiesced). Throws RingLayoutError and marks the queue broken if the layout is invalid.
   */
  attach(mem: GuestMemory): void {
    if (this.broken) throw this.broken;
    if (!mem.hasBytes) throw new RangeError('attach(mem): an address map (GuestMemory.addressMap) has no bytes to serve a queue');
    const size = this.size;
    let locs: PackedRingLocations;
    try {
      locs = mapPackedRing(mem, size, this.desc, this.driver, this.device, this.maxSize);
    } catch (e) {
      throw this.fail(e);
    }
    const { desc: d, driver: dr, device: dv } = locs;
    this.mem = mem;
    this.descU32 = new Uint32Array(d.buffer, d.byteOffset, DESC_U32 * size);
    this.descU16 = new Uint16Array(d.buffer, d.byteOffset, DESC_U16 * size);
    this.driverEvent = new Uint32Array(dr.buffer, dr.byteOffset, 1);
    this.deviceEvent = new Uint32Array(dv.buffer, dv.byteOffset, 1);
    this.walker.bind(mem, this.descU32, size, this.indirect);
    if (this.idSlots.length !== size) {
      this.idSlots = new Uint16Array(size);
      this.idPos = new Int32Array(size);
      this.popOrder = new Uint16Array(size);
      this.batchSlot = new Uint16Array(size);
      this.batchFlags = new Uint16Array(size);
      this.batchId = new Uint16Array(size);
      this.batchBytes = new Uint32Array(size);
      this.chains = new Array<DescriptorChain | undefined>(size);
    }
    for (const c of this.chains) if (c !== undefined) c.mem = mem;
    if (this.spare !== null) this.spare.mem = mem;
  }

  private checkUsable(): void {
    if (this.broken) throw this.broken;
    if (this.mem === null) {
      throw new RingLayoutError(VringErrorCode.NOT_ATTACHED, 'queue used before attach(mem): no guest memory bound');
    }
  }

  /**
   * vhost-user SET_VRING_BASE for a packed ring: `num` = (last_avail_idx | avail_wrap << 15) |
   * (last_used_idx | used_wrap << 15) << 16, as QEMU and DPDK encode it (encodePackedRingBase). Forgets
   * everything in flight. An index ≥ size, or an avail position more than a ring ahead of the used one,
   * is a RingStateError (VRING_BAD_BASE) and breaks the queue.
   */
  setBase(num: number): void {
    if (this.broken) throw this.broken;
    if (!Number.isInteger(num) || num < 0 || num > 0xffff_ffff) throw new RangeError(`bad packed vring base ${num}`);
    const b = decodePackedRingBase(num);
    const size = this.size;
    const avail = linearPos(num & 0xffff, size);
    const used = linearPos(num >>> 16, size);
    if (b.lastAvailIdx >= size || b.lastUsedIdx >= size || (avail - used + this.mod) % this.mod > size) {
      throw this.fail(
        new RingStateError(
          VringErrorCode.BAD_BASE,
          `packed ring base 0x${num.toString(16)} (avail ${b.lastAvailIdx}/wrap ${b.availWrap}, used ${b.lastUsedIdx}/wrap ${b.usedWrap}) does not fit a ${size}-entry ring; the queue is marked broken`,
        ),
      );
    }
    this.availPos = avail;
    this.usedPos = this.publishedPos = this.signalledPos = used;
    this.forgetInFlight();
  }

  /**
   * setBase() for a front-end that may have lost the position: QEMU 7.2 restarts a packed ring's
   * back-end after a crash at a stale base, since a packed ring keeps no index in shared memory. The
   * ring's own flags show where the device stopped (packed-resume.ts); where they contradict `num`,
   * the queue starts there instead. Returns null when `num` was taken as given, else what the ring
   * showed (for the log). Attach first.
   */
  resume(num: number): string | null {
    this.checkUsable();
    const r = resumePackedBase(this.descU16, this.size, num, Atomics.load(this.driverEvent, 0));
    this.setBase(r.base);
    return r.recovered ? r.reason : null;
  }

  /**
   * vhost-user GET_VRING_BASE for a packed ring: the next position to pop and the next used position
   * the driver can see, encoded as setBase() takes them. Flush first: staged completions are not in it.
   */
  base(): number {
    const a = this.encode(this.availPos);
    const u = this.encode(this.publishedPos);
    return encodePackedRingBase({ lastAvailIdx: a & 0x7fff, availWrap: a >>> 15, lastUsedIdx: u & 0x7fff, usedWrap: u >>> 15 });
  }

  private forgetInFlight(): void {
    this.inFlight = 0;
    this.idSlots.fill(0);
    this.popTop = this.batchLen = this.unpublished = 0;
    this.signalledValid = this.pendingSignal = false;
    this.movedSinceCheck = 0;
  }

  /** Is the descriptor at linear position `lin` available? Reads its flags once. */
  private availableAt(lin: number): boolean {
    const size = this.size;
    const slot = lin < size ? lin : lin - size;
    return packedAvailable(Atomics.load(this.descU16, slot * DESC_U16 + FLAGS_U16), lin < size ? 1 : 0);
  }

  /**
   * Scan the run of available descriptors from availPos (at most size of them). Returns the linear
   * position after it; `chainsOut[0]` gets the number of chains that end inside it. Reads each flags
   * word once and trusts nothing: a malformed chain is pop()'s to reject.
   */
  private scan(chainsOut: Int32Array | null): number {
    const size = this.size;
    let lin = this.availPos;
    let chains = 0;
    for (let n = 0; n < size; n++) {
      const slot = lin < size ? lin : lin - size;
      const flags = Atomics.load(this.descU16, slot * DESC_U16 + FLAGS_U16);
      if (!packedAvailable(flags, lin < size ? 1 : 0)) break;
      if ((flags & VRING_DESC_F_NEXT) === 0 || (flags & VRING_DESC_F_INDIRECT) !== 0) chains++;
      if (++lin === this.mod) lin = 0;
    }
    if (chainsOut !== null) chainsOut[0] = chains;
    return lin;
  }

  private readonly scanCount = new Int32Array(1);

  /**
   * The position after the descriptors the driver has made available so far (idx | wrap << 15): the
   * packed counterpart of avail.idx (a busy poll watches it move). A device that sleeps passes
   * enableNotification()/watch() where its pop found nothing, not this read later (SplitQueue's).
   */
  availIdx(): number {
    this.checkUsable();
    return this.encode(this.scan(null));
  }

  /** Never: lgnet keeps no inflight record for packed rings. */
  readonly resubmitting = false;

  /** Chains the driver has made available and we have not popped (counted by scanning their flags). */
  availPending(): number {
    this.checkUsable();
    this.scan(this.scanCount);
    return this.scanCount[0]!;
  }

  /** Pop one chain, or null when none is available. Throws VringError (and breaks) on bad input. */
  pop(): DescriptorChain | null {
    this.checkUsable();
    try {
      const c = this.popOne();
      if (c !== null && this.eventIdx && this.notifyEnabled) this.storeDeviceEvent(VRING_PACKED_EVENT_FLAG_DESC, this.lastAvail);
      return c;
    } catch (e) {
      if (e instanceof IotlbMiss) return null; // the chain stays in the ring until its mapping comes
      throw this.fail(e);
    }
  }

  /**
   * Pop up to `max` chains into out[at…at+n−1] (reused chain objects) and return n. Throws VringError
   * (and breaks) on bad input; chains popped before the bad one stay in flight.
   */
  popBurst(max: number, out: DescriptorChain[], at: number = 0): number {
    this.checkUsable();
    try {
      let n = 0;
      try {
        while (n < max) {
          const c = this.popOne();
          if (c === null) break;
          out[at + n++] = c;
        }
      } catch (e) {
        if (!(e instanceof IotlbMiss)) throw e;
        // Behind an IOMMU, a chain whose mapping has not come yet: it stays in the ring (iotlb.ts).
      }
      if (n > 0 && this.eventIdx && this.notifyEnabled) this.storeDeviceEvent(VRING_PACKED_EVENT_FLAG_DESC, this.lastAvail);
      return n;
    } catch (e) {
      throw this.fail(e);
    }
  }

  private popOne(): DescriptorChain | null {
    const size = this.size;
    const pos = this.availPos;
    const slot = pos < size ? pos : pos - size;
    const wrap = pos < size ? 1 : 0;
    // The id|flags word, once, with Atomics; the walk reads the rest of the descriptor after it.
    const word = Atomics.load(this.descU32, slot * DESC_U32 + ID_FLAGS_U32);
    const flags = word >>> FLAGS_SHIFT;
    if (((flags & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0) !== wrap) return null; // not made available yet
    if (((flags & VRING_PACKED_DESC_F_USED) !== 0 ? 1 : 0) === wrap) {
      // Only the device writes AVAIL = USED, and never at or after availPos in this lap.
      throw new DescriptorError(
        VringErrorCode.BAD_DESC_FLAGS,
        `descriptor at ring position ${slot} has AVAIL and USED both ${wrap} (flags 0x${flags.toString(16)}): a used marker of this lap where the next available descriptor belongs; the queue is marked broken`,
      );
    }
    let c = this.spare;
    if (c === null) {
      c = this.spare = new DescriptorChain(this.maxPieces);
      c.mem = this.mem;
    }
    this.walker.walkPacked(slot, wrap, word, c);
    const id = c.head;
    const n = this.walker.ringCount;
    if (id >= size) {
      throw new DescriptorError(VringErrorCode.HEAD_OUT_OF_RANGE, `chain at ring position ${slot} carries buffer id ${id} ≥ queue size ${size}; the queue is marked broken`);
    }
    if (this.idSlots[id] !== 0) {
      throw new RingStateError(
        VringErrorCode.HEAD_IN_FLIGHT,
        `buffer id ${id} was made available again (ring position ${slot}) while the device still holds it; the queue is marked broken`,
      );
    }
    // Slots from the last published used position on are not the driver's to reuse: the device holds
    // them, or has staged used descriptors there the driver cannot see yet. The ring has size of them.
    const held = (pos - this.publishedPos + this.mod) % this.mod;
    if (held + n > size) {
      throw new RingStateError(
        VringErrorCode.TOO_MANY_IN_FLIGHT,
        `the chain at ring position ${slot} would make ${held + n} descriptors in flight, more than the ${size} of the ring; the queue is marked broken`,
      );
    }
    this.spare = this.chains[id] ?? null;
    this.chains[id] = c;
    this.idSlots[id] = n;
    this.idPos[id] = pos;
    this.popOrder[this.popTop] = id;
    if (++this.popTop === size) this.popTop = 0;
    this.inFlight++;
    this.availPos = (pos + n) % this.mod;
    return c;
  }

  /** The vhost-user inflight record is not kept for packed rings: a non-null log throws VRING_INFLIGHT_UNSUPPORTED. */
  setInflight(log: InflightLog | null): void {
    if (log !== null) {
      throw new VringError(
        VringErrorCode.INFLIGHT_UNSUPPORTED,
        'the vhost-user inflight record (INFLIGHT_SHMFD) is not supported for packed rings yet; do not offer it with VIRTIO_F_RING_PACKED',
      );
    }
  }

  /** Always throws: there is no inflight record to recover from (see setInflight). */
  recoverInflight(): InflightRecovery {
    this.checkUsable();
    throw new RingStateError(VringErrorCode.NOT_ATTACHED, 'recoverInflight() without an inflight record (none is kept for packed rings)');
  }

  /**
   * Un-pop the last `n` popped chains: they will be popped again, re-read and re-validated. They must
   * all still be in flight, i.e. not completed.
   */
  rewind(n: number): void {
    this.checkUsable();
    try {
      if (!(Number.isInteger(n) && n >= 0 && n <= this.inFlight)) {
        throw new RingStateError(VringErrorCode.BAD_REWIND, `rewind(${n}) with ${this.inFlight} chains in flight`);
      }
      const size = this.size;
      let pos = this.availPos;
      for (let k = 1; k <= n; k++) {
        const id = this.popOrder[(((this.popTop - k) % size) + size) % size]!;
        const slots = this.idSlots[id]!;
        pos = (pos - slots + this.mod) % this.mod;
        if (slots === 0 || this.idPos[id] !== pos) {
          throw new RingStateError(VringErrorCode.BAD_REWIND, `rewind(${n}): the chain popped ${k} back (buffer id ${id}) was already completed`);
        }
      }
      for (let k = 1; k <= n; k++) this.idSlots[this.popOrder[(((this.popTop - k) % size) + size) % size]!] = 0;
      this.popTop = (((this.popTop - n) % size) + size) % size;
      this.inFlight -= n;
      this.availPos = pos;
    } catch (e) {
      throw this.fail(e);
    }
  }

  /**
   * Stage a completion: buffer `id` is done and the device wrote `len` bytes into its writable part. Its
   * used descriptor (id, len, flags) goes to the next used position at flush(), which hands it to the
   * driver. An id not in flight throws RingStateError (VRING_NOT_IN_FLIGHT) and breaks the
   * queue; `len` beyond the writable length is a device bug and throws RangeError.
   */
  addUsed(id: number, len: number): void {
    this.checkUsable();
    if (!(id >= 0 && id < this.size && this.idSlots[id]! !== 0)) {
      throw this.fail(
        new RingStateError(VringErrorCode.NOT_IN_FLIGHT, `addUsed(${id}): that buffer id is not in flight (completed twice or never popped); the queue is marked broken`),
      );
    }
    const c = this.chains[id]!;
    if (!(len >= 0 && len <= c.writableLen && (len >>> 0) === len)) {
      throw new RangeError(`addUsed(${id}, ${len}): length exceeds the chain's ${c.writableLen} writable bytes`);
    }
    // Only a driver that offers an id again before it could have seen it used fills a batch: publish then.
    if (this.batchLen === this.size) this.flush();
    const size = this.size;
    const pos = this.usedPos;
    const slot = pos < size ? pos : pos - size;
    // id and len are written at flush(), with the flags: until then the slot stays as the driver wrote
    // it, so a back-end that dies before publishing leaves the chain intact for its successor.
    this.batchId[this.batchLen] = id;
    this.batchBytes[this.batchLen] = len;
    // §2.8.3: in a used descriptor WRITE says whether the device wrote anything.
    this.batchSlot[this.batchLen] = slot;
    this.batchFlags[this.batchLen++] = (pos < size ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0) | (len > 0 ? VRING_DESC_F_WRITE : 0);
    if (this.dirty !== null && len > 0) this.dirty.markPieces(this.mem!, c.writable, len);
    const slots = this.idSlots[id]!;
    this.idSlots[id] = 0;
    this.inFlight--;
    this.usedPos = (pos + slots) % this.mod;
    this.unpublished += slots;
    if (c.readable.capacity > 64 || c.writable.capacity > 64) c.trim();
  }

  /**
   * Publish every staged completion: write the batch's flags, the first descriptor's last with
   * Atomics.store (release), so a driver polling that slot sees the whole batch once it sees anything.
   */
  flush(): void {
    this.checkUsable();
    const n = this.batchLen;
    if (n === 0) return;
    const u16 = this.descU16;
    const u32 = this.descU32;
    for (let i = 0; i < n; i++) {
      const slot = this.batchSlot[i]!;
      u32[slot * DESC_U32 + LEN_U32] = this.batchBytes[i]!;
      u16[slot * DESC_U16 + ID_U16] = this.batchId[i]!;
    }
    for (let i = n - 1; i >= 1; i--) u16[this.batchSlot[i]! * DESC_U16 + FLAGS_U16] = this.batchFlags[i]!;
    Atomics.store(u16, this.batchSlot[0]! * DESC_U16 + FLAGS_U16, this.batchFlags[0]!);
    if (this.dirty !== null && this.usedLog >= 0) {
      for (let i = 0; i < n; i++) this.dirty.mark(this.desc + this.batchSlot[i]! * PACKED_DESC_SIZE, PACKED_DESC_SIZE);
    }
    this.batchLen = 0;
    this.publishedPos = this.usedPos;
    this.movedSinceCheck += this.unpublished;
    this.unpublished = 0;
    this.pendingSignal = true;
  }

  /**
   * Should the device signal the driver for what flush() published? (§2.8.10, §2.8.14.) The driver
   * event structure decides: DISABLE never; DESC (with EVENT_IDX) when a used descriptor was written at
   * off_wrap since the previous call, or on the first call since setBase/attach/reset; ENABLE (and DESC
   * without EVENT_IDX, and the reserved value 3, where notifying is the safe reading) when something was
   * published since the last notification this queue asked for.
   */
  needsNotification(): boolean {
    this.checkUsable();
    // The Atomics.load orders after flush()'s Atomics.store: the spec's "memory barrier".
    const need = this.wantsSignal(Atomics.load(this.driverEvent, 0), !this.signalledValid);
    this.movedSinceCheck = 0;
    this.signalledValid = true;
    if (need) {
      this.pendingSignal = false;
      this.signalledPos = this.publishedPos;
    }
    return need;
  }

  /**
   * The notification rule for what is published since the last check, given the driver event `ev`
   * (needsNotification decides with it, inspect reads it): `first`, no decision since
   * setBase/attach/reset, signals unless the driver disabled notifications.
   */
  private wantsSignal(ev: number, first: boolean): boolean {
    const flags = (ev >>> EVENT_FLAGS_SHIFT) & VRING_PACKED_EVENT_FLAGS_MASK;
    if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) return false;
    if (flags === VRING_PACKED_EVENT_FLAG_DESC && this.eventIdx) {
      return first || packedNeedEvent((ev >>> OFF_WRAP_SHIFT) & 0xffff, this.encode(this.publishedPos), this.movedSinceCheck, this.size);
    }
    return first || this.pendingSignal;
  }

  /**
   * DeviceQueue.inspect: where the queue and its ring stand now (reads guest memory, changes nothing).
   * interruptOwed is what the next needsNotification() would answer for what is published.
   */
  inspect(): RingInspection {
    if (this.mem === null) throw new RingLayoutError(VringErrorCode.NOT_ATTACHED, 'inspect() before attach(mem): no guest memory bound');
    const ev = Atomics.load(this.driverEvent, 0);
    const dev = Atomics.load(this.deviceEvent, 0);
    const flags = (ev >>> EVENT_FLAGS_SHIFT) & VRING_PACKED_EVENT_FLAGS_MASK;
    const published = this.encode(this.publishedPos);
    const end = this.scan(null);
    return {
      format: 'packed',
      size: this.size,
      eventIdx: this.eventIdx,
      lastAvail: this.lastAvail,
      usedIdx: this.usedIdx,
      publishedUsed: published,
      inFlight: this.inFlight,
      driverAvail: this.encode(end),
      availPending: (end - this.availPos + this.mod) % this.mod,
      driverEvent: { flags, event: (ev >>> OFF_WRAP_SHIFT) & 0xffff },
      deviceEvent: { flags: (dev >>> EVENT_FLAGS_SHIFT) & VRING_PACKED_EVENT_FLAGS_MASK, event: (dev >>> OFF_WRAP_SHIFT) & 0xffff },
      signalledUsed: this.signalledValid ? this.encode(this.signalledPos) : null,
      interruptOwed: this.signalledValid && this.wantsSignal(ev, false),
    };
  }

  /** Ask the driver not to notify (kick) us: device event flags DISABLE. */
  disableNotification(): void {
    this.checkUsable();
    this.notifyEnabled = false;
    this.storeDeviceEvent(VRING_PACKED_EVENT_FLAG_DISABLE, this.deviceOffWrap);
  }

  /**
   * Ask the driver to notify us again (flags ENABLE, or DESC with off_wrap = `seen` under EVENT_IDX),
   * then re-check: true means the descriptor at `seen` is available now and the caller must drain
   * again instead of sleeping. `seen` (idx | wrap << 15) defaults to lastAvail; a device that rewound
   * chains passes lastAvail as it was when its pop found nothing more. Store and load are both Atomics (seq_cst), so
   * the re-check cannot be ordered before the store: no kick is lost between check and sleep.
   */
  enableNotification(seen: number = this.lastAvail): boolean {
    this.checkUsable();
    const lin = this.checkPos(seen, 'enableNotification');
    this.notifyEnabled = true;
    if (this.eventIdx) this.storeDeviceEvent(VRING_PACKED_EVENT_FLAG_DESC, seen & 0xffff);
    else this.storeDeviceEvent(VRING_PACKED_EVENT_FLAG_ENABLE, this.deviceOffWrap);
    return this.availableAt(lin);
  }

  /**
   * What a sleeping worker watches: the flags word of the descriptor at `seen` (default lastAvail) and
   * its value now. The driver rewrites that word when it makes the descriptor available, so a native
   * wait wakes once the word differs. Take it before enableNotification(seen): a descriptor made
   * available after this read either shows in that re-check or changes the word.
   */
  watch(seen: number = this.lastAvail): QueueWatch {
    this.checkUsable();
    const lin = this.checkPos(seen, 'watch');
    const size = this.size;
    const slot = lin < size ? lin : lin - size;
    const l = this.mem!.contiguous(this.desc + slot * PACKED_DESC_SIZE + PACKED_DESC_FLAGS, 2);
    const value = Atomics.load(this.descU16, slot * DESC_U16 + FLAGS_U16);
    return { location: { region: l.region, offset: l.offset, mappingId: l.mappingId, mappingOffset: l.mappingOffset - l.offset }, seen: value };
  }

  private checkPos(pos: number, what: string): number {
    if (!(Number.isInteger(pos) && pos >= 0 && pos <= 0xffff && (pos & 0x7fff) < this.size)) {
      throw new RangeError(`${what}(${pos}): not a position (idx | wrap << 15) of a ${this.size}-entry ring`);
    }
    return linearPos(pos, this.size);
  }

  /**
   * Logs every guest memory write from now on into `log` (live migration), or stops when null: the
   * bytes of each completed writable chain up to its used length, and, when `usedLogGpa` is given, the
   * ring's writes: each used descriptor (at its place in the descriptor ring) and the device event
   * structure at `usedLogGpa` (vhost-user's log_guest_addr, which QEMU sets to the device area).
   */
  setDirtyLog(log: DirtyLog | null, usedLogGpa: number | null = null): void {
    this.dirty = log;
    this.usedLog = log !== null && usedLogGpa !== null ? usedLogGpa : -1;
  }

  /**
   * Logs `len` bytes the device wrote into a chain's writable part that addUsed() will not report (a
   * frame read into buffers and then dropped). A no-op while logging is off.
   */
  logWritten(chain: DescriptorChain, len: number): void {
    if (this.dirty !== null && len > 0) this.dirty.markPieces(this.mem!, chain.writable, Math.min(len, chain.writableLen));
  }

  private storeDeviceEvent(flags: number, offWrap: number): void {
    this.deviceOffWrap = offWrap;
    Atomics.store(this.deviceEvent, 0, ((offWrap << OFF_WRAP_SHIFT) | (flags << EVENT_FLAGS_SHIFT)) >>> 0);
    if (this.dirty !== null && this.usedLog >= 0) this.dirty.mark(this.usedLog, EVENT_AREA_SIZE);
  }

  /** Is buffer `id` popped and not yet completed? */
  isInFlight(id: number): boolean {
    return id >= 0 && id < this.idSlots.length && this.idSlots[id]! !== 0;
  }

  /**
   * Back to the just-configured state: both positions at slot 0 with wrap counter 1, nothing in
   * flight, notifications on, not broken. Keeps size, addresses and the memory binding; re-attach if
   * memory changed. Touches no guest memory.
   */
  reset(): void {
    this.broken = null;
    this.availPos = this.usedPos = this.publishedPos = this.signalledPos = 0;
    this.forgetInFlight();
    this.notifyEnabled = true;
    this.deviceOffWrap = PACKED_POS_START;
  }
}
