// vring/packed-layout.ts — byte layout of a packed virtqueue (virtio 1.2 §2.8, VIRTIO_F_RING_PACKED).
//
// Where it sits: beside layout.ts, which holds the split ring. packed.ts (device side) and
// packed-driver.ts (driver side) turn these offsets into typed-array indices once, at attach time.
//
// A packed virtqueue is one descriptor ring that both sides write, plus two small event suppression
// structures, each written by one side only:
//
//   Descriptor ring (driver and device write)   16 × size bytes, align 16          §2.8.13
//   ┌──────────────┬─────────┬────────┬──────────┐
//   │ addr u64     │ len u32 │ id u16 │ flags u16│  × size
//   └──────────────┴─────────┴────────┴──────────┘
//   0              8         12       14         16
//   flags: NEXT 1, WRITE 2, INDIRECT 4, AVAIL 1<<7, USED 1<<15
//
//   Driver event suppression (driver writes, "driver area")    4 bytes, align 4     §2.8.14
//   Device event suppression (device writes, "device area")    4 bytes, align 4
//   ┌──────────────────────────────┬──────────────────────────────┐
//   │ off_wrap u16: off 15 | wrap 1│ flags u16: ENABLE 0, DISABLE 1, DESC 2 (EVENT_IDX)
//   └──────────────────────────────┴──────────────────────────────┘
//
// Both sides walk the ring in order, each with a position and a one-bit wrap counter that starts at 1
// and flips every time the position passes the end of the ring (§2.8.1). The driver marks a descriptor
// available with AVAIL = its wrap counter and USED = the inverse; the device marks one used with both
// equal to its own wrap counter. lgnet writes a position as `idx | wrap << 15`, the encoding of the
// spec's off_wrap and of vhost-user's packed ring base, so one number names a slot and its lap.
//
// Unlike split rings, the queue size need not be a power of 2 (§2.8.10.1: "does not have to be a
// power of 2 unless enforced by the transport"); it is at most 2^15.

/** Largest packed queue size (§2.8: "Packed virtqueues support up to 2^15 entries each"). */
export const MAX_PACKED_QUEUE_SIZE = 32768;
/** A size a packed ring may have: an integer in 1…32768 (any, not only powers of 2). */
export const isPackedQueueSize = (size: number): boolean => Number.isInteger(size) && size >= 1 && size <= MAX_PACKED_QUEUE_SIZE;

// ---- Descriptor ring (§2.8.13): struct pvirtq_desc { le64 addr; le32 len; le16 id; le16 flags; }
/** Bytes per packed descriptor: addr 8 + len 4 + id 2 + flags 2. */
export const PACKED_DESC_SIZE = 16;
/** Offset of addr (le64, guest physical); read as two u32 halves, low first. Unused in a used descriptor. */
export const PACKED_DESC_ADDR = 0;
/** Offset of len (le32): the buffer's length, or in a used descriptor the bytes the device wrote. */
export const PACKED_DESC_LEN = 8;
/** Offset of id (le16): the buffer id, carried by the last descriptor of a chain and by the used one. */
export const PACKED_DESC_ID = 12;
/** Offset of flags (le16): written last by whoever hands the descriptor over. */
export const PACKED_DESC_FLAGS = 14;
/** Required alignment of the descriptor ring (§2.8.10.1 table). */
export const PACKED_DESC_ALIGN = 16;
/** Size of the descriptor ring area. */
export const packedDescAreaSize = (size: number): number => PACKED_DESC_SIZE * size;

// ---- Flags. NEXT, WRITE and INDIRECT have the split ring's values (layout.ts VRING_DESC_F_*).
/** Descriptor is available when this bit equals the driver's wrap counter (and USED does not) (§2.8.1). */
export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
/** Descriptor is used when this bit and AVAIL both equal the device's wrap counter (§2.8.1). */
export const VRING_PACKED_DESC_F_USED = 1 << 15;

