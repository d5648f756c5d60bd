/**
 * vhost-user wire format: the 12-byte header, the request numbers with a name table, the protocol
 * feature bits, and one codec per payload shape. Pure functions over Uint8Array; no syscalls.
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "Message Specification" and "Front-end message types".
 * All numbers are in the machine's byte order; lgnet runs on little-endian hosts (x86-64, arm64), so
 * the codecs read and write little-endian.
 *
 *   0        4        8        12                               12 + size
 *   +--------+--------+--------+-------------------------------+
 *   |request | flags  |  size  | payload (shape per request)   |   fds travel as SCM_RIGHTS
 *   +--------+--------+--------+-------------------------------+   with the header bytes
 *   flags: bits 0-1 version (1), bit 2 REPLY, bit 3 NEED_REPLY
 *
 * Decoders validate sizes and ranges and throw VhostUserError; they never read past the payload.
 */
import { VhostUserError, VU } from './errors.ts';

// ---- header ----------------------------------------------------------------------------------------

/** request u32 + flags u32 + size u32. */
export const HEADER_SIZE = 12;

export const FLAGS = {
  /** The low two bits: protocol version. */
  VERSION_MASK: 0x3,
  /** The only version there is. */
  VERSION: 0x1,
  /** Set on every message the back-end sends as a reply. */
  REPLY: 0x4,
  /** The front-end wants a REPLY_ACK (u64 0 = success) for a request that has no reply of its own. */
  NEED_REPLY: 0x8,
} as const;

export interface Header {
  request: number;
  flags: number;
  size: number;
}

export function decodeHeader(b: Uint8Array): Header {
  if (b.length !== HEADER_SIZE) {
    throw new VhostUserError(VU.SHORT_HEADER, `a vhost-user header is exactly ${HEADER_SIZE} bytes; got ${b.length}`);
  }
  const dv = view(b);
  return { request: dv.getUint32(0, true), flags: dv.getUint32(4, true), size: dv.getUint32(8, true) };
}

export function encodeHeader(h: Header): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE);
  const dv = view(b);
  dv.setUint32(0, h.request >>> 0, true);
  dv.setUint32(4, h.flags >>> 0, true);
  dv.setUint32(8, h.size >>> 0, true);
  return b;
}

/** Header followed by payload, as one buffer (what goes into one sendmsg). */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  out.set(encodeHeader({ request, flags, size: payload.length }), 0);
  out.set(payload, HEADER_SIZE);
  return out;
}

// ---- request numbers -----------------------------------------------------------------------------------

/** Front-end → back-end request numbers (vhost-user.rst, "Front-end message types"). */
export const REQ = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_SLAVE_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

export type RequestName = keyof typeof REQ;

const NAMES = new Map<number, RequestName>(Object.entries(REQ).map(([k, v]) => [v, k as RequestName]));

/** "SET_MEM_TABLE" for 5; "UNKNOWN(99)" for numbers that are not requests. */
export function requestName(n: number): string {
  return NAMES.get(n) ?? `UNKNOWN(${n})`;
}

export function isKnownRequest(n: number): boolean {
  return NAMES.has(n);
}

// ---- feature bits ------------------------------------------------------------------------------------

/** Bit 30 of GET_FEATURES: GET/SET_PROTOCOL_FEATURES exist. */
export const F_PROTOCOL_FEATURES = 30;
/** Bit 26: VHOST_F_LOG_ALL (dirty logging for migration). */
export const F_LOG_ALL = 26;

/** Protocol feature bit numbers (vhost-user.rst, "Protocol features"). */
export const PROTOCOL_F = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  SLAVE_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  SLAVE_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

export type ProtocolFeatureName = keyof typeof PROTOCOL_F;

export function protocolMask(...names: ProtocolFeatureName[]): bigint {
  let m = 0n;
  for (const n of names) m |= 1n << BigInt(PROTOCOL_F[n]);
  return m;
}

