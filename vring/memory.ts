// vring/memory.ts — guest physical memory: the one place that turns guest addresses into bytes.
//
// Where it sits: under everything in vring/. The native layer maps the VMM's memory fds (or the
// harness's memfd) and hands us one ArrayBuffer per mapping; tests hand us plain ArrayBuffers. A
// GuestMemory is the region table over those buffers. Every guest address that lgnet dereferences —
// ring areas, descriptor buffers, indirect tables, vhost-user ring addresses — goes through
// translate() / contiguous() / uaddrToGpa() here, which bounds-check, reject wrap-around and split a
// range that crosses regions into pieces (libvhost-user's virtqueue_map_desc idea).
//
//   guest physical address space            ArrayBuffers (mmap'd guest RAM)
//   0 ┌──────────────┐ region 0 ─────────▶ [ bufferOffset ... bufferOffset+size )
//     │   mapped     │
//     ├──────────────┤ (hole: unmapped — any byte here is a MemoryError)
//     │              │
//     ├──────────────┤ region 1 ─────────▶ [ ... )
//     │   mapped     │   a descriptor buffer spanning regions 0|1 becomes two pieces
//     └──────────────┘
//
// Regions larger than 1 GiB are split internally into 1 GiB chunks, so that an offset within a region
// always fits a u32 (PieceList stores offsets in Uint32Arrays). Chunks of one region stay contiguous,
// and contiguous() treats them as one range.
//
// Spec: virtio 1.2 §2.7.5 (buffers are guest physical addresses); vhost-user "memory regions".

import { DescriptorError, MemoryError, VringErrorCode } from './errors.ts';
import { IOTLB_ACCESS, type Iotlb } from './iotlb.ts';

/** Largest region we keep unsplit: offsets inside a region stay well within u32. */
export const REGION_CHUNK = 1 << 30;
/** First address a JS number cannot hold exactly; nothing at or above it is mapped. */
export const ADDR_LIMIT = 2 ** 53;

/** One guest memory region as supplied by the native layer or a test. */
export interface RegionSpec {
  /** Guest physical address of the first byte. */
  gpa: number;
  /** Length in bytes, > 0. */
  size: number;
  /** The bytes: an mmap'd external ArrayBuffer in production, a plain (or shared) one in tests. */
  buffer: ArrayBufferLike;
  /** Where the region starts inside `buffer` (default 0). */
  bufferOffset?: number;
  /** Native mapping id (for the batched readv/writev table); -1 or absent if none. */
  mappingId?: number;
  /** Byte offset within that native mapping where this region starts (default: bufferOffset). */
  mappingOffset?: number;
  /** vhost-user frontend virtual address of the region start; absent if none. */
  uaddr?: number;
}

/**
 * A region of an address map (GuestMemory.addressMap): where it is, without its bytes. `mappingOffset`
 * also stands for the offset in the buffer a thread will wrap, so ring alignment is checked as it will be.
 */
export type AddressSpec = Omit<RegionSpec, 'buffer' | 'bufferOffset'>;

const NO_BYTES = new ArrayBuffer(0);
/** Set by addressMap() for the one construction it makes. */
let buildingAddressMap = false;

/** A validated region (or 1 GiB chunk of one). Offsets used with `u8`/`dv` are region-relative. */
export interface Region {
  readonly gpa: number;
  readonly size: number;
  /** gpa + size: first byte after the region. */
  readonly end: number;
  /** Bytes of the region; index 0 is `gpa`. */
  readonly u8: Uint8Array;
  /** DataView over the same bytes. */
  readonly dv: DataView;
  readonly buffer: ArrayBufferLike;
  /** Offset of the region's first byte in `buffer`. */
  readonly bufferOffset: number;
  readonly mappingId: number;
  readonly mappingOffset: number;
  /** Frontend virtual address of the first byte, or -1. */
  readonly uaddr: number;
  /** Index of the RegionSpec this chunk came from: chunks with the same source are contiguous. */
  readonly source: number;
}

