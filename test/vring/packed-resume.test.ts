// A packed ring's device side restarted after a crash, with a front-end that lost its position
// (QEMU 7.2 hands the new back-end a stale base): resume() finds the position in the ring itself
// (vring/packed-resume.ts). Property: whatever the old device had popped, completed, staged or
// published when it died, and whatever stale base arrives, the new device takes up exactly the buffers
// whose completion the driver never saw, in ring order, and the driver then gets every buffer back
// exactly once. A base that is right is kept, including one that ends the tail of a multi-slot chain.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  PACKED_RING_BASE_START,
  PackedQueue,
  encodePackedRingBase,
  resumePackedBase,
  type DescriptorChain,
} from '../../vring/index.ts';
import { makePackedRig, type PackedRig } from './packed-rig.ts';

const enc = (lin: number, size: number): number => (lin < size ? lin | 0x8000 : lin - size);
const baseOf = (lin: number, size: number): number => {
  const p = enc(lin, size);
  return encodePackedRingBase({ lastAvailIdx: p & 0x7fff, availWrap: p >>> 15, lastUsedIdx: p & 0x7fff, usedWrap: p >>> 15 });
};

function newDevice(rig: PackedRig): PackedQueue {
  const q = new PackedQueue({ size: rig.size, desc: rig.layout.desc, driver: rig.layout.driver, device: rig.layout.device, indirect: true });
  q.attach(rig.mem);
  return q;
}

interface Buf {
  id: number;
  slots: number;
}

/** Drives the rig: the driver keeps the ring topped up, the device pops and completes in order. */
class Scenario {
  readonly posted: Buf[] = []; // in ring order, completion not yet seen by the driver
  private table = 0;
  private readonly tables: number[] = [];
  readonly rig: PackedRig;
  private readonly multi: boolean;
  constructor(rig: PackedRig, multi: boolean) {
    this.rig = rig;
    this.multi = multi;
    for (let i = 0; i < rig.size; i++) this.tables.push(rig.alloc(16 * 4));
    this.table = rig.alloc(4096);
  }

  /** The driver adds up to n buffers (1 slot, or `slots` slots when multi) and publishes. */
  post(n: number, slots: number): void {
    const { d } = this.rig;
    for (let i = 0; i < n; i++) {
      const k = this.multi ? slots : 1;
      const bufs = Array.from({ length: k }, (_, j) => ({ addr: this.table + j * 64, len: 64 }));
      const indirect = !this.multi && k === 1 && i % 2 === 1 && this.tables.length > 0;
      const id = indirect ? d.add([], bufs, { indirectAt: this.tables[0]! }) : d.add([], bufs);
      if (id < 0) break;
      this.posted.push({ id, slots: k });
    }
    d.publish();
  }

  /** The driver takes every published completion; each must be the oldest buffer it posted. */
  reap(): number {
    let n = 0;
    for (let u = this.rig.d.getUsed(); u !== null; u = this.rig.d.getUsed()) {
      const b = this.posted.shift();
      expect(b?.id).toBe(u.head);
      n++;
    }
    return n;
  }
}

