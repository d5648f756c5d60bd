// vring/queue.ts — SplitQueue: the device side of a split virtqueue (virtio 1.2 §2.7).
//
// Where it sits: one per virtqueue, driven by that queue's worker. The worker pops chains the guest
// made available, moves frames between them and the backend, completes them with addUsed(), publishes
// with flush() once per burst and asks needsNotification() whether to signal the call eventfd.
//
//            driver (guest)                               device (this class)
//   avail ring:  idx ──────────▶ written by driver       lastAvail: next slot to pop
//   ┌─┬─┬─┬─┬─┬─┬─┬─┐                                    pop/popBurst: ring[lastAvail & mask]
//   │ │ │h│h│h│ │ │ │   slots lastAvail … avail.idx−1     → head → defended walk → DescriptorChain
//   └─┴─┴─┴─┴─┴─┴─┴─┘   hold heads not yet popped
//   used ring:   idx ◀────────── written by device       usedIdx: next slot to fill (staged)
//   ┌──┬──┬──┬──┬──┐                                     addUsed(head,len) stages {id,len};
//   │  │  │el│el│  │                                     flush() publishes used.idx (Atomics.store)
//   └──┴──┴──┴──┴──┘
//
// State lives here (indices, size, flags, addresses); bytes live in the GuestMemory given to attach().
// Every guest-provided value is validated (DESIGN "Untrusted input"): a violation throws a typed
// VringError and marks the queue broken; a broken queue never touches memory again and rethrows the
// same error on every call until reset().
//
// The consume loop (lguest's wait_for_vq_desc, vm-virtio's README):
//   q.disableNotification();
//   do { while ((n = q.popBurst(32, chains)) > 0) { …; q.addUsed(head, len); } q.flush();
//        if (q.needsNotification()) signal(); } while (q.enableNotification());
// enableNotification() re-reads avail.idx after publishing avail_event / clearing NO_NOTIFY; both are
// Atomics (seq_cst), which closes the race with a driver that adds a buffer just as we go to sleep.

import { DescriptorChain } from './chain.ts';
import { DescriptorWalker } from './descriptor.ts';
import { DescriptorError, MemoryError, RingLayoutError, RingStateError, VringError, VringErrorCode } from './errors.ts';
import {
  AVAIL_ALIGN,
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  DESC_ALIGN,
  MAX_QUEUE_SIZE,
  USED_ALIGN,
  USED_ELEM_ID,
  USED_ELEM_LEN,
  USED_ELEM_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_USED_F_NO_NOTIFY,
  availAreaSize,
  availUsedEventOffset,
  descAreaSize,
  usedAreaSize,
  usedAvailEventOffset,
} from './layout.ts';
import type { RingInspection } from './ring-inspection.ts';
import type { DirtyLog } from './dirty-log.ts';
import { IotlbMiss } from './iotlb.ts';
import type { InflightLog, InflightRecovery } from './inflight.ts';
import type { GuestMemory, RangeLocation } from './memory.ts';

// The ring areas are read through typed arrays: these are layout.ts byte offsets as element indices
// (u16 = byte / 2, u32 = byte / 4), each computed once here. The avail and used areas as u16:
const AVAIL_FLAGS_U16 = AVAIL_FLAGS / 2;
const AVAIL_IDX_U16 = AVAIL_IDX / 2;
const AVAIL_RING_U16 = AVAIL_RING / 2; // heads are u16 (AVAIL_ELEM_SIZE): slot i is AVAIL_RING_U16 + i
const USED_FLAGS_U16 = USED_FLAGS / 2;
const USED_IDX_U16 = USED_IDX / 2;
// used.ring as u32 from USED_RING: USED_ELEM_U32 words per element, id then len.
const USED_ELEM_U32 = USED_ELEM_SIZE / 4;
const USED_ELEM_ID_U32 = USED_ELEM_ID / 4;
const USED_ELEM_LEN_U32 = USED_ELEM_LEN / 4;

/** inFlightPos of a chain taken up again from the inflight record (not from an avail slot). */
const RESUBMITTED = 0x10000;

/** Default cap on memory pieces per direction of one chain (Linux UIO_MAXIOV). */
export const DEFAULT_MAX_PIECES = 1024;

/** Configuration of one split virtqueue, as set by the driver (§4.1.4.3 / vhost-user SET_VRING_*). */
export interface SplitQueueOptions {
  /** Queue size: power of 2, 1…32768, ≤ maxSize. */
  size: number;
  /** Guest physical address of the descriptor table. */
  desc: number;
  /** Guest physical address of the available ring. */
  avail: number;
  /** Guest physical address of the used ring. */
  used: number;
  /** VIRTIO_F_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirect?: boolean;
  /** Largest size the device offered (QueueNumMax); default 32768. */
  maxSize?: number;
  /** Cap on memory pieces per direction of one chain; default 1024. */
  maxPieces?: number;
}

