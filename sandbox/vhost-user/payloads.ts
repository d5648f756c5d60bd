/**
 * vhost-user payloads: the size of each payload shape and one codec per shape (u64, vring state and
 * address, memory table and single region, config, inflight, log, vring file). Pure functions over
 * Uint8Array; no syscalls. messages.ts (the header, request numbers, feature bits) re-exports it all.
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "Message Specification" (the payload structs: "A single
 * 64-bit integer", "A vring state description", "A vring address description", "Memory regions
 * description", "Single memory region description", "Log description", "Device config space",
 * "Inflight description"). Little-endian: lgnet runs on x86-64 and arm64 (see messages.ts).
 *
 * Decoders validate sizes and ranges and throw VhostUserError; they never read past the payload.
 */
import { VhostUserError, VU } from './errors.ts';

// ---- payload sizes -------------------------------------------------------------------------------------

export const U64_SIZE = 8;
/** index u32 + num u32. */
export const VRING_STATE_SIZE = 8;
/** index u32 + flags u32 + desc u64 + used u64 + avail u64 + log u64. */
export const VRING_ADDR_SIZE = 40;
/** The fixed part of a memory table: nregions u32 + padding u32. */
export const MEMORY_HEADER_SIZE = 8;
/** One region: guest_phys_addr u64 + memory_size u64 + userspace_addr u64 + mmap_offset u64. */
export const MEM_REGION_SIZE = 32;
/** Regions (and fds) one SET_MEM_TABLE may carry. */
export const VHOST_MEMORY_BASELINE_NREGIONS = 8;
/** ADD/REM_MEM_REG: padding u64 + one region. */
export const SINGLE_MEM_REGION_SIZE = 8 + MEM_REGION_SIZE;
/** offset u32 + size u32 + flags u32, then `size` bytes. */
export const CONFIG_HEADER_SIZE = 12;
/** The largest config payload (VHOST_USER_MAX_CONFIG_SIZE). */
export const CONFIG_MAX_SIZE = 256;
/** mmap_size u64 + mmap_offset u64. */
export const LOG_SIZE = 16;
/**
 * mmap_size u64 + mmap_offset u64 + num_queues u16 + queue_size u16: 20 bytes of fields, 24 with the
 * tail padding of the C struct, which is what QEMU and libvhost-user put on the wire.
 */
export const INFLIGHT_SIZE = 24;
export const INFLIGHT_FIELDS_SIZE = 20;
/** The largest payload of any request lgnet accepts (a full GET/SET_CONFIG). */
export const MAX_PAYLOAD = CONFIG_HEADER_SIZE + CONFIG_MAX_SIZE;
/** Most fds one message may carry. */
export const MAX_FDS = VHOST_MEMORY_BASELINE_NREGIONS;

/** The u64 of SET_VRING_KICK/CALL/ERR: bits 0-7 index, bit 8 "no fd" (poll instead). */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;

// ---- codecs ------------------------------------------------------------------------------------------

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function need(b: Uint8Array, n: number, what: string): DataView {
  if (b.length !== n) throw new VhostUserError(VU.BAD_SIZE, `${what} payload must be ${n} bytes; got ${b.length}`);
  return view(b);
}

/** A u64 address or size as a number; refuses values lgnet cannot hold exactly (≥ 2^53). */
export function addrOf(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VhostUserError(VU.MEM_OVERFLOW, `${what} 0x${v.toString(16)} is beyond 2^53; refused`);
  }
  return Number(v);
}

export function decodeU64(b: Uint8Array): bigint {
  return need(b, U64_SIZE, 'u64').getBigUint64(0, true);
}

export function encodeU64(v: bigint | number): Uint8Array {
  const b = new Uint8Array(U64_SIZE);
  view(b).setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true);
  return b;
}

export interface VringState {
  index: number;
  num: number;
}