/** Names of the protocol feature bits set in `bits` (unknown ones as `bit<n>`). */
export function protocolNames(bits: bigint): string[] {
  const known = new Map<number, string>(Object.entries(PROTOCOL_F).map(([k, v]) => [v, k]));
  const out: string[] = [];
  for (let i = 0; i < 64; i++) if (bits & (1n << BigInt(i))) out.push(known.get(i) ?? `bit${i}`);
  return out;
}

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

/**
 * The payload size each request must have. A number is exact; a function checks sizes that depend on
 * the content (memory table, config) and is re-checked by the decoder.
 */
export const PAYLOAD_SIZE: Readonly<Record<number, number | ((size: number) => boolean)>> = {
  [REQ.GET_FEATURES]: 0,
  [REQ.SET_FEATURES]: U64_SIZE,
  [REQ.SET_OWNER]: 0,
  [REQ.RESET_OWNER]: 0,
  [REQ.SET_MEM_TABLE]: (s) => s >= MEMORY_HEADER_SIZE && s <= MEMORY_HEADER_SIZE + VHOST_MEMORY_BASELINE_NREGIONS * MEM_REGION_SIZE && (s - MEMORY_HEADER_SIZE) % MEM_REGION_SIZE === 0,
  [REQ.SET_LOG_BASE]: LOG_SIZE,
  [REQ.SET_LOG_FD]: 0,
  [REQ.SET_VRING_NUM]: VRING_STATE_SIZE,
  [REQ.SET_VRING_ADDR]: VRING_ADDR_SIZE,
  [REQ.SET_VRING_BASE]: VRING_STATE_SIZE,
  [REQ.GET_VRING_BASE]: VRING_STATE_SIZE,
  [REQ.SET_VRING_KICK]: U64_SIZE,
  [REQ.SET_VRING_CALL]: U64_SIZE,
  [REQ.SET_VRING_ERR]: U64_SIZE,
  [REQ.GET_PROTOCOL_FEATURES]: 0,
  [REQ.SET_PROTOCOL_FEATURES]: U64_SIZE,
  [REQ.GET_QUEUE_NUM]: 0,
  [REQ.SET_VRING_ENABLE]: VRING_STATE_SIZE,
  [REQ.SEND_RARP]: U64_SIZE,
  [REQ.NET_SET_MTU]: U64_SIZE,
  [REQ.SET_VRING_ENDIAN]: VRING_STATE_SIZE,
  [REQ.GET_CONFIG]: (s) => s >= CONFIG_HEADER_SIZE && s <= MAX_PAYLOAD,
  [REQ.SET_CONFIG]: (s) => s >= CONFIG_HEADER_SIZE && s <= MAX_PAYLOAD,
  [REQ.GET_INFLIGHT_FD]: (s) => s === INFLIGHT_SIZE || s === INFLIGHT_FIELDS_SIZE,
  [REQ.SET_INFLIGHT_FD]: (s) => s === INFLIGHT_SIZE || s === INFLIGHT_FIELDS_SIZE,
  [REQ.RESET_DEVICE]: 0,
  [REQ.VRING_KICK]: VRING_STATE_SIZE,
  [REQ.GET_MAX_MEM_SLOTS]: 0,
  [REQ.ADD_MEM_REG]: SINGLE_MEM_REGION_SIZE,
  [REQ.REM_MEM_REG]: SINGLE_MEM_REGION_SIZE,
  [REQ.SET_STATUS]: U64_SIZE,
  [REQ.GET_STATUS]: 0,
};

/** Throws VU_BAD_SIZE unless `size` fits `request`. Unknown requests are not checked here. */
export function checkPayloadSize(request: number, size: number): void {
  const rule = PAYLOAD_SIZE[request];
  if (rule === undefined) return;
  const ok = typeof rule === 'number' ? size === rule : rule(size);
  if (!ok) {
    const want = typeof rule === 'number' ? `${rule} bytes` : 'a size its payload describes';
    throw new VhostUserError(VU.BAD_SIZE, `${requestName(request)} needs ${want}; header.size was ${size}`, { request });
  }
}

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
