// Happy paths of the packed queue, driven from the driver side (PackedDriverQueue) and, where the
// driver would not build the ring, from the raw writer: layout helpers and the vhost-user ring base,
// direct and indirect chains, chains over the ring's end, out-of-order completion, batched used
// writes, rewind, event suppression on both sides, watch(), and the surface shared with SplitQueue.

import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  DescriptorChain,
  PACKED_DESC_FLAGS,
  PACKED_DESC_SIZE,
  PACKED_POS_START,
  PACKED_RING_BASE_START,
  PackedQueue,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  decodePackedRingBase,
  encodePackedRingBase,
  isPackedQueueSize,
  packedNeedEvent,
  packedPos,
  packedPosIdx,
  packedPosWrap,
  packedRingLayout,
  type DeviceQueue,
} from '../../vring/index.ts';
import { makeRig } from './helpers.ts';
import { RAM_GPA, availFlags, makePackedRig, usedFlags } from './packed-rig.ts';

const bytes = (...v: number[]): Uint8Array => Uint8Array.from(v);

afterEach(() => {
  vi.restoreAllMocks();
});

describe('packed layout helpers', () => {
  it('encodes positions as idx | wrap << 15', () => {
    expect(PACKED_POS_START).toBe(0x8000);
    expect(packedPos(5, 0)).toBe(5);
    expect(packedPos(5, 1)).toBe(0x8005);
    expect(packedPosIdx(0x8005)).toBe(5);
    expect(packedPosWrap(0x8005)).toBe(1);
    expect(packedPosWrap(5)).toBe(0);
  });

  it('encodes the vhost-user ring base as QEMU 7.2 does: avail in the low half, used in the high half', () => {
    expect(encodePackedRingBase({ lastAvailIdx: 0, availWrap: 1, lastUsedIdx: 0, usedWrap: 1 })).toBe(PACKED_RING_BASE_START);
    expect(PACKED_RING_BASE_START).toBe(0x8000_8000);
    const b = { lastAvailIdx: 100, availWrap: 0, lastUsedIdx: 37, usedWrap: 1 };
    const num = encodePackedRingBase(b);
    expect(num).toBe(0x8025_0064); // unsigned: used 37 with wrap 1 high, avail 100 with wrap 0 low
    expect(decodePackedRingBase(num)).toEqual(b);
    expect(decodePackedRingBase(0xffff_ffff)).toEqual({ lastAvailIdx: 0x7fff, availWrap: 1, lastUsedIdx: 0x7fff, usedWrap: 1 });
  });

  it('lays a ring out compactly and knows a packed queue size (any integer up to 2^15)', () => {
    expect(packedRingLayout(3, 0x1000)).toEqual({ desc: 0x1000, driver: 0x1030, device: 0x1034, end: 0x1038 });
    expect(() => packedRingLayout(3, 0x1008)).toThrow(RangeError);
    expect([1, 3, 5, 256, 1000, 32768].every(isPackedQueueSize)).toBe(true);
    expect([0, -1, 32769, 1.5, Number.NaN].some(isPackedQueueSize)).toBe(false);
  });

  it('packedNeedEvent: the event position is among the `moved` positions before `now`, across laps', () => {
    for (const size of [1, 3, 4]) {
      const m = 2 * size;
      const enc = (lin: number): number => (lin < size ? lin | 0x8000 : lin - size);
      for (let e = 0; e < m; e++) {
        for (let now = 0; now < m; now++) {
          for (let moved = 0; moved <= m + 1; moved++) {
            let want = moved >= m;
            for (let k = 1; k <= moved && !want; k++) want = (now - k + 2 * m) % m === e;
            expect(packedNeedEvent(enc(e), enc(now), moved, size)).toBe(want);
          }
        }
      }
    }
  });
});