/** Where a contiguous guest range lives: its region and how to build typed arrays over it. */
export interface RangeLocation {
  /** Index of the region holding the first byte. */
  region: number;
  /** Offset of the first byte in that region. */
  offset: number;
  buffer: ArrayBufferLike;
  /** Offset of the first byte in `buffer`. */
  byteOffset: number;
  mappingId: number;
  /** Offset of the first byte in the native mapping. */
  mappingOffset: number;
}

/**
 * A list of memory pieces — (region index, offset in region, length) — in three parallel Uint32Arrays,
 * reused between chains so the hot path does not allocate. It grows (doubling) up to `maxCapacity`;
 * one more piece than that is a DescriptorError (VRING_TOO_MANY_PIECES): that is the iovec cap.
 */
export class PieceList {
  count = 0;
  region: Uint32Array;
  offset: Uint32Array;
  length: Uint32Array;
  /** Current allocated capacity. */
  capacity: number;
  /** Hard cap on `count`. */
  readonly maxCapacity: number;

  constructor(capacity: number, maxCapacity: number = capacity) {
    if (!(capacity >= 1 && maxCapacity >= capacity)) throw new RangeError(`bad PieceList capacity ${capacity}/${maxCapacity}`);
    this.capacity = capacity;
    this.maxCapacity = maxCapacity;
    this.region = new Uint32Array(capacity);
    this.offset = new Uint32Array(capacity);
    this.length = new Uint32Array(capacity);
  }

  /** Forget all pieces (keeps the storage). */
  reset(): void {
    this.count = 0;
  }

  /** Append one piece; grows or throws DescriptorError when the cap is reached. */
  push(region: number, offset: number, length: number): void {
    const i = this.count;
    if (i === this.capacity) this.grow();
    this.region[i] = region;
    this.offset[i] = offset;
    this.length[i] = length;
    this.count = i + 1;
  }

  /** Give back storage grown beyond `capacity` (only when empty-able: call after reset()). */
  shrink(capacity: number): void {
    if (this.capacity <= capacity || this.count > capacity) return;
    this.capacity = capacity;
    this.region = new Uint32Array(capacity);
    this.offset = new Uint32Array(capacity);
    this.length = new Uint32Array(capacity);
    this.count = 0;
  }

  private grow(): void {
    if (this.capacity >= this.maxCapacity) {
      throw new DescriptorError(
        VringErrorCode.TOO_MANY_PIECES,
        `descriptor chain maps to more than ${this.maxCapacity} memory pieces (iovec cap); the guest built an ` +
          'oversized scatter list, the queue is marked broken',
      );
    }
    const cap = Math.min(this.capacity * 2, this.maxCapacity);
    const r = new Uint32Array(cap);
    const o = new Uint32Array(cap);
    const l = new Uint32Array(cap);
    r.set(this.region);
    o.set(this.offset);
    l.set(this.length);
    this.region = r;
    this.offset = o;
    this.length = l;
    this.capacity = cap;
  }
}

const hex = (n: number): string => '0x' + n.toString(16);

function badRegion(msg: string): MemoryError {
  return new MemoryError(VringErrorCode.BAD_REGION, `invalid guest memory region table: ${msg}; the table is rejected`);
}

