/**
 * Batched frame I/O (native/batch.cc): one native call per burst, one readv/writev per frame,
 * every iovec bounds-checked against its mapping first. readvMerged does the same for MRG_RXBUF,
 * where a frame may take several guest buffers.
 * Part of native/ (index.ts re-exports it): TypeScript checks every argument before it crosses; C++
 * checks again.
 */
import { IovecTable } from './iovec.ts';
import { binding as b } from './load.ts';
import { checkBytes, checkInt, checkFd, INT32_MAX } from './checks.ts';

/** Most iovecs one readv takes (Linux UIO_MAXIOV). */
const IOV_MAX = 1024;

function checkBatch(fd: number, table: IovecTable, frames: number): void {
  checkFd(fd);
  if (!(table instanceof IovecTable)) throw new TypeError('table must be an IovecTable');
  checkInt(frames, 'frames', 0, table.maxFrames);
}

/**
 * One writev per frame of the table, in one native call. Returns frames done; table.bytes[i] holds
 * the bytes of frame i. EAGAIN ends the batch early; an error on a later frame ends it too (the count
 * says where); an error on frame 0 throws NativeError('writev'). A bad entry throws NativeError
 * (EFAULT/EINVAL, 'iovec') before anything is written.
 */
export function writevBatch(fd: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(fd, table, frames);
  return b.writevBatch(fd, table.words, table.maxEntries, table.maxFrames, frames);
}

/**
 * One readv per frame (each frame's iovecs receive one tap frame); as writevBatch otherwise. Each readv
 * is offered one spill byte past the frame's buffers, so a frame longer than them reads as their room
 * + 1 in table.bytes (its first bytes are in the buffers: drop it, never deliver it). table.written[i]
 * is what went into frame i's buffers (0 from the first frame not read on; all of them for a readv
 * that failed, which may have copied part of a frame). Frames of at most IOV_MAX − 1 entries. A
 * readv that fails on the first frame throws; one that fails later ends the batch before it, and
 * table.readFailures/readErrno say so (the tap dropped the frame it was copying).
 */
export function readvBatch(fd: number, table: IovecTable, frames: number = table.frames): number {
  checkBatch(fd, table, frames);
  return b.readvBatch(fd, table.words, table.maxEntries, table.maxFrames, frames);
}

/** Why readvMerged stopped: IovecTable.status after the call (native/batch.cc MergedStop). */
export const MERGED_STOP = {
  /** `frames` frames were read. */
  FRAMES: 0,
  /** The fd had nothing more (EAGAIN). */
  EMPTY: 1,
  /** The buffers left hold less than `need`: the guest must add buffers. */
  NO_ROOM: 2,
  /** The next frame's buffers would come in more than IOV_MAX − 1 pieces (1024, one kept for a spill byte). */
  PIECES: 3,
  /** The last frame read is one the peek list does not vouch for: the caller must judge it. */
  PEEK: 4,
  /** readv failed after the first frame (that failure, on frame 0, throws instead). */
  ERROR: 5,
} as const;

/** Most destination MACs a PeekList carries. */
export const PEEK_MAX_MACS = 64;
/** PeekList flag: every destination passes. */
const PEEK_ANY_DEST = 1;
/** PeekList flag: an 802.1Q-tagged frame stops the call. */
const PEEK_STOP_TAGGED = 2;

/**
 * What readvMerged may read past without asking the caller, when the caller filters frames: the frames
 * whose destination MAC is on the list (or any, with `anyDest`), untagged when `stopTagged`. The
 * first frame not vouched for ends the call (MERGED_STOP.PEEK) as its last frame, so a frame the
 * caller then refuses lies in the last buffers taken and they can be given back. The list must only
 * name frames the caller accepts; a frame it leaves out costs an early return, nothing else.
 *
 *   bytes  [ flags | count | hdrLen lo | hdrLen hi | MAC 0 (6) | MAC 1 (6) | … ]
 */
export class PeekList {
  readonly bytes = new Uint8Array(4 + 6 * PEEK_MAX_MACS);