describe('direct chains', () => {
  it('round-trips a readable + writable chain and writes one used descriptor', () => {
    const r = makePackedRig();
    const out = r.alloc(32);
    const inp = r.alloc(64);
    r.mem.write(out, bytes(1, 2, 3, 4, 5, 6, 7, 8));
    const id = r.d.add([{ addr: out, len: 8 }], [{ addr: inp, len: 64 }]);
    expect(r.q.pop()).toBeNull(); // not published yet
    expect(r.q.availPending()).toBe(0);
    r.d.publish();
    expect(r.q.availPending()).toBe(1);
    expect(r.q.availIdx()).toBe(0x8002);
    const c = r.q.pop()!;
    expect(c.head).toBe(id);
    expect(c.readableLen).toBe(8);
    expect(c.writableLen).toBe(64);
    expect(c.descCount).toBe(2);
    expect(c.indirect).toBe(false);
    expect(r.q.lastAvail).toBe(0x8002);
    expect(r.q.isInFlight(id)).toBe(true);
    const got = new Uint8Array(8);
    expect(c.readBytes(0, got, 0, 8)).toBe(true);
    expect(got).toEqual(bytes(1, 2, 3, 4, 5, 6, 7, 8));
    expect(c.setU16(20, 0xbeef)).toBe(true);
    r.q.addUsed(c.head, 22);
    expect(r.d.getUsed()).toBeNull(); // not flushed yet
    r.q.flush();
    // The used descriptor overwrites the chain's first slot: id, len, AVAIL = USED = 1, WRITE.
    expect(r.ring.readDesc(0)).toEqual({ len: 22, id, flags: usedFlags(1) | VRING_DESC_F_WRITE });
    expect(r.d.getUsed()).toEqual({ head: id, len: 22 });
    expect(r.mem.readU16(inp + 20)).toBe(0xbeef);
    expect(r.d.freeCount).toBe(r.size);
    expect(r.q.inFlight).toBe(0);
    expect(r.q.usedIdx).toBe(0x8002); // skipped both slots of the chain
    expect(r.d.usedCursor).toBe(0x8002);
  });

  it('a used descriptor for a buffer the device wrote nothing into has no WRITE flag', () => {
    const r = makePackedRig();
    r.d.add([{ addr: r.alloc(16), len: 16 }], []);
    r.d.publish();
    r.q.addUsed(r.q.pop()!.head, 0);
    r.q.flush();
    expect(r.ring.readDesc(0).flags).toBe(usedFlags(1));
    expect(r.d.getUsed()).toEqual({ head: 0, len: 0 });
  });

  it('takes the buffer id from the last descriptor of a list (§2.8.6)', () => {
    const r = makePackedRig({ size: 8 });
    const b = r.alloc(64);
    r.ring.putList(PACKED_POS_START, [
      { addr: b, len: 8, id: 6 },
      { addr: b + 8, len: 8, id: 7 },
      { addr: b + 16, len: 8, id: 3, extra: VRING_DESC_F_WRITE },
    ]);
    const c = r.q.pop()!;
    expect(c.head).toBe(3);
    expect(c.descCount).toBe(3);
    expect(r.q.isInFlight(3)).toBe(true);
    expect(r.q.isInFlight(6)).toBe(false);
  });

  it('follows a list over the end of the ring into the next lap', () => {
    const r = makePackedRig({ size: 4, start: packedPos(3, 1) });
    const b = r.alloc(64);
    const id = r.d.add([{ addr: b, len: 4 }, { addr: b + 4, len: 4 }], [{ addr: b + 8, len: 4 }]);
    r.d.publish();
    // Slot 3 in lap 1, slots 0 and 1 in lap 0.
    expect(r.ring.readDesc(3).flags & 0x8080).toBe(availFlags(1));
    expect(r.ring.readDesc(0).flags & 0x8080).toBe(availFlags(0));
    const c = r.q.pop()!;
    expect(c.head).toBe(id);
    expect(c.descCount).toBe(3);
    expect(r.q.lastAvail).toBe(packedPos(2, 0));
    r.q.addUsed(id, 4);
    r.q.flush();
    expect(r.d.getUsed()).toEqual({ head: id, len: 4 });
    expect(r.d.usedCursor).toBe(packedPos(2, 0));
  });

  it('works with queue sizes that are not powers of 2, over many laps', () => {
    for (const size of [1, 3, 5, 7]) {
      const r = makePackedRig({ size });
      const b = r.alloc(64);
      for (let i = 0; i < 5 * size + 1; i++) {
        const id = r.d.add([{ addr: b, len: 8 }], []);
        r.d.publish();
        expect(r.q.pop()!.head).toBe(id);
        r.q.addUsed(id, 0);
        r.q.flush();
        expect(r.d.getUsed()?.head).toBe(id);
      }
      expect(r.q.lastAvail).toBe(r.d.availIdx);
      expect(r.q.usedIdx).toBe(r.d.usedCursor);
    }
  });

  it('pops bursts and returns the same chain object for a buffer id while it is in flight', () => {
    const r = makePackedRig({ size: 8 });
    const b = r.alloc(16);
    for (let i = 0; i < 5; i++) r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.q.availPending()).toBe(5);
    const out: DescriptorChain[] = [];
    expect(r.q.popBurst(3, out)).toBe(3);
    expect(r.q.popBurst(32, out, 3)).toBe(2);
    expect(r.q.popBurst(32, out)).toBe(0);
    expect(new Set(out.map((c) => c.head)).size).toBe(5);
    expect(new Set(out).size).toBe(5);
  });
});

