/**
 * harness/rings.ts — ring builders, split and packed, written from the driver's side: lay out a ring, write
 * descriptors (valid or not), chain buffers, build indirect tables, fill the available ring and read
 * or forge the used ring. Tests use them to put exactly the bytes they mean in front of a device —
 * lgnet's SplitQueue on a plain ArrayBuffer, an embedded NetDevice, or any vhost-user back-end — instead
 * of hand-writing descriptor bytes.
 *
 * Where it sits: part of lgnet/harness, beside DriverQueue (vring/driver.ts). DriverQueue is a correct
 * driver that refuses to build bad rings; these builders write what they are told, including what the
 * spec forbids. They work over any GuestMemory: a GuestRam (memfd, shared with a device process) or a
 * GuestMemory over plain ArrayBuffers (pure vring tests, no native code). Every offset comes from
 * vring/layout.ts.
 *
 *   desc table   [d0]─NEXT─▶[d1]─NEXT─▶[d2]        writeDesc, addChain, addDescLoop         §2.7.5
 *                [d3] INDIRECT ─▶ table [e0]─▶[e1]   indirectTable, writeTable, addIndirect*  §2.7.5.3
 *   avail ring   flags idx ring[size] used_event     offer, publish, setAvailIdx, setUsedEvent §2.7.6, §2.7.7
 *   used ring    flags idx ring[size] avail_event    usedElem, setUsedIdx, availEvent          §2.7.8, §2.7.10
 *
 * The builder keeps no ring index of its own (only offers staged and not yet published): avail.idx in
 * guest memory is the truth, so a builder can share a ring with a DriverQueue, or take over the ring of
 * a VirtioNetDriver's queue, and append where the driver left off.
 *
 * Hostile recipes (what the device must refuse, virtio 1.2; the code lgnet's vring/ answers with):
 *   descriptor loop                 addDescLoop([0]) / addIndirectLoop(n)     VRING_DESC_LOOP
 *   next ≥ size                     addNextOutOfRange()                       VRING_NEXT_OUT_OF_RANGE
 *   head ≥ size in avail.ring       offer(size)                               VRING_HEAD_OUT_OF_RANGE
 *   avail.idx jumps > size          jumpAvailIdx(size + 1)                    VRING_AVAIL_IDX_JUMP
 *   readable after writable         addReadAfterWrite()                       VRING_READ_AFTER_WRITE
 *   writable buffer on a TX queue   addChain([{ len, write: true }])          (device: txDropWritable)
 *   zero-length buffer              addChain([{ len: 0 }])                    VRING_ZERO_LEN
 *   unmapped / past the end         addChain([{ addr, len }])                 VRING_UNMAPPED
 *   addr + len wraps 2^64           addChain([{ addr: wrappingAddr(n), len: n }]) VRING_ADDR_WRAP
 *   indirect + NEXT                 addIndirectWithNext()                     VRING_INDIRECT_WITH_NEXT
 *   nested indirect                 addNestedIndirect()                       VRING_INDIRECT_NESTED
 *   indirect not on the head        addIndirectNotHead()                      VRING_INDIRECT_NOT_HEAD
 *   indirect length 0 or not ×16    addIndirectBadLength(24)                  VRING_INDIRECT_BAD_LEN
 *   indirect table unmapped         addIndirectRef({ addr, len })             VRING_UNMAPPED
 *
 * PackedRingBuilder does the same for packed rings (§2.8), every offset from vring/packed-layout.ts:
 *
 *   descriptor ring  │ addr len id flags │ …   writeDesc, putList, addList, addChain    §2.8.13, §2.8.6
 *                    flags AVAIL/USED per lap  (builder keeps the position idx | wrap << 15)  §2.8.1
 *                    INDIRECT ─▶ table         indirectTable, writeTable, addIndirect*  §2.8.7
 *                    used descriptors          readUsed, writeUsed (forge a device)      §2.8.22
 *   event areas      off_wrap | flags          setDriverEvent, setDeviceEvent            §2.8.14
 *
 *   list longer than the ring       addLongList()                             VRING_DESC_LOOP
 *   tail of the wrong lap           addWrongLapTail()                         VRING_WRAP_ORDER
 *   used marker where avail belongs addUsedMarker()                           VRING_BAD_DESC_FLAGS
 *   id ≥ size                       addIdOutOfRange()                         VRING_HEAD_OUT_OF_RANGE
 *   id offered while in flight      addChain(bufs, { id })                    VRING_HEAD_IN_FLIGHT
 *   more slots held than the ring   addChain past a full ring the device holds VRING_TOO_MANY_IN_FLIGHT
 *   readable after writable         addReadAfterWrite({ indirect })           VRING_READ_AFTER_WRITE
 *   indirect + NEXT / inside a list addIndirectWithNext() / addIndirectNotHead() VRING_INDIRECT_WITH_NEXT / _NOT_HEAD
 *   nested indirect                 addNestedIndirect()                       VRING_INDIRECT_NESTED
 *   indirect length 0 or not ×16    addIndirectBadLength(24)                  VRING_INDIRECT_BAD_LEN
 *   buffers (zero, unmapped, wrap)  addChain([{ addr, len }])                 as for split rings
 */
import {
  AVAIL_ELEM_SIZE,
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  MAX_QUEUE_SIZE,
  USED_ELEM_ID,
  USED_ELEM_LEN,
  USED_ELEM_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  availAreaSize,
  availUsedEventOffset,
  descAreaSize,
  isQueueSize,
  splitRingLayout,
  usedAreaSize,
  usedAvailEventOffset,
  EVENT_AREA_SIZE,
  EVENT_FLAGS,
  EVENT_OFF_WRAP,
  MAX_PACKED_QUEUE_SIZE,
  PACKED_DESC_ADDR,
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_LEN,
  PACKED_DESC_SIZE,
  PACKED_POS_START,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  encodePackedRingBase,
  isPackedQueueSize,
  packedDescAreaSize,
  packedPos,
  packedPosIdx,
  packedPosWrap,
  packedRingLayout,
  type GuestMemory,
  type PackedRingLayout,
  type SplitRingLayout,
} from '../vring/index.ts';

const TWO32 = 0x1_0000_0000;

/** Hands out guest physical addresses. GuestRam is one; Arena is one over any guest range. */
export interface GuestAllocator {
  /** Returns the guest physical address of `len` fresh bytes aligned to `align` (default 16). */
  alloc(len: number, align?: number): number;
}

/**
 * A bump allocator over the guest range [start, end): the allocator for rings over a GuestMemory of
 * plain ArrayBuffers (GuestRam has its own). It does not check that the range is mapped; writes do.
 */
export class Arena implements GuestAllocator {
  readonly start: number;
  readonly end: number;
  private next: number;

  constructor(start: number, end: number) {
    if (!(Number.isSafeInteger(start) && Number.isSafeInteger(end) && 0 <= start && start <= end)) {
      throw new RangeError(`Arena: bad range [${start}, ${end})`);
    }
    this.start = start;
    this.end = end;
    this.next = start;
  }

