// test/vring/packed-rig.ts — the packed counterpart of helpers.ts: one guest memory, a packed ring laid
// out in it, the driver side (PackedDriverQueue), the device side (PackedQueue), and the harness's
// PackedRingBuilder for rings the driver would refuse to build, all over the same bytes.

import { expect } from 'vitest';
import { Arena, PackedRingBuilder, packedAvailFlags, packedUsedFlags, type RawPackedDesc } from '../../harness/rings.ts';
import {
  GuestMemory,
  PACKED_POS_START,
  PackedDriverQueue,
  PackedQueue,
  VringError,
  packedRingLayout,
  type PackedQueueOptions,
  type PackedRingLayout,
} from '../../vring/index.ts';

export const RAM_GPA = 0x10_0000;
export const RAM_SIZE = 1 << 20;

export type { RawPackedDesc };

/** AVAIL = wrap, USED = !wrap: how the driver marks a descriptor available in lap `wrap`. */
export const availFlags = packedAvailFlags;
/** AVAIL = USED = wrap: how the device marks one used. */
export const usedFlags = packedUsedFlags;

export interface PackedRig {
  buf: ArrayBuffer;
  mem: GuestMemory;
  layout: PackedRingLayout;
  size: number;
  d: PackedDriverQueue;
  q: PackedQueue;
  ring: PackedRingBuilder;
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
  const ring = PackedRingBuilder.over(mem, { size, desc: layout.desc, driver: layout.driver, device: layout.device }, arena, { position: start });
  return { buf, mem, layout, size, d, q, ring, alloc: (len: number) => arena.alloc(len) };
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
