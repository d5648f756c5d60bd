// vring/layout.ts — byte layout of a split virtqueue (virtio 1.2 §2.7).
//
// Where it sits: the only file that knows field offsets. queue.ts (device side) and driver.ts (driver
// side) turn these into typed-array indices once, at attach time; nothing else in lgnet hard-codes a
// ring offset.
//
// A split virtqueue is three areas in guest memory, each written by one side only:
//
//   Descriptor table (driver writes)        16 × size bytes, align 16      §2.7.5
//   ┌──────────────┬─────────┬─────────┬─────────┐
//   │ addr u64     │ len u32 │flags u16│ next u16│  × size
//   └──────────────┴─────────┴─────────┴─────────┘
//   0              8         12        14        16
//
//   Available ring (driver writes)          6 + 2 × size bytes, align 2     §2.7.6
//   ┌─────────┬─────────┬───────────────────────┬────────────────┐
//   │flags u16│ idx u16 │ ring[size] u16 (heads)│ used_event u16 │
//   └─────────┴─────────┴───────────────────────┴────────────────┘
//   0         2         4                       4+2·size
//
//   Used ring (device writes)               6 + 8 × size bytes, align 4     §2.7.8
//   ┌─────────┬─────────┬──────────────────────────────┬─────────────────┐
//   │flags u16│ idx u16 │ ring[size] {id u32, len u32} │ avail_event u16 │
//   └─────────┴─────────┴──────────────────────────────┴─────────────────┘
//   0         2         4                              4+8·size
//
// idx fields are free-running u16 counters; a slot is idx & (size − 1), which is why size is a power
// of 2. used_event / avail_event exist only in use with VIRTIO_F_EVENT_IDX, but the spec sizes the
// areas with them always, and so do we: placement checks include them.
//
// All fields are little-endian (VERSION_1) or guest-native (legacy); lgnet runs on little-endian hosts
// only, where both are the same, so typed arrays are the wire format. The check is right here.

if (new Uint8Array(new Uint16Array([0x0102]).buffer)[0] !== 0x02) {
  throw new Error(
    'lgnet vring: this host is big-endian. Virtqueues are little-endian and vring/ reads them with ' +
      'native typed arrays, so it only supports little-endian hosts (x86_64, aarch64).',
  );
}

/** Largest queue size a split ring may have (§2.7: "Queue Size ... maximum 32768"). */
export const MAX_QUEUE_SIZE = 32768;
/** A size a split ring may have: a power of 2 (idx & (size − 1) picks the slot) in 1…32768 (§2.7). */
export const isQueueSize = (size: number): boolean =>
  Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;

// ---- Descriptor table (§2.7.5): struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
/** Bytes per descriptor: addr 8 + len 4 + flags 2 + next 2. */
export const DESC_SIZE = 16;
/** Offset of addr (le64, guest physical) in a descriptor; read as two u32 halves, low first. */
export const DESC_ADDR = 0;
/** Offset of len (le32) in a descriptor. */
export const DESC_LEN = 8;
/** Offset of flags (le16) in a descriptor. */
export const DESC_FLAGS = 12;
/** Offset of next (le16) in a descriptor. */
export const DESC_NEXT = 14;
/** Required alignment of the descriptor table (§2.7 table "Virtqueue Part Alignment"). */
export const DESC_ALIGN = 16;

// ---- Available ring (§2.7.6): struct virtq_avail { le16 flags; le16 idx; le16 ring[]; le16 used_event; }
/** Offset of avail.flags. */
export const AVAIL_FLAGS = 0;
/** Offset of avail.idx: where the driver will put the next head, free-running. */
export const AVAIL_IDX = 2;
/** Offset of avail.ring[0]; each entry is a u16 head index. */
export const AVAIL_RING = 4;
/** Bytes per available ring entry. */
export const AVAIL_ELEM_SIZE = 2;
/** Required alignment of the available ring. */
export const AVAIL_ALIGN = 2;
/** Offset of used_event (EVENT_IDX, §2.7.10): 4 + 2·size. */
export const availUsedEventOffset = (size: number): number => AVAIL_RING + AVAIL_ELEM_SIZE * size;
/** Size of the available ring area: flags 2 + idx 2 + 2·size + used_event 2. */
export const availAreaSize = (size: number): number => 6 + AVAIL_ELEM_SIZE * size;

