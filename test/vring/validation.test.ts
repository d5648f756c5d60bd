// One test per rule of DESIGN's "Untrusted input" checklist that vring/ enforces. Each builds the bad
// ring with the harness's ring builder (harness/rings.ts), asserts the error class and code, and that
// the queue is broken and fails fast with the same error.

import { describe, expect, it } from 'vitest';
import { SplitRingBuilder, hugeAddr, wrappingAddr } from '../../harness/rings.ts';
import {
  DESC_ADDR,
  DESC_LEN,
  DESC_SIZE,
  DescriptorError,
  GuestMemory,
  MemoryError,
  RingLayoutError,
  RingStateError,
  SplitQueue,
  VRING_DESC_F_NEXT,
  availAreaSize,
  availUsedEventOffset,
  descAreaSize,
  isQueueSize,
  ringUaddrToGpa,
  splitRingLayout,
  usedAreaSize,
  usedAvailEventOffset,
} from '../../vring/index.ts';
import { RAM_GPA, RAM_SIZE, expectBreaks, makeRig } from './helpers.ts';

const N = VRING_DESC_F_NEXT;

function layoutQueue(size: number, desc: number, avail: number, used: number, extra: { maxSize?: number } = {}): { q: SplitQueue; mem: GuestMemory } {
  const mem = new GuestMemory([{ gpa: RAM_GPA, size: RAM_SIZE, buffer: new ArrayBuffer(RAM_SIZE) }]);
  return { q: new SplitQueue({ size, desc, avail, used, ...extra }), mem };
}

describe('queue shape (attach)', () => {
  const L = splitRingLayout(256, RAM_GPA);
  const cases: [string, number, number, number, number, { maxSize?: number }, string][] = [
    ['size 0', 0, L.desc, L.avail, L.used, {}, 'VRING_BAD_SIZE'],
    ['size not a power of 2', 12, L.desc, L.avail, L.used, {}, 'VRING_BAD_SIZE'],
    ['size above 32768', 65536, L.desc, L.avail, L.used, {}, 'VRING_BAD_SIZE'],
    ['size above the device maximum', 512, L.desc, L.avail, L.used, { maxSize: 256 }, 'VRING_BAD_SIZE'],
    ['descriptor table not 16-aligned', 256, L.desc + 8, L.avail, L.used, {}, 'VRING_MISALIGNED'],
    ['available ring not 2-aligned', 256, L.desc, L.avail + 1, L.used, {}, 'VRING_MISALIGNED'],
    ['used ring not 4-aligned', 256, L.desc, L.avail, L.used + 2, {}, 'VRING_MISALIGNED'],
    // All but the last descriptor fit.
    ['descriptor table outside memory', 256, RAM_GPA + RAM_SIZE - descAreaSize(256) + DESC_SIZE, L.avail, L.used, {}, 'VRING_RING_UNMAPPED'],
    // The available ring proper fits, its trailing used_event does not.
    ['used_event outside memory', 256, L.desc, RAM_GPA + RAM_SIZE - availUsedEventOffset(256), L.used, {}, 'VRING_RING_UNMAPPED'],
    // The used ring proper fits, its trailing avail_event does not.
    ['avail_event outside memory', 256, L.desc, L.avail, RAM_GPA + RAM_SIZE - usedAvailEventOffset(256), {}, 'VRING_RING_UNMAPPED'],
    ['used ring below all memory', 256, L.desc, L.avail, 0x1000, {}, 'VRING_RING_UNMAPPED'],
  ];
  for (const [name, size, desc, avail, used, extra, code] of cases) {
    it(`rejects ${name}`, () => {
      const { q, mem } = layoutQueue(size, desc, avail, used, extra);
      expectBreaks(q, () => q.attach(mem), RingLayoutError, code);
      expect(() => q.attach(mem)).toThrow(q.broken!);
    });
  }

  it('rejects a ring area that spans two regions, even adjacent ones', () => {
    const buf = new ArrayBuffer(2 * 65536);
    const mem = new GuestMemory([
      { gpa: 0, size: 65536, buffer: buf },
      { gpa: 65536, size: 65536, buffer: buf, bufferOffset: 65536 },
    ]);
    // Half of the descriptor table in each region.
    const q = new SplitQueue({ size: 256, desc: 65536 - descAreaSize(256) / 2, avail: 65536 + 4096, used: 65536 + 8192 });
    expectBreaks(q, () => q.attach(mem), RingLayoutError, 'VRING_RING_UNMAPPED');
  });

  it('rejects a ring that is aligned in the guest but not in the host mapping', () => {
    const buf = new ArrayBuffer(65536 + 2);
    const mem = new GuestMemory([{ gpa: 0, size: 65536, buffer: buf, bufferOffset: 2 }]);
    const q = new SplitQueue({ size: 16, desc: 0, avail: 256, used: 4096 });
    expectBreaks(q, () => q.attach(mem), RingLayoutError, 'VRING_MISALIGNED');
  });

  it('refuses to run before attach', () => {
    const q = new SplitQueue({ size: 16, desc: 0, avail: 256, used: 4096 });
    expect(() => q.pop()).toThrow(expect.objectContaining({ code: 'VRING_NOT_ATTACHED' }));
  });
});

