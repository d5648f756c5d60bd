// vring/errors.ts — the typed errors of the virtqueue layer.
//
// Where it sits: everything in vring/ that rejects guest (or frontend) input throws one of these.
// The device layer catches VringError, logs it once, counts it and marks the device NEEDS_RESET;
// a queue (split or packed) that throws one keeps it in `broken` and throws it again on every later
// call, so a hostile guest gets exactly one chance to be noticed and none to make us spin.
//
// Each code names the guest invariant that was broken (virtio 1.2 §2.6, §2.7, §2.8). The message says
// what the guest did and what happens now. Codes are stable: tests, metrics and logs key on them.

import { LgnetError } from '../errors/index.ts';

/** Every stable error code of vring/, with the subclass that carries it. */
export const VringErrorCode = {
  // ---- MemoryError: an address the guest (or frontend) gave does not land in mapped memory.
  /** A buffer, ring or table touches bytes outside every guest memory region. */
  UNMAPPED: 'VRING_UNMAPPED',
  /** addr + len wraps past 2^64 (or past 2^53, the largest address a JS number holds exactly). */
  ADDR_WRAP: 'VRING_ADDR_WRAP',
  /** A region has no native mapping id, so its bytes cannot be handed to a syscall. */
  NO_MAPPING: 'VRING_NO_MAPPING',
  /** The region table itself is bad: zero size, overlap, overflow, outside its buffer. */
  BAD_REGION: 'VRING_BAD_REGION',
  /** Behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM): the mapping of an I/O virtual address does not allow
   *  the access (a device write to a read-only mapping, or the reverse). */
  IOMMU_DENIED: 'VRING_IOMMU_DENIED',

  // ---- RingLayoutError: queue size, alignment or placement (§2.6, §2.7 "Virtqueue Alignment").
  /** Queue size is 0, not a power of 2, above 32768 or above the device's maximum. */
  BAD_SIZE: 'VRING_BAD_SIZE',
  /** A ring area is not aligned (descriptor table 16, available ring 2, used ring 4). */
  MISALIGNED: 'VRING_MISALIGNED',
  /** A ring area (event fields included) is not entirely inside one guest memory region. */
  RING_UNMAPPED: 'VRING_RING_UNMAPPED',
  /** The queue was used before attach(mem) bound it to guest memory. */
  NOT_ATTACHED: 'VRING_NOT_ATTACHED',

  // ---- DescriptorError: the descriptor chain breaks a rule of §2.7.5 / §2.7.5.3.
  /** A head index taken from the available ring is ≥ queue size. */
  HEAD_OUT_OF_RANGE: 'VRING_HEAD_OUT_OF_RANGE',
  /** A `next` field is ≥ queue size (or ≥ the entry count of an indirect table). */
  NEXT_OUT_OF_RANGE: 'VRING_NEXT_OUT_OF_RANGE',
  /** The chain visits more descriptors than the table holds: it loops. */
  DESC_LOOP: 'VRING_DESC_LOOP',
  /** The chain's buffers add up to 2^32 bytes or more. */
  CHAIN_TOO_LONG: 'VRING_CHAIN_TOO_LONG',
  /** A descriptor has length 0. */
  ZERO_LEN: 'VRING_ZERO_LEN',
  /** A device-readable descriptor follows a device-writable one. */
  READ_AFTER_WRITE: 'VRING_READ_AFTER_WRITE',
  /** The chain translates into more memory pieces than the iovec cap. */
  TOO_MANY_PIECES: 'VRING_TOO_MANY_PIECES',
  /** INDIRECT set although VIRTIO_F_INDIRECT_DESC was not negotiated. */
  INDIRECT_NOT_NEGOTIATED: 'VRING_INDIRECT_NOT_NEGOTIATED',
  /** INDIRECT set inside an indirect table. */
  INDIRECT_NESTED: 'VRING_INDIRECT_NESTED',
  /** INDIRECT and NEXT set on the same descriptor. */
  INDIRECT_WITH_NEXT: 'VRING_INDIRECT_WITH_NEXT',
  /** INDIRECT on a descriptor that is not the head of its chain. */
  INDIRECT_NOT_HEAD: 'VRING_INDIRECT_NOT_HEAD',
  /** An indirect table length of 0 or not a multiple of 16. */
  INDIRECT_BAD_LEN: 'VRING_INDIRECT_BAD_LEN',
  /** With VIRTIO_F_IN_ORDER, a chain the device cannot use lies among a frame's buffers: passing over
   *  it would use the ring out of order. */
  IN_ORDER_SKIP: 'VRING_IN_ORDER_SKIP',

  // ---- RingStateError: indices or ownership are inconsistent.
  /** avail.idx moved more than queue size past the last consumed index. */
  AVAIL_IDX_JUMP: 'VRING_AVAIL_IDX_JUMP',
  /** A head is offered again while the device still holds it. */
  HEAD_IN_FLIGHT: 'VRING_HEAD_IN_FLIGHT',
  /** More chains in flight than the queue size. */
  TOO_MANY_IN_FLIGHT: 'VRING_TOO_MANY_IN_FLIGHT',
  /** addUsed for a head that is not in flight: completed twice, or never popped. */
  NOT_IN_FLIGHT: 'VRING_NOT_IN_FLIGHT',
  /** rewind(n) over chains that were completed, or more than were popped. */
  BAD_REWIND: 'VRING_BAD_REWIND',
  /** Driver side: used.idx moved more than queue size past the last consumed entry. */
  USED_IDX_JUMP: 'VRING_USED_IDX_JUMP',
  /** Driver side: the device returned a head the driver never made available. */
  USED_BAD_ID: 'VRING_USED_BAD_ID',

  // ---- Packed rings (§2.8). Rules shared with split rings keep their codes above: a buffer id ≥ size
  // is HEAD_OUT_OF_RANGE, an id offered while in flight HEAD_IN_FLIGHT, a chain longer than the ring
  // DESC_LOOP, and so on.
  /** A descriptor inside a packed chain is not available in the lap it sits in: seen out of wrap order. */
  WRAP_ORDER: 'VRING_WRAP_ORDER',
  /** A packed descriptor where the next available one should be has AVAIL and USED both equal to the
   *  wrap counter: a used marker of the current lap, which the device never wrote there. */
  BAD_DESC_FLAGS: 'VRING_BAD_DESC_FLAGS',
  /** A packed ring base (vhost-user SET_VRING_BASE) names a ring index ≥ the queue size. */
  BAD_BASE: 'VRING_BAD_BASE',
  /** The vhost-user inflight record (INFLIGHT_SHMFD) was asked of a packed ring, which lgnet does not
   *  keep one for yet. */
  INFLIGHT_UNSUPPORTED: 'VRING_INFLIGHT_UNSUPPORTED',
} as const;