function isAddr(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/**
 * The guest's memory: a sorted, validated, non-overlapping region table over ArrayBuffers. Immutable
 * once built; a memory table change builds a new GuestMemory and re-attaches the queues.
 */
export class GuestMemory {
  /** Regions sorted by gpa (large ones split into 1 GiB chunks). */
  readonly regions: readonly Region[];
  /** False for an address map (addressMap()): translation only, no queue can attach to it. */
  readonly hasBytes: boolean;
  private lastHit = 0;
  private readonly scratch: PieceList;
  /**
   * Behind an IOMMU: descriptor addresses are I/O virtual addresses, looked up here and then found by
   * their front-end address (setIotlb). Null: they are guest physical addresses.
   */
  iotlb: Iotlb | null = null;
  /** Region indices sorted by front-end address (regions without one left out), for the IOTLB path. */
  private byUaddr: number[] = [];

  /**
   * The regions' addresses without their bytes: what translating a vhost-user ring address and checking
   * a ring's placement need (uaddrToGpa, contiguous, isMapped), validated as the constructor does. A
   * thread that only checks addresses need not wrap guest memory, which for V8 is a garbage collection
   * per wrap of a large mapping.
   */
  static addressMap(specs: AddressSpec[]): GuestMemory {
    buildingAddressMap = true;
    try {
      return new GuestMemory(specs.map((s) => ({ ...s, buffer: NO_BYTES, bufferOffset: s.mappingOffset ?? 0 })));
    } finally {
      buildingAddressMap = false;
    }
  }

  /** Validates: non-zero size, no overflow, inside its buffer, no overlap in gpa nor in uaddr. Sorts. */
  constructor(specs: RegionSpec[]) {
    const withBytes = !buildingAddressMap;
    buildingAddressMap = false;
    if (!Array.isArray(specs) || specs.length === 0) throw badRegion('no regions');
    this.hasBytes = withBytes;
    const regions: Region[] = [];
    specs.forEach((s, source) => {
      const bufferOffset = s.bufferOffset ?? 0;
      const mappingId = s.mappingId ?? -1;
      const mappingOffset = s.mappingOffset ?? bufferOffset;
      const uaddr = s.uaddr ?? -1;
      if (!isAddr(s.gpa) || !isAddr(s.size) || s.size === 0) throw badRegion(`region ${source}: gpa/size must be integers, size > 0`);
      if (s.gpa > ADDR_LIMIT - s.size) throw badRegion(`region ${source}: gpa ${hex(s.gpa)} + size ${hex(s.size)} overflows`);
      if (!(s.buffer instanceof ArrayBuffer || s.buffer instanceof SharedArrayBuffer)) {
        throw badRegion(`region ${source}: buffer is not an ArrayBuffer`);
      }
      if (!isAddr(bufferOffset) || (withBytes && bufferOffset + s.size > s.buffer.byteLength)) {
        throw badRegion(`region ${source}: [${bufferOffset}, +${s.size}) is outside its ${s.buffer.byteLength}-byte buffer`);
      }
      if (!Number.isSafeInteger(mappingId) || mappingId < -1) throw badRegion(`region ${source}: bad mappingId`);
      if (!isAddr(mappingOffset) || mappingOffset > ADDR_LIMIT - s.size) throw badRegion(`region ${source}: bad mappingOffset`);
      if (uaddr !== -1 && (!isAddr(uaddr) || uaddr > ADDR_LIMIT - s.size)) throw badRegion(`region ${source}: bad uaddr`);
      for (let off = 0; off < s.size; off += REGION_CHUNK) {
        const size = Math.min(REGION_CHUNK, s.size - off);
        const bo = bufferOffset + off;
        regions.push({
          gpa: s.gpa + off,
          size,
          end: s.gpa + off + size,
          u8: withBytes ? new Uint8Array(s.buffer, bo, size) : new Uint8Array(NO_BYTES),
          dv: withBytes ? new DataView(s.buffer, bo, size) : new DataView(NO_BYTES),
          buffer: s.buffer,
          bufferOffset: bo,
          mappingId,
          mappingOffset: mappingOffset + off,
          uaddr: uaddr === -1 ? -1 : uaddr + off,
          source,
        });
      }
    });
    regions.sort((a, b) => a.gpa - b.gpa);
    for (let i = 1; i < regions.length; i++) {
      const p = regions[i - 1]!;
      const r = regions[i]!;
      if (r.gpa < p.end) throw badRegion(`regions ${p.source} and ${r.source} overlap at gpa ${hex(r.gpa)}`);
    }
    const withUaddr = regions.filter((r) => r.uaddr !== -1).sort((a, b) => a.uaddr - b.uaddr);
    for (let i = 1; i < withUaddr.length; i++) {
      const p = withUaddr[i - 1]!;
      const r = withUaddr[i]!;
      if (r.uaddr < p.uaddr + p.size) throw badRegion(`regions ${p.source} and ${r.source} overlap at uaddr ${hex(r.uaddr)}`);
    }
    this.regions = regions;
    this.byUaddr = regions.map((_, i) => i).filter((i) => regions[i]!.uaddr !== -1).sort((a, b) => regions[a]!.uaddr - regions[b]!.uaddr);
    // A range touches each region at most once, so this never overflows.
    this.scratch = new PieceList(regions.length + 1);
  }

  /** Index of the region holding `gpa`, or -1. */
  findRegion(gpa: number): number {
    const regs = this.regions;
    let lo = 0;
    let hi = regs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regs[mid]!;
      if (gpa < r.gpa) hi = mid - 1;
      else if (gpa >= r.end) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  /**
   * Append the pieces that make up [gpa, gpa+len) to `out`, in address order. A range crossing region
   * boundaries yields several pieces. Throws MemoryError (VRING_UNMAPPED / VRING_ADDR_WRAP) if any byte
   * is unmapped or the range wraps, and DescriptorError if `out` is full. The region hit last is tried
   * first, so a queue whose buffers live in one region pays one compare.
   */
  translate(gpa: number, len: number, out: PieceList, access: number = IOTLB_ACCESS.READ): void {
    if (this.iotlb !== null) return this.translateIova(gpa, len, out, access);
    const i = this.lastHit;
    const r = this.regions[i]!;
    const off = gpa - r.gpa;
    if (off >= 0 && off + len <= r.size && Number.isInteger(off) && len > 0) {
      out.push(i, off, len);
      return;
    }
    this.translateSlow(gpa, len, out);
  }

  private translateSlow(gpa: number, len: number, out: PieceList): void {
    if (!isAddr(len)) throw new RangeError(`bad length ${len}`);
    if (len === 0) return;
    if (!isAddr(gpa) || gpa > ADDR_LIMIT - len) {
      throw new MemoryError(
        VringErrorCode.ADDR_WRAP,
        `guest address ${typeof gpa === 'number' ? hex(gpa) : String(gpa)} + length ${len} is beyond the addressable range; the access is refused`,
      );
    }
    let cur = gpa;
    let remaining = len;
    let first = -1;
    while (remaining > 0) {
      const idx = this.findRegion(cur);
      if (idx < 0) throw this.unmapped(gpa, len, cur);
      const r = this.regions[idx]!;
      const off = cur - r.gpa;
      const n = Math.min(remaining, r.size - off);
      out.push(idx, off, n);
      if (first < 0) first = idx;
      cur += n;
      remaining -= n;
    }
    this.lastHit = first;
  }

  /**
   * Translate descriptors' addresses through `iotlb` from now on (null: they are guest physical again).
   * Ring addresses are not affected: the owner translates them once, to guest physical, before a queue
   * attaches.
   */
  setIotlb(iotlb: Iotlb | null): void {
    this.iotlb = iotlb;
  }

  /**
   * The IOMMU path of translate(): [iova, iova+len) through the IOTLB (IotlbMiss when a mapping is
   * missing, MemoryError VRING_IOMMU_DENIED when one forbids `access`), then each front-end range to
   * the regions that hold it. A front-end address outside every region is refused like an unmapped
   * guest address: the IOTLB cannot widen what the device reaches.
   */
  private translateIova(iova: number, len: number, out: PieceList, access: number): void {
    if (!isAddr(len)) throw new RangeError(`bad length ${len}`);
    if (len === 0) return;
    if (!isAddr(iova) || iova > ADDR_LIMIT - len) {
      throw new MemoryError(VringErrorCode.ADDR_WRAP, `I/O virtual address ${String(iova)} + length ${len} is beyond the addressable range; the access is refused`);
    }
    const t = this.iotlb!;
    let cur = iova;
    let remaining = len;
    while (remaining > 0) {
      t.lookup(cur, access, iova + len);
      const n = Math.min(remaining, t.hitEnd - cur);
      let u = t.hitUaddr + (cur - t.hitIova);
      let m = n;
      while (m > 0) {
        const idx = this.findUaddr(u);
        if (idx < 0) {
          throw new MemoryError(
            VringErrorCode.UNMAPPED,
            `I/O virtual address ${hex(cur)} maps to front-end address ${hex(u)}, which is in no memory region; the access is refused`,
          );
        }
        const r = this.regions[idx]!;
        const off = u - r.uaddr;
        const k = Math.min(m, r.size - off);
        out.push(idx, off, k);
        u += k;
        m -= k;
      }
      cur += n;
      remaining -= n;
    }
  }

  /** Index of the region holding front-end address `u`, or -1. */
  private findUaddr(u: number): number {
    const order = this.byUaddr;
    const regs = this.regions;
    let lo = 0;
    let hi = order.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regs[order[mid]!]!;
      if (u < r.uaddr) hi = mid - 1;
      else if (u >= r.uaddr + r.size) lo = mid + 1;
      else return order[mid]!;
    }
    return -1;
  }

  private unmapped(gpa: number, len: number, at: number): MemoryError {
    return new MemoryError(
      VringErrorCode.UNMAPPED,
      `guest range [${hex(gpa)}, +${len}) touches unmapped guest physical address ${hex(at)}; the access is refused`,
    );
  }

  /** True if every byte of [gpa, gpa+len) is mapped (len 0: true). Never throws. */
  isMapped(gpa: number, len: number): boolean {
    if (!isAddr(gpa) || !isAddr(len)) return false;
    if (len === 0) return true;
    if (gpa > ADDR_LIMIT - len) return false;
    let cur = gpa;
    const end = gpa + len;
    while (cur < end) {
      const idx = this.findRegion(cur);
      if (idx < 0) return false;
      cur = this.regions[idx]!.end;
    }
    return true;
  }

  /**
   * Locate [gpa, gpa+len) that must lie within one region (chunks of one source region count as one):
   * ring areas do. Throws MemoryError (VRING_UNMAPPED) otherwise.
   */
  contiguous(gpa: number, len: number): RangeLocation {
    if (!isAddr(gpa) || !isAddr(len) || gpa > ADDR_LIMIT - len) {
      throw new MemoryError(VringErrorCode.ADDR_WRAP, `guest range [${gpa}, +${len}) is not addressable; refused`);
    }
    const idx = this.findRegion(gpa);
    if (idx < 0) throw this.unmapped(gpa, len, gpa);
    const r = this.regions[idx]!;
    if (len > r.end - gpa) {
      // Allowed only across chunks of the same source region.
      const lastIdx = this.findRegion(gpa + len - 1);
      const last = lastIdx < 0 ? undefined : this.regions[lastIdx];
      if (last === undefined || last.source !== r.source) {
        throw new MemoryError(
          VringErrorCode.UNMAPPED,
          `guest range [${hex(gpa)}, +${len}) is not inside one memory region; refused`,
        );
      }
    }
    const offset = gpa - r.gpa;
    return {
      region: idx,
      offset,
      buffer: r.buffer,
      byteOffset: r.bufferOffset + offset,
      mappingId: r.mappingId,
      mappingOffset: r.mappingOffset + offset,
    };
  }

  /**
   * Translate a vhost-user frontend virtual address (ring addresses in VHOST_USER_SET_VRING_ADDR) to a
   * guest physical address. [uaddr, uaddr+len) must lie in one region; throws MemoryError otherwise.
   */
  uaddrToGpa(uaddr: number, len: number): number {
    if (isAddr(uaddr) && isAddr(len)) {
      for (const r of this.regions) {
        if (r.uaddr === -1 || uaddr < r.uaddr || uaddr >= r.uaddr + r.size) continue;
        const gpa = r.gpa + (uaddr - r.uaddr);
        if (len <= r.end - gpa) return gpa;
        // The range may continue into the next chunk of the same source region.
        const lastIdx = this.findRegion(gpa + len - 1);
        if (lastIdx >= 0 && this.regions[lastIdx]!.source === r.source) return gpa;
        break;
      }
    }
    throw new MemoryError(
      VringErrorCode.UNMAPPED,
      `frontend address ${typeof uaddr === 'number' ? hex(uaddr) : String(uaddr)} (+${len}) is not inside one memory region; refused`,
    );
  }

  // ---- Bounds-checked helpers (control path, driver side). They copy across region boundaries.

  /** Copy guest bytes [gpa, gpa+len) into dst[dstOff…]. */
  read(gpa: number, dst: Uint8Array, dstOff: number = 0, len: number = dst.length - dstOff): void {
    if (dstOff < 0 || len < 0 || dstOff + len > dst.length) throw new RangeError('read: destination range out of bounds');
    const p = this.scratch;
    p.reset();
    this.translateSlow(gpa, len, p);
    let at = dstOff;
    for (let i = 0; i < p.count; i++) {
      const r = this.regions[p.region[i]!]!;
      const o = p.offset[i]!;
      const n = p.length[i]!;
      dst.set(r.u8.subarray(o, o + n), at);
      at += n;
    }
  }

  /** Copy src[srcOff, srcOff+len) to guest bytes at gpa. */
  write(gpa: number, src: Uint8Array, srcOff: number = 0, len: number = src.length - srcOff): void {
    if (srcOff < 0 || len < 0 || srcOff + len > src.length) throw new RangeError('write: source range out of bounds');
    const p = this.scratch;
    p.reset();
    this.translateSlow(gpa, len, p);
    let at = srcOff;
    for (let i = 0; i < p.count; i++) {
      const r = this.regions[p.region[i]!]!;
      const n = p.length[i]!;
      r.u8.set(src.subarray(at, at + n), p.offset[i]!);
      at += n;
    }
  }

  /** Set guest bytes [gpa, gpa+len) to `value`. */
  fill(gpa: number, len: number, value: number = 0): void {
    const p = this.scratch;
    p.reset();
    this.translateSlow(gpa, len, p);
    for (let i = 0; i < p.count; i++) {
      const o = p.offset[i]!;
      this.regions[p.region[i]!]!.u8.fill(value, o, o + p.length[i]!);
    }
  }

  private readonly tmp = new Uint8Array(8);
  private readonly tmpDv = new DataView(this.tmp.buffer);

  /** Little-endian u16 at gpa. */
  readU16(gpa: number): number {
    this.read(gpa, this.tmp, 0, 2);
    return this.tmpDv.getUint16(0, true);
  }
  /** Little-endian u32 at gpa. */
  readU32(gpa: number): number {
    this.read(gpa, this.tmp, 0, 4);
    return this.tmpDv.getUint32(0, true);
  }
  /** Little-endian u64 at gpa, as a number; throws RangeError if it is ≥ 2^53. */
  readU64(gpa: number): number {
    this.read(gpa, this.tmp, 0, 8);
    const hi = this.tmpDv.getUint32(4, true);
    if (hi >= 0x200000) throw new RangeError(`u64 at ${hex(gpa)} does not fit a JS number`);
    return hi * 0x1_0000_0000 + this.tmpDv.getUint32(0, true);
  }
  /** Store a little-endian u16 at gpa. */
  writeU16(gpa: number, v: number): void {
    this.tmpDv.setUint16(0, v, true);
    this.write(gpa, this.tmp, 0, 2);
  }
  /** Store a little-endian u32 at gpa. */
  writeU32(gpa: number, v: number): void {
    this.tmpDv.setUint32(0, v, true);
    this.write(gpa, this.tmp, 0, 4);
  }
  /** Store a little-endian u64 (0 ≤ v < 2^64, given as a number < 2^53 or as lo/hi halves) at gpa. */
  writeU64(gpa: number, v: number, hi?: number): void {
    const lo = hi === undefined ? v % 0x1_0000_0000 : v;
    this.tmpDv.setUint32(0, lo >>> 0, true);
    this.tmpDv.setUint32(4, (hi === undefined ? Math.floor(v / 0x1_0000_0000) : hi) >>> 0, true);
    this.write(gpa, this.tmp, 0, 8);
  }
}