describe('queue shape from front-end addresses (vhost-user SET_VRING_ADDR)', () => {
  // One region of RAM seen by the front-end at UADDR; a ring laid out at its start.
  const UADDR = 0x7f00_0000_0000;
  const mem = new GuestMemory([{ gpa: RAM_GPA, size: RAM_SIZE, buffer: new ArrayBuffer(RAM_SIZE), uaddr: UADDR }]);
  const L = splitRingLayout(256, RAM_GPA);
  const u = (gpa: number): number => UADDR + (gpa - RAM_GPA);
  const end = UADDR + RAM_SIZE;

  it('translates each area to guest physical', () => {
    expect(ringUaddrToGpa(mem, 256, { desc: u(L.desc), avail: u(L.avail), used: u(L.used) })).toEqual({ desc: L.desc, avail: L.avail, used: L.used });
  });

  const cases: [string, number, number, number, string][] = [
    ['descriptor table not 16-aligned', u(L.desc) + 8, u(L.avail), u(L.used), 'VRING_MISALIGNED'],
    ['available ring not 2-aligned', u(L.desc), u(L.avail) + 1, u(L.used), 'VRING_MISALIGNED'],
    ['used ring not 4-aligned', u(L.desc), u(L.avail), u(L.used) + 2, 'VRING_MISALIGNED'],
    // Each area is sized with its event field: one byte short of room is refused.
    ['descriptor table past the region', end - descAreaSize(256) + 16, u(L.avail), u(L.used), 'VRING_UNMAPPED'],
    ['used_event past the region', u(L.desc), end - availAreaSize(256) + 2, u(L.used), 'VRING_UNMAPPED'],
    ['avail_event past the region', u(L.desc), u(L.avail), end - usedAreaSize(256) + 2, 'VRING_UNMAPPED'],
    ['an address no region has', u(L.desc), u(L.avail), 0x1000, 'VRING_UNMAPPED'],
  ];
  for (const [name, desc, avail, used, code] of cases) {
    it(`rejects ${name}`, () => {
      expect(() => ringUaddrToGpa(mem, 256, { desc, avail, used })).toThrow(expect.objectContaining({ code }));
    });
  }

  it('accepts areas that end at the region end, event fields included', () => {
    const used = end - usedAreaSize(256) - 2; // the last 4-aligned place: 2 bytes to spare
    expect(ringUaddrToGpa(mem, 256, { desc: end - descAreaSize(256), avail: end - availAreaSize(256), used })).toEqual({
      desc: RAM_GPA + RAM_SIZE - descAreaSize(256),
      avail: RAM_GPA + RAM_SIZE - availAreaSize(256),
      used: RAM_GPA + RAM_SIZE - usedAreaSize(256) - 2,
    });
  });

  it('knows a queue size when it sees one', () => {
    expect([1, 2, 256, 32768].every(isQueueSize)).toBe(true);
    expect([0, -1, 12, 65536, 1.5, Number.NaN].some(isQueueSize)).toBe(false);
  });
});

describe('avail.idx', () => {
  it('rejects avail.idx more than size ahead of lastAvail (CVE-2020-10723 class)', () => {
    const r = makeRig({ size: 16 });
    expect(r.ring.jumpAvailIdx(17)).toBe(17);
    expectBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_AVAIL_IDX_JUMP');
  });

  it('accepts exactly size pending', () => {
    const r = makeRig({ size: 4 });
    const buf = r.alloc(64);
    for (let i = 0; i < 4; i++) r.ring.addChain([{ addr: buf, len: 8 }]);
    expect(r.q.availPending()).toBe(4);
  });
});

