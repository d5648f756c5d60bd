// Regression: every rule of DESIGN's "Untrusted input" checklist, in its packed-ring form (virtio 1.2
// §2.8). One test per rule: the hostile ring is written raw, and each test asserts the error class and
// code, that the queue is broken with it, and that it stays broken on every entry point.

import { describe, expect, it } from 'vitest';
import { hugeAddr, wrappingAddr } from '../../harness/rings.ts';
import {
  DescriptorError,
  GuestMemory,
  MemoryError,
  PACKED_DESC_SIZE,
  PACKED_POS_START,
  PackedQueue,
  RingLayoutError,
  RingStateError,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VringError,
  encodePackedRingBase,
  packedDescAreaSize,
  packedPos,
  packedRingLayout,
} from '../../vring/index.ts';
import { RAM_GPA, RAM_SIZE, availFlags, expectPackedBreaks, makePackedRig, usedFlags } from './packed-rig.ts';

const W = VRING_DESC_F_WRITE;
const N = VRING_DESC_F_NEXT;
const I = VRING_DESC_F_INDIRECT;

describe('queue shape (attach)', () => {
  const L = packedRingLayout(256, RAM_GPA);
  const cases: [string, number, number, number, number, { maxSize?: number }, string][] = [
    ['size 0', 0, L.desc, L.driver, L.device, {}, 'VRING_BAD_SIZE'],
    ['size not an integer', 2.5, L.desc, L.driver, L.device, {}, 'VRING_BAD_SIZE'],
    ['size above 32768', 32769, L.desc, L.driver, L.device, {}, 'VRING_BAD_SIZE'],
    ['size above the device maximum', 257, L.desc, L.driver, L.device, { maxSize: 256 }, 'VRING_BAD_SIZE'],
    ['descriptor ring not 16-aligned', 256, L.desc + 8, L.driver, L.device, {}, 'VRING_MISALIGNED'],
    ['driver area not 4-aligned', 256, L.desc, L.driver + 2, L.device, {}, 'VRING_MISALIGNED'],
    ['device area not 4-aligned', 256, L.desc, L.driver, L.device + 2, {}, 'VRING_MISALIGNED'],
    // All but the last descriptor fit (CVE-2018-1059 class: ring addresses not range-checked).
    ['descriptor ring not fully mapped', 256, RAM_GPA + RAM_SIZE - packedDescAreaSize(256) + PACKED_DESC_SIZE, L.driver, L.device, {}, 'VRING_RING_UNMAPPED'],
    ['driver area outside memory', 256, L.desc, RAM_GPA + RAM_SIZE, L.device, {}, 'VRING_RING_UNMAPPED'],
    ['device area half outside memory', 256, L.desc, L.driver, RAM_GPA + RAM_SIZE - 2, {}, 'VRING_MISALIGNED'],
    ['device area below all memory', 256, L.desc, L.driver, 0x1000, {}, 'VRING_RING_UNMAPPED'],
  ];
  for (const [name, size, desc, driver, device, extra, code] of cases) {
    it(`rejects ${name}`, () => {
      const mem = new GuestMemory([{ gpa: RAM_GPA, size: RAM_SIZE, buffer: new ArrayBuffer(RAM_SIZE) }]);
      const q = new PackedQueue({ size, desc, driver, device, ...extra });
      expectPackedBreaks(q, () => q.attach(mem), RingLayoutError, code);
    });
  }

  it('rejects a descriptor ring that spans two regions, even adjacent ones', () => {
    const buf = new ArrayBuffer(2 * 65536);
    const mem = new GuestMemory([
      { gpa: 0, size: 65536, buffer: buf },
      { gpa: 65536, size: 65536, buffer: buf, bufferOffset: 65536 },
    ]);
    const q = new PackedQueue({ size: 256, desc: 65536 - packedDescAreaSize(256) / 2, driver: 65536 + 8192, device: 65536 + 8196 });
    expectPackedBreaks(q, () => q.attach(mem), RingLayoutError, 'VRING_RING_UNMAPPED');
  });
});

