// vring/packed-resume.ts — where a packed ring's device side stands, read from the ring itself.
//
// Why: a split ring keeps the device's position in shared memory (used.idx), and a front-end whose
// back-end vanished without GET_VRING_BASE restarts the next one there (QEMU's
// virtio_queue_restore_last_avail_idx). A packed ring has no such index, and QEMU 7.2 then hands the
// new back-end whatever base it last knew: the start position, or one from an earlier hand-over.
// Device and driver would disagree for good. The descriptor ring itself still says where things are:
//
//   linear order:  … D−N …………………… P ……………………… D
//   slots:         │ consumed (device-written, or the tail of a consumed chain) │ available │
//
// - Every slot was last written by the driver in the lap that ends at its position D (the device
//   writes a used descriptor only where the driver wrote first, in the same lap), so the AVAIL bits,
//   slot by slot, change value exactly once: at the driver's next position D. Their values give D's
//   wrap counter.
// - Going back from D, the descriptors that are available in their lap form one run; it starts at P,
//   where the device stopped consuming. A back-end that died with chains in flight left them
//   available (their used descriptors were never written), so resuming at P takes them up again, as
//   QEMU's split-ring restore does.
// - The run can also hold the tail of the last consumed chain: the device writes one used descriptor
//   per chain, over its head, and leaves the other slots as the driver wrote them. A front-end base
//   inside the run is believed where it ends such a tail: NEXT on all but its last slot, and that last
//   slot carrying the buffer id of the used descriptor just before the run (unless the driver has
//   already reused that slot), and the driver's used cursor, where it publishes one (EVENT_IDX), not
//   at P. Chains of one slot (indirect descriptors, mergeable RX buffers: what Linux posts by
//   default) leave no tail, and P is exact for them.
// - What the ring cannot tell apart: without EVENT_IDX, a stale base one chain into the run whose id
//   the driver reused at once (Linux frees ids last in, first out), and after a crash, the tail of a
//   multi-slot chain at the start of the run. The first keeps the stale base, the second resumes in
//   the tail; either leaves device and driver out of step.
//
// The scan reads flags only, bounded by the ring size, and believes nothing it cannot check: a ring
// whose AVAIL bits do not change exactly once (a driver mid-write, or garbage) keeps the front-end's
// base, which pop() then validates as always.

import { VRING_DESC_F_NEXT } from './layout.ts';
import { packedAvailable } from './packed-descriptor.ts';
import {
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_SIZE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  encodePackedRingBase,
} from './packed-layout.ts';

const DESC_U16 = PACKED_DESC_SIZE / 2;
const ID_U16 = PACKED_DESC_ID / 2;
const FLAGS_U16 = PACKED_DESC_FLAGS / 2;
/** Snapshots taken before a ring that keeps changing under the scan is left as the front-end said. */
const SNAPSHOTS = 4;

/** What resumePackedBase() decided. */
export interface PackedResume {
  /** The base to start from, in vhost-user's packed encoding (the front-end's, or the ring's). */
  base: number;
  /** The front-end's base did not match the ring, and the ring's position was taken instead. */
  recovered: boolean;
  /** Why, in words (for the log): what the ring showed. */
  reason: string;
}

/**
 * The position a packed ring's device side resumes at, given the front-end's SET_VRING_BASE `num`,
 * the descriptor ring `ring` (u16 view, 8 per descriptor) of `size` entries, and the driver event
 * structure (u32: off_wrap | flags << 16) if known. Pure: reads, writes nothing. See the file comment
 * for the rule.
 */