describe('packed ring resume after a back-end crash', () => {
  it('property: the restarted device takes up exactly what the driver has not seen completed', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 3, 4, 7, 8, 16),
        fc.integer({ min: 0, max: 40 }),
        fc.array(fc.record({ post: fc.integer({ min: 0, max: 6 }), pop: fc.integer({ min: 0, max: 6 }), done: fc.integer({ min: 0, max: 6 }), flush: fc.boolean(), reap: fc.boolean() }), { minLength: 1, maxLength: 30 }),
        fc.oneof(fc.constant(-1), fc.nat()),
        (size, startSeed, steps, staleSeed) => {
          const startLin = startSeed % (2 * size);
          // EVENT_IDX on, interrupts on: the driver publishes its used cursor, as Linux does.
          const rig = makePackedRig({ size, start: enc(startLin, size), eventIdx: true });
          rig.d.setInterrupts(true);
          const sc = new Scenario(rig, false);
          let q = rig.q;
          const held: DescriptorChain[] = [];
          for (const s of steps) {
            sc.post(s.post, 1);
            for (let i = 0; i < s.pop; i++) {
              const c = q.pop();
              if (c === null) break;
              held.push(c);
            }
            for (let i = 0; i < s.done && held.length > 0; i++) q.addUsed(held.shift()!.head, 0);
            if (s.flush) q.flush();
            if (s.reap) sc.reap();
          }
          // The crash: staged completions and popped chains die with the device; the driver goes on
          // until it has seen every completion that was published.
          sc.reap();
          const stale = staleSeed < 0 ? PACKED_RING_BASE_START : baseOf(staleSeed % (2 * size), size);
          q = newDevice(rig);
          q.resume(stale);
          // The new device pops, in order, exactly the buffers the driver still waits for.
          const expectIds = sc.posted.map((b) => b.id);
          const popped: number[] = [];
          for (let c = q.pop(); c !== null; c = q.pop()) {
            popped.push(c.head);
            q.addUsed(c.head, 0);
          }
          expect(popped).toEqual(expectIds);
          q.flush();
          expect(sc.reap()).toBe(expectIds.length);
          expect(sc.posted).toEqual([]);
          // And the ring goes on working across more laps.
          for (let lap = 0; lap < 3; lap++) {
            sc.post(size, 1);
            const n = sc.posted.length;
            for (let c = q.pop(); c !== null; c = q.pop()) q.addUsed(c.head, 0);
            q.flush();
            expect(sc.reap()).toBe(n);
          }
        },
      ),
      { numRuns: 400 },
    );
  });

  it('keeps a right base, also one that ends the tail of a multi-slot chain (a clean hand-over)', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4, 8, 16),
        fc.integer({ min: 0, max: 40 }),
        fc.array(fc.record({ post: fc.integer({ min: 0, max: 4 }), slots: fc.integer({ min: 1, max: 3 }), pop: fc.integer({ min: 0, max: 4 }), reap: fc.boolean() }), { minLength: 1, maxLength: 20 }),
        (size, startSeed, steps) => {
          const startLin = startSeed % (2 * size);
          const rig = makePackedRig({ size, start: enc(startLin, size) });
          const sc = new Scenario(rig, true);
          let q = rig.q;
          for (const s of steps) {
            sc.post(s.post, Math.min(s.slots, size));
            for (let i = 0; i < s.pop; i++) {
              const c = q.pop();
              if (c === null) break;
              q.addUsed(c.head, 0);
            }
            q.flush();
            if (s.reap) sc.reap();
          }
          // GET_VRING_BASE: nothing in flight, the base is exact; SET_VRING_BASE on a new device.
          const base = q.base();
          q = newDevice(rig);
          expect(q.resume(base)).toBeNull();
          expect(q.base()).toBe(base);
          sc.reap();
          const expectIds = sc.posted.map((b) => b.id);
          const popped: number[] = [];
          for (let c = q.pop(); c !== null; c = q.pop()) {
            popped.push(c.head);
            q.addUsed(c.head, 0);
          }
          expect(popped).toEqual(expectIds);
          q.flush();
          expect(sc.reap()).toBe(expectIds.length);
        },
      ),
      { numRuns: 400 },
    );
  });

  it('a fresh ring keeps the start base; an idle ring and a full one resume at the driver', () => {
    const rig = makePackedRig({ size: 8 });
    const view = (): Uint16Array => new Uint16Array(rig.buf, rig.layout.desc - 0x10_0000, 8 * rig.size);
    expect(resumePackedBase(view(), 8, PACKED_RING_BASE_START)).toMatchObject({ base: PACKED_RING_BASE_START, recovered: false });
    const sc = new Scenario(rig, false);
    sc.post(3, 1);
    expect(resumePackedBase(view(), 8, PACKED_RING_BASE_START).recovered).toBe(false);
    // 27 buffers through the ring, all consumed: device and driver both at slot 3/wrap 0.
    for (let lap = 0; lap < 3; lap++) {
      for (let c = rig.q.pop(); c !== null; c = rig.q.pop()) rig.q.addUsed(c.head, 0);
      rig.q.flush();
      sc.reap();
      sc.post(8, 1);
    }
    for (let c = rig.q.pop(); c !== null; c = rig.q.pop()) rig.q.addUsed(c.head, 0);
    rig.q.flush();
    sc.reap();
    const idle = rig.q.base();
    const r = resumePackedBase(view(), 8, PACKED_RING_BASE_START);
    expect(r).toMatchObject({ base: idle, recovered: true });
    expect(r.reason).toMatch(/does not match the ring/);
    // A full ring: every slot available; the device is a whole ring behind the driver.
    sc.post(8, 1);
    expect(sc.posted.length).toBe(8);
    expect(resumePackedBase(view(), 8, PACKED_RING_BASE_START)).toMatchObject({ base: idle, recovered: true });
    expect(resumePackedBase(view(), 8, idle)).toMatchObject({ base: idle, recovered: false });
  });

  it('property: any ring contents and any base give a base setBase() takes, or the front-end base back', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.uint32Array({ minLength: 256, maxLength: 256 }), fc.nat({ max: 0xffff_ffff }), fc.nat({ max: 0xffff_ffff }), (size, words, frontEnd, ev) => {
        const ring = new Uint16Array(new Uint32Array(words.slice(0, 4 * size)).buffer);
        const r = resumePackedBase(ring, size, frontEnd, ev);
        if (!r.recovered) {
          expect(r.base).toBe(frontEnd);
          return;
        }
        expect(r.base & 0x7fff).toBeLessThan(size);
        expect(r.base >>> 16).toBe(r.base & 0xffff);
        const rig = makePackedRig({ size });
        rig.q.setBase(r.base);
        expect(rig.q.base()).toBe(r.base);
      }),
      { numRuns: 2000 },
    );
  });

  it('a ring whose AVAIL bits change more than once keeps the front-end base (garbage or mid-write)', () => {
    const size = 8;
    const ring = new Uint16Array(8 * size);
    for (let s = 0; s < size; s++) ring[s * 8 + 7] = s % 2 ? 0x80 : 0x8000;
    expect(resumePackedBase(ring, size, 0x0003_0003)).toMatchObject({ base: 0x0003_0003, recovered: false });
    expect(resumePackedBase(ring, size, 0x0009_0009).recovered).toBe(false); // out of range: setBase's to reject
  });
});