  /** `len` bytes aligned to `align` (a power of 2); RangeError when the arena is exhausted. */
  alloc(len: number, align = 16): number {
    if (!(Number.isSafeInteger(len) && len >= 0) || align <= 0 || (align & (align - 1)) !== 0) {
      throw new RangeError(`Arena.alloc(${len}, ${align}): length must be ≥ 0, alignment a power of 2`);
    }
    const at = Math.ceil(this.next / align) * align;
    if (at + len > this.end) throw new RangeError(`Arena exhausted: ${len} bytes wanted, ${Math.max(0, this.end - at)} left`);
    this.next = at + len;
    return at;
  }

  /** Bytes handed out so far (alignment padding included). */
  get used(): number {
    return this.next - this.start;
  }
}

/** A 64-bit guest address: a number below 2^53, or its [low, high] u32 halves (any 64-bit value). */
export type RawAddr = number | readonly [number, number];

/** The four fields of a descriptor (struct virtq_desc, §2.7.5), written as given, valid or not. */
export interface RawDesc {
  addr: RawAddr;
  /** u32. */
  len: number;
  /** VRING_DESC_F_* bits, u16; default 0 (device-readable, last). */
  flags?: number;
  /** u16; default 0. */
  next?: number;
}

/** A descriptor as read back from guest memory. */
export interface DescFields {
  /** The address as a number: exact below 2^53 (use lo/hi above). */
  addr: number;
  lo: number;
  hi: number;
  len: number;
  flags: number;
  next: number;
}

/** One buffer of a chain, seen from the device: readable (the default) or writable. */
export interface ChainBuffer {
  /** Device-writable (VRING_DESC_F_WRITE). Default false. */
  write?: boolean;
  /** Length (u32; 0 is written as 0). Default: data.length. */
  len?: number;
  /** Where the buffer is. Default: allocated, all of a chain's buffers back to back in one block. */
  addr?: RawAddr;
  /** Bytes to store at the buffer (at most len). */
  data?: Uint8Array;
}

/** An indirect descriptor table in guest memory (§2.7.5.3): its address and its length in bytes. */
export interface IndirectTable {
  addr: number;
  len: number;
}

/** How a built chain reaches the device. */
export interface OfferOptions {
  /** Put the head in the available ring (default true). False: only the descriptors are written. */
  offer?: boolean;
  /** Move avail.idx past it at once (default true). False: staged until publish(). */
  publish?: boolean;
}

/** Where a ring goes; see SplitRingBuilder.layOut. */
export interface RingPlacement {
  /** Queue size: a power of 2, 1…32768. */
  size: number;
  /** Explicit area addresses (all three), placed as given: misaligned or overlapping is allowed. */
  desc?: number;
  avail?: number;
  used?: number;
  /** Else the contiguous layout of §2.7.2 at this 16-aligned base... */
  base?: number;
  /** ...or at a base taken from the allocator (page-aligned). */
  alloc?: GuestAllocator;
  /** Alignment of the used ring in the contiguous layout: 4096 (legacy, default) or 4 (tightest). */
  usedAlign?: number;
  /** Start every index (avail.idx, used.idx, used_event, avail_event) here, to test u16 wrap. */
  startIdx?: number;
}

/** The [lo, hi] halves of a 64-bit address. */
function halves(a: RawAddr): [number, number] {
  if (typeof a === 'number') {
    if (!(Number.isSafeInteger(a) && a >= 0)) throw new RangeError(`address ${a} is not an integer in [0, 2^53); pass [lo, hi] for larger ones`);
    const lo = a % TWO32;
    return [lo, (a - lo) / TWO32];
  }
  return [a[0] >>> 0, a[1] >>> 0];
}

/** Writes descriptor fields at guest address `at` (a table slot): any values, u32/u16 truncated. */
export function writeDescriptor(mem: GuestMemory, at: number, d: RawDesc): void {
  const [lo, hi] = halves(d.addr);
  mem.writeU64(at + DESC_ADDR, lo, hi);
  mem.writeU32(at + DESC_LEN, d.len >>> 0);
  mem.writeU16(at + DESC_FLAGS, (d.flags ?? 0) & 0xffff);
  mem.writeU16(at + DESC_NEXT, (d.next ?? 0) & 0xffff);
}

/** Reads the descriptor at guest address `at`. */
export function readDescriptor(mem: GuestMemory, at: number): DescFields {
  const lo = mem.readU32(at + DESC_ADDR);
  const hi = mem.readU32(at + DESC_ADDR + 4);
  return { addr: hi * TWO32 + lo, lo, hi, len: mem.readU32(at + DESC_LEN), flags: mem.readU16(at + DESC_FLAGS), next: mem.readU16(at + DESC_NEXT) };
}

/** A 64-bit address [lo, hi] from which `len` bytes wrap past 2^64: the device must refuse it. */
export function wrappingAddr(len: number): [number, number] {
  if (!(Number.isInteger(len) && len >= 2 && len <= 0xffff_ffff)) throw new RangeError(`wrappingAddr(${len}): length must be in [2, 2^32)`);
  return [TWO32 - Math.floor(len / 2), 0xffff_ffff];
}

/** A 64-bit address [lo, hi] at 2^53 + lo: beyond anything mapped, and beyond what a JS number holds exactly. */
export function hugeAddr(lo = 0): [number, number] {
  return [lo >>> 0, 2 ** 53 / TWO32];
}

/** A chain buffer with its address decided. */
interface PlacedBuffer {
  addr: RawAddr;
  len: number;
  write: boolean;
}

/**
 * Gives buffers without an address room in one block from `alloc`, back to back, and stores their
 * data: the shared first step of both builders' chains.
 */
function placeBuffers(mem: GuestMemory, bufs: readonly ChainBuffer[], alloc: (len: number) => number): PlacedBuffer[] {
  const lens = bufs.map((b) => {
    const len = b.len ?? b.data?.length;
    if (len === undefined) throw new RangeError('a chain buffer needs len or data');
    if (b.data && b.data.length > len) throw new RangeError(`buffer data (${b.data.length} bytes) is longer than its len ${len}`);
    return len;
  });
  let need = 0;
  bufs.forEach((b, i) => {
    if (b.addr === undefined) need += lens[i]!;
  });
  let at = bufs.some((b) => b.addr === undefined) ? alloc(Math.max(need, 1)) : 0;
  return bufs.map((b, i) => {
    let addr: RawAddr;
    if (b.addr === undefined) {
      addr = at;
      at += lens[i]!;
    } else {
      addr = b.addr;
    }
    if (b.data && b.data.length > 0) {
      const [lo, hi] = halves(addr);
      mem.write(hi * TWO32 + lo, b.data);
    }
    return { addr, len: lens[i]!, write: b.write === true };
  });
}

/**
 * A split virtqueue in guest memory, driven from the driver's side (§2.7.13: supplying buffers).
 * Descriptor indices for new chains are taken in turn (0, 1, 2, … wrapping at size) unless given.
 * Nothing here checks what it writes: that is the device's job, and the point of the tests.
 */
export class SplitRingBuilder {
  readonly mem: GuestMemory;
  readonly size: number;
  /** Guest physical addresses of the three areas (`end`: the first byte after the used ring). */
  readonly layout: SplitRingLayout;
  /** Where buffers and tables come from when no address is given (null: pass addresses). */
  readonly allocator: GuestAllocator | null;
  private readonly mask: number;
  private nextDesc = 0;
  private staged = 0;