/** Where avail.idx lives, so native code can wait on it (waitKick) without knowing the layout. */
export interface AvailIdxLocation {
  /** Region index in the GuestMemory. */
  region: number;
  /** Byte offset of avail.idx in that region. */
  offset: number;
  /** Native mapping id of the region (-1 if none). */
  mappingId: number;
  /** Byte offset in that native mapping where the region starts (as Region.mappingOffset): avail.idx is
   *  at mappingOffset + offset in the mapping. */
  mappingOffset: number;
}

/**
 * What a sleeping worker watches to wake on new buffers without a kick: one u16 in guest memory and the
 * value it holds while nothing new has come. Split rings watch avail.idx; packed rings the flags of the
 * descriptor at the position they wait on.
 */
export interface QueueWatch {
  /** Where the u16 lives: byte mappingOffset + offset of native mapping mappingId (as availIdxLocation()). */
  location: AvailIdxLocation;
  /** Its "nothing new" value: wake once the u16 differs. */
  seen: number;
}

/** vring_need_event() of §2.7.10: has the index crossed `event` going from `old` to `now`? */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}

/** Host locations of the three areas of a ring. */
export interface RingLocations {
  desc: RangeLocation;
  avail: RangeLocation;
  used: RangeLocation;
}

function layoutError(code: (typeof VringErrorCode)[keyof typeof VringErrorCode], msg: string): never {
  throw new RingLayoutError(code, `${msg}; the queue cannot be used until the driver reconfigures it`);
}

/**
 * Validate a ring's shape and placement (§2.6, §2.7 alignment table) and locate its areas: size a
 * power of 2 in 1…min(32768, maxSize); desc/avail/used aligned 16/2/4; each area, event fields
 * included, inside one region and aligned in the host mapping too. Throws RingLayoutError.
 */
export function mapRing(mem: GuestMemory, size: number, desc: number, avail: number, used: number, maxSize: number = MAX_QUEUE_SIZE): RingLocations {
  if (!Number.isInteger(size) || size <= 0) layoutError(VringErrorCode.BAD_SIZE, `queue size ${size} is zero or not an integer`);
  if ((size & (size - 1)) !== 0) layoutError(VringErrorCode.BAD_SIZE, `queue size ${size} is not a power of 2`);
  if (size > MAX_QUEUE_SIZE) layoutError(VringErrorCode.BAD_SIZE, `queue size ${size} exceeds the split-ring maximum ${MAX_QUEUE_SIZE}`);
  if (size > maxSize) layoutError(VringErrorCode.BAD_SIZE, `queue size ${size} exceeds the device maximum ${maxSize}`);
  const areas = [
    ['descriptor table', desc, DESC_ALIGN, descAreaSize(size)],
    ['available ring', avail, AVAIL_ALIGN, availAreaSize(size)],
    ['used ring', used, USED_ALIGN, usedAreaSize(size)],
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
    // Typed arrays need the host address aligned too; true for page-aligned mappings.
    if (loc.byteOffset % align !== 0) {
      layoutError(VringErrorCode.MISALIGNED, `${name} is ${align}-aligned in the guest but not in the host mapping (region offset)`);
    }
    locs.push(loc);
  }
  return { desc: locs[0]!, avail: locs[1]!, used: locs[2]! };
}

/** Where a ring's three areas are: guest physical, or front-end virtual for ringUaddrToGpa(). */
export interface RingAddresses {
  desc: number;
  avail: number;
  used: number;
}

/**
 * vhost-user SET_VRING_ADDR gives a ring as front-end virtual addresses. Translate each area, sized
 * as mapRing sizes it (event fields included), through the memory table, then validate the result as
 * mapRing does. Returns the guest physical addresses. Throws MemoryError (an area not inside one
 * region) or RingLayoutError.
 */
export function ringUaddrToGpa(mem: GuestMemory, size: number, uaddr: RingAddresses, maxSize: number = MAX_QUEUE_SIZE): RingAddresses {
  const gpa = {
    desc: mem.uaddrToGpa(uaddr.desc, descAreaSize(size)),
    avail: mem.uaddrToGpa(uaddr.avail, availAreaSize(size)),
    used: mem.uaddrToGpa(uaddr.used, usedAreaSize(size)),
  };
  mapRing(mem, size, gpa.desc, gpa.avail, gpa.used, maxSize);
  return gpa;
}