describe('ring base (SET_VRING_BASE)', () => {
  for (const [name, base] of [
    ['an avail index ≥ size', encodePackedRingBase({ lastAvailIdx: 16, availWrap: 1, lastUsedIdx: 0, usedWrap: 1 })],
    ['a used index ≥ size', encodePackedRingBase({ lastAvailIdx: 0, availWrap: 1, lastUsedIdx: 0x7fff, usedWrap: 0 })],
    ['avail more than a ring ahead of used', encodePackedRingBase({ lastAvailIdx: 1, availWrap: 0, lastUsedIdx: 0, usedWrap: 1 })],
  ] as const) {
    it(`rejects ${name}`, () => {
      const r = makePackedRig({ size: 16 });
      expectPackedBreaks(r.q, () => r.q.setBase(base), RingStateError, 'VRING_BAD_BASE');
    });
  }
});

describe('buffer ids', () => {
  it('rejects a buffer id ≥ the queue size', () => {
    const r = makePackedRig({ size: 16 });
    r.ring.putList(PACKED_POS_START, [{ addr: r.alloc(16), len: 16, id: 16 }]);
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_HEAD_OUT_OF_RANGE');
  });

  it('rejects a buffer id made available again while in flight (SPDK #3860 class)', () => {
    const r = makePackedRig({ size: 16 });
    const b = r.alloc(16);
    const next = r.ring.putList(PACKED_POS_START, [{ addr: b, len: 16, id: 3 }]);
    expect(r.q.pop()!.head).toBe(3);
    r.ring.putList(next, [{ addr: b, len: 16, id: 3 }]);
    expectPackedBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_HEAD_IN_FLIGHT');
    expect(r.q.inFlight).toBe(1);
  });

  it('rejects completing a buffer twice', () => {
    const r = makePackedRig({ size: 16 });
    const id = r.d.add([], [{ addr: r.alloc(16), len: 16 }]);
    r.d.publish();
    r.q.pop();
    r.q.addUsed(id, 4);
    expectPackedBreaks(r.q, () => r.q.addUsed(id, 4), RingStateError, 'VRING_NOT_IN_FLIGHT');
  });

  it('rejects completing a buffer that was never popped', () => {
    const r = makePackedRig({ size: 16 });
    expectPackedBreaks(r.q, () => r.q.addUsed(3, 0), RingStateError, 'VRING_NOT_IN_FLIGHT');
  });

  it('rejects rewinding over a completed chain', () => {
    const r = makePackedRig({ size: 16 });
    const b = r.alloc(16);
    const a = r.d.add([{ addr: b, len: 16 }], []);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    r.q.popBurst(2, []);
    r.q.addUsed(a, 0);
    expectPackedBreaks(r.q, () => r.q.rewind(2), RingStateError, 'VRING_BAD_REWIND');
  });

  it('never holds more descriptors in flight than the ring has: a driver that reuses held slots', () => {
    const r = makePackedRig({ size: 4 });
    const b = r.alloc(16);
    // Four one-slot buffers fill the ring; the device holds them all.
    let pos = PACKED_POS_START;
    for (let id = 0; id < 4; id++) pos = r.ring.putList(pos, [{ addr: b, len: 16, id }]);
    expect(r.q.popBurst(8, [])).toBe(4);
    // The driver writes a fifth over slot 0, which the device still holds (no used descriptor yet).
    r.q.addUsed(0, 0); // completes id 0 (staged), leaving ids 1..3 and three slots held
    r.ring.putList(pos, [{ addr: b, len: 16, id: 0 }, { addr: b, len: 16, id: 0 }]);
    expectPackedBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_TOO_MANY_IN_FLIGHT');
  });
});

