// test/vring/packed-rig.ts — the packed counterpart of helpers.ts: one guest memory, a packed ring laid
// out in it, the driver side (PackedDriverQueue), the device side (PackedQueue), and a raw writer for
// rings the driver would refuse to build, all over the same bytes.

import { expect } from 'vitest';
import { Arena, type RawAddr } from '../../harness/rings.ts';
import {
  EVENT_FLAGS,
  EVENT_OFF_WRAP,
  GuestMemory,
  PACKED_DESC_ADDR,
  PACKED_DESC_FLAGS,
  PACKED_DESC_ID,
  PACKED_DESC_LEN,
  PACKED_DESC_SIZE,
  PACKED_POS_START,
  PackedDriverQueue,
  PackedQueue,
  VRING_DESC_F_NEXT,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VringError,
  packedRingLayout,
  type PackedQueueOptions,
  type PackedRingLayout,
} from '../../vring/index.ts';

export const RAM_GPA = 0x10_0000;
export const RAM_SIZE = 1 << 20;

/** One raw packed descriptor; flags are written exactly as given. */
export interface RawPackedDesc {
  addr: RawAddr;
  len: number;
  id?: number;
  flags?: number;
}

/** AVAIL = wrap, USED = !wrap: how the driver marks a descriptor available in lap `wrap`. */
export const availFlags = (wrap: number): number => (wrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED);
/** AVAIL = USED = wrap: how the device marks one used. */
export const usedFlags = (wrap: number): number => (wrap ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0);

/** Raw access to a packed ring: descriptors and event structures, written as given. */
export class PackedRingWriter {
  readonly mem: GuestMemory;
  readonly size: number;
  readonly layout: PackedRingLayout;

  constructor(mem: GuestMemory, size: number, layout: PackedRingLayout) {
    this.mem = mem;
    this.size = size;
    this.layout = layout;
  }

  descAddr(slot: number): number {
    return this.layout.desc + slot * PACKED_DESC_SIZE;
  }

  /** Write every field of the descriptor at `slot`, flags last. */
  writeDesc(slot: number, d: RawPackedDesc): void {
    const at = this.descAddr(slot);
    if (typeof d.addr === 'number') this.mem.writeU64(at + PACKED_DESC_ADDR, d.addr);
    else this.mem.writeU64(at + PACKED_DESC_ADDR, d.addr[0], d.addr[1]);
    this.mem.writeU32(at + PACKED_DESC_LEN, d.len);
    this.mem.writeU16(at + PACKED_DESC_ID, d.id ?? 0);
    this.mem.writeU16(at + PACKED_DESC_FLAGS, d.flags ?? 0);
  }

  readDesc(slot: number): { len: number; id: number; flags: number } {
    const at = this.descAddr(slot);
    return { len: this.mem.readU32(at + PACKED_DESC_LEN), id: this.mem.readU16(at + PACKED_DESC_ID), flags: this.mem.readU16(at + PACKED_DESC_FLAGS) };
  }

  setFlags(slot: number, flags: number): void {
    this.mem.writeU16(this.descAddr(slot) + PACKED_DESC_FLAGS, flags);
  }

  /**
   * Lay out a list at position `pos` (idx | wrap << 15): consecutive slots, NEXT on all but the last
   * (unless `flags` is given), AVAIL/USED for the lap each slot is in, the head's flags written last.
   * `extra` flags are or'ed in; `id` goes on every descriptor unless one names its own. Returns the
   * position after the list.
   */
  putList(pos: number, descs: readonly (RawPackedDesc & { extra?: number; raw?: boolean })[]): number {
    let idx = pos & 0x7fff;
    let wrap = pos >>> 15;
    const slots: [number, number][] = [];
    descs.forEach((d, i) => {
      const flags = d.raw ? (d.flags ?? 0) : (d.flags ?? (i < descs.length - 1 ? VRING_DESC_F_NEXT : 0)) | (d.extra ?? 0) | availFlags(wrap);
      this.writeDesc(idx, { ...d, flags: i === 0 ? 0 : flags });
      if (i > 0) this.setFlags(idx, flags);
      slots.push([idx, flags]);
      if (++idx === this.size) {
        idx = 0;
        wrap ^= 1;
      }
    });
    this.setFlags(slots[0]![0], slots[0]![1]); // the head last
    return idx | (wrap << 15);
  }