describe('indirect chains', () => {
  it('walks a table entry by entry, ignoring NEXT and ids in it (§2.8.7)', () => {
    const r = makePackedRig();
    const a = r.alloc(16);
    const b = r.alloc(100);
    r.mem.write(a, bytes(0xaa, 0xbb));
    const t = r.ring.writeTable(r.alloc(48), [
      { addr: a, len: 2, flags: VRING_DESC_F_NEXT, id: 99 },
      { addr: a + 2, len: 6, flags: VRING_DESC_F_NEXT },
      { addr: b, len: 100, flags: VRING_DESC_F_WRITE },
    ]);
    r.ring.putList(PACKED_POS_START, [{ addr: t.addr, len: t.len, id: 4, flags: VRING_DESC_F_INDIRECT }]);
    const c = r.q.pop()!;
    expect(c.head).toBe(4);
    expect(c.indirect).toBe(true);
    expect(c.descCount).toBe(3);
    expect(c.readableLen).toBe(8);
    expect(c.writableLen).toBe(100);
    expect(c.locate(0, 2)).toBe(true);
    expect(c.u8[c.pos]).toBe(0xaa);
    r.q.addUsed(4, 100);
    expect(r.q.usedIdx).toBe(0x8001); // one slot
  });

  it('round-trips through the driver side', () => {
    const r = makePackedRig({ size: 4 });
    const b = r.alloc(256);
    const id = r.d.add([{ addr: b, len: 10 }], [{ addr: b + 16, len: 20 }, { addr: b + 64, len: 30 }], { indirectAt: r.alloc(48) });
    expect(r.d.freeCount).toBe(3);
    r.d.publish();
    const c = r.q.pop()!;
    expect([c.head, c.indirect, c.readableLen, c.writableLen]).toEqual([id, true, 10, 50]);
    r.q.addUsed(id, 25);
    r.q.flush();
    expect(r.d.getUsed()).toEqual({ head: id, len: 25 });
    expect(r.d.freeCount).toBe(4);
  });
});