/** Device side of a split virtqueue. See the file header for the data path and the consume loop. */
export class SplitQueue {
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly maxSize: number;
  readonly maxPieces: number;

  /** Free-running index of the next available-ring slot to pop. */
  lastAvail = 0;
  /** Free-running index of the next used-ring slot to fill (staged, published by flush()). */
  usedIdx = 0;
  /** used.idx value at the last notification this queue asked for (EVENT_IDX "old"). */
  signalledUsed = 0;
  /** Chains popped and not yet completed or rewound. */
  inFlight = 0;
  /** The error that broke this queue, or null. Once set, every call throws it. */
  broken: VringError | null = null;

  private mem: GuestMemory | null = null;
  private mask = 0;
  /** avail area as u16: flags, idx, ring[size] (heads), used_event. */
  private availU16: Uint16Array = new Uint16Array(0);
  /** used area as u16: flags, idx, …, avail_event. */
  private usedU16: Uint16Array = new Uint16Array(0);
  /** used.ring as u32: USED_ELEM_U32 words per element. */
  private usedElems: Uint32Array = new Uint32Array(0);
  /** u16 index of used_event in availU16. */
  private usedEventIdx = 0;
  /** u16 index of avail_event in usedU16. */
  private availEventIdx = 0;
  private availIdxLoc: RangeLocation | null = null;

  /** Last avail.idx read from the ring. */
  private shadowAvail = 0;
  /** Last used.idx published by flush(). */
  private publishedUsed = 0;
  private signalledValid = false;
  private notifyEnabled = true;
  /** Read used.idx from the ring on the next attach (fresh queue, or after setBase). */
  private syncUsedOnAttach = true;

  /** Per head: avail index it was popped at, or -1 when not in flight. */
  private inFlightPos: Int32Array = new Int32Array(0);
  /** Per avail slot: the head popped from it (rewind reads this, never the guest's ring). */
  private poppedHeads: Uint16Array = new Uint16Array(0);
  /** Per head: its reusable chain object, created on first use. */
  private chains: (DescriptorChain | undefined)[] = [];
  private readonly walker = new DescriptorWalker();

  /** vhost-user inflight record, when the front-end shared one (vring/inflight.ts). */
  private inflight: InflightLog | null = null;
  /** Heads completed since the last flush (the batch the inflight record links and clears). */
  private batchHeads: Uint16Array = new Uint16Array(0);
  private batchLen = 0;
  /** Chains to take up again before the avail ring, in their first pop order, after recovery. */
  private resubmit: number[] = [];
  private resubmitPos = 0;
  /** lastAvail when the resubmitted chains were recovered (ring pops since then follow them). */
  private resubmitBase = 0;
  /** The migration dirty log while logging is on, else null (then logging costs one null check). */
  private dirty: DirtyLog | null = null;
  /** Guest physical address at which the used ring's writes are logged, or -1: not logged. */
  private usedLog = -1;

  constructor(opts: SplitQueueOptions) {
    this.size = opts.size;
    this.desc = opts.desc;
    this.avail = opts.avail;
    this.used = opts.used;
    this.eventIdx = opts.eventIdx ?? false;
    this.indirect = opts.indirect ?? false;
    this.maxSize = opts.maxSize ?? MAX_QUEUE_SIZE;
    this.maxPieces = opts.maxPieces ?? DEFAULT_MAX_PIECES;
    if (!(Number.isInteger(this.maxPieces) && this.maxPieces >= 1)) throw new RangeError('maxPieces must be an integer ≥ 1');
  }

  /** Mark broken with `e` (if it is ours) and return it for throwing. */
  private fail(e: unknown): unknown {
    if (e instanceof VringError && this.broken === null) this.broken = e;
    return e;
  }

