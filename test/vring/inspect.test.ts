// DeviceQueue.inspect(): where a queue and its ring stand, for both ring formats, with and without
// EVENT_IDX, driven from the driver side (DriverQueue, PackedDriverQueue). It reads and never writes:
// the ring's bytes and the queue's later answers are the same whether or not it was inspected.

import { describe, expect, it } from 'vitest';
import { PACKED_POS_START, VRING_PACKED_EVENT_FLAG_DISABLE, type DeviceQueue } from '../../vring/index.ts';
import { makeRig } from './helpers.ts';
import { makePackedRig } from './packed-rig.ts';

interface Driver {
  add(readable: { addr: number; len: number }[], writable: { addr: number; len: number }[]): number;
  publish(): void;
  setInterrupts(on: boolean): void;
  popUsed(): number;
}

function rig(format: 'split' | 'packed', eventIdx: boolean): { q: DeviceQueue; d: Driver; buf: ArrayBuffer; alloc: (n: number) => number; start: number } {
  if (format === 'split') {
    const r = makeRig({ size: 8, eventIdx });
    return { q: r.q, d: r.d, buf: r.buf, alloc: r.alloc, start: 0 };
  }
  const r = makePackedRig({ size: 8, eventIdx });
  return { q: r.q, d: r.d, buf: r.buf, alloc: r.alloc, start: PACKED_POS_START };
}

/** A position `n` slots on (split: u16 index; packed: idx | wrap << 15 in a ring of 8). */
function step(format: 'split' | 'packed', pos: number, n: number): number {
  if (format === 'split') return (pos + n) & 0xffff;
  const lin = (pos & 0x8000 ? pos & 0x7fff : (pos & 0x7fff) + 8) + n;
  const m = lin % 16;
  return m < 8 ? m | 0x8000 : m - 8;
}

describe.each([
  { format: 'split' as const, eventIdx: false },
  { format: 'split' as const, eventIdx: true },
  { format: 'packed' as const, eventIdx: false },
  { format: 'packed' as const, eventIdx: true },
])('inspect() on a $format ring, EVENT_IDX $eventIdx', ({ format, eventIdx }) => {
  it('follows chains from available to popped to used, and what the driver was told', () => {
    const { q, d, alloc, start } = rig(format, eventIdx);
    const at = (n: number) => step(format, start, n);
    let s = q.inspect();
    expect(s).toMatchObject({
      format, size: 8, eventIdx, lastAvail: start, usedIdx: start, publishedUsed: start, inFlight: 0,
      driverAvail: start, availPending: 0, signalledUsed: null, interruptOwed: false,
    });

    for (let i = 0; i < 3; i++) d.add([{ addr: alloc(64), len: 64 }], []);
    d.publish();
    s = q.inspect();
    expect([s.driverAvail, s.availPending, s.lastAvail]).toEqual([at(3), 3, start]);

    const a = q.pop()!;
    q.pop();
    s = q.inspect();
    expect([s.lastAvail, s.inFlight, s.availPending, s.usedIdx, s.publishedUsed]).toEqual([at(2), 2, 1, start, start]);

    // Staged is not published: the driver sees nothing yet.
    q.addUsed(a.head, 0);
    s = q.inspect();
    expect([s.usedIdx, s.publishedUsed, s.inFlight]).toEqual([at(1), start, 1]);
    q.flush();
    s = q.inspect();
    expect(s.publishedUsed).toBe(at(1));
    // The first decision after a start always signals; until it is made nothing counts as owed.
    expect(s.signalledUsed).toBeNull();
    expect(s.interruptOwed).toBe(false);
    expect(q.needsNotification()).toBe(true);
    s = q.inspect();
    expect([s.signalledUsed, s.interruptOwed]).toEqual([at(1), false]);
  });

  it('an interrupt is owed once something the driver asked to hear about is published, until it is decided', () => {
    const { q, d, alloc, start } = rig(format, eventIdx);
    const at = (n: number) => step(format, start, n);
    d.setInterrupts(true);
    for (let i = 0; i < 4; i++) d.add([{ addr: alloc(64), len: 64 }], []);
    d.publish();
    const c = [q.pop()!, q.pop()!, q.pop()!, q.pop()!];
    q.addUsed(c[0]!.head, 0);
    q.flush();
    expect(q.needsNotification()).toBe(true);
    expect(d.popUsed()).toBeGreaterThanOrEqual(0); // the driver takes it (and, with EVENT_IDX, moves its event on)

    q.addUsed(c[1]!.head, 0);
    q.flush();
    expect(q.inspect().interruptOwed).toBe(true);
    // Inspecting does not decide: asking twice gives the same answer, and the decision follows it.
    expect(q.inspect().interruptOwed).toBe(true);
    expect(q.needsNotification()).toBe(true);
    expect(q.inspect()).toMatchObject({ interruptOwed: false, signalledUsed: at(2) });

    // A driver that turned interrupts off is owed none.
    d.setInterrupts(false);
    q.addUsed(c[2]!.head, 0);
    q.flush();
    const s = q.inspect();
    expect(s.interruptOwed).toBe(false);
    expect(q.needsNotification()).toBe(false);
    if (format === 'packed') expect(s.driverEvent.flags).toBe(VRING_PACKED_EVENT_FLAG_DISABLE);
  });

  it('reads without writing: the ring and the next answers are the same with or without it', () => {
    const run = (inspect: boolean): { bytes: Uint8Array; answers: unknown[] } => {
      const { q, d, buf, alloc } = rig(format, eventIdx);
      const answers: unknown[] = [];
      const look = () => {
        if (inspect) q.inspect();
      };
      for (let i = 0; i < 5; i++) d.add([], [{ addr: alloc(64), len: 64 }]);
      d.publish();
      look();
      for (let i = 0; i < 3; i++) {
        const c = q.pop()!;
        look();
        q.addUsed(c.head, 10);
        look();
      }
      q.flush();
      look();
      answers.push(q.needsNotification(), q.enableNotification(), q.availPending(), q.lastAvail, q.usedIdx);
      look();
      return { bytes: new Uint8Array(buf.slice(0)), answers };
    };
    const a = run(false);
    const b = run(true);
    expect(b.answers).toEqual(a.answers);
    expect(Buffer.compare(Buffer.from(a.bytes), Buffer.from(b.bytes))).toBe(0);
  });
});

it('refuses before attach', async () => {
  const { SplitQueue, PackedQueue, splitRingLayout, packedRingLayout } = await import('../../vring/index.ts');
  expect(() => new SplitQueue({ size: 8, ...splitRingLayout(8, 0) }).inspect()).toThrow(expect.objectContaining({ code: 'VRING_NOT_ATTACHED' }));
  expect(() => new PackedQueue({ size: 8, ...packedRingLayout(8, 0) }).inspect()).toThrow(expect.objectContaining({ code: 'VRING_NOT_ATTACHED' }));
});