describe('completion', () => {
  it('writes used descriptors in completion order, each skipping the slots its chain took', () => {
    const r = makePackedRig({ size: 8 });
    const b = r.alloc(64);
    const a = r.d.add([{ addr: b, len: 4 }], []); // 1 slot
    const x = r.d.add([{ addr: b, len: 4 }, { addr: b, len: 4 }, { addr: b, len: 4 }], []); // 3 slots
    const y = r.d.add([{ addr: b, len: 4 }, { addr: b, len: 4 }], []); // 2 slots
    r.d.publish();
    expect(r.q.popBurst(8, [])).toBe(3);
    r.q.addUsed(y, 0);
    r.q.addUsed(a, 0);
    r.q.addUsed(x, 0);
    r.q.flush();
    // y's used descriptor at slot 0, a's at 2 (0 + y's 2 slots), x's at 3.
    expect([0, 2, 3].map((s) => r.ring.readDesc(s).id)).toEqual([y, a, x]);
    expect([r.d.popUsed(), r.d.popUsed(), r.d.popUsed(), r.d.popUsed()]).toEqual([y, a, x, -1]);
    expect(r.d.usedCursor).toBe(packedPos(6, 1));
    expect(r.d.freeCount).toBe(8);
  });

  it('writes the flags of a batch at flush(), the first descriptor last', () => {
    const r = makePackedRig({ size: 8 });
    const b = r.alloc(64);
    for (let i = 0; i < 3; i++) r.d.add([{ addr: b, len: 4 }], []);
    r.d.publish();
    const out: DescriptorChain[] = [];
    r.q.popBurst(8, out);
    for (const c of out.slice(0, 3)) r.q.addUsed(c.head, 0);
    for (let s = 0; s < 3; s++) expect(r.ring.readDesc(s).flags & 0x8080).toBe(availFlags(1)); // still available-looking
    expect(r.d.popUsed()).toBe(-1);
    const seen: number[][] = [];
    const real = Atomics.store.bind(Atomics);
    vi.spyOn(Atomics, 'store').mockImplementation(((ta: Uint16Array, i: number, v: number): number => {
      if (ta.BYTES_PER_ELEMENT === 2 && (i * 2) % PACKED_DESC_SIZE === PACKED_DESC_FLAGS) {
        // Whenever a flags word is stored with Atomics, record what the three slots hold at that moment.
        seen.push([(i * 2 - PACKED_DESC_FLAGS) / PACKED_DESC_SIZE, ...[0, 1, 2].map((s) => r.ring.readDesc(s).flags & 0x8080)]);
      }
      return real(ta, i, v);
    }) as unknown as typeof Atomics.store);
    r.q.flush();
    // One Atomics.store, for slot 0, when slots 1 and 2 already say used and slot 0 does not yet.
    expect(seen).toEqual([[0, availFlags(1), usedFlags(1), usedFlags(1)]]);
    vi.restoreAllMocks();
    expect([r.d.popUsed(), r.d.popUsed(), r.d.popUsed()]).toEqual(out.slice(0, 3).map((c) => c.head));
  });

  it('rewinds the last popped chains, which then pop again', () => {
    const r = makePackedRig({ size: 8 });
    const b = r.alloc(64);
    const ids = [r.d.add([{ addr: b, len: 4 }], []), r.d.add([{ addr: b, len: 4 }, { addr: b, len: 4 }], []), r.d.add([{ addr: b, len: 4 }], [])];
    r.d.publish();
    const out: DescriptorChain[] = [];
    r.q.popBurst(8, out);
    r.q.addUsed(ids[0]!, 0);
    r.q.rewind(2);
    expect(r.q.inFlight).toBe(0);
    expect(r.q.lastAvail).toBe(packedPos(1, 1));
    expect(r.q.availPending()).toBe(2);
    expect([r.q.pop()!.head, r.q.pop()!.head]).toEqual([ids[1], ids[2]]);
    expect(r.q.pop()).toBeNull();
  });
});