  /**
   * Bind to guest memory: validate size, alignment and placement, and cache typed-array views over the
   * three ring areas. Call again after every memory table change (with the workers quiesced). Throws
   * RingLayoutError and marks the queue broken if the layout is invalid.
   */
  attach(mem: GuestMemory): void {
    if (this.broken) throw this.broken;
    if (!mem.hasBytes) throw new RangeError('attach(mem): an address map (GuestMemory.addressMap) has no bytes to serve a queue');
    const size = this.size;
    let locs: RingLocations;
    try {
      locs = mapRing(mem, size, this.desc, this.avail, this.used, this.maxSize);
    } catch (e) {
      throw this.fail(e);
    }
    const { desc: d, avail: a, used: u } = locs;
    this.mem = mem;
    this.mask = size - 1;
    this.availU16 = new Uint16Array(a.buffer, a.byteOffset, availAreaSize(size) / 2);
    this.usedU16 = new Uint16Array(u.buffer, u.byteOffset, usedAreaSize(size) / 2);
    this.usedElems = new Uint32Array(u.buffer, u.byteOffset + USED_RING, USED_ELEM_U32 * size);
    this.usedEventIdx = availUsedEventOffset(size) / 2;
    this.availEventIdx = usedAvailEventOffset(size) / 2;
    this.availIdxLoc = mem.contiguous(this.avail + AVAIL_IDX, 2);
    this.walker.bind(mem, new Uint32Array(d.buffer, d.byteOffset, descAreaSize(size) / 4), size, this.indirect);
    if (this.inFlightPos.length !== size) {
      this.inFlightPos = new Int32Array(size).fill(-1);
      this.poppedHeads = new Uint16Array(size);
      this.chains = new Array<DescriptorChain | undefined>(size);
    }
    for (const c of this.chains) if (c !== undefined) c.mem = mem;
    if (this.syncUsedOnAttach) {
      this.syncUsedOnAttach = false;
      this.usedIdx = this.publishedUsed = this.signalledUsed = Atomics.load(this.usedU16, USED_IDX_U16);
      this.signalledValid = false;
    }
  }

  private checkUsable(): void {
    if (this.broken) throw this.broken;
    if (this.mem === null) {
      throw new RingLayoutError(VringErrorCode.NOT_ATTACHED, 'queue used before attach(mem): no guest memory bound');
    }
  }

  /**
   * setBase() for a front-end that may have lost the position (a back-end restarted after a crash).
   * QEMU derives the base from used.idx, which is in shared memory. DPDK's virtio-user, when its
   * back-end reconnects (server=1), sends 0 while its ring has gone on. A base is believed when the
   * chains it puts in flight, base − used.idx, are no more than the driver has made available,
   * avail.idx − used.idx; otherwise the queue resumes at used.idx, taking up again every chain the
   * device did not complete, as DPDK's own back-end does. A ring whose indices are further apart than
   * its size keeps the base (the first pop breaks the queue). Returns why the base was not taken, or
   * null when it was. Attach first.
   */
  resume(availIdx: number): string | null {
    this.setBase(availIdx);
    if (this.mem === null) return null;
    const used = this.usedIdx;
    const avail = Atomics.load(this.availU16, AVAIL_IDX_U16);
    const posted = (avail - used) & 0xffff;
    if (posted > this.size || ((availIdx - used) & 0xffff) <= posted) return null;
    this.setBase(used);
    return `front-end base ${availIdx} is outside the ring's window from used.idx ${used} to avail.idx ${avail}: resumed at used.idx`;
  }

  /**
   * vhost-user SET_VRING_BASE: continue from available index `availIdx`. The used index is taken from
   * the ring (now if attached, else at the next attach), as libvhost-user does.
   */
  setBase(availIdx: number): void {
    if (this.broken) throw this.broken;
    if (!Number.isInteger(availIdx) || availIdx < 0 || availIdx > 0xffff) throw new RangeError(`bad vring base ${availIdx}`);
    this.lastAvail = this.shadowAvail = availIdx;
    this.inFlight = 0;
    this.inFlightPos.fill(-1);
    this.resubmit = [];
    this.resubmitPos = this.batchLen = 0;
    if (this.mem !== null) {
      this.usedIdx = this.publishedUsed = this.signalledUsed = Atomics.load(this.usedU16, USED_IDX_U16);
      this.signalledValid = false;
    } else {
      this.syncUsedOnAttach = true;
    }
  }

  /** vhost-user GET_VRING_BASE: the next avail index (everything before it is completed or rewound). */
  base(): number {
    return this.lastAvail;
  }

  /** Where avail.idx lives (for native waitKick / busy-poll). */
  availIdxLocation(): AvailIdxLocation {
    this.checkUsable();
    const l = this.availIdxLoc!;
    return { region: l.region, offset: l.offset, mappingId: l.mappingId, mappingOffset: l.mappingOffset - l.offset };
  }

  /**
   * What a sleeping worker watches: avail.idx, which holds `seen` (default lastAvail; a device that
   * rewound chains passes where its last pop found none) until the driver adds more. The same contract as
   * PackedQueue.watch(): take it, then enableNotification(seen), whose re-check closes the race, then
   * sleep while the u16 at the location equals `seen`.
   */
  watch(seen: number = this.lastAvail): QueueWatch {
    return { location: this.availIdxLocation(), seen: seen & 0xffff };
  }