describe('wrap counters and flags', () => {
  it('rejects a list whose tail is not available yet (seen out of wrap order)', () => {
    const r = makePackedRig({ size: 8 });
    const b = r.alloc(16);
    // Head available with NEXT; slot 1 still holds the ring's initial zeros (lap 0 flags).
    r.ring.writeDesc(0, { addr: b, len: 16, flags: N | availFlags(1) });
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_WRAP_ORDER');
  });

  it('rejects a tail marked with the wrong lap across the ring end', () => {
    const r = makePackedRig({ size: 4, start: packedPos(3, 1) });
    const b = r.alloc(16);
    // Slot 3 is in lap 1 and slot 0 is in lap 0; the tail claims lap 1.
    r.ring.writeDesc(0, { addr: b, len: 16, id: 1, flags: availFlags(1) });
    r.ring.writeDesc(3, { addr: b, len: 16, id: 1, flags: N | availFlags(1) });
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_WRAP_ORDER');
  });

  it('rejects a used marker of the current lap where the next available descriptor belongs', () => {
    const r = makePackedRig({ size: 8, start: packedPos(2, 0) });
    // AVAIL = USED = 0 at slot 2 in lap 0: neither available nor a state the device left there.
    r.ring.writeDesc(2, { addr: r.alloc(16), len: 16, flags: usedFlags(0) | W });
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_BAD_DESC_FLAGS');
  });

  it('rejects a list longer than the ring (every descriptor NEXT), at any size, quickly', () => {
    for (const size of [1, 3, 256, 32768]) {
      const r = makePackedRig({ size, maxPieces: 1 << 16 });
      const b = r.alloc(16);
      const list = Array.from({ length: size }, () => ({ addr: b, len: 1, extra: N }));
      r.ring.putList(PACKED_POS_START, list);
      const t0 = performance.now();
      expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
      expect(performance.now() - t0).toBeLessThan(500);
    }
  });
});

