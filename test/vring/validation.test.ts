// One test per rule of DESIGN's "Untrusted input" checklist that vring/ enforces. Each builds the bad
// ring (with the driver side, or raw bytes where the driver would not), asserts the error class and
// code, and that the queue is broken and fails fast with the same error.

import { describe, expect, it } from 'vitest';
import {
  DescriptorError,
  GuestMemory,
  MemoryError,
  RingLayoutError,
  RingStateError,
  SplitQueue,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  splitRingLayout,
} from '../../vring/index.ts';
import { RAM_GPA, RAM_SIZE, expectBreaks, makeRig, offerHead, rawDesc } from './helpers.ts';

const N = VRING_DESC_F_NEXT;
const W = VRING_DESC_F_WRITE;
const I = VRING_DESC_F_INDIRECT;

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
    ['descriptor table outside memory', 256, RAM_GPA + RAM_SIZE - 16 * 255, L.avail, L.used, {}, 'VRING_RING_UNMAPPED'],
    // The available ring proper fits, its trailing used_event does not.
    ['used_event outside memory', 256, L.desc, RAM_GPA + RAM_SIZE - (4 + 2 * 256), L.used, {}, 'VRING_RING_UNMAPPED'],
    // The used ring proper fits, its trailing avail_event does not.
    ['avail_event outside memory', 256, L.desc, L.avail, RAM_GPA + RAM_SIZE - (4 + 8 * 256), {}, 'VRING_RING_UNMAPPED'],
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
    const q = new SplitQueue({ size: 256, desc: 65536 - 2048, avail: 65536 + 4096, used: 65536 + 8192 });
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

describe('avail.idx', () => {
  it('rejects avail.idx more than size ahead of lastAvail (CVE-2020-10723 class)', () => {
    const r = makeRig({ size: 16 });
    r.mem.writeU16(r.layout.avail + 2, 17);
    expectBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_AVAIL_IDX_JUMP');
  });

  it('accepts exactly size pending', () => {
    const r = makeRig({ size: 4 });
    const buf = r.alloc(64);
    for (let i = 0; i < 4; i++) r.d.add([{ addr: buf, len: 8 }], []);
    r.d.publish();
    expect(r.q.availPending()).toBe(4);
  });
});