  /** Read avail.idx and validate it against lastAvail (§2.7.6: at most `size` ahead). */
  private refreshAvail(): number {
    const idx = Atomics.load(this.availU16, AVAIL_IDX_U16);
    const pending = (idx - this.lastAvail) & 0xffff;
    if (pending > this.size) {
      throw new RingStateError(
        VringErrorCode.AVAIL_IDX_JUMP,
        `avail.idx ${idx} is ${pending} entries ahead of the last consumed index ${this.lastAvail}, more than the ` +
          `queue size ${this.size} (CVE-2020-10723 class); the queue is marked broken`,
      );
    }
    this.shadowAvail = idx;
    return pending;
  }

  /** Read avail.idx now (validated against lastAvail): the "seen" value for sleeping on a kick. */
  availIdx(): number {
    this.checkUsable();
    try {
      this.refreshAvail();
    } catch (e) {
      throw this.fail(e);
    }
    return this.shadowAvail;
  }

  /** Chains taken up from the inflight record are still being popped (DeviceQueue.resubmitting). */
  get resubmitting(): boolean {
    return this.resubmit.length > 0;
  }

  /** Chains the driver has made available and we have not popped (reads avail.idx; validated). */
  availPending(): number {
    this.checkUsable();
    try {
      return this.refreshAvail() + (this.resubmit.length - this.resubmitPos);
    } catch (e) {
      throw this.fail(e);
    }
  }

  /** Pop one chain, or null when the ring is empty. Throws VringError (and breaks) on bad input. */
  pop(): DescriptorChain | null {
    this.checkUsable();
    try {
      if (this.resubmitPos < this.resubmit.length) return this.popResubmitted();
      if (this.lastAvail === this.shadowAvail && this.refreshAvail() === 0) return null;
      const c = this.popOne();
      if (this.eventIdx && this.notifyEnabled) this.storeAvailEvent(this.lastAvail);
      return c;
    } catch (e) {
      if (e instanceof IotlbMiss) return null; // the chain stays in the ring until its mapping comes
      throw this.fail(e);
    }
  }

  /**
   * Pop up to `max` chains into out[at…at+n−1] (reused chain objects) and return n. Reads avail.idx
   * once. Throws VringError (and breaks) on bad input; chains popped before the bad one stay in flight.
   */
  popBurst(max: number, out: DescriptorChain[], at: number = 0): number {
    this.checkUsable();
    try {
      this.refreshAvail();
      let n = 0;
      try {
        // Not out[at + n++] = pop…(): n would count a pop that throws.
        while (n < max && this.resubmitPos < this.resubmit.length) {
          out[at + n] = this.popResubmitted();
          n++;
        }
        while (n < max && this.lastAvail !== this.shadowAvail) {
          out[at + n] = this.popOne();
          n++;
        }
      } catch (e) {
        if (!(e instanceof IotlbMiss)) throw e;
        // Behind an IOMMU, a chain whose mapping has not come yet: it stays in the ring (iotlb.ts).
      }
      if (n > 0 && this.eventIdx && this.notifyEnabled) this.storeAvailEvent(this.lastAvail);
      return n;
    } catch (e) {
      throw this.fail(e);
    }
  }

  private popOne(): DescriptorChain {
    const pos = this.lastAvail;
    const slot = pos & this.mask;
    const head = this.availU16[AVAIL_RING_U16 + slot]!; // read once
    const size = this.size;
    if (head >= size) {
      throw new DescriptorError(VringErrorCode.HEAD_OUT_OF_RANGE, `available ring slot ${slot} holds head ${head} ≥ queue size ${size}; the queue is marked broken`);
    }
    if (this.inFlightPos[head]! >= 0) {
      throw new RingStateError(VringErrorCode.HEAD_IN_FLIGHT, `head ${head} was made available again while the device still holds it; the queue is marked broken`);
    }
    if (this.inFlight >= size) {
      throw new RingStateError(VringErrorCode.TOO_MANY_IN_FLIGHT, `more than ${size} chains in flight; the queue is marked broken`);
    }
    let c = this.chains[head];
    if (c === undefined) {
      c = this.chains[head] = new DescriptorChain(this.maxPieces);
      c.mem = this.mem;
    }
    this.walker.walk(head, c);
    this.inFlightPos[head] = pos;
    this.poppedHeads[slot] = head;
    this.inFlight++;
    this.lastAvail = (pos + 1) & 0xffff;
    if (this.inflight !== null) this.inflight.begin(head);
    return c;
  }

