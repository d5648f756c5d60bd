/**
 * vhost-user wire codecs: round trips of every payload shape, the name table, and every malformed
 * case a decoder must refuse with its typed error. Pure: no sockets.
 */
import { describe, expect, it } from 'vitest';
import { VhostUserError, VU } from '../../sandbox/vhost-user/errors.ts';
import { checkOverlaps, validateRegion } from '../../sandbox/vhost-user/mem-table.ts';
import {
  addrOf, checkPayloadSize, CONFIG_MAX_SIZE, decodeConfig, decodeHeader, decodeInflight, decodeLog, decodeMemTable,
  decodeSingleMemRegion, decodeU64, decodeVringAddr, decodeVringFile, decodeVringState, encodeConfig, encodeHeader,
  encodeInflight, encodeLog, encodeMemTable, encodeMessage, encodeSingleMemRegion, encodeU64, encodeVringAddr,
  encodeVringFile, encodeVringState, FLAGS, HEADER_SIZE, INFLIGHT_FIELDS_SIZE, INFLIGHT_SIZE, MAX_PAYLOAD, PAYLOAD_SIZE,
  PROTOCOL_F, protocolMask, protocolNames, REQ, requestName, VHOST_MEMORY_BASELINE_NREGIONS,
} from '../../sandbox/vhost-user/messages.ts';

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(VhostUserError);
    return (e as VhostUserError).code;
  }
  return undefined;
}

describe('vhost-user messages: header', () => {
  it('is exactly 12 bytes, little-endian request/flags/size', () => {
    const b = encodeHeader({ request: REQ.SET_MEM_TABLE, flags: FLAGS.VERSION | FLAGS.NEED_REPLY, size: 264 });
    expect(b.length).toBe(HEADER_SIZE);
    expect([...b]).toEqual([5, 0, 0, 0, 9, 0, 0, 0, 8, 1, 0, 0]);
    expect(decodeHeader(b)).toEqual({ request: 5, flags: 9, size: 264 });
    const m = encodeMessage(REQ.SET_FEATURES, FLAGS.VERSION, encodeU64(7n));
    expect(m.length).toBe(20);
    expect(decodeHeader(m.subarray(0, 12)).size).toBe(8);
  });

  it('refuses 11 or 13 header bytes', () => {
    expect(code(() => decodeHeader(new Uint8Array(11)))).toBe(VU.SHORT_HEADER);
    expect(code(() => decodeHeader(new Uint8Array(13)))).toBe(VU.SHORT_HEADER);
  });
});

describe('vhost-user messages: names and sizes', () => {
  it('names every request, and unknown numbers', () => {
    for (const [name, n] of Object.entries(REQ)) expect(requestName(n)).toBe(name);
    expect(requestName(0)).toBe('UNKNOWN(0)');
    expect(requestName(999)).toBe('UNKNOWN(999)');
    expect(protocolNames(protocolMask('MQ', 'STATUS') | (1n << 40n))).toEqual(['MQ', 'STATUS', 'bit40']);
    expect(PROTOCOL_F.CONFIGURE_MEM_SLOTS).toBe(15);
  });

  it('checks the payload size of every fixed-size request', () => {
    for (const [req, rule] of Object.entries(PAYLOAD_SIZE)) {
      if (typeof rule !== 'number') continue;
      expect(() => checkPayloadSize(Number(req), rule)).not.toThrow();
      expect(code(() => checkPayloadSize(Number(req), rule + 1))).toBe(VU.BAD_SIZE);
      if (rule > 0) expect(code(() => checkPayloadSize(Number(req), rule - 1))).toBe(VU.BAD_SIZE);
    }
    expect(() => checkPayloadSize(999, 12345)).not.toThrow(); // unknown: refused elsewhere
  });

  it('checks the sizes of variable payloads', () => {
    expect(() => checkPayloadSize(REQ.SET_MEM_TABLE, 8 + 32 * 8)).not.toThrow();
    expect(code(() => checkPayloadSize(REQ.SET_MEM_TABLE, 8 + 32 * 9))).toBe(VU.BAD_SIZE);
    expect(code(() => checkPayloadSize(REQ.SET_MEM_TABLE, 8 + 33))).toBe(VU.BAD_SIZE);
    expect(code(() => checkPayloadSize(REQ.SET_MEM_TABLE, 4))).toBe(VU.BAD_SIZE);
    expect(() => checkPayloadSize(REQ.GET_CONFIG, MAX_PAYLOAD)).not.toThrow();
    expect(code(() => checkPayloadSize(REQ.GET_CONFIG, MAX_PAYLOAD + 1))).toBe(VU.BAD_SIZE);
    expect(code(() => checkPayloadSize(REQ.SET_CONFIG, 11))).toBe(VU.BAD_SIZE);
    expect(() => checkPayloadSize(REQ.GET_INFLIGHT_FD, INFLIGHT_SIZE)).not.toThrow();
    expect(() => checkPayloadSize(REQ.GET_INFLIGHT_FD, INFLIGHT_FIELDS_SIZE)).not.toThrow();
    expect(code(() => checkPayloadSize(REQ.SET_INFLIGHT_FD, 16))).toBe(VU.BAD_SIZE);
  });
});

