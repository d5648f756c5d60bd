// vring/iotlb.ts — the device's IOTLB: I/O virtual addresses to front-end virtual addresses.
//
// Where it sits: beside GuestMemory (memory.ts). With VIRTIO_F_ACCESS_PLATFORM negotiated behind a
// virtual IOMMU, every address the driver writes into a ring (descriptors, indirect tables) and the
// ring addresses themselves are I/O virtual addresses (IOVAs), not guest physical ones. The front-end
// tells the device what each IOVA range maps to (vhost-user IOTLB_MSG UPDATE: iova, size, the
// front-end's virtual address, read/write permission) and takes mappings back (INVALIDATE). The device
// asks for what it lacks (a MISS on the back-end channel). GuestMemory.translate() looks a buffer up
// here first and then finds the front-end address in its regions, so an IOVA can never reach bytes
// outside guest memory, whatever the table says.
//
//   IOVA ──Iotlb.lookup (permission checked)──▶ front-end address ──GuestMemory regions──▶ bytes
//
// One table is shared by every thread of a device: the main thread (the vhost-user connection) writes
// it, the queue workers read it. It lives in a SharedArrayBuffer and is guarded by a sequence lock:
// the writer makes the sequence odd, changes the table and makes it even again; a reader that saw the
// sequence odd or changed retries. Readers never block and never write, except their own miss record.
//
// A miss is not an error of the guest: the translation may simply not have been asked for yet. lookup()
// throws IotlbMiss, which the rings treat as "nothing more to pop for now" (the chain stays in the
// ring); the worker reports the miss and sleeps until the table changes (device/loops.ts). A mapping
// that exists but does not allow the access is the guest's error: MemoryError VRING_IOMMU_DENIED.
//
// Spec: vhost-user.rst "IOMMU support", VHOST_USER_IOTLB_MSG, VHOST_USER_BACKEND_IOTLB_MSG; virtio 1.2
// §6.1 (VIRTIO_F_ACCESS_PLATFORM).

import { MemoryError, VringErrorCode } from './errors.ts';

/** Access a mapping allows, and an access asks for (vhost's VHOST_ACCESS_RO/WO/RW). */
export const IOTLB_ACCESS = { READ: 1, WRITE: 2, RW: 3 } as const;

/** Mappings one table holds; an update beyond that empties it first (misses bring back what is used). */
export const IOTLB_CAPACITY = 2048;

const HDR_I32 = 4; // seq, count, generation, drops
const SEQ = 0;
const COUNT = 1;
const GEN = 2;
const DROPS = 3;
const ENTRY_F64 = 4; // iova, end, uaddr, perm
const LIMIT = 2 ** 53;

/** Bytes of the SharedArrayBuffer a table of `capacity` mappings needs. */
export function iotlbBytes(capacity: number = IOTLB_CAPACITY): number {
  return HDR_I32 * 4 + capacity * ENTRY_F64 * 8;
}

/** lookup() found no mapping for `iova`: the front-end is asked for it; the access is retried later. */
export class IotlbMiss extends Error {
  /** The I/O virtual address without a mapping. */
  readonly iova: number;
  /** The access that was asked (IOTLB_ACCESS.READ or WRITE). */
  readonly access: number;
  constructor(iova: number, access: number) {
    super(`no IOTLB mapping for I/O virtual address 0x${iova.toString(16)} yet`);
    this.name = 'IotlbMiss';
    this.iova = iova;
    this.access = access;
  }
}

/** One mapping of the table. */
export interface IotlbEntry {
  iova: number;
  size: number;
  /** Front-end virtual address of the first byte. */
  uaddr: number;
  /** IOTLB_ACCESS bits the mapping allows. */
  perm: number;
}

/**
 * A view of a shared IOTLB. Every thread makes its own over the same SharedArrayBuffer. Writers (the
 * main thread) call update/invalidate/clear; readers (workers) call lookup, which leaves the hit in
 * hitIova/hitEnd/hitUaddr so the hot path allocates nothing.
 */