  /** Pops the next chain of the resubmit list (heads from the inflight record, checked < size). */
  private popResubmitted(): DescriptorChain {
    const head = this.resubmit[this.resubmitPos]!;
    if (this.inFlightPos[head]! >= 0) {
      throw new RingStateError(VringErrorCode.HEAD_IN_FLIGHT, `inflight record lists head ${head} twice; the queue is marked broken`);
    }
    let c = this.chains[head];
    if (c === undefined) {
      c = this.chains[head] = new DescriptorChain(this.maxPieces);
      c.mem = this.mem;
    }
    this.walker.walk(head, c);
    this.resubmitPos++;
    this.inFlightPos[head] = RESUBMITTED;
    this.inFlight++;
    this.inflight?.begin(head);
    return c;
  }

  /**
   * Attaches the vhost-user inflight record (or detaches it with null). From now on every pop is
   * recorded in it and every flush clears what it completed. Call recoverInflight() next when the
   * record may hold chains of a back-end that went away.
   */
  setInflight(log: InflightLog | null): void {
    if (log !== null && log.size !== this.size) throw new RangeError(`inflight record is for ${log.size} entries; the queue has ${this.size}`);
    this.inflight = log;
    if (this.batchHeads.length !== this.size) this.batchHeads = new Uint16Array(this.size);
    this.batchLen = 0;
  }

  /**
   * After a reconnect (attached, base set): reconcile the inflight record with the used ring and take
   * up the chains it lists as popped and not completed, before anything new from the avail ring. As
   * every chain popped was either completed or is listed, the next avail slot is used.idx plus their
   * number. With nothing to take up (a fresh record, or a clean stop) the base given by setBase stays.
   * Throws if no record is attached.
   */
  recoverInflight(): InflightRecovery {
    this.checkUsable();
    const log = this.inflight;
    if (log === null) throw new RingStateError(VringErrorCode.NOT_ATTACHED, 'recoverInflight() without an inflight record (setInflight)');
    const used = Atomics.load(this.usedU16, USED_IDX_U16);
    const rec = log.recover(used);
    if (rec.initialised || rec.heads.length === 0) return rec;
    this.usedIdx = this.publishedUsed = this.signalledUsed = used;
    this.signalledValid = false;
    this.inFlight = 0;
    this.inFlightPos.fill(-1);
    this.lastAvail = this.shadowAvail = this.resubmitBase = (used + rec.heads.length) & 0xffff;
    this.resubmit = rec.heads;
    this.resubmitPos = 0;
    return rec;
  }

  /**
   * Un-pop the last `n` popped chains (vu_queue_rewind): they will be popped again, re-read and
   * re-validated. They must all still be in flight, i.e. not completed.
   */
  rewind(n: number): void {
    this.checkUsable();
    try {
      if (!(Number.isInteger(n) && n >= 0 && n <= this.inFlight)) {
        throw new RingStateError(VringErrorCode.BAD_REWIND, `rewind(${n}) with ${this.inFlight} chains in flight`);
      }
      // Resubmitted chains were popped before any ring slot since recovery: they are rewound last.
      const fromRing = this.resubmit.length > 0 ? Math.min(n, (this.lastAvail - this.resubmitBase) & 0xffff) : n;
      const fromList = n - fromRing;
      if (fromList > this.resubmitPos) {
        throw new RingStateError(VringErrorCode.BAD_REWIND, `rewind(${n}) reaches back past the chains popped since recovery`);
      }
      for (let j = 1; j <= fromList; j++) {
        const h = this.resubmit[this.resubmitPos - j]!;
        if (this.inFlightPos[h] !== RESUBMITTED) {
          throw new RingStateError(VringErrorCode.BAD_REWIND, `rewind(${n}): resubmitted head ${h} was already completed`);
        }
      }
      for (let j = 1; j <= fromList; j++) {
        const h = this.resubmit[this.resubmitPos - j]!;
        this.inFlightPos[h] = -1;
        this.inflight?.cancel(h);
      }
      this.resubmitPos -= fromList;
      this.inFlight -= fromList;
      n = fromRing;
      for (let k = 1; k <= n; k++) {
        const pos = (this.lastAvail - k) & 0xffff;
        const h = this.poppedHeads[pos & this.mask]!;
        if (this.inFlightPos[h] !== pos) {
          throw new RingStateError(VringErrorCode.BAD_REWIND, `rewind(${n}): the chain popped ${k} back (head ${h}) was already completed`);
        }
      }
      for (let k = 1; k <= n; k++) {
        const pos = (this.lastAvail - k) & 0xffff;
        const h = this.poppedHeads[pos & this.mask]!;
        this.inFlightPos[h] = -1;
        this.inflight?.cancel(h);
      }
      this.inFlight -= n;
      this.lastAvail = (this.lastAvail - n) & 0xffff;
    } catch (e) {
      throw this.fail(e);
    }
  }