  /** Write an indirect table of raw entries at `at`. */
  writeTable(at: number, entries: readonly RawPackedDesc[]): { addr: number; len: number } {
    entries.forEach((e, i) => {
      const o = at + i * PACKED_DESC_SIZE;
      if (typeof e.addr === 'number') this.mem.writeU64(o + PACKED_DESC_ADDR, e.addr);
      else this.mem.writeU64(o + PACKED_DESC_ADDR, e.addr[0], e.addr[1]);
      this.mem.writeU32(o + PACKED_DESC_LEN, e.len);
      this.mem.writeU16(o + PACKED_DESC_ID, e.id ?? 0);
      this.mem.writeU16(o + PACKED_DESC_FLAGS, e.flags ?? 0);
    });
    return { addr: at, len: entries.length * PACKED_DESC_SIZE };
  }

  /** The driver event suppression structure (off_wrap, flags). */
  setDriverEvent(flags: number, offWrap = 0): void {
    this.mem.writeU16(this.layout.driver + EVENT_OFF_WRAP, offWrap);
    this.mem.writeU16(this.layout.driver + EVENT_FLAGS, flags);
  }

  get driverEvent(): { offWrap: number; flags: number } {
    return { offWrap: this.mem.readU16(this.layout.driver + EVENT_OFF_WRAP), flags: this.mem.readU16(this.layout.driver + EVENT_FLAGS) };
  }

  get deviceEvent(): { offWrap: number; flags: number } {
    return { offWrap: this.mem.readU16(this.layout.device + EVENT_OFF_WRAP), flags: this.mem.readU16(this.layout.device + EVENT_FLAGS) };
  }
}

export interface PackedRig {
  buf: ArrayBuffer;
  mem: GuestMemory;
  layout: PackedRingLayout;
  size: number;
  d: PackedDriverQueue;
  q: PackedQueue;
  ring: PackedRingWriter;
  /** Bump-allocate guest memory after the ring (16-aligned). */
  alloc(len: number): number;
}

export interface PackedRigOptions extends Partial<Omit<PackedQueueOptions, 'desc' | 'driver' | 'device'>> {
  /** Where both sides start (idx | wrap << 15). */
  start?: number;
}

export function makePackedRig(o: PackedRigOptions = {}): PackedRig {
  const size = o.size ?? 16;
  const buf = new ArrayBuffer(RAM_SIZE);
  const mem = new GuestMemory([{ gpa: RAM_GPA, size: RAM_SIZE, buffer: buf, mappingId: 7, mappingOffset: 0 }]);
  const layout = packedRingLayout(size, RAM_GPA);
  const eventIdx = o.eventIdx ?? false;
  const d = new PackedDriverQueue(mem, { size, desc: layout.desc, driver: layout.driver, device: layout.device, eventIdx });
  const start = o.start ?? PACKED_POS_START;
  d.init(start);
  const q = new PackedQueue({
    size,
    desc: layout.desc,
    driver: layout.driver,
    device: layout.device,
    eventIdx,
    indirect: o.indirect ?? true,
    ...(o.maxSize !== undefined ? { maxSize: o.maxSize } : {}),
    ...(o.maxPieces !== undefined ? { maxPieces: o.maxPieces } : {}),
  });
  q.attach(mem);
  if (o.start !== undefined) q.setBase((start | (start << 16)) >>> 0);
  const arena = new Arena(Math.ceil(layout.end / 4096) * 4096, RAM_GPA + RAM_SIZE);
  return { buf, mem, layout, size, d, q, ring: new PackedRingWriter(mem, size, layout), alloc: (len: number) => arena.alloc(len) };
}

/** Expect `fn` to throw `cls` with `code`, the queue to be broken with it, and to fail fast after. */
export function expectPackedBreaks(q: PackedQueue, fn: () => unknown, cls: new (...a: never[]) => VringError, code: string): VringError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(cls);
  expect((err as VringError).code).toBe(code);
  expect((err as VringError).message.length).toBeGreaterThan(20);
  expect(q.broken).toBe(err);
  // Fails fast with the very same error, on every entry point.
  for (const f of [
    () => q.pop(),
    () => q.popBurst(4, []),
    () => q.addUsed(0, 0),
    () => q.flush(),
    () => q.needsNotification(),
    () => q.enableNotification(),
    () => q.disableNotification(),
    () => q.availPending(),
    () => q.availIdx(),
    () => q.watch(),
    () => q.rewind(0),
    () => q.setBase(0x8000_8000),
  ]) {
    expect(f).toThrow(err as Error);
  }
  return err as VringError;
}
