// Property tests of the packed ring: random sequences of driver and device operations over one ring,
// against a small reference model. Small and odd sizes with random start positions make the wrap
// counters flip many times; the device completes in any order it likes. Invariants:
//  - the device pops exactly the buffers the driver published, in ring order, each with its shape;
//  - every buffer comes back exactly once, with the length the device wrote, in completion order;
//  - positions on both sides agree with the model (slots per chain, 1 for an indirect one);
//  - kick and interrupt decisions match the model of §2.8.10 (ENABLE, DISABLE, DESC + off_wrap) on
//    both sides, and what each side writes into its event structure is what the model says.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  type DescriptorChain,
} from '../../vring/index.ts';
import { makePackedRig, type PackedRig } from './packed-rig.ts';

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
  | { k: 'notify'; on: boolean }
  | { k: 'driverEvent'; flags: number; near: 'driver' | 'device'; delta: number };

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
  // The driver's event structure written raw: any mode (3 is reserved), off_wrap near its used cursor
  // (virtqueue_enable_cb_delayed asks a few ahead) or near where the device last decided.
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant('driverEvent' as const),
      flags: fc.constantFrom(0, 1, 2, 2, 3),
      near: fc.constantFrom('driver' as const, 'device' as const),
      delta: fc.integer({ min: -3, max: 6 }),
    }),
  },
);

interface Rec {
  id: number;
  reads: number[];
  writes: number[];
  indirect: boolean;
  /** Ring slots the buffer takes. */
  slots: number;
  table: number;
  written: number; // -1 until completed
}

const sum = (a: number[]): number => a.reduce((x, y) => x + y, 0);

/** Positions as the model keeps them: linear in [0, 2·size), like the spec's (idx, wrap) pairs unrolled. */
class Pos {
  readonly size: number;
  constructor(size: number) {
    this.size = size;
  }
  enc(lin: number): number {
    return lin < this.size ? lin | 0x8000 : lin - this.size;
  }
  lin(enc: number): number {
    return (enc & 0x7fff) + (enc & 0x8000 ? 0 : this.size);
  }
  add(lin: number, n: number): number {
    return (lin + n) % (2 * this.size);
  }
}

/** need_event the long way: walk back over the `moved` positions written before `now`. */
function refNeedEvent(p: Pos, offWrap: number, now: number, moved: number): boolean {
  if (moved >= 2 * p.size) return true;
  let lin = p.lin(now);
  for (let k = 0; k < moved; k++) {
    lin = p.add(lin, 2 * p.size - 1);
    if (p.enc(lin) === offWrap) return true;
  }
  return false;
}