  private constructor(mem: GuestMemory, size: number, layout: SplitRingLayout, allocator: GuestAllocator | null) {
    if (!isQueueSize(size)) {
      throw new RangeError(`queue size ${size} must be a power of 2 in [1, ${MAX_QUEUE_SIZE}] (bad sizes are a device configuration, not ring bytes)`);
    }
    this.mem = mem;
    this.size = size;
    this.layout = layout;
    this.allocator = allocator;
    this.mask = size - 1;
  }

  /**
   * Lays a fresh ring out in `mem`, as a driver does before it gives the addresses to the device
   * (§2.7.2, §4.1.4.3): at the explicit desc/avail/used addresses, or contiguously at `base`, or at a
   * base taken from `alloc`; then zeroes the three areas (event fields included) and sets every index
   * to `startIdx` (default 0). `alloc` also serves later buffers and tables.
   */
  static layOut(mem: GuestMemory, p: RingPlacement): SplitRingBuilder {
    const usedAlign = p.usedAlign ?? 4096;
    let layout: SplitRingLayout;
    if (p.desc !== undefined || p.avail !== undefined || p.used !== undefined) {
      if (p.desc === undefined || p.avail === undefined || p.used === undefined) throw new RangeError('layOut: give all of desc, avail and used, or none');
      layout = { desc: p.desc, avail: p.avail, used: p.used, end: Math.max(p.desc + descAreaSize(p.size), p.avail + availAreaSize(p.size), p.used + usedAreaSize(p.size)) };
    } else if (p.base !== undefined) {
      layout = splitRingLayout(p.size, p.base, usedAlign);
    } else if (p.alloc) {
      layout = splitRingLayout(p.size, p.alloc.alloc(splitRingLayout(p.size, 0, usedAlign).end, 4096), usedAlign);
    } else {
      throw new RangeError('layOut: give desc/avail/used, a base, or an allocator');
    }
    const b = new SplitRingBuilder(mem, p.size, layout, p.alloc ?? null);
    mem.fill(layout.desc, descAreaSize(p.size), 0);
    mem.fill(layout.avail, availAreaSize(p.size), 0);
    mem.fill(layout.used, usedAreaSize(p.size), 0);
    const start = (p.startIdx ?? 0) & 0xffff;
    if (start !== 0) {
      b.setAvailIdx(start);
      b.setUsedIdx(start);
      b.setUsedEvent(start);
      b.setAvailEvent(start);
    }
    return b;
  }

  /**
   * A builder over a ring that already exists (a DriverQueue's, a VirtioNetDriver queue's `setup`):
   * writes nothing now. New chains take descriptor indices from `firstDesc` (default 0) on, so pick
   * indices the driver does not hold, or overwrite one on purpose.
   */
  static over(mem: GuestMemory, ring: { size: number; desc: number; avail: number; used: number }, alloc?: GuestAllocator, firstDesc = 0): SplitRingBuilder {
    const end = Math.max(ring.desc + descAreaSize(ring.size), ring.avail + availAreaSize(ring.size), ring.used + usedAreaSize(ring.size));
    const b = new SplitRingBuilder(mem, ring.size, { desc: ring.desc, avail: ring.avail, used: ring.used, end }, alloc ?? null);
    b.nextDesc = firstDesc & b.mask;
    return b;
  }

  /** size, desc, avail, used: what SplitQueue, DriverQueue and NetDevice.setupQueue take. */
  get config(): { size: number; desc: number; avail: number; used: number } {
    return { size: this.size, desc: this.layout.desc, avail: this.layout.avail, used: this.layout.used };
  }

  /** Allocates from the builder's allocator. */
  alloc(len: number, align = 16): number {
    if (!this.allocator) throw new RangeError('this ring builder has no allocator: pass buffer and table addresses explicitly');
    return this.allocator.alloc(len, align);
  }

  // ---- Descriptor table (§2.7.5) ----------------------------------------------------------------

  /** Guest address of descriptor `i` (0 ≤ i < size). */
  descAddr(i: number): number {
    if (!(Number.isInteger(i) && i >= 0 && i < this.size)) throw new RangeError(`descriptor index ${i} is outside the ${this.size}-entry table`);
    return this.layout.desc + i * DESC_SIZE;
  }

  /** Writes descriptor `i` with any field values: flags, next and addresses are not checked. */
  writeDesc(i: number, d: RawDesc): void {
    writeDescriptor(this.mem, this.descAddr(i), d);
  }

  /** Reads descriptor `i` back. */
  readDesc(i: number): DescFields {
    return readDescriptor(this.mem, this.descAddr(i));
  }

  /** Takes `n` (≤ size) descriptor indices in turn, wrapping at size. */
  private takeDescs(n: number): number[] {
    const out: number[] = [];
    for (let k = 0; k < n; k++) {
      out.push(this.nextDesc);
      this.nextDesc = (this.nextDesc + 1) & this.mask;
    }
    return out;
  }

  /** Gives buffers without an address room in one allocated block, back to back; stores their data. */
  private place(bufs: readonly ChainBuffer[]): PlacedBuffer[] {
    return placeBuffers(this.mem, bufs, (len) => this.alloc(len));
  }

  // ---- Chains (§2.7.13.1) -----------------------------------------------------------------------

  /**
   * Writes a chain of descriptors, one per buffer in the order given (readable and writable in any
   * order: the builder does not enforce §2.7.5.2), linked with NEXT, at the indices `descs` (default:
   * the next free ones), and offers its head. Returns the head index.
   */
  addChain(bufs: readonly ChainBuffer[], opts: OfferOptions & { descs?: readonly number[] } = {}): number {
    if (bufs.length === 0) throw new RangeError('addChain: a chain needs at least one buffer');
    if (opts.descs && opts.descs.length !== bufs.length) throw new RangeError(`addChain: ${bufs.length} buffers but ${opts.descs.length} descriptor indices`);
    if (!opts.descs && bufs.length > this.size) {
      throw new RangeError(`a chain of ${bufs.length} descriptors does not fit a ${this.size}-entry table (use an indirect table, or addDescLoop for a cycle)`);
    }
    const placed = this.place(bufs); // before taking indices: a failed call leaves them as they were
    const descs = opts.descs ? [...opts.descs] : this.takeDescs(bufs.length);
    placed.forEach((b, k) => {
      const last = k === placed.length - 1;
      this.writeDesc(descs[k]!, {
        addr: b.addr,
        len: b.len,
        flags: (b.write ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT),
        next: last ? 0 : descs[k + 1]!,
      });
    });
    return this.finish(descs[0]!, opts);
  }

  /** Writes raw entries into an indirect table at `at` (any values, any count). */
  writeTable(at: number, entries: readonly RawDesc[]): IndirectTable {
    entries.forEach((e, k) => writeDescriptor(this.mem, at + k * DESC_SIZE, e));
    return { addr: at, len: entries.length * DESC_SIZE };
  }

  /**
   * Writes a well-formed indirect table (§2.7.5.3): one entry per buffer, linked 0 → 1 → … with NEXT,
   * WRITE on writable buffers, at `at` (default: allocated, 16-aligned).
   */
  indirectTable(bufs: readonly ChainBuffer[], opts: { at?: number } = {}): IndirectTable {
    const placed = this.place(bufs);
    const at = opts.at ?? this.alloc(placed.length * DESC_SIZE, DESC_SIZE);
    return this.writeTable(
      at,
      placed.map((b, k) => {
        const last = k === placed.length - 1;
        return { addr: b.addr, len: b.len, flags: (b.write ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT), next: last ? 0 : k + 1 };
      }),
    );
  }