  /** Empties the list. `hdrLen`: bytes of virtio_net_hdr in front of each frame. */
  reset(hdrLen: number, opts: { anyDest: boolean; stopTagged: boolean }): void {
    checkInt(hdrLen, 'hdrLen', 0, 0xffff);
    const b = this.bytes;
    b[0] = (opts.anyDest ? PEEK_ANY_DEST : 0) | (opts.stopTagged ? PEEK_STOP_TAGGED : 0);
    b[1] = 0;
    b[2] = hdrLen & 0xff;
    b[3] = hdrLen >>> 8;
  }

  /** Adds the MAC at mac[off, off+6); false (and nothing added) when the list is full. */
  add(mac: Uint8Array, off = 0): boolean {
    checkBytes(mac, 'mac');
    if (mac.length < 6) throw new RangeError('mac needs 6 bytes');
    checkInt(off, 'off', 0, mac.length - 6);
    const n = this.bytes[1]!;
    if (n >= PEEK_MAX_MACS) return false;
    this.bytes.set(mac.subarray(off, off + 6), 4 + 6 * n);
    this.bytes[1] = n + 1;
    return true;
  }

  /** MACs on the list. */
  get count(): number {
    return this.bytes[1]!;
  }
}

/**
 * MRG_RXBUF receive in one native call (virtio 1.2 §5.1.6.4): the table's frames first … first +
 * buffers − 1 are guest buffers (each one RX chain's writable part), and frame after frame is read
 * from `fd` into whole buffers, each frame starting in the buffer after the last one the previous frame
 * took. Each readv is offered the fewest buffers whose room reaches `need` (with MRG_RXBUF the
 * largest frame the guest may get, so what fits is never truncated; without it 1, one buffer per
 * frame). Returns the frames read: table.bytes[i] is frame i's length (header included), table.used[i]
 * the buffers it took; 0 means it was longer than `maxLen` or than the buffers offered (or read as 0
 * bytes): it is the caller's to count, and the same buffers took the next frame.
 * table.status says why the call stopped (MERGED_STOP). With a peek list, a frame the list does not
 * vouch for ends the call as its last frame.
 *
 * A readv error on the first frame throws NativeError('readv'); a bad entry throws NativeError(EFAULT
 * or EINVAL, 'iovec') before anything is read; a table whose buffers are out of order, empty, or
 * beyond what was filled throws RangeError here, before it crosses.
 */
export function readvMerged(
  fd: number,
  table: IovecTable,
  first: number,
  buffers: number,
  frames: number,
  need: number,
  maxLen: number,
  peek: PeekList | null = null,
): number {
  checkFd(fd);
  checkMerged(table, first, buffers, frames, need, maxLen);
  if (peek !== null && !(peek instanceof PeekList)) throw new TypeError('peek must be a PeekList or null');
  return b.readvMerged(fd, table.words, table.maxEntries, table.maxFrames, first, buffers, frames, need, maxLen, peek === null ? undefined : peek.bytes);
}

/** The checks readvMerged and uringReadvMerged share (C++ checks again, and every entry against its mapping). */
export function checkMerged(table: IovecTable, first: number, buffers: number, frames: number, need: number, maxLen: number): void {
  if (!(table instanceof IovecTable)) throw new TypeError('table must be an IovecTable');
  checkInt(first, 'first', 0, table.frames);
  checkInt(buffers, 'buffers', 0, table.frames - first);
  checkInt(frames, 'frames', 0, table.maxFrames);
  checkInt(need, 'need', 1, INT32_MAX);
  checkInt(maxLen, 'maxLen', 1, INT32_MAX);
  const ends = table.frameEnd;
  let start = first === 0 ? 0 : ends[first - 1]!;
  for (let k = first, last = first + buffers; k < last; k++) {
    const end = ends[k]!;
    if (end <= start || end > table.count || end - start > IOV_MAX) {
      throw new RangeError(`buffer ${k} spans entries [${start}, ${end}): each needs 1..${IOV_MAX} of the ${table.count} entries filled`);
    }
    start = end;
  }
}

