// Property tests: random sequences of driver and device operations over one ring. Invariants:
//  - every chain the driver adds comes back exactly once, with the length the device wrote;
//  - the device never returns (nor pops) a chain it was not given, and sees each chain's exact shape;
//  - notification decisions on both sides match a small reference model of §2.7.7 / §2.7.10.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DescriptorChain, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY } from '../../vring/index.ts';
import { makeRig, type Rig } from './helpers.ts';

/** The spec's vring_need_event, written out independently of vring/. */
function refNeedEvent(event: number, now: number, old: number): boolean {
  const a = (now - event - 1 + 0x20000) % 0x10000;
  const b = (now - old + 0x20000) % 0x10000;
  return a < b;
}

type Op =
  | { k: 'add'; reads: number[]; writes: number[]; indirect: boolean }
  | { k: 'publish' }
  | { k: 'kick' }
  | { k: 'pop'; n: number }
  | { k: 'complete'; pick: number; frac: number }
  | { k: 'rewind'; n: number }
  | { k: 'flush' }
  | { k: 'getUsed' }
  | { k: 'irq'; on: boolean }
  | { k: 'notify'; on: boolean };

const lens = fc.array(fc.integer({ min: 1, max: 200 }), { maxLength: 3 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ k: fc.constant('add' as const), reads: lens, writes: lens, indirect: fc.boolean() }) },
  { weight: 3, arbitrary: fc.constant({ k: 'publish' as const }) },
  { weight: 2, arbitrary: fc.constant({ k: 'kick' as const }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('pop' as const), n: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('complete' as const), pick: fc.nat(), frac: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('rewind' as const), n: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 3, arbitrary: fc.constant({ k: 'flush' as const }) },
  { weight: 3, arbitrary: fc.constant({ k: 'getUsed' as const }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('irq' as const), on: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('notify' as const), on: fc.boolean() }) },
);

interface Outstanding {
  id: number;
  reads: number[];
  writes: number[];
  indirect: boolean;
  written: number; // -1 until the device completes it
}