  /**
   * Writes one descriptor (index `desc`, default the next free one) with INDIRECT pointing at `table`
   * — any address, any length: pass an unmapped address, 0 or 24 to test the device — plus any `flags`
   * and `next`, and offers it. Returns the head index.
   */
  addIndirectRef(table: IndirectTable | { addr: RawAddr; len: number }, opts: OfferOptions & { desc?: number; flags?: number; next?: number } = {}): number {
    const head = opts.desc ?? this.takeDescs(1)[0]!;
    this.writeDesc(head, { addr: table.addr, len: table.len, flags: VRING_DESC_F_INDIRECT | (opts.flags ?? 0), next: opts.next ?? 0 });
    return this.finish(head, opts);
  }

  /** A chain through a well-formed indirect table (at `table`, default allocated); offers its head. */
  addIndirectChain(bufs: readonly ChainBuffer[], opts: OfferOptions & { table?: number; desc?: number } = {}): number {
    const t = this.indirectTable(bufs, opts.table !== undefined ? { at: opts.table } : {});
    return this.addIndirectRef(t, opts);
  }

  private finish(head: number, opts: OfferOptions): number {
    if (opts.offer !== false) this.offer(head, { publish: opts.publish !== false });
    return head;
  }

  // ---- Hostile chains: each breaks one rule of §2.7.5 / §2.7.5.3 --------------------------------

  /**
   * A descriptor loop (§2.7.5.2: "loops are forbidden"; CVE-2019-9547 class): the descriptors in
   * `cycle` each hold a readable `len`-byte buffer (one shared buffer) and NEXT to the following one,
   * the last back to the first. Offers cycle[0]. [0] is a self-loop.
   */
  addDescLoop(cycle: readonly number[] = [0], opts: OfferOptions & { len?: number; addr?: RawAddr } = {}): number {
    if (cycle.length === 0) throw new RangeError('addDescLoop: an empty cycle');
    const len = opts.len ?? 16;
    const addr = opts.addr ?? this.alloc(len);
    cycle.forEach((d, k) => this.writeDesc(d, { addr, len, flags: VRING_DESC_F_NEXT, next: cycle[(k + 1) % cycle.length]! }));
    return this.finish(cycle[0]!, opts);
  }

  /** An indirect table of `entries` entries that NEXT around in a cycle (0 → 1 → … → 0); offers it. */
  addIndirectLoop(entries: number, opts: OfferOptions & { len?: number } = {}): number {
    const len = opts.len ?? 1;
    const buf = this.alloc(len);
    const t = this.writeTable(
      this.alloc(entries * DESC_SIZE, DESC_SIZE),
      Array.from({ length: entries }, (_, k) => ({ addr: buf, len, flags: VRING_DESC_F_NEXT, next: (k + 1) % entries })),
    );
    return this.addIndirectRef(t, opts);
  }

  /** A descriptor whose NEXT points at `next` (default size: one past the table); offers it. */
  addNextOutOfRange(opts: OfferOptions & { next?: number; len?: number } = {}): number {
    const len = opts.len ?? 16;
    const addr = this.alloc(len);
    const head = this.takeDescs(1)[0]!;
    this.writeDesc(head, { addr, len, flags: VRING_DESC_F_NEXT, next: opts.next ?? this.size });
    return this.finish(head, opts);
  }

  /** A device-writable buffer followed by a device-readable one (§2.7.5.2), direct or indirect. */
  addReadAfterWrite(opts: OfferOptions & { indirect?: boolean; len?: number } = {}): number {
    const len = opts.len ?? 16;
    const bufs: ChainBuffer[] = [{ len, write: true }, { len }];
    return opts.indirect ? this.addIndirectChain(bufs, opts) : this.addChain(bufs, opts);
  }

  /** INDIRECT and NEXT on the same descriptor (§2.7.5.3.1), NEXT pointing at the following index. */
  addIndirectWithNext(opts: OfferOptions = {}): number {
    const t = this.indirectTable([{ len: 16 }]);
    const head = this.takeDescs(1)[0]!;
    return this.addIndirectRef(t, { ...opts, desc: head, flags: VRING_DESC_F_NEXT, next: (head + 1) & this.mask });
  }

  /** An indirect table whose only entry is itself INDIRECT, pointing at a valid table (§2.7.5.3.1). */
  addNestedIndirect(opts: OfferOptions = {}): number {
    const inner = this.indirectTable([{ len: 16 }]);
    const outer = this.writeTable(this.alloc(DESC_SIZE, DESC_SIZE), [{ addr: inner.addr, len: inner.len, flags: VRING_DESC_F_INDIRECT }]);
    return this.addIndirectRef(outer, opts);
  }

  /** A readable descriptor whose NEXT leads to an INDIRECT one: INDIRECT not on the head. */
  addIndirectNotHead(opts: OfferOptions = {}): number {
    const t = this.indirectTable([{ len: 16 }]);
    const buf = this.alloc(16);
    const [head, second] = this.takeDescs(2) as [number, number];
    this.writeDesc(head, { addr: buf, len: 16, flags: VRING_DESC_F_NEXT, next: second });
    this.writeDesc(second, { addr: t.addr, len: t.len, flags: VRING_DESC_F_INDIRECT });
    return this.finish(head, opts);
  }

  /**
   * An INDIRECT head whose table length is `len` (0, or not a multiple of 16: §2.7.5.3.1); the table
   * behind it holds valid entries up to the next multiple of 16, so only the length is wrong.
   */
  addIndirectBadLength(len: number, opts: OfferOptions = {}): number {
    const entries = Math.max(1, Math.ceil(len / DESC_SIZE));
    const t = this.indirectTable(Array.from({ length: entries }, () => ({ len: 16 })));
    return this.addIndirectRef({ addr: t.addr, len }, opts);
  }

  // ---- Available ring (§2.7.6), written by the driver -------------------------------------------

  /** Guest address of available ring entry `slot` (taken modulo size, as idx is). */
  availSlotAddr(slot: number): number {
    return this.layout.avail + AVAIL_RING + AVAIL_ELEM_SIZE * (slot & this.mask);
  }

  /** avail.idx as it is in guest memory. */
  get availIdx(): number {
    return this.load16(this.layout.avail + AVAIL_IDX);
  }

  /** Stores avail.idx (u16) with release semantics (§2.7.13.3): writes before it are visible first. */
  setAvailIdx(idx: number): void {
    this.store16(this.layout.avail + AVAIL_IDX, idx & 0xffff);
  }

  /** avail.flags (VRING_AVAIL_F_NO_INTERRUPT, §2.7.7). */
  get availFlags(): number {
    return this.mem.readU16(this.layout.avail + AVAIL_FLAGS);
  }

  setAvailFlags(flags: number): void {
    this.store16(this.layout.avail + AVAIL_FLAGS, flags & 0xffff);
  }

  /** The head in available ring entry `slot` (modulo size). */
  availEntry(slot: number): number {
    return this.mem.readU16(this.availSlotAddr(slot));
  }