function run(r: PackedRig, eventIdx: boolean, start: number, ops: Op[]): void {
  const { d, q, ring, size } = r;
  const P = new Pos(size);
  const data = r.alloc(6 * 256); // up to 6 buffers of ≤ 200 bytes, shared by every chain
  const freeTables = Array.from({ length: size }, () => r.alloc(6 * 16));
  const order: Rec[] = []; // in add order: the ring order
  let published = 0; // order[0 … published) are published
  let popped = 0; // order[0 … popped) are popped (none of them rewound)
  const byId = new Map<number, Rec>(); // outstanding, by id
  const completed: Rec[] = []; // in addUsed order, not yet taken by the driver
  let flushed = 0; // completed[0 … flushed) are visible
  let returned = 0;
  let added = 0;
  const out: DescriptorChain[] = [];
  const inFlight = new Map<number, DescriptorChain>();

  // Model cursors (linear).
  let driverAvail = P.lin(start); // after the last add
  let publishedAvail = driverAvail;
  let devAvail = driverAvail;
  let devUsed = driverAvail;
  let driverUsed = driverAvail;
  // Notification model.
  let movedSinceKick = 0;
  let unpublishedSlots = 0;
  let stagedSlots = 0;
  let movedSinceCheck = 0;
  let checkedUsed = devUsed; // the published used position at the last interrupt decision
  let signalledValid = false;
  let pendingSignal = false;
  let notifyEnabled = true;
  let interrupts = true;
  // The device area: zeroed (ENABLE) until the device first writes it, then off_wrap as the device
  // last set it for DESC (slot 0, wrap 1 before that) and the flags of its last write.
  let deviceShadow = 0x8000;
  let deviceArea = { offWrap: 0, flags: VRING_PACKED_EVENT_FLAG_ENABLE };
  const deviceWrote = (flags: number): void => {
    deviceArea = { offWrap: deviceShadow, flags };
  };
  const checkDeviceArea = (): void => {
    expect(ring.deviceEvent).toEqual(deviceArea);
  };

  const take = (): void => {
    const u = d.getUsed();
    if (u === null) {
      expect(flushed).toBe(0);
      return;
    }
    expect(flushed).toBeGreaterThan(0);
    const rec = completed.shift()!;
    flushed--;
    expect(u.head).toBe(rec.id);
    expect(u.len).toBe(rec.written);
    driverUsed = P.add(driverUsed, rec.slots);
    expect(d.usedCursor).toBe(P.enc(driverUsed));
    if (eventIdx && interrupts) expect(ring.driverEvent).toEqual({ offWrap: P.enc(driverUsed), flags: VRING_PACKED_EVENT_FLAG_DESC });
    byId.delete(rec.id);
    if (rec.indirect) freeTables.push(rec.table);
    returned++;
  };

  for (const op of ops) {
    switch (op.k) {
      case 'add': {
        const n = op.reads.length + op.writes.length;
        if (n === 0) break;
        const bufs = [...op.reads, ...op.writes].map((len, i) => ({ addr: data + i * 256, len }));
        const table = op.indirect ? freeTables.pop() : undefined;
        if (op.indirect && table === undefined) break;
        const slots = op.indirect ? 1 : n;
        const freeSlots = size - ((driverAvail - driverUsed + 2 * size) % (2 * size));
        expect(d.freeCount).toBe(freeSlots);
        const id = d.add(bufs.slice(0, op.reads.length), bufs.slice(op.reads.length), table !== undefined ? { indirectAt: table } : undefined);
        if (id < 0) {
          expect(freeSlots < slots || byId.size === size).toBe(true);
          if (table !== undefined) freeTables.push(table);
          break;
        }
        expect(freeSlots).toBeGreaterThanOrEqual(slots);
        expect(byId.has(id)).toBe(false);
        const rec: Rec = { id, reads: op.reads, writes: op.writes, indirect: op.indirect, slots, table: table ?? -1, written: -1 };
        byId.set(id, rec);
        order.push(rec);
        driverAvail = P.add(driverAvail, slots);
        unpublishedSlots += slots;
        added++;
        break;
      }
      case 'publish':
        d.publish();
        published = order.length;
        publishedAvail = driverAvail;
        movedSinceKick += unpublishedSlots;
        unpublishedSlots = 0;
        expect(d.availIdx).toBe(P.enc(publishedAvail));
        break;
      case 'kick': {
        const ev = ring.deviceEvent;
        const flags = ev.flags & 3;
        const want =
          flags === VRING_PACKED_EVENT_FLAG_DISABLE ? false : flags === VRING_PACKED_EVENT_FLAG_DESC && eventIdx ? refNeedEvent(P, ev.offWrap, P.enc(publishedAvail), movedSinceKick) : movedSinceKick > 0;
        movedSinceKick = 0;
        expect(d.needsKick()).toBe(want);
        break;
      }
      case 'pop': {
        expect(q.availPending()).toBe(published - popped);
        expect(q.availIdx()).toBe(P.enc(publishedAvail));
        const n = q.popBurst(op.n, out);
        expect(n).toBe(Math.min(op.n, published - popped));
        for (let i = 0; i < n; i++) {
          const c = out[i]!;
          const rec = order[popped++]!;
          expect(c.head).toBe(rec.id);
          expect(inFlight.has(c.head)).toBe(false);
          expect(c.readableLen).toBe(sum(rec.reads));
          expect(c.writableLen).toBe(sum(rec.writes));
          expect(c.indirect).toBe(rec.indirect);
          expect(c.descCount).toBe(rec.reads.length + rec.writes.length);
          inFlight.set(c.head, c);
          devAvail = P.add(devAvail, rec.slots);
        }
        expect(q.lastAvail).toBe(P.enc(devAvail));
        if (n > 0 && eventIdx && notifyEnabled) {
          deviceShadow = P.enc(devAvail);
          deviceWrote(VRING_PACKED_EVENT_FLAG_DESC);
        }
        checkDeviceArea();
        break;
      }
      case 'complete': {
        const open = [...inFlight.keys()];
        if (open.length === 0) break;
        const id = open[op.pick % open.length]!;
        const c = inFlight.get(id)!;
        const rec = byId.get(id)!;
        const len = Math.floor(op.frac * c.writableLen);
        if (len > 0) expect(c.writeBytes(0, new Uint8Array(len).fill(0x5a), 0, len)).toBe(true);
        q.addUsed(id, len);
        rec.written = len;
        inFlight.delete(id);
        completed.push(rec);
        devUsed = P.add(devUsed, rec.slots);
        stagedSlots += rec.slots;
        expect(q.usedIdx).toBe(P.enc(devUsed));
        break;
      }
      case 'rewind': {
        // The last popped chains that are still in flight, newest first.
        let tail = 0;
        while (tail < popped && order[popped - 1 - tail]!.written === -1) tail++;
        const n = Math.min(op.n, tail);
        q.rewind(n);
        for (let i = 0; i < n; i++) {
          const rec = order[--popped]!;
          inFlight.delete(rec.id);
          devAvail = P.add(devAvail, 2 * size - rec.slots);
        }
        expect(q.lastAvail).toBe(P.enc(devAvail));
        break;
      }
      case 'flush': {
        q.flush();
        flushed = completed.length;
        if (stagedSlots > 0) pendingSignal = true;
        movedSinceCheck += stagedSlots;
        stagedSlots = 0;
        const ev = ring.driverEvent;
        const flags = ev.flags & 3;
        const want =
          flags === VRING_PACKED_EVENT_FLAG_DISABLE
            ? false
            : flags === VRING_PACKED_EVENT_FLAG_DESC && eventIdx
              ? !signalledValid || refNeedEvent(P, ev.offWrap, P.enc(devUsed), movedSinceCheck)
              : !signalledValid || pendingSignal;
        movedSinceCheck = 0;
        checkedUsed = devUsed;
        signalledValid = true;
        if (want) pendingSignal = false;
        expect(q.needsNotification()).toBe(want);
        break;
      }
      case 'getUsed':
        take();
        break;
      case 'irq':
        d.setInterrupts(op.on);
        interrupts = op.on;
        expect(ring.driverEvent.flags).toBe(!op.on ? VRING_PACKED_EVENT_FLAG_DISABLE : eventIdx ? VRING_PACKED_EVENT_FLAG_DESC : VRING_PACKED_EVENT_FLAG_ENABLE);
        break;
      case 'driverEvent':
        // Written raw: the driver object's own interrupt setting stays as it was.
        ring.setDriverEvent(op.flags, P.enc(P.add(op.near === 'driver' ? driverUsed : checkedUsed, (op.delta + 2 * size * 8) % (2 * size))));
        break;
      case 'notify':
        if (op.on) {
          expect(q.enableNotification()).toBe(popped < published);
          if (eventIdx) deviceShadow = P.enc(devAvail);
          deviceWrote(eventIdx ? VRING_PACKED_EVENT_FLAG_DESC : VRING_PACKED_EVENT_FLAG_ENABLE);
        } else {
          q.disableNotification();
          deviceWrote(VRING_PACKED_EVENT_FLAG_DISABLE);
        }
        checkDeviceArea();
        notifyEnabled = op.on;
        break;
    }
    expect(q.inFlight).toBe(inFlight.size);
    expect(d.inFlight).toBe(byId.size);
  }

  // Drain: everything outstanding must come back exactly once.
  d.publish();
  published = order.length;
  for (let guard = 0; guard < 4 * size + 4 && byId.size > 0; guard++) {
    const n = q.popBurst(size, out);
    for (let i = 0; i < n; i++) {
      const rec = order[popped++]!;
      expect(out[i]!.head).toBe(rec.id);
      inFlight.set(rec.id, out[i]!);
    }
    for (const [id] of inFlight) {
      q.addUsed(id, 0);
      byId.get(id)!.written = 0;
      completed.push(byId.get(id)!);
    }
    inFlight.clear();
    q.flush();
    flushed = completed.length;
    while (flushed > 0) take();
  }
  expect(byId.size).toBe(0);
  expect(returned).toBe(added);
  expect(d.freeCount).toBe(size);
  expect(q.inFlight).toBe(0);
  expect(q.broken).toBeNull();
  expect(q.usedIdx).toBe(d.usedCursor);
  expect(q.lastAvail).toBe(d.availIdx);
}

describe('property: packed driver/device round trips', () => {
  for (const eventIdx of [false, true]) {
    it(`every buffer comes back exactly once with the written length, in any completion order; notifications match the model (eventIdx ${eventIdx})`, () => {
      fc.assert(
        fc.property(
          fc.constantFrom(1, 2, 3, 4, 5, 8, 13),
          fc.nat(),
          fc.boolean(),
          fc.array(opArb, { minLength: 10, maxLength: 150, size: 'max' }),
          (size, at, wrap, ops) => {
            const start = (at % size) | (wrap ? 0x8000 : 0);
            const r = makePackedRig({ size, eventIdx, start, indirect: true });
            run(r, eventIdx, start, ops);
          },
        ),
        { numRuns: 150 },
      );
    });
  }
});