describe('hand-over (vhost-user SET/GET_VRING_BASE)', () => {
  it('setBase takes the packed encoding and base() gives it back, after traffic too', () => {
    const start = packedPos(6, 0);
    const r = makePackedRig({ size: 8, start });
    expect(r.q.lastAvail).toBe(start);
    expect(r.q.base()).toBe(encodePackedRingBase({ lastAvailIdx: 6, availWrap: 0, lastUsedIdx: 6, usedWrap: 0 }));
    const b = r.alloc(64);
    const a = r.d.add([{ addr: b, len: 4 }, { addr: b, len: 4 }, { addr: b, len: 4 }], []);
    r.d.add([{ addr: b, len: 4 }], []);
    r.d.publish();
    r.q.popBurst(8, []);
    r.q.addUsed(a, 0);
    expect(r.q.base()).toBe(encodePackedRingBase({ lastAvailIdx: 2, availWrap: 1, lastUsedIdx: 6, usedWrap: 0 })); // staged is not in it
    r.q.flush();
    expect(r.q.base()).toBe(encodePackedRingBase({ lastAvailIdx: 2, availWrap: 1, lastUsedIdx: 1, usedWrap: 1 }));
    // A second device takes over from there (the chain still in flight is lost, as with split rings).
    const q2 = new PackedQueue({ size: 8, ...r.layout });
    q2.setBase(r.q.base());
    q2.attach(r.mem);
    expect(q2.lastAvail).toBe(r.q.lastAvail);
    expect(q2.usedIdx).toBe(0x8001);
    const id = r.d.add([{ addr: b, len: 4 }], []);
    r.d.publish();
    expect(q2.pop()!.head).toBe(id);
  });
});

describe('event suppression', () => {
  it('device: DISABLE, ENABLE, and DESC with off_wrap under EVENT_IDX', () => {
    const r = makePackedRig({ size: 8, eventIdx: true });
    r.q.disableNotification();
    expect(r.ring.deviceEvent.flags).toBe(VRING_PACKED_EVENT_FLAG_DISABLE);
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 4 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(false);
    expect(r.q.enableNotification()).toBe(true); // already there: drain again
    expect(r.ring.deviceEvent).toEqual({ offWrap: 0x8000, flags: VRING_PACKED_EVENT_FLAG_DESC });
    r.q.pop();
    expect(r.ring.deviceEvent.offWrap).toBe(0x8001); // moves with pops while enabled
    expect(r.q.enableNotification()).toBe(false);
    r.d.add([{ addr: b, len: 4 }, { addr: b, len: 4 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true); // slot 1 is the one the device asked about
    const plain = makePackedRig({ size: 8 });
    plain.q.disableNotification();
    expect(plain.q.enableNotification()).toBe(false);
    expect(plain.ring.deviceEvent.flags).toBe(VRING_PACKED_EVENT_FLAG_ENABLE);
  });

  it('enableNotification(availIdx()) waits for buffers newer than those in the ring', () => {
    const r = makePackedRig({ size: 8, eventIdx: true });
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 4 }], []);
    r.d.publish();
    const seen = r.q.availIdx();
    expect(seen).toBe(0x8001);
    expect(r.q.enableNotification(seen)).toBe(false);
    expect(r.ring.deviceEvent.offWrap).toBe(0x8001);
    r.d.add([{ addr: b, len: 4 }], []);
    r.d.publish();
    expect(r.d.needsKick()).toBe(true);
    expect(r.q.enableNotification(seen)).toBe(true);
  });

  it('driver: DISABLE suppresses, DESC notifies at off_wrap only, ENABLE after anything new', () => {
    const r = makePackedRig({ size: 8, eventIdx: true });
    const b = r.alloc(16);
    const complete = (): void => {
      r.d.add([{ addr: b, len: 4 }], []);
      r.d.publish();
      r.q.addUsed(r.q.pop()!.head, 0);
      r.q.flush();
    };
    complete();
    expect(r.q.needsNotification()).toBe(true); // first decision
    expect(r.d.getUsed()).not.toBeNull(); // moves off_wrap to the next used slot
    expect(r.ring.driverEvent).toEqual({ offWrap: 0x8001, flags: VRING_PACKED_EVENT_FLAG_DESC });
    complete();
    expect(r.q.needsNotification()).toBe(true);
    // Ask to hear only at slot 4.
    r.ring.setDriverEvent(VRING_PACKED_EVENT_FLAG_DESC, packedPos(4, 1));
    complete(); // slot 2
    expect(r.q.needsNotification()).toBe(false);
    complete(); // slot 3
    expect(r.q.needsNotification()).toBe(false);
    complete(); // slot 4
    expect(r.q.needsNotification()).toBe(true);
    r.d.setInterrupts(false);
    expect(r.ring.driverEvent.flags).toBe(VRING_PACKED_EVENT_FLAG_DISABLE);
    complete();
    expect(r.q.needsNotification()).toBe(false);
    r.ring.setDriverEvent(VRING_PACKED_EVENT_FLAG_ENABLE);
    expect(r.q.needsNotification()).toBe(true); // published while disabled, never signalled
    expect(r.q.needsNotification()).toBe(false);
  });
});