  /** Writes any u16 into available ring entry `slot` (modulo size): heads ≥ size included. */
  setAvailEntry(slot: number, head: number): void {
    this.mem.writeU16(this.availSlotAddr(slot), head & 0xffff);
  }

  /** used_event, after avail.ring (EVENT_IDX, §2.7.7). */
  get usedEvent(): number {
    return this.load16(this.layout.avail + availUsedEventOffset(this.size));
  }

  setUsedEvent(v: number): void {
    this.store16(this.layout.avail + availUsedEventOffset(this.size), v & 0xffff);
  }

  /**
   * Puts `head` (any u16, so heads ≥ size too) in the next free available ring entry — avail.idx plus
   * what is staged — and, unless publish is false, moves avail.idx past it (§2.7.13.2, §2.7.13.3).
   * Returns the free-running position it went to.
   */
  offer(head: number, opts: { publish?: boolean } = {}): number {
    const pos = (this.availIdx + this.staged) & 0xffff;
    this.setAvailEntry(pos, head);
    this.staged++;
    if (opts.publish !== false) this.publish();
    return pos;
  }

  /** Makes every staged offer visible: one avail.idx store. */
  publish(): void {
    if (this.staged === 0) return;
    this.setAvailIdx(this.availIdx + this.staged);
    this.staged = 0;
  }

  /**
   * Moves avail.idx `by` entries (u16 arithmetic) without filling the ring: by > size is the index
   * jump a device must refuse (§2.7.6; CVE-2020-10723 class). Returns the new avail.idx.
   */
  jumpAvailIdx(by: number): number {
    const idx = (this.availIdx + by) & 0xffff;
    this.setAvailIdx(idx);
    return idx;
  }

  // ---- Used ring (§2.7.8), written by the device: read it, or forge it to test a driver ----------

  /** Guest address of used ring element `slot` (modulo size). */
  usedElemAddr(slot: number): number {
    return this.layout.used + USED_RING + USED_ELEM_SIZE * (slot & this.mask);
  }

  /** used.idx as it is in guest memory. */
  get usedIdx(): number {
    return this.load16(this.layout.used + USED_IDX);
  }

  setUsedIdx(idx: number): void {
    this.store16(this.layout.used + USED_IDX, idx & 0xffff);
  }

  /** used.flags (VRING_USED_F_NO_NOTIFY, §2.7.10). */
  get usedFlags(): number {
    return this.mem.readU16(this.layout.used + USED_FLAGS);
  }

  setUsedFlags(flags: number): void {
    this.store16(this.layout.used + USED_FLAGS, flags & 0xffff);
  }

  /** Used ring element `slot` (modulo size): the chain's head id and the bytes the device wrote. */
  usedElem(slot: number): { id: number; len: number } {
    const at = this.usedElemAddr(slot);
    return { id: this.mem.readU32(at + USED_ELEM_ID), len: this.mem.readU32(at + USED_ELEM_LEN) };
  }

  /** Writes any id and len into used ring element `slot` (a hostile device, for driver tests). */
  setUsedElem(slot: number, id: number, len: number): void {
    const at = this.usedElemAddr(slot);
    this.mem.writeU32(at + USED_ELEM_ID, id >>> 0);
    this.mem.writeU32(at + USED_ELEM_LEN, len >>> 0);
  }

  /** avail_event, after used.ring (EVENT_IDX, §2.7.10). */
  get availEvent(): number {
    return this.load16(this.layout.used + usedAvailEventOffset(this.size));
  }

  setAvailEvent(v: number): void {
    this.store16(this.layout.used + usedAvailEventOffset(this.size), v & 0xffff);
  }

  // ---- Ring indices are shared with another party: Atomics where alignment allows --------------

  private view16(gpa: number): Uint16Array | null {
    const loc = this.mem.contiguous(gpa, 2);
    return loc.byteOffset % 2 === 0 ? new Uint16Array(loc.buffer, loc.byteOffset, 1) : null;
  }

  private load16(gpa: number): number {
    const v = this.view16(gpa);
    return v ? Atomics.load(v, 0) : this.mem.readU16(gpa);
  }

  private store16(gpa: number, value: number): void {
    const v = this.view16(gpa);
    if (v) Atomics.store(v, 0, value);
    else this.mem.writeU16(gpa, value); // a misaligned ring, built on purpose: no atomicity to keep
  }
}

// ================================================================================================
// Packed rings (virtio 1.2 §2.8, VIRTIO_F_RING_PACKED)
// ================================================================================================

/** One packed descriptor (struct pvirtq_desc, §2.8.13), written as given, valid or not. */
export interface RawPackedDesc {
  addr: RawAddr;
  /** u32. */
  len: number;
  /** Buffer id, u16; default 0. */
  id?: number;
  /** All flag bits, AVAIL and USED included, u16; default 0. */
  flags?: number;
}

/** A descriptor of a list for PackedRingBuilder.putList: AVAIL/USED for its lap are added unless `raw`. */
export interface PackedListDesc extends RawPackedDesc {
  /** Flags or'ed into the computed ones (NEXT on all but the last, plus AVAIL/USED). */
  extra?: number;
  /** Write `flags` exactly as given: no NEXT, no AVAIL/USED. */
  raw?: boolean;
}

/** How a built packed chain reaches the device. */
export interface PackedOfferOptions {
  /** Write the head's flags, which hand the chain over, at once (default true). False: staged until publish(). */
  publish?: boolean;
  /** Buffer id (u16, any value: ids ≥ size or in flight too). Default: the next in turn, 0, 1, … wrapping at size. */
  id?: number;
}

/** Where a packed ring goes; see PackedRingBuilder.layOut. */
export interface PackedRingPlacement {
  /** Queue size: 1…32768, any integer (§2.8.10.1: not only powers of 2). */
  size: number;
  /** Explicit area addresses (all three), placed as given: misaligned or overlapping is allowed. */
  desc?: number;
  driver?: number;
  device?: number;
  /** Else the compact layout of packedRingLayout at this 16-aligned base... */
  base?: number;
  /** ...or at a base taken from the allocator (page-aligned). */
  alloc?: GuestAllocator;
  /** Position (idx | wrap << 15) where both sides begin; default slot 0 with wrap counter 1 (§2.8.1). */
  start?: number;
}

/** AVAIL = wrap, USED = !wrap: how a driver marks a descriptor available in the lap with wrap counter `wrap` (§2.8.1). */
export const packedAvailFlags = (wrap: number): number => ((wrap & 1) !== 0 ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED);
/** AVAIL = USED = wrap: how a device marks a descriptor used in that lap (§2.8.1). */
export const packedUsedFlags = (wrap: number): number => ((wrap & 1) !== 0 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0);

/** A u16 view of guest address `gpa` when it is 2-aligned in its mapping (for Atomics), else null. */
function view16At(mem: GuestMemory, gpa: number): Uint16Array | null {
  const loc = mem.contiguous(gpa, 2);
  return loc.byteOffset % 2 === 0 ? new Uint16Array(loc.buffer, loc.byteOffset, 1) : null;
}

/**
 * A packed virtqueue in guest memory, driven from the driver's side (§2.8.21: supplying buffers).
 * Unlike a split ring, nothing in memory says where the driver is: the builder keeps the position
 * (idx | wrap << 15) its next chain goes to, starting where layOut/over put it, and writes each
 * descriptor's AVAIL/USED bits for the lap its slot is in. Nothing here checks what it writes.
 */