describe('descriptor walk', () => {
  it('rejects a head ≥ size', () => {
    const r = makeRig({ size: 16 });
    r.ring.offer(16);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_HEAD_OUT_OF_RANGE');
  });

  it('rejects a next ≥ size', () => {
    const r = makeRig({ size: 16 });
    expect(r.ring.readDesc(r.ring.addNextOutOfRange()).next).toBe(16);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_NEXT_OUT_OF_RANGE');
  });

  it('stops a loop with the TTL', () => {
    const r = makeRig({ size: 16 });
    r.ring.addDescLoop([0, 1]);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
  });

  it('stops a loop inside an indirect table with its entry-count TTL', () => {
    const r = makeRig({ size: 16 });
    r.ring.addIndirectLoop(2, { len: 16 });
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
  });

  it('caps the total chain length below 2^32 bytes (checked add)', () => {
    const r = makeRig({ size: 16 });
    r.ring.addChain([{ len: 16 }, { addr: r.alloc(16), len: 0xffff_fff8 }]);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_CHAIN_TOO_LONG');
  });

  it('rejects a zero-length buffer', () => {
    const r = makeRig({ size: 16 });
    r.ring.addChain([{ len: 16 }, { len: 0 }]);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_ZERO_LEN');
  });

  it('rejects a readable descriptor after a writable one', () => {
    const r = makeRig({ size: 16 });
    r.ring.addReadAfterWrite();
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_READ_AFTER_WRITE');
  });

  it('rejects a readable descriptor after a writable one inside an indirect table', () => {
    const r = makeRig({ size: 16 });
    r.ring.addReadAfterWrite({ indirect: true });
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_READ_AFTER_WRITE');
  });

  it('caps the piece count per chain', () => {
    const r = makeRig({ size: 16, maxPieces: 4 });
    const b = r.alloc(16);
    r.ring.addChain([1, 2, 3, 4, 5].map(() => ({ addr: b, len: 16 })));
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_TOO_MANY_PIECES');
  });
});

