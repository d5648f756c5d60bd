// test/vring/helpers.ts — shared rig for the vring tests: one guest memory, a ring laid out in it, the
// driver side (DriverQueue) and the device side (SplitQueue) attached to the same bytes, plus raw
// writers for building rings the driver would refuse to build.

import { expect } from 'vitest';
import {
  DESC_SIZE,
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
  let next = Math.ceil(layout.end / 4096) * 4096;
  return {
    buf,
    mem,
    layout,
    size,
    d,
    q,
    alloc(len: number): number {
      const at = next;
      next += Math.ceil(len / 16) * 16;
      if (next > RAM_GPA + RAM_SIZE) throw new Error('test rig out of memory');
      return at;
    },
  };
}

/** Write descriptor `i` of the table at `desc` with raw values (addr as number or [lo, hi]). */
export function rawDesc(mem: GuestMemory, desc: number, i: number, addr: number | [number, number], len: number, flags: number, next: number): void {
  const at = desc + i * DESC_SIZE;
  if (Array.isArray(addr)) mem.writeU64(at, addr[0], addr[1]);
  else mem.writeU64(at, addr);
  mem.writeU32(at + 8, len);
  mem.writeU16(at + 12, flags);
  mem.writeU16(at + 14, next);
}

/** Put `head` into available ring slot `slot` and set avail.idx. */
export function rawAvail(r: Rig, slot: number, head: number, idx: number): void {
  r.mem.writeU16(r.layout.avail + 4 + 2 * (slot & (r.size - 1)), head);
  r.mem.writeU16(r.layout.avail + 2, idx & 0xffff);
}

/** Offer one raw chain whose head is `head` at the current lastAvail. */
export function offerHead(r: Rig, head: number): void {
  rawAvail(r, r.q.lastAvail, head, r.q.lastAvail + 1);
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