export class Iotlb {
  readonly buffer: SharedArrayBuffer;
  readonly capacity: number;
  private readonly hdr: Int32Array;
  private readonly e: Float64Array;
  /** The last hit: [hitIova, hitEnd) maps to hitUaddr onward, with permission hitPerm. */
  hitIova = 0;
  hitEnd = 0;
  hitUaddr = 0;
  hitPerm = 0;
  /** Sequence the last hit was read under: it stays good while the sequence does not move. */
  private hitSeq = -1;
  /** The generation at which this reader last missed, or -1: the worker sleeps until it moves. */
  missGeneration = -1;
  /** The last miss of this reader, and the end of the range the access wanted (the rest of its buffer). */
  missIova = 0;
  missAccess = 0;
  missEnd = 0;

  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(iotlbBytes())) {
    if (!(buffer instanceof SharedArrayBuffer) || buffer.byteLength < iotlbBytes(1)) throw new RangeError('Iotlb: needs a SharedArrayBuffer of iotlbBytes(capacity)');
    this.buffer = buffer;
    this.capacity = Math.floor((buffer.byteLength - HDR_I32 * 4) / (ENTRY_F64 * 8));
    this.hdr = new Int32Array(buffer, 0, HDR_I32);
    this.e = new Float64Array(buffer, HDR_I32 * 4, this.capacity * ENTRY_F64);
  }

  /** Mappings held now. */
  get size(): number {
    return Atomics.load(this.hdr, COUNT);
  }

  /** Moves on every change of the table: a worker that missed waits for it to move. */
  get generation(): number {
    return Atomics.load(this.hdr, GEN);
  }

  /**
   * Moves on every change that took mappings away (an invalidation, an update over older mappings, a
   * clear): an answer to a miss may have come and gone since, so the reader may ask again.
   */
  get drops(): number {
    return Atomics.load(this.hdr, DROPS);
  }

  // ---- the reader side (any thread)

  /**
   * Find the mapping holding `iova` and check it allows `access`; leaves it in hit*. Throws IotlbMiss
   * when there is none (recorded in miss*, with `end`, where the caller's range ends), MemoryError
   * VRING_IOMMU_DENIED when it forbids the access.
   */
  lookup(iova: number, access: number, end = iova + 1): void {
    const hdr = this.hdr;
    let seq = Atomics.load(hdr, SEQ);
    if (seq === this.hitSeq && iova >= this.hitIova && iova < this.hitEnd) return this.checkPerm(iova, access);
    for (let tries = 0; ; tries++) {
      if ((seq & 1) === 0) {
        const found = this.search(iova);
        const again = Atomics.load(hdr, SEQ);
        if (again === seq) {
          if (!found) {
            this.missGeneration = Atomics.load(hdr, GEN);
            this.missIova = iova;
            this.missAccess = access;
            this.missEnd = end;
            throw new IotlbMiss(iova, access);
          }
          this.hitSeq = seq;
          return this.checkPerm(iova, access);
        }
        seq = again;
      } else {
        seq = Atomics.load(hdr, SEQ);
      }
      // The writer is in the middle of an update: it holds the lock for microseconds.
      if (tries > 1_000_000) throw new MemoryError(VringErrorCode.IOMMU_DENIED, 'the IOTLB stayed locked by its writer; the access is refused');
    }
  }

  /** True when a mapping holds `iova` now (any permission): a probe that leaves no hit behind. */
  has(iova: number): boolean {
    for (let tries = 0; tries < 1_000_000; tries++) {
      const seq = Atomics.load(this.hdr, SEQ);
      if ((seq & 1) !== 0) continue;
      const found = this.search(iova);
      if (Atomics.load(this.hdr, SEQ) !== seq) continue;
      this.hitSeq = -1; // search() overwrote hit*
      return found;
    }
    this.hitSeq = -1;
    return false;
  }

  /** Binary search under the caller's sequence; sets hit* when found. */
  private search(iova: number): boolean {
    const e = this.e;
    let lo = 0;
    let hi = Math.min(Atomics.load(this.hdr, COUNT), this.capacity) - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const b = mid * ENTRY_F64;
      if (iova < e[b]!) hi = mid - 1;
      else if (iova >= e[b + 1]!) lo = mid + 1;
      else {
        this.hitIova = e[b]!;
        this.hitEnd = e[b + 1]!;
        this.hitUaddr = e[b + 2]!;
        this.hitPerm = e[b + 3]!;
        return true;
      }
    }
    return false;
  }

  private checkPerm(iova: number, access: number): void {
    if ((this.hitPerm & access) !== access) {
      const want = access === IOTLB_ACCESS.WRITE ? 'write' : 'read';
      throw new MemoryError(
        VringErrorCode.IOMMU_DENIED,
        `the IOMMU mapping of I/O virtual address 0x${iova.toString(16)} does not allow the device to ${want} it; the access is refused`,
      );
    }
  }

  /**
   * The front-end address of [iova, iova+len), which must be one contiguous front-end range (a ring
   * area), possibly over several mappings. Throws IotlbMiss or MemoryError as lookup() does, and
   * MemoryError when the mappings do not continue one another.
   */
  toUaddr(iova: number, len: number, access: number): number {
    if (!isAddr(iova) || !isAddr(len) || iova > LIMIT - len) {
      throw new MemoryError(VringErrorCode.ADDR_WRAP, `I/O virtual range [${String(iova)}, +${String(len)}) is not addressable; refused`);
    }
    this.lookup(iova, access, iova + len);
    const uaddr = this.hitUaddr + (iova - this.hitIova);
    let cur = this.hitEnd;
    let expect = this.hitUaddr + (this.hitEnd - this.hitIova);
    while (cur < iova + len) {
      this.lookup(cur, access, iova + len);
      if (this.hitUaddr + (cur - this.hitIova) !== expect) {
        throw new MemoryError(VringErrorCode.UNMAPPED, `I/O virtual range [0x${iova.toString(16)}, +${len}) is not one contiguous front-end range; refused`);
      }
      expect = this.hitUaddr + (this.hitEnd - this.hitIova);
      cur = this.hitEnd;
    }
    return uaddr;
  }

  /** True when this reader missed and the table has not changed since: nothing to retry yet. */
  get stalled(): boolean {
    return this.missGeneration >= 0 && this.missGeneration === Atomics.load(this.hdr, GEN);
  }

  /** Forget this reader's miss (after the retry it waited for). */
  clearMiss(): void {
    this.missGeneration = -1;
  }

  /** Every mapping, in IOVA order (a consistent snapshot). */
  entries(): IotlbEntry[] {
    for (;;) {
      const seq = Atomics.load(this.hdr, SEQ);
      if ((seq & 1) !== 0) continue;
      const out: IotlbEntry[] = [];
      const n = Math.min(Atomics.load(this.hdr, COUNT), this.capacity);
      for (let i = 0; i < n; i++) {
        const b = i * ENTRY_F64;
        out.push({ iova: this.e[b]!, size: this.e[b + 1]! - this.e[b]!, uaddr: this.e[b + 2]!, perm: this.e[b + 3]! });
      }
      if (Atomics.load(this.hdr, SEQ) === seq) return out;
    }
  }

  // ---- the writer side (one thread: the device's owner)

  /**
   * Map [iova, iova+size) to the front-end addresses from uaddr on, with `perm`. Mappings it overlaps
   * are dropped first. Throws RangeError for a range that is empty, wraps or is not a whole number,
   * or a perm that is not READ, WRITE or RW: the caller refuses the message.
   */
  update(iova: number, size: number, uaddr: number, perm: number): void {
    if (!isAddr(iova) || !isAddr(size) || size === 0 || iova > LIMIT - size) throw new RangeError(`IOTLB update [0x${iova.toString(16)}, +${size}) is empty or not addressable`);
    if (!isAddr(uaddr) || uaddr > LIMIT - size) throw new RangeError(`IOTLB update: front-end address 0x${uaddr.toString(16)} + ${size} is not addressable`);
    if (perm !== IOTLB_ACCESS.READ && perm !== IOTLB_ACCESS.WRITE && perm !== IOTLB_ACCESS.RW) throw new RangeError(`IOTLB update: permission ${perm} is not RO (1), WO (2) or RW (3)`);
    const all = this.entries();
    const end = iova + size;
    let list = all.filter((m) => m.iova + m.size <= iova || m.iova >= end);
    // An answer that comes twice replaces its own mapping: only an overlapped mapping that reached
    // beyond the new one leaves pages unmapped, a drop.
    let dropped = all.some((m) => m.iova + m.size > iova && m.iova < end && (m.iova < iova || m.iova + m.size > end));
    if (list.length >= this.capacity) {
      dropped = true;
      list = []; // full: start again, misses refill what is in use
    }
    list.push({ iova, size, uaddr, perm });
    list.sort((a, b) => a.iova - b.iova);
    this.write(list, dropped);
  }

  /** Drop every mapping that overlaps [iova, iova+size) (vhost's rule: whole mappings go). Returns how many. */
  invalidate(iova: number, size: number): number {
    if (!isAddr(iova) || !isAddr(size)) throw new RangeError('IOTLB invalidate: bad range');
    const end = size === 0 ? iova : Math.min(LIMIT, iova + size);
    const all = this.entries();
    const keep = all.filter((m) => m.iova + m.size <= iova || m.iova >= end);
    if (keep.length !== all.length) this.write(keep, true);
    return all.length - keep.length;
  }

  /** Drop every mapping (a new connection, a reset). */
  clear(): void {
    this.write([], true);
  }

  private write(list: IotlbEntry[], dropped: boolean): void {
    const hdr = this.hdr;
    Atomics.add(hdr, SEQ, 1); // odd: readers retry
    const e = this.e;
    list.forEach((m, i) => {
      const b = i * ENTRY_F64;
      e[b] = m.iova;
      e[b + 1] = m.iova + m.size;
      e[b + 2] = m.uaddr;
      e[b + 3] = m.perm;
    });
    Atomics.store(hdr, COUNT, list.length);
    if (dropped) Atomics.add(hdr, DROPS, 1);
    Atomics.add(hdr, GEN, 1);
    Atomics.add(hdr, SEQ, 1); // even again
  }
}

function isAddr(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}