describe('indirect descriptors', () => {
  it('rejects INDIRECT when not negotiated', () => {
    const r = makeRig({ size: 16, indirect: false });
    r.ring.addIndirectChain([{ len: 16 }]);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NOT_NEGOTIATED');
  });

  it('rejects INDIRECT combined with NEXT', () => {
    const r = makeRig({ size: 16 });
    r.ring.addIndirectWithNext();
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_WITH_NEXT');
  });

  it('rejects a nested indirect table', () => {
    const r = makeRig({ size: 16 });
    r.ring.addNestedIndirect();
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NESTED');
  });

  it('rejects an indirect table of length 0', () => {
    const r = makeRig({ size: 16 });
    r.ring.addIndirectBadLength(0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_BAD_LEN');
  });

  it('rejects an indirect table length that is not a multiple of 16', () => {
    const r = makeRig({ size: 16 });
    r.ring.addIndirectBadLength(24);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_BAD_LEN');
  });

  it('rejects an indirect table that is not fully mapped', () => {
    const r = makeRig({ size: 16 });
    r.ring.addIndirectRef({ addr: RAM_GPA + RAM_SIZE - DESC_SIZE, len: 2 * DESC_SIZE });
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects INDIRECT on a descriptor that is not the head', () => {
    const r = makeRig({ size: 16 });
    r.ring.addIndirectNotHead();
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NOT_HEAD');
  });

  it('rejects an indirect next ≥ the entry count', () => {
    const r = makeRig({ size: 16 });
    const t = r.ring.writeTable(r.alloc(2 * DESC_SIZE), [
      { addr: r.alloc(16), len: 16, flags: N, next: 2 },
      { addr: r.alloc(16), len: 16 },
    ]);
    r.ring.addIndirectRef(t);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_NEXT_OUT_OF_RANGE');
  });
});

describe('buffers', () => {
  it('rejects a buffer outside guest memory', () => {
    const r = makeRig({ size: 16 });
    r.ring.addChain([{ addr: 0x1000, len: 16 }]);
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects a buffer that runs off the end of memory', () => {
    const r = makeRig({ size: 16 });
    r.ring.addChain([{ addr: RAM_GPA + RAM_SIZE - 8, len: 16, write: true }]);
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects an address ≥ 2^53 (high half of the u64) as unmapped', () => {
    const r = makeRig({ size: 16 });
    r.ring.addChain([{ addr: hugeAddr(RAM_GPA), len: 16 }]);
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects addr + len wrapping around 2^64', () => {
    const r = makeRig({ size: 16 });
    r.ring.addChain([{ addr: wrappingAddr(0x20), len: 0x20 }]);
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_ADDR_WRAP');
  });
});

describe('in flight', () => {
  it('rejects a head offered again while in flight', () => {
    const r = makeRig({ size: 16 });
    const h = r.ring.addChain([{ len: 16 }]);
    expect(r.q.pop()!.head).toBe(h);
    r.ring.offer(h);
    expectBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_HEAD_IN_FLIGHT');
  });

  it('never holds more than size chains in flight', () => {
    const r = makeRig({ size: 4 });
    const b = r.alloc(16);
    for (let i = 0; i < 4; i++) r.ring.addChain([{ addr: b, len: 16 }]);
    expect(r.q.popBurst(8, [])).toBe(4);
    expect(r.q.inFlight).toBe(4);
    r.ring.offer(2);
    expectBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_HEAD_IN_FLIGHT');
    expect(r.q.inFlight).toBe(4);
  });

  it('rejects completing a head twice', () => {
    const r = makeRig({ size: 16 });
    const h = r.ring.addChain([{ len: 16, write: true }]);
    r.q.pop();
    r.q.addUsed(h, 4);
    expectBreaks(r.q, () => r.q.addUsed(h, 4), RingStateError, 'VRING_NOT_IN_FLIGHT');
  });

  it('rejects completing a head that was never popped', () => {
    const r = makeRig({ size: 16 });
    expectBreaks(r.q, () => r.q.addUsed(3, 0), RingStateError, 'VRING_NOT_IN_FLIGHT');
  });

  it('rejects rewinding over a completed chain', () => {
    const r = makeRig({ size: 16 });
    const b = r.alloc(16);
    r.ring.addChain([{ addr: b, len: 16 }], { publish: false });
    r.ring.addChain([{ addr: b, len: 16 }], { publish: false });
    r.ring.publish();
    const a = r.q.pop()!.head;
    r.q.pop();
    r.q.addUsed(a, 0);
    expectBreaks(r.q, () => r.q.rewind(2), RingStateError, 'VRING_BAD_REWIND');
  });
});

describe('a broken queue never touches memory', () => {
  it('leaves guest memory byte-identical after breaking', () => {
    const r = makeRig({ size: 16, eventIdx: true });
    // A head out of range first, a valid chain behind it.
    r.ring.offer(99);
    r.ring.addChain([{ len: 16 }]);
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

describe('time-of-check/time-of-use: each descriptor is read once', () => {
  it('never yields a chain with a value the checks did not see, while another thread rewrites the table', async () => {
    const { Worker } = await import('node:worker_threads');
    const sab = new SharedArrayBuffer(1 << 16);
    const mem = new GuestMemory([{ gpa: 0, size: 1 << 16, buffer: sab }]);
    const ring = SplitRingBuilder.over(mem, { size: 4, desc: 0, avail: 0x100, used: 0x200 });
    const q = new SplitQueue(ring.config);
    q.attach(mem);
    // Descriptor 0: a 64-byte readable buffer at 0x1000; the flipper toggles its len between 64 and 0
    // and its addr (low half) between 0x1000 and an unmapped address.
    ring.writeDesc(0, { addr: 0x1000, len: 64 });
    const flipper = new Worker(
      `const { workerData } = require('node:worker_threads');
       const u32 = new Uint32Array(workerData.sab);
       const stop = new Int32Array(workerData.sab, 0x8000, 1);
       let i = 0;
       while (Atomics.load(stop, 0) === 0) {
         i++;
         Atomics.store(u32, workerData.lenWord, (i & 1) ? 0 : 64);
         Atomics.store(u32, workerData.addrWord, (i & 2) ? 0x1000 : 0x20000);
       }`,
      { eval: true, workerData: { sab, lenWord: (ring.descAddr(0) + DESC_LEN) / 4, addrWord: (ring.descAddr(0) + DESC_ADDR) / 4 } },
    );
    const stop = new Int32Array(sab, 0x8000, 1);
    let ok = 0;
    let rejected = 0;
    try {
      for (let n = 0; n < 20000; n++) {
        q.reset();
        ring.setUsedIdx(0);
        ring.setAvailEntry(0, 0);
        ring.setAvailIdx(1);
        q.setBase(0);
        try {
          const c = q.pop()!;
          expect(c.readableLen).toBe(64);
          expect(c.readable.count).toBe(1);
          expect(c.readable.offset[0]).toBe(0x1000);
          expect(c.readable.length[0]).toBe(64);
          ok++;
        } catch (e) {
          expect(['VRING_ZERO_LEN', 'VRING_UNMAPPED']).toContain((e as { code?: string }).code);
          rejected++;
        }
      }
    } finally {
      Atomics.store(stop, 0, 1);
      await flipper.terminate();
    }
    expect(ok + rejected).toBe(20000);
  });
});
