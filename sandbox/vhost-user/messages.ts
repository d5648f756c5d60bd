/**
 * vhost-user wire format: the 12-byte header, the request numbers with a name table, the protocol
 * feature bits, and the payload size each request must have. The codec of each payload shape is in
 * payloads.ts and re-exported here, so this is the one import of the wire format. Pure functions over
 * Uint8Array; no syscalls.
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
import {
  CONFIG_HEADER_SIZE, INFLIGHT_FIELDS_SIZE, INFLIGHT_SIZE, IOTLB_MSG_SIZE, LOG_SIZE, MAX_PAYLOAD, MEM_REGION_SIZE, MEMORY_HEADER_SIZE,
  SINGLE_MEM_REGION_SIZE, U64_SIZE, VHOST_MEMORY_BASELINE_NREGIONS, VRING_ADDR_SIZE, VRING_STATE_SIZE,
} from './payloads.ts';

// The payload codecs are part of the wire format's one import (vrings.ts, the harness, tests).
export * from './payloads.ts';

// ---- header ----------------------------------------------------------------------------------------

/** request u32 + flags u32 + size u32. */
export const HEADER_SIZE = 12;

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

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

/** Back-end → front-end request numbers, on the back-end channel (SET_SLAVE_REQ_FD). */
export const BACKEND_REQ = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
} as const;

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

// ---- payload sizes per request ------------------------------------------------------------------------

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
  [REQ.POSTCOPY_ADVISE]: 0,
  [REQ.POSTCOPY_LISTEN]: 0,
  [REQ.POSTCOPY_END]: 0,
  [REQ.SET_SLAVE_REQ_FD]: 0,
  [REQ.IOTLB_MSG]: IOTLB_MSG_SIZE,
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