export function resumePackedBase(ring: Uint16Array, size: number, frontEnd: number, driverEvent: number | null = null): PackedResume {
  const mod = 2 * size;
  const lin = (idx: number): number => ((idx >>> 15) & 1 ? idx & 0x7fff : (idx & 0x7fff) + size);
  const slotOf = (l: number): number => (l < size ? l : l - size);
  const wrapOf = (l: number): number => (l < size ? 1 : 0);
  const encode = (l: number): number => (l < size ? l | 0x8000 : l - size);
  const flagsAt = (l: number): number => Atomics.load(ring, slotOf(l) * DESC_U16 + FLAGS_U16);
  const keep = (reason: string): PackedResume => ({ base: frontEnd, recovered: false, reason });
  if ((frontEnd & 0x7fff) >= size || ((frontEnd >>> 16) & 0x7fff) >= size) return keep('front-end base out of range (setBase rejects it)');

  // The driver's next position D: where the AVAIL bits change value (one change, or none).
  let driver = -1;
  for (let attempt = 0; attempt < SNAPSHOTS && driver < 0; attempt++) {
    const first = (Atomics.load(ring, FLAGS_U16) & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
    let change = 0;
    let changes = 0;
    let prev = first;
    for (let s = 1; s < size; s++) {
      const a = (Atomics.load(ring, s * DESC_U16 + FLAGS_U16) & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
      if (a !== prev) {
        changes++;
        change = s;
        prev = a;
      }
    }
    if (changes === 0) driver = first ? size : 0; // a whole lap written with `first`: D is slot 0 of the next
    else if (changes === 1) driver = first ? change : change + size;
  }
  if (driver < 0) return keep('the ring changed under every scan');

  // P: the start of the run of available descriptors that ends at D.
  let start = driver;
  let run = 0;
  while (run < size) {
    const l = (start - 1 + mod) % mod;
    if (!packedAvailable(flagsAt(l), wrapOf(l))) break;
    start = l;
    run++;
  }
  const avail = lin(frontEnd & 0xffff);
  const distance = (l: number): number => (l - start + mod) % mod;
  if (avail === start) return keep('the front-end base starts the available run');
  // A driver with EVENT_IDX publishes its used cursor in its event structure (DESC, off_wrap). A
  // driver that has taken every used descriptor has it at P; after a multi-slot chain, at its end.
  const cursor = driverEvent !== null && ((driverEvent >>> 16) & 3) === VRING_PACKED_EVENT_FLAG_DESC ? lin(driverEvent & 0xffff) : -1;
  if (distance(avail) <= run && cursor !== start && endsTail(start, avail, run === size)) {
    return keep('the front-end base ends the tail of the last consumed chain');
  }
  const base = encode(start);
  const at = (l: number): string => `${slotOf(l)}/wrap ${wrapOf(l)}`;
  return {
    base: encodePackedRingBase({ lastAvailIdx: base & 0x7fff, availWrap: base >>> 15, lastUsedIdx: base & 0x7fff, usedWrap: base >>> 15 }),
    recovered: true,
    reason: `front-end base avail ${at(avail)} does not match the ring: the driver is at ${at(driver)} and the ${run} descriptors before it are available from ${at(start)}`,
  };

  /**
   * Slots [from, to) are the tail of the chain whose used descriptor is at from − 1: NEXT on all but the
   * last, which carries the used descriptor's buffer id. When the run is a whole ring, the driver has
   * already written the head's slot again (`headGone`), and the shape alone has to do.
   */
  function endsTail(from: number, to: number, headGone: boolean): boolean {
    for (let l = from; l !== to; l = (l + 1) % mod) {
      const last = (l + 1) % mod === to;
      if (((flagsAt(l) & VRING_DESC_F_NEXT) !== 0) === last) return false;
    }
    if (headGone) return true;
    const head = (from - 1 + mod) % mod;
    const hf = flagsAt(head);
    const w = wrapOf(head);
    const used = ((hf & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0) === w && ((hf & VRING_PACKED_DESC_F_USED) !== 0 ? 1 : 0) === w;
    const lastSlot = slotOf((to - 1 + mod) % mod);
    return used && Atomics.load(ring, lastSlot * DESC_U16 + ID_U16) === Atomics.load(ring, slotOf(head) * DESC_U16 + ID_U16);
  }
}
