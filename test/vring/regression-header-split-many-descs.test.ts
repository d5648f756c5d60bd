// Regression: a header split over many descriptors (CVE-2022-2132: a virtio_net_hdr spread over tiny
// descriptors overflowed a fixed header copy in DPDK vhost). locate() must assemble a header from any
// number of pieces into its bounded scratch, refuse ranges larger than the scratch, and report a chain
// shorter than the header instead of reading past it.

import { describe, expect, it } from 'vitest';
import { LOCATE_MAX } from '../../vring/index.ts';
import { makeRig } from './helpers.ts';

describe('regression-header-split-many-descs', () => {
  it('assembles a 12-byte header from 12 one-byte descriptors', () => {
    const r = makeRig({ size: 64 });
    const bytes = Array.from({ length: 12 }, (_, i) => ({ data: Uint8Array.of(0x10 + i) }));
    r.ring.addChain([...bytes, { len: 64 }]);
    const c = r.q.pop()!;
    expect(c.readable.count).toBe(13);
    expect(c.locate(0, 12)).toBe(true);
    expect(Array.from(c.u8.subarray(c.pos, c.pos + 12))).toEqual(Array.from({ length: 12 }, (_, i) => 0x10 + i));
    expect(c.dv.getUint16(c.pos + 10, true)).toBe(0x1b1a);
  });

  it('assembles a header from a maximal indirect table of one-byte buffers', () => {
    const r = makeRig({ size: 8, maxPieces: 4096 });
    r.ring.addIndirectChain(Array.from({ length: 4096 }, (_, i) => ({ data: Uint8Array.of(i & 0xff) })));
    const c = r.q.pop()!;
    expect(c.indirect).toBe(true);
    expect(c.readableLen).toBe(4096);
    expect(c.readable.count).toBe(4096);
    expect(c.locate(4096 - LOCATE_MAX, LOCATE_MAX)).toBe(true);
    expect(c.u8[c.pos + LOCATE_MAX - 1]).toBe(0xff);
    expect(() => c.locate(0, LOCATE_MAX + 1)).toThrow(RangeError);
  });

  it('reports a chain shorter than the header', () => {
    const r = makeRig();
    r.ring.addChain(Array.from({ length: 5 }, () => ({ len: 2 })));
    const c = r.q.pop()!;
    expect(c.readableLen).toBe(10);
    expect(c.locate(0, 12)).toBe(false);
    expect(c.readBytes(0, new Uint8Array(12), 0, 12)).toBe(false);
  });

  it('caps the number of pieces a chain may have', () => {
    const r = makeRig({ size: 8, maxPieces: 1024 });
    r.ring.addIndirectChain(Array.from({ length: 1025 }, () => ({ len: 1 })));
    expect(() => r.q.pop()).toThrow(expect.objectContaining({ code: 'VRING_TOO_MANY_PIECES' }));
  });
});