describe('vhost-user messages: payload codecs', () => {
  it('u64 and vring state round trip; wrong lengths are refused', () => {
    expect(decodeU64(encodeU64(0xfedc_ba98_7654_3210n))).toBe(0xfedc_ba98_7654_3210n);
    expect(decodeVringState(encodeVringState({ index: 3, num: 0xffff }))).toEqual({ index: 3, num: 0xffff });
    expect(code(() => decodeU64(new Uint8Array(7)))).toBe(VU.BAD_SIZE);
    expect(code(() => decodeVringState(new Uint8Array(9)))).toBe(VU.BAD_SIZE);
  });

  it('vring addresses: desc, used, avail, log in that order', () => {
    const b = encodeVringAddr({ index: 1, flags: 1, desc: 0x7f00_0000_1000, used: 0x7f00_0000_3000, avail: 0x7f00_0000_2000, log: 5 });
    expect(new DataView(b.buffer).getBigUint64(16, true)).toBe(0x7f00_0000_3000n); // used comes before avail
    expect(decodeVringAddr(b)).toEqual({ index: 1, flags: 1, desc: 0x7f00_0000_1000n, used: 0x7f00_0000_3000n, avail: 0x7f00_0000_2000n, log: 5n });
    expect(code(() => decodeVringAddr(new Uint8Array(39)))).toBe(VU.BAD_SIZE);
  });

  it('vring files: index in bits 0-7, NOFD in bit 8', () => {
    expect(decodeVringFile(encodeVringFile(5, false))).toEqual({ index: 5, noFd: false });
    expect(decodeVringFile(encodeVringFile(255, true))).toEqual({ index: 255, noFd: true });
    expect(decodeVringFile(encodeU64(0x1_0203n))).toEqual({ index: 3, noFd: false });
  });

  it('memory tables: 8 + 32·n bytes, at most 8 regions', () => {
    const regions = [
      { gpa: 0n, size: 0xa0000n, uaddr: 0x7f12_0000_0000n, mmapOffset: 0n },
      { gpa: 0xc0000n, size: 0xff40000n, uaddr: 0x7f12_000c_0000n, mmapOffset: 0xc0000n },
    ];
    const b = encodeMemTable(regions);
    expect(b.length).toBe(8 + 64);
    expect(decodeMemTable(b)).toEqual(regions);
    expect(decodeMemTable(encodeMemTable([]))).toEqual([]);
    const nine = encodeMemTable(Array.from({ length: 8 }, () => regions[0]!));
    nine[0] = VHOST_MEMORY_BASELINE_NREGIONS + 1;
    expect(code(() => decodeMemTable(nine))).toBe(VU.MEM_TOO_MANY_REGIONS);
    const lying = encodeMemTable(regions);
    lying[0] = 3;
    expect(code(() => decodeMemTable(lying))).toBe(VU.BAD_SIZE);
    expect(code(() => decodeMemTable(new Uint8Array(4)))).toBe(VU.BAD_SIZE);
  });

  it('single regions: 8 bytes of padding, then the region', () => {
    const r = { gpa: 0x1000n, size: 0x2000n, uaddr: 0x3000n, mmapOffset: 0x4000n };
    const b = encodeSingleMemRegion(r);
    expect(b.length).toBe(40);
    expect([...b.subarray(0, 8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(decodeSingleMemRegion(b)).toEqual(r);
    expect(code(() => decodeSingleMemRegion(new Uint8Array(32)))).toBe(VU.BAD_SIZE);
  });

  it('config: offset, size, flags, then exactly size bytes ≤ 256', () => {
    const data = new Uint8Array([1, 2, 3, 4, 5, 6]);
    const b = encodeConfig({ offset: 0, flags: 1, data });
    expect(decodeConfig(b)).toEqual({ offset: 0, size: 6, flags: 1, data });
    expect(decodeConfig(encodeConfig({ offset: 4, size: 2 })).data).toEqual(new Uint8Array(2));
    const big = encodeConfig({ offset: 0, size: 8 });
    new DataView(big.buffer).setUint32(4, CONFIG_MAX_SIZE + 1, true);
    expect(code(() => decodeConfig(big))).toBe(VU.CONFIG_RANGE);
    const short = encodeConfig({ offset: 0, size: 8 }).subarray(0, 12 + 7);
    expect(code(() => decodeConfig(short))).toBe(VU.BAD_SIZE);
    expect(code(() => decodeConfig(new Uint8Array(11)))).toBe(VU.BAD_SIZE);
  });

  it('inflight (24 bytes on the wire, 20 accepted) and log descriptions', () => {
    const p = { mmapSize: 8192n, mmapOffset: 0n, numQueues: 2, queueSize: 256 };
    expect(decodeInflight(encodeInflight(p))).toEqual(p);
    expect(encodeInflight(p).length).toBe(24);
    expect(decodeInflight(encodeInflight(p, 20))).toEqual(p);
    expect(code(() => decodeInflight(new Uint8Array(16)))).toBe(VU.BAD_SIZE);
    expect(decodeLog(encodeLog({ mmapSize: 4096n, mmapOffset: 8n }))).toEqual({ mmapSize: 4096n, mmapOffset: 8n });
    expect(code(() => decodeLog(new Uint8Array(8)))).toBe(VU.BAD_SIZE);
  });

  it('addresses beyond 2^53 are refused rather than rounded', () => {
    expect(addrOf(2n ** 53n - 1n, 'x')).toBe(Number.MAX_SAFE_INTEGER);
    expect(code(() => addrOf(2n ** 53n, 'x'))).toBe(VU.MEM_OVERFLOW);
  });
});

describe('vhost-user memory table rules', () => {
  const ok = { gpa: 0x1000n, size: 0x1000n, uaddr: 0x7f00_0000_0000n, mmapOffset: 0n };

  it('accepts a sane region', () => {
    expect(validateRegion(ok, 'r')).toEqual({ gpa: 0x1000, size: 0x1000, uaddr: 0x7f00_0000_0000, mmapOffset: 0 });
  });

  it('refuses zero sizes, overflow in gpa/uaddr/mmap_offset + size, unaligned offsets', () => {
    expect(code(() => validateRegion({ ...ok, size: 0n }, 'r'))).toBe(VU.MEM_ZERO_SIZE);
    expect(code(() => validateRegion({ ...ok, gpa: 2n ** 64n - 0x1000n }, 'r'))).toBe(VU.MEM_OVERFLOW);
    expect(code(() => validateRegion({ ...ok, uaddr: 2n ** 53n - 0x800n }, 'r'))).toBe(VU.MEM_OVERFLOW);
    expect(code(() => validateRegion({ ...ok, mmapOffset: 2n ** 63n }, 'r'))).toBe(VU.MEM_OVERFLOW);
    expect(code(() => validateRegion({ ...ok, size: 2n ** 64n - 1n }, 'r'))).toBe(VU.MEM_OVERFLOW);
    expect(code(() => validateRegion({ ...ok, mmapOffset: 0x800n }, 'r'))).toBe(VU.MEM_UNALIGNED);
  });

  it('refuses overlaps in guest physical and in user addresses; touching is fine', () => {
    const a = { gpa: 0, size: 0x2000, uaddr: 0x10000, mmapOffset: 0 };
    expect(() => checkOverlaps([a, { gpa: 0x2000, size: 0x1000, uaddr: 0x12000, mmapOffset: 0 }])).not.toThrow();
    expect(code(() => checkOverlaps([a, { gpa: 0x1fff, size: 0x1000, uaddr: 0x20000, mmapOffset: 0 }]))).toBe(VU.MEM_OVERLAP);
    expect(code(() => checkOverlaps([a, { gpa: 0x8000, size: 0x1000, uaddr: 0x11000, mmapOffset: 0 }]))).toBe(VU.MEM_OVERLAP);
  });
});