describe('indirect descriptors', () => {
  it('rejects INDIRECT when not negotiated', () => {
    const r = makePackedRig({ indirect: false });
    const t = r.ring.writeTable(r.alloc(16), [{ addr: r.alloc(16), len: 16 }]);
    r.ring.putList(PACKED_POS_START, [{ ...t, flags: I }]);
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NOT_NEGOTIATED');
  });

  it('rejects INDIRECT combined with NEXT', () => {
    const r = makePackedRig();
    const t = r.ring.writeTable(r.alloc(16), [{ addr: r.alloc(16), len: 16 }]);
    r.ring.putList(PACKED_POS_START, [{ ...t, extra: I }, { addr: r.alloc(16), len: 16 }]);
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_WITH_NEXT');
  });

  it('rejects INDIRECT inside a list linked by NEXT', () => {
    const r = makePackedRig();
    const t = r.ring.writeTable(r.alloc(16), [{ addr: r.alloc(16), len: 16 }]);
    r.ring.putList(PACKED_POS_START, [{ addr: r.alloc(16), len: 16 }, { ...t, flags: I }]);
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NOT_HEAD');
  });

  it('rejects a nested indirect table', () => {
    const r = makePackedRig();
    const inner = r.ring.writeTable(r.alloc(16), [{ addr: r.alloc(16), len: 16 }]);
    const outer = r.ring.writeTable(r.alloc(32), [{ addr: r.alloc(16), len: 16 }, { ...inner, flags: I }]);
    r.ring.putList(PACKED_POS_START, [{ ...outer, flags: I }]);
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NESTED');
  });

  for (const len of [0, 24]) {
    it(`rejects an indirect table of length ${len}`, () => {
      const r = makePackedRig();
      r.ring.putList(PACKED_POS_START, [{ addr: r.alloc(32), len, flags: I }]);
      expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_BAD_LEN');
    });
  }

  it('rejects an indirect table that is not fully mapped', () => {
    const r = makePackedRig();
    r.ring.putList(PACKED_POS_START, [{ addr: RAM_GPA + RAM_SIZE - PACKED_DESC_SIZE, len: 2 * PACKED_DESC_SIZE, flags: I }]);
    expectPackedBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('stops a huge table of tiny buffers at the piece cap', () => {
    const r = makePackedRig({ size: 8, maxPieces: 1024 });
    const b = r.alloc(16);
    const t = r.ring.writeTable(r.alloc(2048 * PACKED_DESC_SIZE), Array.from({ length: 2048 }, () => ({ addr: b, len: 1 })));
    r.ring.putList(PACKED_POS_START, [{ ...t, flags: I }]);
    expectPackedBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_TOO_MANY_PIECES');
  });
});

describe('buffers', () => {
  const one = (o: { addr?: [number, number] | number; len?: number; write?: boolean }): ((r: ReturnType<typeof makePackedRig>) => void) => (r) => {
    r.ring.putList(PACKED_POS_START, [{ addr: o.addr ?? r.alloc(16), len: o.len ?? 16, extra: o.write ? W : 0 }]);
  };
  const cases: [string, (r: ReturnType<typeof makePackedRig>) => void, new (...a: never[]) => VringError, string][] = [
    ['a zero-length buffer', one({ len: 0 }), DescriptorError, 'VRING_ZERO_LEN'],
    ['a buffer outside guest memory (CVE-2020-10725 class)', one({ addr: 0x1000 }), MemoryError, 'VRING_UNMAPPED'],
    ['a buffer running off the end of memory', one({ addr: RAM_GPA + RAM_SIZE - 8, write: true }), MemoryError, 'VRING_UNMAPPED'],
    ['an address ≥ 2^53', one({ addr: hugeAddr(RAM_GPA) }), MemoryError, 'VRING_UNMAPPED'],
    ['addr + len wrapping around 2^64', one({ addr: wrappingAddr(0x20), len: 0x20 }), MemoryError, 'VRING_ADDR_WRAP'],
    [
      'a readable descriptor after a writable one',
      (r) => void r.ring.putList(PACKED_POS_START, [{ addr: r.alloc(16), len: 16, extra: W }, { addr: r.alloc(16), len: 16 }]),
      DescriptorError,
      'VRING_READ_AFTER_WRITE',
    ],
    [
      'buffers adding up to 2^32 bytes (checked add)',
      (r) => void r.ring.putList(PACKED_POS_START, [{ addr: r.alloc(16), len: 16 }, { addr: r.alloc(16), len: 0xffff_fff8 }]),
      DescriptorError,
      'VRING_CHAIN_TOO_LONG',
    ],
    [
      'more memory pieces than the cap',
      (r) => {
        const b = r.alloc(16);
        r.ring.putList(PACKED_POS_START, [1, 2, 3, 4, 5].map(() => ({ addr: b, len: 16 })));
      },
      DescriptorError,
      'VRING_TOO_MANY_PIECES',
    ],
  ];
  for (const [name, build, cls, code] of cases) {
    it(`rejects ${name}`, () => {
      const r = makePackedRig({ size: 16, maxPieces: 4 });
      build(r);
      expectPackedBreaks(r.q, () => r.q.pop(), cls, code);
    });
  }
});

describe('a broken queue', () => {
  it('never touches guest memory again, until reset()', () => {
    const r = makePackedRig({ size: 16, eventIdx: true });
    r.ring.putList(PACKED_POS_START, [{ addr: r.alloc(16), len: 16, id: 99 }]);
    expect(() => r.q.pop()).toThrow();
    const before = new Uint8Array(r.buf).slice();
    for (const f of [() => r.q.pop(), () => r.q.flush(), () => r.q.enableNotification(), () => r.q.disableNotification(), () => r.q.addUsed(0, 0)]) {
      expect(f).toThrow(r.q.broken!);
    }
    expect(Buffer.from(r.buf).equals(before)).toBe(true);
    r.q.reset();
    expect(r.q.broken).toBeNull();
  });
});

describe('the driver side validates the device too', () => {
  it('rejects a used descriptor for an id it did not hand over', () => {
    const r = makePackedRig({ size: 8 });
    r.d.add([{ addr: r.alloc(16), len: 4 }], []); // added, not published
    r.ring.writeDesc(0, { addr: 0, len: 0, id: 0, flags: usedFlags(1) });
    expect(() => r.d.popUsed()).toThrow(expect.objectContaining({ code: 'VRING_USED_BAD_ID' }));
    r.ring.writeDesc(0, { addr: 0, len: 0, id: 9, flags: usedFlags(1) });
    expect(() => r.d.popUsed()).toThrow(expect.objectContaining({ code: 'VRING_USED_BAD_ID' }));
  });
});