// ---- Used ring (§2.7.8): struct virtq_used { le16 flags; le16 idx; struct virtq_used_elem ring[]; le16 avail_event; }
/** Offset of used.flags. */
export const USED_FLAGS = 0;
/** Offset of used.idx: where the device will put the next element, free-running. */
export const USED_IDX = 2;
/** Offset of used.ring[0]. */
export const USED_RING = 4;
/** Bytes per used element: struct virtq_used_elem { le32 id; le32 len; }. */
export const USED_ELEM_SIZE = 8;
/** Offset of id (head of the returned chain, as le32) in a used element. */
export const USED_ELEM_ID = 0;
/** Offset of len (bytes the device wrote into the chain) in a used element. */
export const USED_ELEM_LEN = 4;
/** Required alignment of the used ring. */
export const USED_ALIGN = 4;
/** Offset of avail_event (EVENT_IDX, §2.7.10): 4 + 8·size. */
export const usedAvailEventOffset = (size: number): number => USED_RING + USED_ELEM_SIZE * size;
/** Size of the used ring area: flags 2 + idx 2 + 8·size + avail_event 2. */
export const usedAreaSize = (size: number): number => 6 + USED_ELEM_SIZE * size;
/** Size of the descriptor table area. */
export const descAreaSize = (size: number): number => DESC_SIZE * size;

// ---- Flags
/** Descriptor continues via `next` (§2.7.5). */
export const VRING_DESC_F_NEXT = 1;
/** Buffer is device-writable (otherwise device-readable) (§2.7.5). */
export const VRING_DESC_F_WRITE = 2;
/** Buffer holds an indirect descriptor table (§2.7.5.3, VIRTIO_F_INDIRECT_DESC). */
export const VRING_DESC_F_INDIRECT = 4;
/** avail.flags: driver asks for no used-buffer notifications (ignored under EVENT_IDX) (§2.7.7). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: device asks for no available-buffer notifications (ignored under EVENT_IDX) (§2.7.7). */
export const VRING_USED_F_NO_NOTIFY = 1;

/** Used-ring alignment of the legacy layout (virtio 0.9.5 / Linux vring_init with PAGE_SIZE). */
export const LEGACY_VRING_ALIGN = 4096;

/** Guest physical addresses of the three areas of one split ring, and the first byte after it. */
export interface SplitRingLayout {
  desc: number;
  avail: number;
  used: number;
  end: number;
}

/**
 * The contiguous layout of §2.7.2 (legacy interfaces): descriptor table at `base`, the available ring
 * right after it, the used ring at the next multiple of `usedAlign` (4096 in the legacy layout; pass 4
 * for the tightest VERSION_1 packing). `base` must be 16-aligned.
 */
export function splitRingLayout(size: number, base: number, usedAlign: number = LEGACY_VRING_ALIGN): SplitRingLayout {
  if (base % DESC_ALIGN !== 0) throw new RangeError(`ring base 0x${base.toString(16)} is not 16-byte aligned`);
  if (usedAlign < USED_ALIGN || (usedAlign & (usedAlign - 1)) !== 0) {
    throw new RangeError(`used ring alignment ${usedAlign} must be a power of 2 ≥ 4`);
  }
  const desc = base;
  const avail = desc + descAreaSize(size);
  const used = Math.ceil((avail + availAreaSize(size)) / usedAlign) * usedAlign;
  return { desc, avail, used, end: used + usedAreaSize(size) };
}