export class PackedRingBuilder {
  readonly mem: GuestMemory;
  readonly size: number;
  /** Guest physical addresses of the descriptor ring and the two event areas (`end`: the first byte after them). */
  readonly layout: PackedRingLayout;
  /** Where buffers and tables come from when no address is given (null: pass addresses). */
  readonly allocator: GuestAllocator | null;
  /** Position both sides began at (idx | wrap << 15). */
  readonly start: number;
  private pos: number;
  private nextId = 0;
  /** Heads written with publish: false: their slots and the flags publish() writes. */
  private staged: Array<[number, number]> = [];

  private constructor(mem: GuestMemory, size: number, layout: PackedRingLayout, allocator: GuestAllocator | null, start: number) {
    if (!isPackedQueueSize(size)) throw new RangeError(`packed queue size ${size} must be an integer in [1, ${MAX_PACKED_QUEUE_SIZE}]`);
    if (!(Number.isInteger(start) && start >= 0 && start <= 0xffff && packedPosIdx(start) < size)) {
      throw new RangeError(`position ${start} is not idx | wrap << 15 with idx < ${size}`);
    }
    this.mem = mem;
    this.size = size;
    this.layout = layout;
    this.allocator = allocator;
    this.start = start;
    this.pos = start;
  }

  /**
   * Lays a fresh packed ring out in `mem` (§2.8.10.1): at the explicit desc/driver/device addresses,
   * or compactly at `base`, or at a base from `alloc`; zeroes the descriptor ring and both event areas,
   * and, for a `start` other than slot 0 wrap 1, marks the slots as a driver that got there would have
   * left them (those before it used in this lap, the rest in the previous one), as
   * PackedDriverQueue.init does. Pair it with PackedQueue.setBase(builder.base).
   */
  static layOut(mem: GuestMemory, p: PackedRingPlacement): PackedRingBuilder {
    let layout: PackedRingLayout;
    if (p.desc !== undefined || p.driver !== undefined || p.device !== undefined) {
      if (p.desc === undefined || p.driver === undefined || p.device === undefined) throw new RangeError('layOut: give all of desc, driver and device, or none');
      layout = { desc: p.desc, driver: p.driver, device: p.device, end: Math.max(p.desc + packedDescAreaSize(p.size), p.driver + EVENT_AREA_SIZE, p.device + EVENT_AREA_SIZE) };
    } else if (p.base !== undefined) {
      layout = packedRingLayout(p.size, p.base);
    } else if (p.alloc) {
      layout = packedRingLayout(p.size, p.alloc.alloc(packedRingLayout(p.size, 0).end, 4096));
    } else {
      throw new RangeError('layOut: give desc/driver/device, a base, or an allocator');
    }
    const b = new PackedRingBuilder(mem, p.size, layout, p.alloc ?? null, p.start ?? PACKED_POS_START);
    mem.fill(layout.desc, packedDescAreaSize(p.size), 0);
    mem.fill(layout.driver, EVENT_AREA_SIZE, 0);
    mem.fill(layout.device, EVENT_AREA_SIZE, 0);
    const idx = packedPosIdx(b.start);
    const w = packedPosWrap(b.start);
    for (let j = 0; j < p.size; j++) {
      const f = packedUsedFlags(j < idx ? w : w ^ 1);
      if (f !== 0) b.setFlags(j, f);
    }
    return b;
  }

  /**
   * A builder over a packed ring that already exists (a PackedDriverQueue's, a VirtioNetDriver packed
   * queue's `setup`, whose avail and used are the driver and device areas): writes nothing now. Its
   * next chain goes to `position` (default slot 0 wrap 1; a driver's q.availIdx to append after it),
   * with ids from `firstId` on.
   */
  static over(
    mem: GuestMemory,
    ring: { size: number; desc: number; driver?: number; device?: number; avail?: number; used?: number },
    alloc?: GuestAllocator,
    opts: { position?: number; firstId?: number } = {},
  ): PackedRingBuilder {
    const driver = ring.driver ?? ring.avail;
    const device = ring.device ?? ring.used;
    if (driver === undefined || device === undefined) throw new RangeError('over: give the driver and device areas (or avail and used)');
    const end = Math.max(ring.desc + packedDescAreaSize(ring.size), driver + EVENT_AREA_SIZE, device + EVENT_AREA_SIZE);
    const b = new PackedRingBuilder(mem, ring.size, { desc: ring.desc, driver, device, end }, alloc ?? null, opts.position ?? PACKED_POS_START);
    b.nextId = (opts.firstId ?? 0) % ring.size;
    return b;
  }

  /** size, desc, driver, device: what PackedQueue and PackedDriverQueue take. */
  get config(): { size: number; desc: number; driver: number; device: number } {
    return { size: this.size, desc: this.layout.desc, driver: this.layout.driver, device: this.layout.device };
  }

  /**
   * The ring as NetDevice.setupQueue and vhost-user SET_VRING_ADDR name it (avail = driver area, used
   * = device area), with lastAvail = base; add kickFd and callFd.
   */
  get setup(): { size: number; desc: number; avail: number; used: number; lastAvail: number } {
    return { size: this.size, desc: this.layout.desc, avail: this.layout.driver, used: this.layout.device, lastAvail: this.base };
  }

  /** The vhost-user ring base (encodePackedRingBase) of a device starting where this ring started. */
  get base(): number {
    const idx = packedPosIdx(this.start);
    const wrap = packedPosWrap(this.start);
    return encodePackedRingBase({ lastAvailIdx: idx, availWrap: wrap, lastUsedIdx: idx, usedWrap: wrap });
  }

  /** Position (idx | wrap << 15) the next chain goes to. */
  get position(): number {
    return this.pos;
  }

  /** Moves the position `n` slots on (wrapping, flipping the lap) without writing: slots left as they are. */
  skip(n: number): number {
    this.pos = this.advance(this.pos, n);
    return this.pos;
  }

  /** Sets the position the next chain goes to (idx | wrap << 15). */
  seek(pos: number): void {
    if (!(Number.isInteger(pos) && pos >= 0 && pos <= 0xffff && packedPosIdx(pos) < this.size)) throw new RangeError(`seek(${pos}): not a position of a ${this.size}-entry ring`);
    this.pos = pos;
  }

  /** Allocates from the builder's allocator. */
  alloc(len: number, align = 16): number {
    if (!this.allocator) throw new RangeError('this ring builder has no allocator: pass buffer and table addresses explicitly');
    return this.allocator.alloc(len, align);
  }

  private advance(pos: number, n: number): number {
    let idx = packedPosIdx(pos) + n;
    let wrap = packedPosWrap(pos);
    // n may exceed the size (a list longer than the ring): every pass over the end flips the lap.
    while (idx >= this.size) {
      idx -= this.size;
      wrap ^= 1;
    }
    return packedPos(idx, wrap);
  }

  // ---- Descriptor ring (§2.8.13) ----------------------------------------------------------------

  /** Guest address of the descriptor in `slot` (0 ≤ slot < size). */
  descAddr(slot: number): number {
    if (!(Number.isInteger(slot) && slot >= 0 && slot < this.size)) throw new RangeError(`slot ${slot} is outside the ${this.size}-entry ring`);
    return this.layout.desc + slot * PACKED_DESC_SIZE;
  }