/** Most unicast, and most multicast, MACs an RxFilterSpec carries (the control queue's table limit). */
export const RX_FILTER_MAX_MACS = 64;
/** RxFilterSpec flag bits (native/batch.cc kFilter*). */
const RX_FILTER_FLAG = { promisc: 1, allmulti: 2, alluni: 4, nomulti: 8, nouni: 16, nobcast: 32, vlanFiltering: 64 } as const;

/** What RxFilterSpec.load reads: the shape of the device's RX filter (device/rx-filter.ts RxFilter). */
export interface RxFilterState {
  promisc: boolean;
  allmulti: boolean;
  alluni: boolean;
  nomulti: boolean;
  nouni: boolean;
  nobcast: boolean;
  vlanFiltering: boolean;
  /** The device's own address (6 bytes). */
  readonly mac: Uint8Array;
  /** Unicast and multicast tables, 6 bytes per entry, at most 64 entries each. */
  uni: Uint8Array;
  multi: Uint8Array;
  /** One bit per VLAN id (4096 bits): bit v & 31 of word v >> 5. */
  readonly vlans: Uint32Array;
}

/**
 * The whole RX filter in the form the native merged read applies it (uringReadvMerged): the frames it
 * rejects never take a guest buffer, so nothing has to be given back after the fact.
 *
 *   bytes  [ flags | uni count | multi count | 0 | hdrLen (u16 LE) | 0 0 | MAC (6) | 0 0 |
 *            VLAN bitmap (512) | unicast MACs (64 × 6) | multicast MACs (64 × 6) ]
 */
export class RxFilterSpec {
  static readonly BYTES = 1296;
  readonly bytes = new Uint8Array(RxFilterSpec.BYTES);

  /** Encodes `f`; `hdrLen`: bytes of virtio_net_hdr in front of each frame. */
  load(f: RxFilterState, hdrLen: number): this {
    checkInt(hdrLen, 'hdrLen', 0, 0xffff);
    const uni = f.uni.length / 6;
    const multi = f.multi.length / 6;
    if (!Number.isInteger(uni) || !Number.isInteger(multi) || uni > RX_FILTER_MAX_MACS || multi > RX_FILTER_MAX_MACS) {
      throw new RangeError(`an RX filter holds at most ${RX_FILTER_MAX_MACS} whole unicast and multicast MACs each`);
    }
    const b = this.bytes;
    const F = RX_FILTER_FLAG;
    b[0] = (f.promisc ? F.promisc : 0) | (f.allmulti ? F.allmulti : 0) | (f.alluni ? F.alluni : 0) | (f.nomulti ? F.nomulti : 0) |
      (f.nouni ? F.nouni : 0) | (f.nobcast ? F.nobcast : 0) | (f.vlanFiltering ? F.vlanFiltering : 0);
    b[1] = uni;
    b[2] = multi;
    b[4] = hdrLen & 0xff;
    b[5] = hdrLen >>> 8;
    b.set(f.mac.subarray(0, 6), 8);
    // Little-endian words are the bitmap's bytes in order (bit v & 7 of byte v >> 3).
    for (let w = 0; w < 128; w++) {
      const x = f.vlans[w]!;
      b[16 + 4 * w] = x & 0xff;
      b[17 + 4 * w] = (x >>> 8) & 0xff;
      b[18 + 4 * w] = (x >>> 16) & 0xff;
      b[19 + 4 * w] = x >>> 24;
    }
    b.set(f.uni, 528);
    b.set(f.multi, 912);
    return this;
  }
}

/**
 * The native filter's verdict (what uringReadvMerged decides) on a frame of `len` bytes, Ethernet
 * header first, whose first bytes are `frame` (16 are looked at: two MACs, TPID, TCI). For tests that
 * hold it against RxFilter.accept.
 */
export function rxFilterAccepts(spec: RxFilterSpec, frame: Uint8Array, len: number): boolean {
  if (!(spec instanceof RxFilterSpec)) throw new TypeError('spec must be an RxFilterSpec');
  checkBytes(frame, 'frame');
  checkInt(len, 'len', 0, INT32_MAX);
  return b.rxFilterAccepts(spec.bytes, frame, len) as boolean;
}