// ---- Event suppression structure (§2.8.14): struct pvirtq_event_suppress { le16 off_wrap; le16 flags; }
/** Offset of desc_event_off_wrap: ring offset (15 bits) | wrap counter << 15; read under flags DESC. */
export const EVENT_OFF_WRAP = 0;
/** Offset of desc_event_flags (2 bits; the other 14 are reserved). */
export const EVENT_FLAGS = 2;
/** Bytes of one event suppression structure. */
export const EVENT_AREA_SIZE = 4;
/** Required alignment of each event suppression structure (§2.8.10.1 table). */
export const EVENT_ALIGN = 4;
/** desc_event_flags: notify after every descriptor made available / used. */
export const VRING_PACKED_EVENT_FLAG_ENABLE = 0;
/** desc_event_flags: do not notify. */
export const VRING_PACKED_EVENT_FLAG_DISABLE = 1;
/** desc_event_flags: notify when the descriptor at off_wrap is made available / used (EVENT_IDX only). */
export const VRING_PACKED_EVENT_FLAG_DESC = 2;
/** The bits of desc_event_flags that carry a value; 3 is reserved. */
export const VRING_PACKED_EVENT_FLAGS_MASK = 3;
/** Bit of off_wrap (and of a position) that holds the wrap counter. */
export const VRING_PACKED_EVENT_F_WRAP_CTR = 15;

// ---- Positions: idx | wrap << 15
/** Position of ring slot `idx` in the lap whose wrap counter is `wrap` (0 or 1). */
export const packedPos = (idx: number, wrap: number): number => (idx & 0x7fff) | ((wrap & 1) << VRING_PACKED_EVENT_F_WRAP_CTR);
/** Ring slot of a position. */
export const packedPosIdx = (pos: number): number => pos & 0x7fff;
/** Wrap counter of a position. */
export const packedPosWrap = (pos: number): number => (pos >>> VRING_PACKED_EVENT_F_WRAP_CTR) & 1;
/** Where both sides start after a reset: slot 0, wrap counter 1 (§2.8.1). */
export const PACKED_POS_START = packedPos(0, 1);

// ---- vhost-user ring base (GET/SET_VRING_BASE `num`, as QEMU 7.2 and DPDK encode it for packed rings)
/** A packed ring's hand-over state: where the device pops next and where it writes its next used descriptor. */
export interface PackedRingBase {
  /** Next slot to pop. */
  lastAvailIdx: number;
  /** Wrap counter of the lap that slot is in (what an available descriptor there has in AVAIL). */
  availWrap: number;
  /** Next slot to write a used descriptor to. */
  lastUsedIdx: number;
  /** Wrap counter the device writes into AVAIL and USED there. */
  usedWrap: number;
}

/** The ring base of a fresh packed queue: both positions at slot 0, wrap counters 1 (0x80008000). */
export const PACKED_RING_BASE_START = 0x8000_8000;

/**
 * `num` for vhost-user SET/GET_VRING_BASE on a packed ring: (last_avail_idx | avail_wrap << 15) in the
 * low 16 bits and (last_used_idx | used_wrap << 15) in the high 16 bits, as an unsigned 32-bit number.
 */
export function encodePackedRingBase(b: PackedRingBase): number {
  return (packedPos(b.lastAvailIdx, b.availWrap) | (packedPos(b.lastUsedIdx, b.usedWrap) << 16)) >>> 0;
}

/** Split a vhost-user packed ring base `num` (a u32) into its four fields; ranges are not checked here. */
export function decodePackedRingBase(num: number): PackedRingBase {
  const lo = num & 0xffff;
  const hi = (num >>> 16) & 0xffff;
  return { lastAvailIdx: packedPosIdx(lo), availWrap: packedPosWrap(lo), lastUsedIdx: packedPosIdx(hi), usedWrap: packedPosWrap(hi) };
}

/** Guest physical addresses of the three areas of one packed ring, and the first byte after it. */
export interface PackedRingLayout {
  desc: number;
  /** Driver event suppression structure (the "driver area"; vhost-user's avail address). */
  driver: number;
  /** Device event suppression structure (the "device area"; vhost-user's used address). */
  device: number;
  end: number;
}

/** A compact layout: the descriptor ring at `base` (16-aligned), then the driver and device areas. */
export function packedRingLayout(size: number, base: number): PackedRingLayout {
  if (base % PACKED_DESC_ALIGN !== 0) throw new RangeError(`ring base 0x${base.toString(16)} is not 16-byte aligned`);
  const desc = base;
  const driver = desc + packedDescAreaSize(size);
  const device = driver + EVENT_AREA_SIZE;
  return { desc, driver, device, end: device + EVENT_AREA_SIZE };
}