  /** Writes every field of the descriptor in `slot` with any values, flags last (Atomics where aligned). */
  writeDesc(slot: number, d: RawPackedDesc): void {
    const at = this.descAddr(slot);
    const [lo, hi] = halves(d.addr);
    this.mem.writeU64(at + PACKED_DESC_ADDR, lo, hi);
    this.mem.writeU32(at + PACKED_DESC_LEN, d.len >>> 0);
    this.mem.writeU16(at + PACKED_DESC_ID, (d.id ?? 0) & 0xffff);
    this.setFlags(slot, d.flags ?? 0);
  }

  /** What a device writes back in `slot`: len, id and flags (readAddr for the address). */
  readDesc(slot: number): { len: number; id: number; flags: number } {
    const at = this.descAddr(slot);
    return { len: this.mem.readU32(at + PACKED_DESC_LEN), id: this.mem.readU16(at + PACKED_DESC_ID), flags: this.mem.readU16(at + PACKED_DESC_FLAGS) };
  }

  /** The address in `slot`: as a number (exact below 2^53) and as u32 halves. */
  readAddr(slot: number): { addr: number; lo: number; hi: number } {
    const at = this.descAddr(slot);
    const lo = this.mem.readU32(at + PACKED_DESC_ADDR);
    const hi = this.mem.readU32(at + PACKED_DESC_ADDR + 4);
    return { addr: hi * TWO32 + lo, lo, hi };
  }

  /** Stores the flags of `slot` (u16) with release semantics: the descriptor's other fields are visible first. */
  setFlags(slot: number, flags: number): void {
    const at = this.descAddr(slot) + PACKED_DESC_FLAGS;
    const v = view16At(this.mem, at);
    if (v) Atomics.store(v, 0, flags & 0xffff);
    else this.mem.writeU16(at, flags & 0xffff); // a misaligned ring, built on purpose
  }

  /**
   * Lays out a list at position `pos`: consecutive slots, NEXT on all but the last (unless a
   * descriptor gives `flags`), AVAIL/USED for the lap each slot is in (unless `raw`), plus `extra`;
   * the head's flags last, so a device polling it sees the whole list. The id is written as given
   * (default 0) on each. Returns the position after the list. Does not move the builder's position.
   */
  putList(pos: number, descs: readonly PackedListDesc[]): number {
    if (descs.length === 0) throw new RangeError('putList: a list needs at least one descriptor');
    let p = pos;
    let head: [number, number] | null = null;
    descs.forEach((d, i) => {
      const slot = packedPosIdx(p);
      const flags = d.raw ? (d.flags ?? 0) : (d.flags ?? (i < descs.length - 1 ? VRING_DESC_F_NEXT : 0)) | (d.extra ?? 0) | packedAvailFlags(packedPosWrap(p));
      // Until its real flags go in last, the head carries the previous lap's used marker: neither
      // available nor a used marker of this lap, whatever the lap.
      this.writeDesc(slot, { ...d, flags: i === 0 ? packedUsedFlags(packedPosWrap(p) ^ 1) : flags });
      if (i === 0) head = [slot, flags];
      p = this.advance(p, 1);
    });
    this.setFlags(head![0], head![1]);
    return p;
  }

  // ---- Chains (§2.8.21.1) at the builder's position -----------------------------------------------

  private takeId(opts: PackedOfferOptions): number {
    if (opts.id !== undefined) return opts.id & 0xffff;
    const id = this.nextId;
    this.nextId = (this.nextId + 1) % this.size;
    return id;
  }

  /**
   * Writes descriptors at the builder's position, as putList does, the id on each, and moves the
   * position past them. With publish: false the head keeps flags that do not hand it over until
   * publish(). The general form of every chain below; hostile lists too. Returns the id.
   */
  addList(descs: readonly PackedListDesc[], opts: PackedOfferOptions = {}): number {
    const id = this.takeId(opts);
    const list = descs.map((d) => ({ ...d, id: d.id ?? id }));
    const at = this.pos;
    if (opts.publish === false) {
      // Write the list, then take the head back out of the device's sight.
      const headFlags = list[0]!.raw ? (list[0]!.flags ?? 0) : (list[0]!.flags ?? (list.length > 1 ? VRING_DESC_F_NEXT : 0)) | (list[0]!.extra ?? 0) | packedAvailFlags(packedPosWrap(at));
      const hidden = packedUsedFlags(packedPosWrap(at) ^ 1);
      this.pos = this.putList(at, [{ ...list[0]!, raw: true, flags: hidden }, ...list.slice(1)]);
      this.staged.push([packedPosIdx(at), headFlags]);
    } else {
      this.pos = this.putList(at, list);
    }
    return id;
  }

  /**
   * Writes a chain, one descriptor per buffer in the order given (readable and writable in any order:
   * §2.8.6 is not enforced here), linked by NEXT, at the builder's position, and hands it over.
   * Returns its buffer id.
   */
  addChain(bufs: readonly ChainBuffer[], opts: PackedOfferOptions = {}): number {
    if (bufs.length === 0) throw new RangeError('addChain: a chain needs at least one buffer');
    const placed = placeBuffers(this.mem, bufs, (len) => this.alloc(len));
    return this.addList(placed.map((b) => ({ addr: b.addr, len: b.len, extra: b.write ? VRING_DESC_F_WRITE : 0 })), opts);
  }

  /** Writes raw entries into an indirect table at `at` (any values, any count; id and NEXT are ignored by the device, §2.8.7). */
  writeTable(at: number, entries: readonly RawPackedDesc[]): IndirectTable {
    entries.forEach((e, i) => {
      const o = at + i * PACKED_DESC_SIZE;
      const [lo, hi] = halves(e.addr);
      this.mem.writeU64(o + PACKED_DESC_ADDR, lo, hi);
      this.mem.writeU32(o + PACKED_DESC_LEN, e.len >>> 0);
      this.mem.writeU16(o + PACKED_DESC_ID, (e.id ?? 0) & 0xffff);
      this.mem.writeU16(o + PACKED_DESC_FLAGS, (e.flags ?? 0) & 0xffff);
    });
    return { addr: at, len: entries.length * PACKED_DESC_SIZE };
  }

  /** A well-formed indirect table (§2.8.7): one entry per buffer, WRITE the only flag, at `at` (default allocated, 16-aligned). */
  indirectTable(bufs: readonly ChainBuffer[], opts: { at?: number } = {}): IndirectTable {
    const placed = placeBuffers(this.mem, bufs, (len) => this.alloc(len));
    const at = opts.at ?? this.alloc(placed.length * PACKED_DESC_SIZE, PACKED_DESC_SIZE);
    return this.writeTable(at, placed.map((b) => ({ addr: b.addr, len: b.len, flags: b.write ? VRING_DESC_F_WRITE : 0 })));
  }

  /**
   * One descriptor with INDIRECT pointing at `table` — any address, any length — plus any `flags`,
   * at the builder's position. Returns its id.
   */
  addIndirectRef(table: IndirectTable | { addr: RawAddr; len: number }, opts: PackedOfferOptions & { flags?: number } = {}): number {
    return this.addList([{ addr: table.addr, len: table.len, flags: VRING_DESC_F_INDIRECT | (opts.flags ?? 0) }], opts);
  }