  /**
   * Stage a completion in the used ring: chain `head` is done and the device wrote `len` bytes into its
   * writable part. Not visible to the driver until flush(). A head not in flight (completed twice, or
   * never popped) throws RingStateError and breaks the queue; `len` beyond the writable length is a
   * device bug and throws RangeError.
   */
  addUsed(head: number, len: number): void {
    this.checkUsable();
    if (!(head >= 0 && head < this.size && this.inFlightPos[head]! >= 0)) {
      throw this.fail(
        new RingStateError(VringErrorCode.NOT_IN_FLIGHT, `addUsed(${head}): that head is not in flight (completed twice or never popped); the queue is marked broken`),
      );
    }
    const c = this.chains[head]!;
    if (!(len >= 0 && len <= c.writableLen && (len >>> 0) === len)) {
      throw new RangeError(`addUsed(${head}, ${len}): length exceeds the chain's ${c.writableLen} writable bytes`);
    }
    const e = (this.usedIdx & this.mask) * USED_ELEM_U32;
    this.usedElems[e + USED_ELEM_ID_U32] = head;
    this.usedElems[e + USED_ELEM_LEN_U32] = len;
    this.inFlightPos[head] = -1;
    if (this.dirty !== null && len > 0) this.dirty.markPieces(this.mem!, c.writable, len);
    if (this.inflight !== null && this.batchLen < this.batchHeads.length) this.batchHeads[this.batchLen++] = head;
    this.inFlight--;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    if (c.readable.capacity > 64 || c.writable.capacity > 64) c.trim();
  }

  /** Publish every staged completion: one used.idx store with release semantics (Atomics, seq_cst). */
  flush(): void {
    this.checkUsable();
    if (this.publishedUsed === this.usedIdx) return;
    const log = this.inflight;
    if (log !== null) log.prepareBatch(this.batchHeads, this.batchLen);
    Atomics.store(this.usedU16, USED_IDX_U16, this.usedIdx);
    if (this.dirty !== null && this.usedLog >= 0) this.logUsed(this.publishedUsed, this.usedIdx);
    this.publishedUsed = this.usedIdx;
    if (log !== null) {
      log.commitBatch(this.batchHeads, this.batchLen, this.usedIdx);
      this.batchLen = 0;
    }
    // Every resubmitted chain is out: rewinds never reach back past a flush.
    if (this.resubmit.length > 0 && this.resubmitPos === this.resubmit.length) {
      this.resubmit = [];
      this.resubmitPos = 0;
    }
  }

  /**
   * Should the device signal the driver for what flush() published? (§2.7.7.2, §2.7.10.) With
   * EVENT_IDX: vring_need_event(used_event, published, signalledUsed), or true if nothing was signalled
   * since setBase/attach. Without: something new was published and avail.flags lacks NO_INTERRUPT.
   * When it returns true, signalledUsed moves to the published index.
   */
  needsNotification(): boolean {
    this.checkUsable();
    const need = this.wantsSignal(!this.signalledValid);
    if (need) {
      this.signalledUsed = this.publishedUsed;
      this.signalledValid = true;
    }
    return need;
  }