describe('watch(): what a sleeping worker waits on', () => {
  it('packed: the flags word of the descriptor at the watched position, with its value now', () => {
    const r = makePackedRig({ size: 8 });
    const w = r.q.watch();
    expect(w.location.mappingId).toBe(7);
    expect(w.location.mappingOffset + w.location.offset).toBe(r.layout.desc - RAM_GPA + PACKED_DESC_FLAGS);
    expect(w.seen).toBe(0);
    const at = (): number => new Uint16Array(r.buf, w.location.mappingOffset + w.location.offset, 1)[0]!;
    expect(at()).toBe(w.seen);
    r.d.add([{ addr: r.alloc(16), len: 4 }], []);
    r.d.publish();
    expect(at()).not.toBe(w.seen); // the driver's hand-over changes the word
    const next = r.q.watch(r.q.availIdx());
    expect(next.location.offset - w.location.offset).toBe(PACKED_DESC_SIZE);
    expect(() => r.q.watch(8)).toThrow(RangeError);
  });

  it('split: avail.idx and lastAvail (or the given index)', () => {
    const r = makeRig({ size: 8 });
    const loc = r.q.availIdxLocation();
    expect(r.q.watch()).toEqual({ location: loc, seen: r.q.lastAvail });
    expect(r.q.watch(0x1_0005).seen).toBe(5);
  });
});

describe('the surface shared with SplitQueue', () => {
  it('both are a DeviceQueue', () => {
    const queues: DeviceQueue[] = [makeRig().q, makePackedRig().q];
    for (const q of queues) {
      expect(q.pop()).toBeNull();
      expect(q.availPending()).toBe(0);
      expect(q.enableNotification()).toBe(false);
      expect(q.inFlight).toBe(0);
    }
  });

  it('refuses an inflight record without breaking, and reset() starts over', () => {
    const r = makePackedRig({ size: 4 });
    expect(() => r.q.setInflight({} as never)).toThrow(expect.objectContaining({ code: 'VRING_INFLIGHT_UNSUPPORTED' }));
    r.q.setInflight(null);
    expect(r.q.broken).toBeNull();
    expect(() => r.q.recoverInflight()).toThrow(expect.objectContaining({ code: 'VRING_NOT_ATTACHED' }));
    r.d.add([{ addr: r.alloc(16), len: 4 }], []);
    r.d.publish();
    r.q.pop();
    r.q.reset();
    expect([r.q.lastAvail, r.q.usedIdx, r.q.inFlight]).toEqual([0x8000, 0x8000, 0]);
    expect(r.q.pop()!.head).toBe(0);
  });

  it('refuses to run before attach', () => {
    const q = new PackedQueue({ size: 16, ...packedRingLayout(16, 0) });
    expect(() => q.pop()).toThrow(expect.objectContaining({ code: 'VRING_NOT_ATTACHED' }));
  });
});