function run(r: Rig, eventIdx: boolean, ops: Op[]): void {
  const { d, q, mem, layout, size } = r;
  const data = r.alloc(size * 3 * 256);
  const tables = r.alloc(size * 6 * 16);
  let nextId = 0;
  const byHead = new Map<number, Outstanding>(); // driver's view: head → chain
  const returned = new Set<number>();
  const popped: { head: number; rec: Outstanding; done: boolean; c: DescriptorChain }[] = [];
  const out: DescriptorChain[] = [];
  // Reference-model cursors.
  let publishedAvail = d.availIdx;
  let kickedAvail = publishedAvail;
  let publishedUsed = q.usedIdx;
  let signalledUsed = publishedUsed;
  let signalledValid = false;

  const usedEventAt = layout.avail + 4 + 2 * size;
  const availEventAt = layout.used + 4 + 8 * size;

  const take = (): void => {
    const u = d.getUsed();
    if (u === null) return;
    const rec = byHead.get(u.head);
    expect(rec, `device returned head ${u.head} that was not outstanding`).toBeDefined();
    expect(rec!.written).toBeGreaterThanOrEqual(0);
    expect(u.len).toBe(rec!.written);
    expect(returned.has(rec!.id)).toBe(false);
    returned.add(rec!.id);
    byHead.delete(u.head);
  };

  for (const op of ops) {
    switch (op.k) {
      case 'add': {
        if (op.reads.length + op.writes.length === 0) break;
        const slot = nextId % size;
        const bufs = [...op.reads, ...op.writes].map((len, i) => ({ addr: data + slot * 768 + i * 128, len: Math.min(len, 128) }));
        const reads = bufs.slice(0, op.reads.length);
        const writes = bufs.slice(op.reads.length);
        const h = d.add(reads, writes, op.indirect ? { indirectAt: tables + slot * 96 } : undefined);
        if (h < 0) break;
        expect(byHead.has(h)).toBe(false);
        byHead.set(h, { id: nextId++, reads: reads.map((b) => b.len), writes: writes.map((b) => b.len), indirect: op.indirect, written: -1 });
        break;
      }
      case 'publish':
        d.publish();
        publishedAvail = d.availIdx;
        break;
      case 'kick': {
        const ev = mem.readU16(availEventAt);
        const flags = mem.readU16(layout.used);
        const want = eventIdx ? refNeedEvent(ev, publishedAvail, kickedAvail) : publishedAvail !== kickedAvail && (flags & VRING_USED_F_NO_NOTIFY) === 0;
        kickedAvail = publishedAvail;
        expect(d.needsKick()).toBe(want);
        break;
      }
      case 'pop': {
        const n = q.popBurst(op.n, out);
        for (let i = 0; i < n; i++) {
          const c = out[i]!;
          const rec = byHead.get(c.head);
          expect(rec, `device popped head ${c.head} the driver never offered`).toBeDefined();
          expect(popped.some((p) => p.head === c.head && !p.done)).toBe(false);
          expect(c.readableLen).toBe(rec!.reads.reduce((a, b) => a + b, 0));
          expect(c.writableLen).toBe(rec!.writes.reduce((a, b) => a + b, 0));
          expect(c.indirect).toBe(rec!.indirect);
          popped.push({ head: c.head, rec: rec!, done: false, c });
        }
        break;
      }
      case 'complete': {
        const open = popped.filter((p) => !p.done);
        if (open.length === 0) break;
        const p = open[op.pick % open.length]!;
        const wl = p.rec.writes.reduce((a, b) => a + b, 0);
        const len = Math.floor(op.frac * wl);
        expect(p.c.head).toBe(p.head); // the chain object is ours until completion
        if (len > 0) expect(p.c.writeBytes(0, new Uint8Array(len).fill(0x5a), 0, len)).toBe(true);
        q.addUsed(p.head, len);
        p.rec.written = len;
        p.done = true;
        break;
      }
      case 'rewind': {
        let tail = 0;
        while (tail < popped.length && !popped[popped.length - 1 - tail]!.done) tail++;
        const n = Math.min(op.n, tail);
        q.rewind(n);
        popped.splice(popped.length - n, n);
        break;
      }
      case 'flush': {
        q.flush();
        publishedUsed = q.usedIdx;
        const ev = mem.readU16(usedEventAt);
        const flags = mem.readU16(layout.avail);
        const want = eventIdx
          ? !signalledValid || refNeedEvent(ev, publishedUsed, signalledUsed)
          : (!signalledValid || publishedUsed !== signalledUsed) && (flags & VRING_AVAIL_F_NO_INTERRUPT) === 0;
        if (want) {
          signalledUsed = publishedUsed;
          signalledValid = true;
        }
        expect(q.needsNotification()).toBe(want);
        break;
      }
      case 'getUsed':
        take();
        break;
      case 'irq':
        d.setInterrupts(op.on);
        break;
      case 'notify':
        if (op.on) q.enableNotification();
        else q.disableNotification();
        break;
    }
  }

  // Drain: everything outstanding must come back exactly once.
  d.publish();
  for (let guard = 0; guard < 4 * size; guard++) {
    const n = q.popBurst(size, out);
    for (let i = 0; i < n; i++) {
      const c = out[i]!;
      const rec = byHead.get(c.head)!;
      expect(rec).toBeDefined();
      popped.push({ head: c.head, rec, done: false, c });
    }
    for (const p of popped) {
      if (p.done) continue;
      q.addUsed(p.head, 0);
      p.rec.written = 0;
      p.done = true;
    }
    q.flush();
    for (;;) {
      const before = returned.size;
      take();
      if (returned.size === before) break;
    }
    if (byHead.size === 0) break;
  }
  expect(byHead.size).toBe(0);
  expect(returned.size).toBe(nextId);
  expect(d.freeCount).toBe(size);
  expect(q.inFlight).toBe(0);
  expect(q.broken).toBeNull();
}

describe('property: driver/device round trips', () => {
  for (const eventIdx of [false, true]) {
    it(`every buffer comes back exactly once with the written length; notifications match the model (eventIdx ${eventIdx})`, () => {
      fc.assert(
        fc.property(
          fc.constantFrom(4, 8, 16),
          fc.oneof(fc.constant(0), fc.integer({ min: 65500, max: 65535 }), fc.nat({ max: 65535 })),
          fc.array(opArb, { maxLength: 120 }),
          (size, startIdx, ops) => {
            const r = makeRig({ size, eventIdx, startIdx, indirect: true });
            run(r, eventIdx, ops);
          },
        ),
        { numRuns: 300 },
      );
    });
  }
});