  /**
   * The notification rule for what is published (needsNotification decides with it, inspect reads it):
   * `first`, no decision since setBase/attach, signals whatever EVENT_IDX says.
   */
  private wantsSignal(first: boolean): boolean {
    const now = this.publishedUsed;
    // The Atomics.load below orders after flush()'s Atomics.store: the spec's "memory barrier".
    if (this.eventIdx) return first || needEvent(Atomics.load(this.availU16, this.usedEventIdx), now, this.signalledUsed);
    return (first || now !== this.signalledUsed) && (Atomics.load(this.availU16, AVAIL_FLAGS_U16) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Ask the driver not to notify (kick) us: used.flags NO_NOTIFY, or stop advancing avail_event. */
  disableNotification(): void {
    this.checkUsable();
    this.notifyEnabled = false;
    if (!this.eventIdx) this.storeUsedFlags(Atomics.load(this.usedU16, USED_FLAGS_U16) | VRING_USED_F_NO_NOTIFY);
  }

  /**
   * Ask the driver to notify us again (clear NO_NOTIFY, or avail_event = `seen`), then re-check
   * avail.idx: true means avail.idx moved past `seen` meanwhile and the caller must drain again instead
   * of sleeping. `seen` defaults to lastAvail; a device that rewound chains (RX with too little room)
   * passes lastAvail as it was when its pop found nothing more. Not availIdx() read then: buffers added
   * since the pop may have come without a kick, and the sleep would pass over them. The store and the load are both Atomics (seq_cst),
   * so the re-check cannot be ordered before the store: no kick is lost between check and sleep.
   */
  enableNotification(seen: number = this.lastAvail): boolean {
    this.checkUsable();
    this.notifyEnabled = true;
    seen &= 0xffff;
    if (this.eventIdx) this.storeAvailEvent(seen);
    else this.storeUsedFlags(Atomics.load(this.usedU16, USED_FLAGS_U16) & ~VRING_USED_F_NO_NOTIFY & 0xffff);
    try {
      this.refreshAvail();
    } catch (e) {
      throw this.fail(e);
    }
    return this.shadowAvail !== seen;
  }

  /**
   * Logs every guest memory write from now on into `log` (live migration), or stops when null: the
   * bytes of each completed writable chain up to its used length, and, when `usedLogGpa` is given, the
   * used ring's writes at that guest physical address (vhost-user's log_guest_addr; normally `used`).
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

  /** Logs the used elements of slots [from, to) (free-running, may wrap) and the flags and idx before them. */
  private logUsed(from: number, to: number): void {
    const log = this.dirty!;
    const base = this.usedLog;
    log.mark(base, USED_RING);
    const n = (to - from) & 0xffff;
    const first = from & this.mask;
    const upTo = Math.min(n, this.size - first);
    log.mark(base + USED_RING + first * USED_ELEM_SIZE, upTo * USED_ELEM_SIZE);
    if (n > upTo) log.mark(base + USED_RING, Math.min(n - upTo, first) * USED_ELEM_SIZE);
  }

  private storeAvailEvent(v: number): void {
    Atomics.store(this.usedU16, this.availEventIdx, v);
    if (this.dirty !== null && this.usedLog >= 0) this.dirty.mark(this.usedLog + this.availEventIdx * 2, 2);
  }

  private storeUsedFlags(v: number): void {
    Atomics.store(this.usedU16, USED_FLAGS_U16, v);
    if (this.dirty !== null && this.usedLog >= 0) this.dirty.mark(this.usedLog + USED_FLAGS, 2);
  }

  /** Is `head` popped and not yet completed? */
  isInFlight(head: number): boolean {
    return head >= 0 && head < this.inFlightPos.length && this.inFlightPos[head]! >= 0;
  }

  /** DeviceQueue.inspect: where the queue and its ring stand now (reads guest memory, changes nothing). */
  inspect(): RingInspection {
    if (this.mem === null) throw new RingLayoutError(VringErrorCode.NOT_ATTACHED, 'inspect() before attach(mem): no guest memory bound');
    const availIdx = Atomics.load(this.availU16, AVAIL_IDX_U16);
    const availFlags = Atomics.load(this.availU16, AVAIL_FLAGS_U16);
    const usedEvent = Atomics.load(this.availU16, this.usedEventIdx);
    const now = this.publishedUsed;
    return {
      format: 'split',
      size: this.size,
      eventIdx: this.eventIdx,
      lastAvail: this.lastAvail,
      usedIdx: this.usedIdx,
      publishedUsed: now,
      inFlight: this.inFlight,
      driverAvail: availIdx,
      availPending: (availIdx - this.lastAvail) & 0xffff,
      driverEvent: { flags: availFlags, event: usedEvent },
      deviceEvent: { flags: Atomics.load(this.usedU16, USED_FLAGS_U16), event: Atomics.load(this.usedU16, this.availEventIdx) },
      signalledUsed: this.signalledValid ? this.signalledUsed : null,
      // Before the first decision nothing is owed yet: the first needsNotification() signals anyway.
      interruptOwed: this.signalledValid && this.wantsSignal(false),
    };
  }

  /**
   * Back to the just-configured state: indices 0, nothing in flight, notifications on, not broken.
   * Keeps size, addresses and the memory binding; re-attach if memory changed. Touches no guest memory.
   */
  reset(): void {
    this.broken = null;
    this.lastAvail = this.shadowAvail = 0;
    this.usedIdx = this.publishedUsed = this.signalledUsed = 0;
    this.signalledValid = false;
    this.inFlight = 0;
    this.inFlightPos.fill(-1);
    this.resubmit = [];
    this.resubmitPos = this.batchLen = 0;
    this.notifyEnabled = true;
    this.syncUsedOnAttach = false;
  }
}