/** One of the stable codes in {@link VringErrorCode}. */
export type VringErrorCodeValue = (typeof VringErrorCode)[keyof typeof VringErrorCode];

/** Base class of every error vring/ throws on purpose. `code` is stable; `message` is for humans. */
export class VringError extends LgnetError {
  /** Stable machine-readable code, one of {@link VringErrorCode}. */
  declare readonly code: VringErrorCodeValue;

  constructor(code: VringErrorCodeValue, message: string) {
    super(code, message);
  }
}

/**
 * Unmapped or wrapping guest address, a region without native mapping, or a bad region table.
 * Raised by GuestMemory; when a queue hits it while walking a chain the queue is broken.
 */
export class MemoryError extends VringError {}

/**
 * Queue size, ring alignment or ring placement is invalid (§2.6, §2.7 and §2.8 alignment tables). Raised
 * by SplitQueue.attach() and PackedQueue.attach(); the queue cannot be started until it is reconfigured.
 */
export class RingLayoutError extends VringError {}

/**
 * A descriptor chain breaks a rule of §2.7.5 (loops, ranges, lengths, direction order) or of
 * §2.7.5.3 (indirect tables), or their packed counterparts in §2.8 (wrap order, flags). The queue is
 * broken: the guest driver is buggy or hostile.
 */
export class DescriptorError extends VringError {}

/**
 * Ring indices or buffer ownership are inconsistent: avail.idx jumped (CVE-2020-10723 class), a head is
 * offered twice, or the device completed something it does not hold. The queue is broken.
 */
export class RingStateError extends VringError {}