export function decodeVringState(b: Uint8Array): VringState {
  const dv = need(b, VRING_STATE_SIZE, 'vring state');
  return { index: dv.getUint32(0, true), num: dv.getUint32(4, true) };
}

export function encodeVringState(s: VringState): Uint8Array {
  const b = new Uint8Array(VRING_STATE_SIZE);
  const dv = view(b);
  dv.setUint32(0, s.index >>> 0, true);
  dv.setUint32(4, s.num >>> 0, true);
  return b;
}

/** Ring addresses, in the front-end's virtual address space (not guest physical). */
export interface VringAddr {
  index: number;
  /** VHOST_VRING_F_LOG (bit 0): log used-ring writes. */
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

/** VHOST_VRING_F_LOG. */
export const VRING_F_LOG = 0x1;

export function decodeVringAddr(b: Uint8Array): VringAddr {
  const dv = need(b, VRING_ADDR_SIZE, 'vring address');
  return {
    index: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    desc: dv.getBigUint64(8, true),
    used: dv.getBigUint64(16, true),
    avail: dv.getBigUint64(24, true),
    log: dv.getBigUint64(32, true),
  };
}

export function encodeVringAddr(a: { index: number; flags?: number; desc: bigint | number; used: bigint | number; avail: bigint | number; log?: bigint | number }): Uint8Array {
  const b = new Uint8Array(VRING_ADDR_SIZE);
  const dv = view(b);
  dv.setUint32(0, a.index >>> 0, true);
  dv.setUint32(4, (a.flags ?? 0) >>> 0, true);
  dv.setBigUint64(8, BigInt.asUintN(64, BigInt(a.desc)), true);
  dv.setBigUint64(16, BigInt.asUintN(64, BigInt(a.used)), true);
  dv.setBigUint64(24, BigInt.asUintN(64, BigInt(a.avail)), true);
  dv.setBigUint64(32, BigInt.asUintN(64, BigInt(a.log ?? 0)), true);
  return b;
}

/** One memory region as it travels (raw u64s; mem-table.ts validates and converts). */
export interface WireMemRegion {
  gpa: bigint;
  size: bigint;
  uaddr: bigint;
  mmapOffset: bigint;
}

function readRegion(dv: DataView, at: number): WireMemRegion {
  return {
    gpa: dv.getBigUint64(at, true),
    size: dv.getBigUint64(at + 8, true),
    uaddr: dv.getBigUint64(at + 16, true),
    mmapOffset: dv.getBigUint64(at + 24, true),
  };
}

function writeRegion(dv: DataView, at: number, r: { gpa: bigint | number; size: bigint | number; uaddr: bigint | number; mmapOffset?: bigint | number }): void {
  dv.setBigUint64(at, BigInt.asUintN(64, BigInt(r.gpa)), true);
  dv.setBigUint64(at + 8, BigInt.asUintN(64, BigInt(r.size)), true);
  dv.setBigUint64(at + 16, BigInt.asUintN(64, BigInt(r.uaddr)), true);
  dv.setBigUint64(at + 24, BigInt.asUintN(64, BigInt(r.mmapOffset ?? 0)), true);
}

/**
 * SET_MEM_TABLE: nregions, padding, then exactly nregions regions (the size must say so; QEMU and
 * DPDK send 8 + 32·n bytes). nregions ≤ VHOST_MEMORY_BASELINE_NREGIONS.
 */
export function decodeMemTable(b: Uint8Array): WireMemRegion[] {
  if (b.length < MEMORY_HEADER_SIZE) throw new VhostUserError(VU.BAD_SIZE, `memory table payload of ${b.length} bytes is shorter than its ${MEMORY_HEADER_SIZE}-byte header`);
  const dv = view(b);
  const n = dv.getUint32(0, true);
  if (n > VHOST_MEMORY_BASELINE_NREGIONS) {
    throw new VhostUserError(VU.MEM_TOO_MANY_REGIONS, `memory table has ${n} regions; at most ${VHOST_MEMORY_BASELINE_NREGIONS}`);
  }
  if (b.length !== MEMORY_HEADER_SIZE + n * MEM_REGION_SIZE) {
    throw new VhostUserError(VU.BAD_SIZE, `memory table announces ${n} regions (${MEMORY_HEADER_SIZE + n * MEM_REGION_SIZE} bytes) but the payload is ${b.length} bytes`);
  }
  const out: WireMemRegion[] = [];
  for (let i = 0; i < n; i++) out.push(readRegion(dv, MEMORY_HEADER_SIZE + i * MEM_REGION_SIZE));
  return out;
}

export function encodeMemTable(regions: ReadonlyArray<{ gpa: bigint | number; size: bigint | number; uaddr: bigint | number; mmapOffset?: bigint | number }>): Uint8Array {
  const b = new Uint8Array(MEMORY_HEADER_SIZE + regions.length * MEM_REGION_SIZE);
  const dv = view(b);
  dv.setUint32(0, regions.length, true);
  regions.forEach((r, i) => writeRegion(dv, MEMORY_HEADER_SIZE + i * MEM_REGION_SIZE, r));
  return b;
}

/** ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then one region. */
export function decodeSingleMemRegion(b: Uint8Array): WireMemRegion {
  return readRegion(need(b, SINGLE_MEM_REGION_SIZE, 'single memory region'), 8);
}

export function encodeSingleMemRegion(r: { gpa: bigint | number; size: bigint | number; uaddr: bigint | number; mmapOffset?: bigint | number }): Uint8Array {
  const b = new Uint8Array(SINGLE_MEM_REGION_SIZE);
  writeRegion(view(b), 8, r);
  return b;
}

export interface ConfigPayload {
  offset: number;
  size: number;
  /** 0: writable fields; 1: live migration. */
  flags: number;
  data: Uint8Array;
}

/** GET/SET_CONFIG: the header's size must equal 12 + config.size, and config.size ≤ 256. */
export function decodeConfig(b: Uint8Array): ConfigPayload {
  if (b.length < CONFIG_HEADER_SIZE) throw new VhostUserError(VU.BAD_SIZE, `config payload of ${b.length} bytes is shorter than its ${CONFIG_HEADER_SIZE}-byte header`);
  const dv = view(b);
  const offset = dv.getUint32(0, true);
  const size = dv.getUint32(4, true);
  const flags = dv.getUint32(8, true);
  if (size > CONFIG_MAX_SIZE) throw new VhostUserError(VU.CONFIG_RANGE, `config size ${size} is above the ${CONFIG_MAX_SIZE}-byte maximum`);
  if (b.length !== CONFIG_HEADER_SIZE + size) {
    throw new VhostUserError(VU.BAD_SIZE, `config announces ${size} bytes (${CONFIG_HEADER_SIZE + size} with its header) but the payload is ${b.length} bytes`);
  }
  return { offset, size, flags, data: b.slice(CONFIG_HEADER_SIZE) };
}

export function encodeConfig(c: { offset: number; size?: number; flags?: number; data?: Uint8Array }): Uint8Array {
  const data = c.data ?? new Uint8Array(c.size ?? 0);
  const size = c.size ?? data.length;
  const b = new Uint8Array(CONFIG_HEADER_SIZE + size);
  const dv = view(b);
  dv.setUint32(0, c.offset >>> 0, true);
  dv.setUint32(4, size >>> 0, true);
  dv.setUint32(8, (c.flags ?? 0) >>> 0, true);
  b.set(data.subarray(0, size), CONFIG_HEADER_SIZE);
  return b;
}

export interface InflightPayload {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

export function decodeInflight(b: Uint8Array): InflightPayload {
  if (b.length !== INFLIGHT_SIZE && b.length !== INFLIGHT_FIELDS_SIZE) {
    throw new VhostUserError(VU.BAD_SIZE, `inflight payload must be ${INFLIGHT_SIZE} (or ${INFLIGHT_FIELDS_SIZE}) bytes; got ${b.length}`);
  }
  const dv = view(b);
  return { mmapSize: dv.getBigUint64(0, true), mmapOffset: dv.getBigUint64(8, true), numQueues: dv.getUint16(16, true), queueSize: dv.getUint16(18, true) };
}

export function encodeInflight(p: { mmapSize: bigint | number; mmapOffset: bigint | number; numQueues: number; queueSize: number }, size = INFLIGHT_SIZE): Uint8Array {
  const b = new Uint8Array(size);
  const dv = view(b);
  dv.setBigUint64(0, BigInt(p.mmapSize), true);
  dv.setBigUint64(8, BigInt(p.mmapOffset), true);
  dv.setUint16(16, p.numQueues, true);
  dv.setUint16(18, p.queueSize, true);
  return b;
}

export interface LogPayload {
  mmapSize: bigint;
  mmapOffset: bigint;
}

export function decodeLog(b: Uint8Array): LogPayload {
  const dv = need(b, LOG_SIZE, 'log');
  return { mmapSize: dv.getBigUint64(0, true), mmapOffset: dv.getBigUint64(8, true) };
}

export function encodeLog(p: { mmapSize: bigint | number; mmapOffset: bigint | number }): Uint8Array {
  const b = new Uint8Array(LOG_SIZE);
  const dv = view(b);
  dv.setBigUint64(0, BigInt(p.mmapSize), true);
  dv.setBigUint64(8, BigInt(p.mmapOffset), true);
  return b;
}

/** The u64 of SET_VRING_KICK/CALL/ERR. */
export function decodeVringFile(b: Uint8Array): { index: number; noFd: boolean } {
  const v = decodeU64(b);
  return { index: Number(v & BigInt(VRING_IDX_MASK)), noFd: (v & BigInt(VRING_NOFD_MASK)) !== 0n };
}

export function encodeVringFile(index: number, noFd: boolean): Uint8Array {
  return encodeU64(BigInt((index & VRING_IDX_MASK) | (noFd ? VRING_NOFD_MASK : 0)));
}


/** struct vhost_iotlb_msg as QEMU sends it: iova, size, uaddr (u64 each), perm, type (u8), padded to 8. */
export const IOTLB_MSG_SIZE = 32;
/** Where struct vhost_iotlb_msg keeps the IOVA (u64) and the permission (u8). */
export const IOTLB_IOVA_AT = 0;
export const IOTLB_PERM_AT = 24;

/** vhost_iotlb_msg.type. */
export const IOTLB_TYPE = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;

export interface IotlbPayload {
  iova: bigint;
  size: bigint;
  uaddr: bigint;
  /** VHOST_ACCESS_RO 1, WO 2, RW 3. */
  perm: number;
  type: number;
}

export function decodeIotlb(b: Uint8Array): IotlbPayload {
  const dv = need(b, IOTLB_MSG_SIZE, 'IOTLB message');
  return { iova: dv.getBigUint64(0, true), size: dv.getBigUint64(8, true), uaddr: dv.getBigUint64(16, true), perm: dv.getUint8(24), type: dv.getUint8(25) };
}

export function encodeIotlb(p: { iova: bigint | number; size?: bigint | number; uaddr?: bigint | number; perm: number; type: number }): Uint8Array {
  const b = new Uint8Array(IOTLB_MSG_SIZE);
  const dv = view(b);
  dv.setBigUint64(IOTLB_IOVA_AT, BigInt(p.iova), true);
  dv.setBigUint64(8, BigInt(p.size ?? 0), true);
  dv.setBigUint64(16, BigInt(p.uaddr ?? 0), true);
  dv.setUint8(IOTLB_PERM_AT, p.perm);
  dv.setUint8(25, p.type);
  return b;
}