describe('descriptor walk', () => {
  it('rejects a head ≥ size', () => {
    const r = makeRig({ size: 16 });
    offerHead(r, 16);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_HEAD_OUT_OF_RANGE');
  });

  it('rejects a next ≥ size', () => {
    const r = makeRig({ size: 16 });
    rawDesc(r.mem, r.layout.desc, 0, r.alloc(16), 16, N, 16);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_NEXT_OUT_OF_RANGE');
  });

  it('stops a loop with the TTL', () => {
    const r = makeRig({ size: 16 });
    const b = r.alloc(16);
    rawDesc(r.mem, r.layout.desc, 0, b, 16, N, 1);
    rawDesc(r.mem, r.layout.desc, 1, b, 16, N, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
  });

  it('stops a loop inside an indirect table with its entry-count TTL', () => {
    const r = makeRig({ size: 16 });
    const b = r.alloc(16);
    const t = r.alloc(32);
    rawDesc(r.mem, t, 0, b, 16, N, 1);
    rawDesc(r.mem, t, 1, b, 16, N, 0);
    rawDesc(r.mem, r.layout.desc, 0, t, 32, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_DESC_LOOP');
  });

  it('caps the total chain length below 2^32 bytes (checked add)', () => {
    const r = makeRig({ size: 16 });
    rawDesc(r.mem, r.layout.desc, 0, r.alloc(16), 16, N, 1);
    rawDesc(r.mem, r.layout.desc, 1, r.alloc(16), 0xffff_fff8, 0, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_CHAIN_TOO_LONG');
  });

  it('rejects a zero-length buffer', () => {
    const r = makeRig({ size: 16 });
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 16 }, { addr: b, len: 0 }], []);
    r.d.publish();
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_ZERO_LEN');
  });

  it('rejects a readable descriptor after a writable one', () => {
    const r = makeRig({ size: 16 });
    const b = r.alloc(16);
    rawDesc(r.mem, r.layout.desc, 0, b, 16, W | N, 1);
    rawDesc(r.mem, r.layout.desc, 1, b, 16, 0, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_READ_AFTER_WRITE');
  });

  it('rejects a readable descriptor after a writable one inside an indirect table', () => {
    const r = makeRig({ size: 16 });
    const b = r.alloc(16);
    const t = r.alloc(32);
    rawDesc(r.mem, t, 0, b, 16, W | N, 1);
    rawDesc(r.mem, t, 1, b, 16, 0, 0);
    rawDesc(r.mem, r.layout.desc, 0, t, 32, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_READ_AFTER_WRITE');
  });

  it('caps the piece count per chain', () => {
    const r = makeRig({ size: 16, maxPieces: 4 });
    const b = r.alloc(16);
    r.d.add([1, 2, 3, 4, 5].map(() => ({ addr: b, len: 16 })), []);
    r.d.publish();
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_TOO_MANY_PIECES');
  });
});

describe('indirect descriptors', () => {
  it('rejects INDIRECT when not negotiated', () => {
    const r = makeRig({ size: 16, indirect: false });
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 16 }], [], { indirectAt: r.alloc(16) });
    r.d.publish();
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NOT_NEGOTIATED');
  });

  it('rejects INDIRECT combined with NEXT', () => {
    const r = makeRig({ size: 16 });
    const t = r.alloc(16);
    rawDesc(r.mem, t, 0, r.alloc(16), 16, 0, 0);
    rawDesc(r.mem, r.layout.desc, 0, t, 16, I | N, 1);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_WITH_NEXT');
  });

  it('rejects a nested indirect table', () => {
    const r = makeRig({ size: 16 });
    const inner = r.alloc(16);
    const t = r.alloc(16);
    rawDesc(r.mem, inner, 0, r.alloc(16), 16, 0, 0);
    rawDesc(r.mem, t, 0, inner, 16, I, 0);
    rawDesc(r.mem, r.layout.desc, 0, t, 16, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NESTED');
  });

  it('rejects an indirect table of length 0', () => {
    const r = makeRig({ size: 16 });
    rawDesc(r.mem, r.layout.desc, 0, r.alloc(16), 0, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_BAD_LEN');
  });

  it('rejects an indirect table length that is not a multiple of 16', () => {
    const r = makeRig({ size: 16 });
    rawDesc(r.mem, r.layout.desc, 0, r.alloc(32), 24, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_BAD_LEN');
  });

  it('rejects an indirect table that is not fully mapped', () => {
    const r = makeRig({ size: 16 });
    rawDesc(r.mem, r.layout.desc, 0, RAM_GPA + RAM_SIZE - 16, 32, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects INDIRECT on a descriptor that is not the head', () => {
    const r = makeRig({ size: 16 });
    const t = r.alloc(16);
    rawDesc(r.mem, t, 0, r.alloc(16), 16, 0, 0);
    rawDesc(r.mem, r.layout.desc, 0, r.alloc(16), 16, N, 1);
    rawDesc(r.mem, r.layout.desc, 1, t, 16, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_INDIRECT_NOT_HEAD');
  });

  it('rejects an indirect next ≥ the entry count', () => {
    const r = makeRig({ size: 16 });
    const t = r.alloc(32);
    rawDesc(r.mem, t, 0, r.alloc(16), 16, N, 2);
    rawDesc(r.mem, r.layout.desc, 0, t, 32, I, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), DescriptorError, 'VRING_NEXT_OUT_OF_RANGE');
  });
});

describe('buffers', () => {
  it('rejects a buffer outside guest memory', () => {
    const r = makeRig({ size: 16 });
    r.d.add([{ addr: 0x1000, len: 16 }], []);
    r.d.publish();
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects a buffer that runs off the end of memory', () => {
    const r = makeRig({ size: 16 });
    r.d.add([], [{ addr: RAM_GPA + RAM_SIZE - 8, len: 16 }]);
    r.d.publish();
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects an address ≥ 2^53 (high half of the u64) as unmapped', () => {
    const r = makeRig({ size: 16 });
    rawDesc(r.mem, r.layout.desc, 0, [RAM_GPA, 0x0020_0000], 16, 0, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_UNMAPPED');
  });

  it('rejects addr + len wrapping around 2^64', () => {
    const r = makeRig({ size: 16 });
    rawDesc(r.mem, r.layout.desc, 0, [0xffff_fff0, 0xffff_ffff], 0x20, 0, 0);
    offerHead(r, 0);
    expectBreaks(r.q, () => r.q.pop(), MemoryError, 'VRING_ADDR_WRAP');
  });
});

describe('in flight', () => {
  it('rejects a head offered again while in flight', () => {
    const r = makeRig({ size: 16 });
    const h = r.d.add([{ addr: r.alloc(16), len: 16 }], []);
    r.d.publish();
    expect(r.q.pop()!.head).toBe(h);
    offerHead(r, h);
    expectBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_HEAD_IN_FLIGHT');
  });

  it('never holds more than size chains in flight', () => {
    const r = makeRig({ size: 4 });
    const b = r.alloc(16);
    for (let i = 0; i < 4; i++) r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    expect(r.q.popBurst(8, [])).toBe(4);
    expect(r.q.inFlight).toBe(4);
    offerHead(r, 2);
    expectBreaks(r.q, () => r.q.pop(), RingStateError, 'VRING_HEAD_IN_FLIGHT');
    expect(r.q.inFlight).toBe(4);
  });

  it('rejects completing a head twice', () => {
    const r = makeRig({ size: 16 });
    const h = r.d.add([], [{ addr: r.alloc(16), len: 16 }]);
    r.d.publish();
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
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    const a = r.q.pop()!.head;
    r.q.pop();
    r.q.addUsed(a, 0);
    expectBreaks(r.q, () => r.q.rewind(2), RingStateError, 'VRING_BAD_REWIND');
  });
});

describe('a broken queue never touches memory', () => {
  it('leaves guest memory byte-identical after breaking', () => {
    const r = makeRig({ size: 16, eventIdx: true });
    const b = r.alloc(16);
    r.d.add([{ addr: b, len: 16 }], []);
    r.d.publish();
    offerHead(r, 99);
    r.mem.writeU16(r.layout.avail + 2, r.q.lastAvail + 1);
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
    const q = new SplitQueue({ size: 4, desc: 0, avail: 0x100, used: 0x200 });
    q.attach(mem);
    // Descriptor 0: a 64-byte readable buffer at 0x1000; the flipper toggles its len between 64 and 0
    // and its addr between 0x1000 and an unmapped address.
    rawDesc(mem, 0, 0, 0x1000, 64, 0, 0);
    const flipper = new Worker(
      `const { workerData } = require('node:worker_threads');
       const u32 = new Uint32Array(workerData.sab, 0, 4);
       const stop = new Int32Array(workerData.sab, 0x8000, 1);
       let i = 0;
       while (Atomics.load(stop, 0) === 0) {
         i++;
         Atomics.store(u32, 2, (i & 1) ? 0 : 64);
         Atomics.store(u32, 0, (i & 2) ? 0x1000 : 0x20000);
       }`,
      { eval: true, workerData: { sab } },
    );
    const stop = new Int32Array(sab, 0x8000, 1);
    let ok = 0;
    let rejected = 0;
    try {
      const u16 = new Uint16Array(sab);
      for (let n = 0; n < 20000; n++) {
        q.reset();
        u16[0x200 / 2 + 1] = 0;
        u16[0x100 / 2 + 2] = 0; // avail.ring[0] = head 0
        u16[0x100 / 2 + 1] = 1; // avail.idx = 1
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
