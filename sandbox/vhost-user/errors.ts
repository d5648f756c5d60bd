/**
 * Typed errors of the vhost-user channel. Every malformed or rule-breaking message raises one
 * VhostUserError with a stable `code`; the server logs it once (with the request's name), counts it,
 * and drops the connection (DESIGN.md, "Untrusted input": connection-fatal). Nothing here is fatal to
 * the process.
 */
import { LgnetError } from '../../device/errors.ts';

/** Stable codes, one per rule of the vhost-user checklist in DESIGN.md. */
export const VU = {
  /** The header read was not exactly 12 bytes. */
  SHORT_HEADER: 'VU_SHORT_HEADER',
  /** flags & 3 was not 1. */
  BAD_VERSION: 'VU_BAD_VERSION',
  /** A request carried the REPLY flag (only replies may). */
  BAD_FLAGS: 'VU_BAD_FLAGS',
  /** header.size exceeds the largest payload any request has. */
  PAYLOAD_TOO_LARGE: 'VU_PAYLOAD_TOO_LARGE',
  /** The payload did not arrive in full. */
  SHORT_PAYLOAD: 'VU_SHORT_PAYLOAD',
  /** header.size does not match what the request's payload needs. */
  BAD_SIZE: 'VU_BAD_SIZE',
  /** A request number this backend does not know. */
  UNKNOWN_REQUEST: 'VU_UNKNOWN_REQUEST',
  /** A known request that this backend does not implement or did not negotiate. */
  UNSUPPORTED_REQUEST: 'VU_UNSUPPORTED_REQUEST',
  /** The message came with the wrong number of fds (they are all closed). */
  BAD_FD_COUNT: 'VU_BAD_FD_COUNT',
  /** More fds than one message may carry arrived (the rest were closed). */
  TOO_MANY_FDS: 'VU_TOO_MANY_FDS',
  /** Fds were sent with a message that the kernel could not pass on (MSG_CTRUNC): lgnet is at its
   *  open-file limit (RLIMIT_NOFILE). */
  FDS_LOST: 'VU_FDS_LOST',
  /** A vring index ≥ the number of queues. */
  BAD_QUEUE_INDEX: 'VU_BAD_QUEUE_INDEX',
  /** SET_VRING_NUM: 0, not a power of 2, or above 32768. */
  BAD_QUEUE_SIZE: 'VU_BAD_QUEUE_SIZE',
  /** SET_VRING_BASE above 0xffff, SET_VRING_ENABLE not 0/1, and the like. */
  BAD_VRING_STATE: 'VU_BAD_VRING_STATE',
  /** Ring addresses not inside one memory region, or misaligned. */
  BAD_RING_ADDR: 'VU_BAD_RING_ADDR',
  /** More memory regions than allowed. */
  MEM_TOO_MANY_REGIONS: 'VU_MEM_TOO_MANY_REGIONS',
  /** A memory region of size 0. */
  MEM_ZERO_SIZE: 'VU_MEM_ZERO_SIZE',
  /** gpa/uaddr/mmap_offset + size overflows (or is beyond 2^53, which lgnet cannot address). */
  MEM_OVERFLOW: 'VU_MEM_OVERFLOW',
  /** Two regions overlap in guest physical or frontend virtual addresses. */
  MEM_OVERLAP: 'VU_MEM_OVERLAP',
  /** mmap_offset is not page-aligned (lgnet maps each region at its own offset). */
  MEM_UNALIGNED: 'VU_MEM_UNALIGNED',
  /** mmap of a region failed (e.g. the fd is shorter than offset + size). */
  MEM_MAP_FAILED: 'VU_MEM_MAP_FAILED',
  /** REM_MEM_REG named a region that is not in the table. */
  MEM_NOT_FOUND: 'VU_MEM_NOT_FOUND',
  /** A ring was started before any memory table arrived on this connection. */
  NO_MEMORY: 'VU_NO_MEMORY',
  /** SET_FEATURES with bits that GET_FEATURES did not offer. */
  FEATURES_NOT_OFFERED: 'VU_FEATURES_NOT_OFFERED',
  /** SET_PROTOCOL_FEATURES with bits that were not offered. */
  PROTOCOL_FEATURES_NOT_OFFERED: 'VU_PROTOCOL_FEATURES_NOT_OFFERED',
  /** GET/SET_CONFIG outside the device's config space. */
  CONFIG_RANGE: 'VU_CONFIG_RANGE',
  /** NET_SET_MTU outside [68, 65535]. */
  BAD_MTU: 'VU_BAD_MTU',
  /** SET_STATUS with a value that is not a status byte. */
  BAD_STATUS: 'VU_BAD_STATUS',
  /** GET/SET_INFLIGHT_FD with an impossible description. */
  BAD_INFLIGHT: 'VU_BAD_INFLIGHT',
  /** SET_LOG_BASE: a log that does not cover every region, an offset + size that overflows or lies past its fd. */
  BAD_LOG: 'VU_BAD_LOG',
  /** The reply could not be written in one go (the frontend does not read). */
  REPLY_FAILED: 'VU_REPLY_FAILED',
  /** The device refused what the message asked (wraps the device's error as cause). */
  DEVICE: 'VU_DEVICE',
  /**
   * Guest memory shrank under the back-end: a region's file (or the dirty log's) was truncated after
   * it was mapped. Seal memfds with F_SEAL_SHRINK, or never truncate memory a back-end maps.
   */
  MEM_FAULT: 'VU_MEM_FAULT',
  /**
   * Postcopy migration out of order (POSTCOPY_LISTEN before POSTCOPY_ADVISE), or the front-end refused
   * the memory table's bases (its acknowledgement was not 0).
   */
  POSTCOPY_STATE: 'VU_POSTCOPY_STATE',
  /** POSTCOPY_ADVISE: no userfaultfd could be made, or a mapping could not be registered with it. */
  POSTCOPY_FAILED: 'VU_POSTCOPY_FAILED',
  /**
   * IOTLB_MSG that cannot be taken: VIRTIO_F_ACCESS_PLATFORM was not negotiated, the type is not one a
   * front-end sends (UPDATE, INVALIDATE), or an update's range is empty, wraps, or has a permission
   * other than RO, WO or RW.
   */
  BAD_IOTLB: 'VU_BAD_IOTLB',
  /**
   * SET_SLAVE_REQ_FD carried an fd that is not a connected AF_UNIX stream socket: lgnet's queue workers
   * write IOTLB misses on that fd, and a pipe, file or tap would take them as data.
   */
  BAD_CHANNEL_FD: 'VU_BAD_CHANNEL_FD',
  /**
   * Not a message: the listening socket handed to the server (VhostUserServerOptions.listenFd, `lgnet
   * serve --socket-fd`) is not a listening AF_UNIX stream socket. The server does not start.
   */
  BAD_LISTEN_FD: 'VU_BAD_LISTEN_FD',
} as const;

export type VhostUserErrorCode = (typeof VU)[keyof typeof VU];

/** A vhost-user message broke a rule. Connection-fatal. */
export class VhostUserError extends LgnetError {
  declare readonly code: VhostUserErrorCode;
  /** The request number the error belongs to, when the header was readable. */
  readonly request: number | undefined;

  constructor(code: VhostUserErrorCode, message: string, opts: { request?: number; cause?: unknown } = {}) {
    super(code, message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.request = opts.request;
  }
}
