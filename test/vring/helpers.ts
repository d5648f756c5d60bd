// test/vring/helpers.ts — shared rig for the vring tests: one guest memory, a ring laid out in it, the
// driver side (DriverQueue), the device side (SplitQueue) and the harness's ring builder
// (SplitRingBuilder, for rings the driver would refuse to build) all over the same bytes.

import { expect } from 'vitest';
import { Arena, SplitRingBuilder } from '../../harness/rings.ts';
import {
  DriverQueue,
  GuestMemory,
  SplitQueue,
  VringError,
  splitRingLayout,
  type SplitQueueOptions,
  type SplitRingLayout,
} from '../../vring/index.ts';

export const RAM_GPA = 0x10_0000;
export const RAM_SIZE = 1 << 20;

export interface Rig {
  buf: ArrayBuffer;
  mem: GuestMemory;
  layout: SplitRingLayout;
  size: number;
  d: DriverQueue;
  q: SplitQueue;
  /** The same ring, written raw from the driver's side; allocates from the rig's arena. */
  ring: SplitRingBuilder;
  /** Bump-allocate guest memory after the ring (16-aligned). */
  alloc(len: number): number;
}

export interface RigOptions extends Partial<SplitQueueOptions> {
  startIdx?: number;
}

export function makeRig(o: RigOptions = {}): Rig {
  const size = o.size ?? 16;
  const buf = new ArrayBuffer(RAM_SIZE);
  const mem = new GuestMemory([{ gpa: RAM_GPA, size: RAM_SIZE, buffer: buf, mappingId: 7, mappingOffset: 0 }]);
  const layout = splitRingLayout(size, RAM_GPA);
  const d = new DriverQueue(mem, { size, desc: layout.desc, avail: layout.avail, used: layout.used, eventIdx: o.eventIdx ?? false });
  d.init(o.startIdx ?? 0);
  const q = new SplitQueue({
    size,
    desc: layout.desc,
    avail: layout.avail,
    used: layout.used,
    eventIdx: o.eventIdx ?? false,
    indirect: o.indirect ?? true,
    ...(o.maxSize !== undefined ? { maxSize: o.maxSize } : {}),
    ...(o.maxPieces !== undefined ? { maxPieces: o.maxPieces } : {}),
  });
  q.attach(mem);
  if (o.startIdx !== undefined) q.setBase(o.startIdx & 0xffff);
  const arena = new Arena(Math.ceil(layout.end / 4096) * 4096, RAM_GPA + RAM_SIZE);
  return {
    buf,
    mem,
    layout,
    size,
    d,
    q,
    ring: SplitRingBuilder.over(mem, { size, ...layout }, arena),
    alloc: (len: number) => arena.alloc(len),
  };
}

/** Expect `fn` to throw `cls` with `code`, the queue to be broken with it, and to fail fast after. */
export function expectBreaks(q: SplitQueue, fn: () => unknown, cls: new (...a: never[]) => VringError, code: string): VringError {
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
  expect(() => q.pop()).toThrow(err as Error);
  expect(() => q.popBurst(4, [])).toThrow(err as Error);
  expect(() => q.addUsed(0, 0)).toThrow(err as Error);
  expect(() => q.flush()).toThrow(err as Error);
  expect(() => q.needsNotification()).toThrow(err as Error);
  expect(() => q.enableNotification()).toThrow(err as Error);
  expect(() => q.availPending()).toThrow(err as Error);
  return err as VringError;
}