  /** A chain through a well-formed indirect table (at `table`, default allocated). Returns its id. */
  addIndirectChain(bufs: readonly ChainBuffer[], opts: PackedOfferOptions & { table?: number } = {}): number {
    return this.addIndirectRef(this.indirectTable(bufs, opts.table !== undefined ? { at: opts.table } : {}), opts);
  }

  /** Hands over every chain staged with publish: false: their head flags, the first one's last. */
  publish(): void {
    for (let i = this.staged.length - 1; i >= 0; i--) this.setFlags(this.staged[i]![0], this.staged[i]![1]);
    this.staged = [];
  }

  // ---- Hostile chains: each breaks one rule of §2.8 -------------------------------------------------

  /**
   * A list of `n` descriptors, every one with NEXT (§2.8.17: no list longer than the ring). With n =
   * size (the default) the list never ends: the device must stop after a ring's worth. Fewer leave it
   * open onto a slot that is not available. More cannot be written: they would overwrite its head.
   */
  addLongList(n: number = this.size, opts: PackedOfferOptions & { len?: number } = {}): number {
    if (!(Number.isInteger(n) && n >= 1 && n <= this.size)) throw new RangeError(`addLongList(${n}): a list in a ${this.size}-entry ring holds 1…${this.size} descriptors`);
    const len = opts.len ?? 1;
    const addr = this.alloc(len);
    return this.addList(Array.from({ length: n }, () => ({ addr, len, flags: VRING_DESC_F_NEXT })), opts);
  }

  /**
   * A two-descriptor list whose tail is marked for the wrong lap (§2.8.1, §2.8.17): the head is
   * available, the tail carries the previous lap's AVAIL/USED, as if seen before the driver wrote it.
   */
  addWrongLapTail(opts: PackedOfferOptions = {}): number {
    const addr = this.alloc(32);
    const tailWrap = packedPosWrap(this.advance(this.pos, 1));
    return this.addList([{ addr, len: 16 }, { addr: addr + 16, len: 16, raw: true, flags: packedAvailFlags(tailWrap ^ 1) }], opts);
  }

  /** A used marker of the current lap (AVAIL = USED = wrap) where the next available descriptor belongs. */
  addUsedMarker(opts: PackedOfferOptions & { len?: number } = {}): number {
    const len = opts.len ?? 16;
    return this.addList([{ addr: this.alloc(len), len, raw: true, flags: packedUsedFlags(packedPosWrap(this.pos)) }], opts);
  }

  /** A one-buffer chain whose id is `id` (default size: one past the last valid id). */
  addIdOutOfRange(id: number = this.size, opts: { publish?: boolean; len?: number } = {}): number {
    const len = opts.len ?? 16;
    return this.addList([{ addr: this.alloc(len), len }], { ...opts, id });
  }

  /** A device-writable buffer followed by a device-readable one (§2.8.6), direct or indirect. */
  addReadAfterWrite(opts: PackedOfferOptions & { indirect?: boolean; len?: number } = {}): number {
    const len = opts.len ?? 16;
    const bufs: ChainBuffer[] = [{ len, write: true }, { len }];
    return opts.indirect ? this.addIndirectChain(bufs, opts) : this.addChain(bufs, opts);
  }

  /** INDIRECT and NEXT on the same descriptor, followed by a plain one (§2.8.19). */
  addIndirectWithNext(opts: PackedOfferOptions = {}): number {
    const t = this.indirectTable([{ len: 16 }]);
    return this.addList([{ addr: t.addr, len: t.len, extra: VRING_DESC_F_INDIRECT }, { addr: this.alloc(16), len: 16 }], opts);
  }

  /** A readable descriptor with NEXT, then an INDIRECT one: INDIRECT inside a list (§2.8.19). */
  addIndirectNotHead(opts: PackedOfferOptions = {}): number {
    const t = this.indirectTable([{ len: 16 }]);
    return this.addList([{ addr: this.alloc(16), len: 16 }, { addr: t.addr, len: t.len, extra: VRING_DESC_F_INDIRECT }], opts);
  }

  /** An indirect table whose only entry is itself INDIRECT, pointing at a valid table (§2.8.19: no nesting). */
  addNestedIndirect(opts: PackedOfferOptions = {}): number {
    const inner = this.indirectTable([{ len: 16 }]);
    const outer = this.writeTable(this.alloc(PACKED_DESC_SIZE, PACKED_DESC_SIZE), [{ addr: inner.addr, len: inner.len, flags: VRING_DESC_F_INDIRECT }]);
    return this.addIndirectRef(outer, opts);
  }

  /** An INDIRECT descriptor whose table length is `len` (0, or not a multiple of 16); the table behind it is valid. */
  addIndirectBadLength(len: number, opts: PackedOfferOptions = {}): number {
    const entries = Math.max(1, Math.ceil(len / PACKED_DESC_SIZE));
    const t = this.indirectTable(Array.from({ length: entries }, () => ({ len: 16 })));
    return this.addIndirectRef({ addr: t.addr, len }, opts);
  }

  // ---- Used descriptors, written by the device: read them, or forge them to test a driver ----------

  /** The used descriptor at `pos` (idx | wrap << 15), or null when that slot is not used in that lap. */
  readUsed(pos: number): { id: number; len: number; write: boolean } | null {
    const d = this.readDesc(packedPosIdx(pos));
    if ((d.flags & (VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED)) !== packedUsedFlags(packedPosWrap(pos))) return null;
    return { id: d.id, len: d.len, write: (d.flags & VRING_DESC_F_WRITE) !== 0 };
  }

  /** Writes a used descriptor at `pos` (a hostile device, for driver tests): any id and len; WRITE when len > 0 unless told. */
  writeUsed(pos: number, id: number, len: number, opts: { write?: boolean } = {}): void {
    const write = opts.write ?? len > 0;
    this.writeDesc(packedPosIdx(pos), { addr: 0, len, id, flags: packedUsedFlags(packedPosWrap(pos)) | (write ? VRING_DESC_F_WRITE : 0) });
  }

  // ---- Event suppression (§2.8.14) ----------------------------------------------------------------

  /** The driver event suppression structure (the driver writes it): any flags, any off_wrap. */
  setDriverEvent(flags: number, offWrap = 0): void {
    this.writeEvent(this.layout.driver, flags, offWrap);
  }

  get driverEvent(): { offWrap: number; flags: number } {
    return this.readEvent(this.layout.driver);
  }

  /** The device event suppression structure (the device writes it): forge it to steer a driver's kicks. */
  setDeviceEvent(flags: number, offWrap = 0): void {
    this.writeEvent(this.layout.device, flags, offWrap);
  }

  get deviceEvent(): { offWrap: number; flags: number } {
    return this.readEvent(this.layout.device);
  }

  private writeEvent(at: number, flags: number, offWrap: number): void {
    this.mem.writeU16(at + EVENT_OFF_WRAP, offWrap & 0xffff);
    this.mem.writeU16(at + EVENT_FLAGS, flags & 0xffff);
  }

  private readEvent(at: number): { offWrap: number; flags: number } {
    return { offWrap: this.mem.readU16(at + EVENT_OFF_WRAP), flags: this.mem.readU16(at + EVENT_FLAGS) };
  }
}
