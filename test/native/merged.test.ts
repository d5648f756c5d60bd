/**
 * readvMerged (MRG_RXBUF receive, one native call per burst) against the real kernel: a tap with a
 * 12-byte virtio_net_hdr inside a fresh network namespace, fed by an AF_PACKET socket on the same
 * interface, reading into a memfd mapping cut into guest-like buffers.
 *
 *   AF_PACKET socket ──▶ [tap in ns] ──▶ tap fd ──readvMerged──▶ buffers b0 b1 b2 … (each 1..n iovecs)
 *
 * Every test fills the buffers with a marker byte first, so it can tell what the kernel wrote and
 * what it did not touch.
 *
 * uringReadvMerged, the same contract through a restricted io_uring (rounds of READVs, frames copied
 * down behind each other, the whole RX filter applied natively), on the same tap; and the native
 * filter held against RxFilter.accept on generated filters and frames.
 */
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  close,
  fdWrite,
  IovecTable,
  mappingBuffer,
  memfdCreate,
  MERGED_STOP,
  mmap,
  munmap,
  PeekList,
  poll,
  readvMerged,
  RxFilterSpec,
  rxFilterAccepts,
  tapSetVnetHdrSize,
  uringClose,
  uringCreate,
  uringReadvMerged,
  uringRxStash,
} from '../../native/index.ts';
import { RxFilter } from '../../device/rx-filter.ts';
import { binding } from '../../native/load.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, openPacketIn, openTapIn, type Netns } from '../../harness/netns.ts';
import { nativeErrorOf } from '../helpers/errors.ts';
import { PAGE, shrunkMemory } from '../helpers/shrunk.ts';

const pre = netnsPrerequisites();
if (!pre.ok) console.warn(`readvMerged tests skipped: ${pre.why}`);

const HDR = 12;
const ETHERTYPE = 0x88b5; // IEEE local experimental
const REGION = 4 << 20;
const MARK = 0xa5;
/** The largest frame of a 1500-byte MTU, with the header: what MRG_RXBUF offers each readv. */
const NEED = HDR + 1514;
const DST_A = [0x02, 0, 0, 0, 0, 0x0a];
const DST_B = [0x02, 0, 0, 0, 0, 0x0b];

let ns: Netns;
let memfd: number;
let region: number;
let mem: Uint8Array;

beforeAll(() => {
  if (!pre.ok) return;
  memfd = memfdCreate('lgnet-merged-test', REGION);
  region = mmap(memfd, 0, REGION);
  mem = new Uint8Array(mappingBuffer(region));
});
afterEach(() => {
  destroyAllNetns();
});
afterAll(() => {
  destroyAllNetns();
  if (pre.ok) {
    munmap(region);
    close(memfd);
  }
});

function frame(len: number, seq: number, dst = DST_A, tagged = false): Uint8Array {
  const f = new Uint8Array(len);
  f.set([...dst, 0x02, 0, 0, 0, 0, 0x01], 0);
  if (tagged) f.set([0x81, 0x00, 0x00, 0x05], 12);
  const et = tagged ? 16 : 12;
  f[et] = ETHERTYPE >> 8;
  f[et + 1] = ETHERTYPE & 0xff;
  for (let i = et + 2; i < len; i++) f[i] = (seq * 31 + i) & 0xff;
  return f;
}

function setupTap(): { tap: number; pkt: number } {
  ns = createNetns();
  const t = openTapIn(ns, { vnetHdr: true, nonblocking: true, address: false });
  tapSetVnetHdrSize(t.fd, HDR);
  return { tap: t.fd, pkt: openPacketIn(ns, t.name) };
}

/** Sends frames into the tap and waits until the tap has something to read. */
function send(s: { tap: number; pkt: number }, frames: Uint8Array[]): void {
  for (const f of frames) expect(fdWrite(s.pkt, f)).toBe(f.length);
  expect(poll([s.tap], 2000)).toBe(1);
}

/**
 * `count` buffers of `size` bytes, 4 KiB apart from offset 0, each cut into two iovecs (the first
 * `split` bytes, then the rest) so frames also cross iovecs inside a buffer. Marked with MARK.
 */
function buffers(count: number, size: number, split = 100): IovecTable {
  const t = new IovecTable(2 * count + 64, count + 32);
  for (let b = 0; b < count; b++) {
    const at = b * 4096;
    mem.fill(MARK, at, at + 4096);
    t.push(region, at, split);
    t.push(region, at + split, size - split);
    t.endFrame();
  }
  return t;
}

/** The bytes of buffers first … first+n−1 read as one stream, `len` of them. */
function stream(first: number, n: number, size: number, len: number): Uint8Array {
  const out = new Uint8Array(n * size);
  for (let b = 0; b < n; b++) out.set(mem.subarray((first + b) * 4096, (first + b) * 4096 + size), b * size);
  return out.subarray(0, len);
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a).equals(Buffer.from(b));
}

describe.runIf(pre.ok)('readvMerged on a tap', () => {
  it('frames spanning several buffers: each starts in the buffer after the last one the previous took', () => {
    const s = setupTap();
    const t = buffers(16, 512);
    const sizes = [1514, 64, 700, 1000];
    const sent = sizes.map((len, i) => frame(len, i));
    send(s, sent);
    const got = readvMerged(s.tap, t, 0, 16, 32, NEED, NEED);
    expect(got).toBe(4);
    expect(t.status).toBe(MERGED_STOP.EMPTY); // the 5th readv hit EAGAIN
    // 1526 bytes need 3 buffers of 512, 76 one, 712 and 1012 two each.
    expect(Array.from(t.used.subarray(0, 4))).toEqual([3, 1, 2, 2]);
    let first = 0;
    for (let i = 0; i < 4; i++) {
      expect(t.bytes[i]).toBe(HDR + sizes[i]!);
      const bytes = stream(first, t.used[i]!, 512, HDR + sizes[i]!);
      expect(bytes[1]).toBe(0); // gso_type NONE
      expect(same(bytes.subarray(HDR), sent[i]!)).toBe(true);
      // The rest of the frame's last buffer is untouched.
      const end = (HDR + sizes[i]!) - (t.used[i]! - 1) * 512;
      const last = (first + t.used[i]! - 1) * 4096;
      expect(mem.subarray(last + end, last + 512).every((x) => x === MARK)).toBe(true);
      first += t.used[i]!;
    }
    // Buffers no frame took: not written (the failed 5th readv wrote nothing).
    for (let b = first; b < 16; b++) expect(mem.subarray(b * 4096, b * 4096 + 512).every((x) => x === MARK)).toBe(true);
  });

  it('first/buffers: the call starts at the buffer it is told', () => {
    const s = setupTap();
    const t = buffers(6, 2048);
    send(s, [frame(300, 1)]);
    expect(readvMerged(s.tap, t, 4, 2, 8, NEED, NEED)).toBe(1);
    expect(t.used[0]).toBe(1);
    expect(same(mem.subarray(4 * 4096 + HDR, 4 * 4096 + HDR + 300), frame(300, 1))).toBe(true);
    expect(mem.subarray(0, 4 * 4096).every((x) => x === MARK)).toBe(true);
  });

  it('a frame longer than maxLen is reported with used 0 and the next frame lands in the same buffers', () => {
    const s = setupTap();
    const t = buffers(4, 2048);
    const big = frame(1514, 1);
    const small = frame(64, 2);
    send(s, [big, small]);
    expect(readvMerged(s.tap, t, 0, 4, 8, NEED, 1000)).toBe(2);
    expect([t.bytes[0], t.used[0]]).toEqual([HDR + 1514, 0]);
    expect([t.bytes[1], t.used[1]]).toEqual([HDR + 64, 1]);
    expect(same(mem.subarray(HDR, HDR + 64), small)).toBe(true);
    // The big frame's bytes past the small one are still there: the caller logs them as written.
    expect(same(mem.subarray(HDR + 64, HDR + 200), big.subarray(64, 200))).toBe(true);
  });

  it('a frame too big for the buffers offered is truncated by the kernel inside them, never past them', () => {
    const s = setupTap();
    const t = buffers(4, 512);
    send(s, [frame(1514, 3), frame(100, 4)]);
    // need 600: each readv gets two buffers (1024 bytes); the 1526-byte frame does not fit.
    expect(readvMerged(s.tap, t, 0, 4, 8, 600, 65_536)).toBe(2);
    // The kernel reports what it copied: the window and the spill byte behind it, so never "exactly full".
    expect([t.bytes[0], t.used[0]]).toEqual([1024 + 1, 0]);
    // What it copied into buffer 1 (frame bytes 600 … 1011 in its second iovec) is still there.
    expect(same(mem.subarray(4096 + 100, 4096 + 512), frame(1514, 3).subarray(512 - HDR + 100, 1024 - HDR))).toBe(true);
    expect([t.bytes[1], t.used[1]]).toEqual([HDR + 100, 1]);
    // Buffers 2 and 3 were never offered to a readv.
    expect(mem.subarray(2 * 4096, 2 * 4096 + 512).every((x) => x === MARK)).toBe(true);
    expect(mem.subarray(3 * 4096, 3 * 4096 + 512).every((x) => x === MARK)).toBe(true);
  });

  it('running out of buffers mid-burst stops before a read (NO_ROOM); the frames wait in the kernel', () => {
    const s = setupTap();
    const t = buffers(4, 2048);
    const sent = [0, 1, 2, 3, 4, 5].map((i) => frame(200 + i, 10 + i));
    send(s, sent);
    expect(readvMerged(s.tap, t, 0, 4, 32, NEED, NEED)).toBe(4);
    expect(t.status).toBe(MERGED_STOP.NO_ROOM);
    // The same buffers again (the guest reposted them): the two frames left, then EAGAIN.
    expect(readvMerged(s.tap, t, 0, 4, 32, NEED, NEED)).toBe(2);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    expect(same(mem.subarray(4096 + HDR, 4096 + HDR + 205), sent[5]!)).toBe(true);
    // Room left below `need` from the start: nothing is read.
    send(s, [frame(60, 20)]);
    const small = buffers(2, 512);
    expect(readvMerged(s.tap, small, 0, 2, 8, NEED, NEED)).toBe(0);
    expect(small.status).toBe(MERGED_STOP.NO_ROOM);
    expect(readvMerged(s.tap, t, 0, 4, 8, NEED, NEED)).toBe(1); // still there
  });

  it('`frames` bounds the call (FRAMES)', () => {
    const s = setupTap();
    const t = buffers(8, 2048);
    send(s, [frame(100, 1), frame(100, 2), frame(100, 3)]);
    expect(readvMerged(s.tap, t, 0, 8, 2, NEED, NEED)).toBe(2);
    expect(t.status).toBe(MERGED_STOP.FRAMES);
    expect(readvMerged(s.tap, t, 2, 6, 8, NEED, NEED)).toBe(1);
  });

  it('zero frames available: EAGAIN is no error, 0 frames and EMPTY; frames 0 or buffers 0 read nothing', () => {
    const s = setupTap();
    const t = buffers(4, 2048);
    expect(readvMerged(s.tap, t, 0, 4, 8, NEED, NEED)).toBe(0);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    send(s, [frame(100, 1)]);
    expect(readvMerged(s.tap, t, 0, 4, 0, NEED, NEED)).toBe(0);
    expect(t.status).toBe(MERGED_STOP.FRAMES);
    expect(readvMerged(s.tap, t, 0, 0, 8, NEED, NEED)).toBe(0);
    expect(t.status).toBe(MERGED_STOP.NO_ROOM);
    expect(readvMerged(s.tap, t, 0, 4, 8, NEED, NEED)).toBe(1); // the frame was left alone
  });

  it('a window of more than IOV_MAX pieces stops the call before a read (PIECES)', () => {
    const s = setupTap();
    const t = new IovecTable(1200, 1200);
    for (let b = 0; b < 1100; b++) {
      t.push(region, b, 1);
      t.endFrame();
    }
    send(s, [frame(100, 1)]);
    expect(readvMerged(s.tap, t, 0, 1100, 8, 1050, 1050)).toBe(0);
    expect(t.status).toBe(MERGED_STOP.PIECES);
    expect(readvMerged(s.tap, t, 0, 1100, 8, 1000, 1000)).toBe(1); // 1000 one-byte buffers: fine
    expect(t.used[0]).toBe(HDR + 100);
  });

  it('with a peek list, the first frame it does not vouch for ends the call as its last frame', () => {
    const s = setupTap();
    const t = buffers(8, 2048);
    send(s, [frame(100, 1, DST_A), frame(100, 2, DST_A), frame(100, 3, DST_B), frame(100, 4, DST_A)]);
    const peek = new PeekList();
    peek.reset(HDR, { anyDest: false, stopTagged: false });
    expect(peek.add(Uint8Array.from(DST_A))).toBe(true);
    expect(readvMerged(s.tap, t, 0, 8, 32, NEED, NEED, peek)).toBe(3);
    expect(t.status).toBe(MERGED_STOP.PEEK);
    expect(Array.from(t.used.subarray(0, 3))).toEqual([1, 1, 1]);
    expect(mem[2 * 4096 + HDR + 5]).toBe(0x0b); // frame 3 (to B) is in buffer 2
    // The caller refused it: its buffer takes the next frame.
    expect(readvMerged(s.tap, t, 2, 6, 32, NEED, NEED, peek)).toBe(1);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    expect(same(mem.subarray(2 * 4096 + HDR, 2 * 4096 + HDR + 100), frame(100, 4, DST_A))).toBe(true);

    // Promiscuous with VLAN filtering: any destination passes, a tagged frame stops the call.
    peek.reset(HDR, { anyDest: true, stopTagged: true });
    send(s, [frame(100, 5, DST_B), frame(100, 6, DST_A, true), frame(100, 7, DST_B)]);
    expect(readvMerged(s.tap, t, 0, 8, 32, NEED, NEED, peek)).toBe(2);
    expect(t.status).toBe(MERGED_STOP.PEEK);
    expect(readvMerged(s.tap, t, 2, 6, 32, NEED, NEED, peek)).toBe(1);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
  });

  it('a PeekList holds at most 64 MACs and checks what it is given', () => {
    const p = new PeekList();
    p.reset(12, { anyDest: false, stopTagged: false });
    const mac = new Uint8Array(6);
    for (let i = 0; i < 64; i++) expect(p.add(mac)).toBe(true);
    expect(p.add(mac)).toBe(false);
    expect(p.count).toBe(64);
    expect(() => p.add(new Uint8Array(5))).toThrow(RangeError);
    expect(() => p.add(mac, 1)).toThrow(RangeError);
    expect(() => p.reset(0x10000, { anyDest: true, stopTagged: false })).toThrow(RangeError);
  });
});

describe.runIf(pre.ok)('readvMerged: hostile tables', () => {
  it('the TypeScript checks refuse a bad table or argument before it crosses', () => {
    const s = setupTap();
    send(s, [frame(100, 1)]);
    const t = buffers(4, 2048);
    const bad: Array<[string, () => unknown, new (...a: never[]) => Error]> = [
      ['buffers past those filled', () => readvMerged(s.tap, t, 0, 5, 8, NEED, NEED), RangeError],
      ['first past those filled', () => readvMerged(s.tap, t, 5, 0, 8, NEED, NEED), RangeError],
      ['frames past maxFrames', () => readvMerged(s.tap, t, 0, 4, t.maxFrames + 1, NEED, NEED), RangeError],
      ['need 0', () => readvMerged(s.tap, t, 0, 4, 8, 0, NEED), RangeError],
      ['need not an integer', () => readvMerged(s.tap, t, 0, 4, 8, 1.5, NEED), RangeError],
      ['maxLen 2^31', () => readvMerged(s.tap, t, 0, 4, 8, NEED, 2 ** 31), RangeError],
      ['a negative fd', () => readvMerged(-1, t, 0, 4, 8, NEED, NEED), RangeError],
      ['not an IovecTable', () => readvMerged(s.tap, { words: t.words } as unknown as IovecTable, 0, 4, 8, NEED, NEED), TypeError],
      ['a peek list that is not a PeekList', () => readvMerged(s.tap, t, 0, 4, 8, NEED, NEED, new Uint8Array(8) as unknown as PeekList), TypeError],
    ];
    for (const [what, call, kind] of bad) expect(call, what).toThrow(kind);
    // Buffer shapes: ends that go backwards, an empty buffer, an end past the entries filled.
    for (const [what, end] of [['backwards', 1], ['empty', 2], ['past the entries', 9]] as const) {
      const h = buffers(4, 2048);
      h.frameEnd[1] = end; // buffer 1 normally ends at entry 4
      expect(() => readvMerged(s.tap, h, 0, 4, 8, NEED, NEED), what).toThrow(RangeError);
    }
    const wide = new IovecTable(1100, 1);
    for (let i = 0; i < 1025; i++) wide.push(region, 0, 1);
    wide.endFrame();
    expect(() => readvMerged(s.tap, wide, 0, 1, 1, 1, 2000)).toThrow(RangeError); // > IOV_MAX in one buffer
    // Nothing was read: the frame is still in the tap.
    expect(readvMerged(s.tap, t, 0, 4, 8, NEED, NEED)).toBe(1);
  });

  it('C++ refuses entries outside their mapping (EFAULT) and bad shapes (EINVAL, RangeError) before any read', () => {
    const s = setupTap();
    send(s, [frame(100, 1)]);
    const cases: Array<[string, (t: IovecTable) => void]> = [
      ['unknown mapping id', (t) => t.push(region + 1000, 0, 10)],
      ['offset + length past the mapping', (t) => t.push(region, REGION - 10, 11)],
      [
        'offset near 2^64',
        (t) => {
          t.push(region, 0, 64);
          t.entries[(t.count - 1) * 4 + 1] = 0xffffffff;
          t.entries[(t.count - 1) * 4 + 2] = 0xffffffff;
        },
      ],
    ];
    for (const [what, addBad] of cases) {
      const t = buffers(2, 2048);
      addBad(t); // a third buffer, bad
      t.endFrame();
      const e = nativeErrorOf(() => readvMerged(s.tap, t, 0, 3, 8, 1, NEED));
      expect([e.code, e.syscall], what).toEqual(['EFAULT', 'iovec']);
    }
    // Straight to the binding, past the TypeScript checks: C++ checks the same shapes.
    const t = buffers(4, 2048);
    const raw = (first: number, buffers: number, frames: number, need = NEED, words = t.words, maxFrames = t.maxFrames) =>
      binding.readvMerged(s.tap, words, t.maxEntries, maxFrames, first, buffers, frames, need, NEED, undefined);
    t.frameEnd[1] = 1; // backwards
    expect(nativeErrorOf(() => raw(0, 4, 8)).code).toBe('EINVAL');
    t.frameEnd[1] = 4;
    t.frameEnd[2] = 1000; // past the entries array
    expect(nativeErrorOf(() => raw(0, 4, 8)).code).toBe('EINVAL');
    t.frameEnd[2] = 6;
    expect(() => raw(t.maxFrames - 2, 4, 8)).toThrow(RangeError); // first + buffers > maxFrames
    expect(() => raw(0, 4, t.maxFrames + 1)).toThrow(RangeError); // frames > maxFrames
    expect(() => raw(0, 4, 8, 0)).toThrow(RangeError); // need 0
    expect(() => raw(0, 4, 8, NEED, t.words.subarray(0, 10))).toThrow(RangeError); // words too short
    expect(() => binding.readvMerged(s.tap, t.words, t.maxEntries, t.maxFrames, 0, 4, 8, NEED, NEED, new Uint8Array(2))).toThrow(TypeError);
    const lying = new Uint8Array(8);
    lying[1] = 200; // more MACs than the array holds
    expect(() => binding.readvMerged(s.tap, t.words, t.maxEntries, t.maxFrames, 0, 4, 8, NEED, NEED, lying)).toThrow(RangeError);
    // None of that read the frame.
    expect(raw(0, 4, 8)).toBe(1);
  });
});

describe.runIf(pre.ok)('uringReadvMerged on a tap', () => {
  const rings: number[] = [];
  afterEach(() => {
    for (const id of rings.splice(0)) uringClose(id);
  });
  function setupRing(): { tap: number; pkt: number; ring: number } {
    const s = setupTap();
    const r = uringCreate([s.tap]);
    rings.push(r.id);
    return { ...s, ring: r.id };
  }
  /** Checks that frames i … landed in order from buffer `first` with no gap; returns the next buffer. */
  function expectPacked(t: IovecTable, sent: Uint8Array[], size: number, from = 0, first = 0): number {
    for (let i = from; i < from + sent.length; i++) {
      const f = sent[i - from]!;
      expect(t.bytes[i], `frame ${i}`).toBe(HDR + f.length);
      expect(t.used[i], `frame ${i}`).toBe(Math.ceil((HDR + f.length) / size));
      expect(same(stream(first, t.used[i]!, size, HDR + f.length).subarray(HDR), f), `frame ${i} bytes`).toBe(true);
      first += t.used[i]!;
    }
    return first;
  }

  it('frames settle in order with no gap: one that took fewer buffers than its READV had is followed by the next, copied down', () => {
    const s = setupRing();
    const t = buffers(32, 512);
    // NEED = 1526 bytes: every READV gets 3 buffers of 512. 64 B takes 1 of them, 700 B 2, 1514 B 3.
    const sent = [64, 1514, 700, 64, 1000, 64].map((len, i) => frame(len, i));
    send(s, sent);
    expect(uringReadvMerged(s.ring, t, 0, 32, 32, NEED, NEED)).toBe(6);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    expect(Array.from(t.used.subarray(0, 6))).toEqual([1, 3, 2, 1, 2, 1]);
    expectPacked(t, sent, 512);
  });

  it('a backlog larger than a round is read over several, in order, from where the call is told', () => {
    const s = setupRing();
    const t = buffers(600, 512);
    const sent = Array.from({ length: 150 }, (_, i) => frame(i % 3 === 0 ? 1200 : 60 + i, i));
    send(s, sent);
    expect(uringReadvMerged(s.ring, t, 10, 590, 200, NEED, NEED)).toBe(150);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    expectPacked(t, sent, 512, 0, 10);
    expect(mem.subarray(0, 10 * 4096).every((x) => x === MARK)).toBe(true); // before `first`: untouched
  });

  it('a frame longer than maxLen takes no buffer, and the next frame lands where it would have', () => {
    const s = setupRing();
    const t = buffers(8, 2048);
    const small = frame(64, 2);
    send(s, [frame(1514, 1), small, frame(1514, 3)]);
    expect(uringReadvMerged(s.ring, t, 0, 8, 8, NEED, 1000)).toBe(3);
    expect([t.bytes[0], t.used[0]]).toEqual([HDR + 1514, 0]);
    expect([t.bytes[1], t.used[1]]).toEqual([HDR + 64, 1]);
    expect([t.bytes[2], t.used[2]]).toEqual([HDR + 1514, 0]);
    expect(same(mem.subarray(HDR, HDR + 64), small)).toBe(true);
  });

  it('the whole RX filter applies natively: a rejected frame takes no buffer (bytes −length); PEEK never comes', () => {
    const s = setupRing();
    const t = buffers(32, 2048);
    const f = new RxFilter();
    f.reset(Uint8Array.from(DST_A), true);
    f.promisc = false;
    const M1 = [0x01, 0x00, 0x5e, 0, 0, 1];
    const M2 = [0x01, 0x00, 0x5e, 0, 0, 2];
    f.multi = Uint8Array.from(M1);
    f.vlans[0] = 1 << 5; // VLAN 5 only
    const spec = new RxFilterSpec().load(f, HDR);
    const tagged = (vid: number, seq: number) => {
      const x = frame(100, seq, DST_A, true);
      x[15] = vid;
      return x;
    };
    const all = [
      frame(100, 0, DST_A), frame(100, 1, DST_B), frame(100, 2, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), frame(100, 3, M1),
      frame(100, 4, M2), tagged(5, 5), tagged(6, 6), frame(100, 7, DST_A),
    ];
    const accepted = [true, false, true, true, false, true, false, true];
    send(s, all);
    expect(uringReadvMerged(s.ring, t, 0, 32, 32, NEED, NEED, spec)).toBe(all.length);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    let buf = 0;
    all.forEach((x, i) => {
      if (!accepted[i]) {
        expect([t.bytes[i], t.used[i]], `frame ${i} rejected`).toEqual([-(HDR + 100), 0]);
        return;
      }
      expect([t.bytes[i], t.used[i]], `frame ${i} accepted`).toEqual([HDR + 100, 1]);
      expect(same(mem.subarray(buf * 4096 + HDR, buf * 4096 + HDR + 100), x), `frame ${i} in buffer ${buf}`).toBe(true);
      buf++;
    });
    // Without a filter, everything passes.
    send(s, [frame(100, 8, DST_B)]);
    expect(uringReadvMerged(s.ring, t, 0, 32, 32, NEED, NEED, null)).toBe(1);
    expect(t.used[0]).toBe(1);
  });

  it('NO_ROOM, FRAMES, EMPTY and PIECES, as readvMerged says them; frames left wait in the kernel', () => {
    const s = setupRing();
    const t = buffers(4, 2048);
    expect(uringReadvMerged(s.ring, t, 0, 4, 8, NEED, NEED)).toBe(0);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    const sent = [0, 1, 2, 3, 4, 5].map((i) => frame(200 + i, 10 + i));
    send(s, sent);
    expect(uringReadvMerged(s.ring, t, 0, 4, 32, NEED, NEED)).toBe(4);
    expect(t.status).toBe(MERGED_STOP.NO_ROOM);
    expect(uringReadvMerged(s.ring, t, 0, 4, 1, NEED, NEED)).toBe(1);
    expect(t.status).toBe(MERGED_STOP.FRAMES);
    expect(uringReadvMerged(s.ring, t, 0, 4, 0, NEED, NEED)).toBe(0);
    expect(t.status).toBe(MERGED_STOP.FRAMES);
    expect(uringReadvMerged(s.ring, t, 0, 0, 8, NEED, NEED)).toBe(0);
    expect(t.status).toBe(MERGED_STOP.NO_ROOM);
    expect(uringReadvMerged(s.ring, t, 0, 4, 8, NEED, NEED)).toBe(1);
    expect(same(mem.subarray(HDR, HDR + 205), sent[5]!)).toBe(true);
    // Two buffers of 600 one-byte pieces: a group of two (copy-down rounds, not the stage) over IOV_MAX.
    const wide = new IovecTable(1300, 8);
    for (let b = 0; b < 2; b++) {
      for (let k = 0; k < 600; k++) wide.push(region, b * 600 + k, 1);
      wide.endFrame();
    }
    send(s, [frame(100, 1)]);
    expect(uringReadvMerged(s.ring, wide, 0, 2, 8, 1050, 1050)).toBe(0);
    expect(wide.status).toBe(MERGED_STOP.PIECES);
    expect(wide.stagedNext).toBe(false); // groups of two buffers: copy-down rounds
    expect(uringReadvMerged(s.ring, wide, 0, 2, 8, 600, 600)).toBe(1);
  });

  // 256-byte buffers and NEED (1526 bytes): a group of 6 buffers, so rounds go through the stage.
  it('staged: frames are read into the stage and each copied into the fewest buffers, in order, the filter applied', () => {
    const s = setupRing();
    const t = buffers(200, 256);
    const sent = Array.from({ length: 40 }, (_, i) => frame([60, 300, 1514, 700][i % 4]!, i));
    send(s, sent);
    expect(uringReadvMerged(s.ring, t, 0, 200, 64, NEED, NEED)).toBe(40);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    expectPacked(t, sent, 256);
    // It stages next too: the caller may offer room for one frame, not one per READV.
    expect(t.stagedNext).toBe(true);
    expect(uringRxStash(s.ring, false)).toBe(0);
    // The filter, and a frame longer than maxLen: neither takes a buffer.
    const f = new RxFilter();
    f.reset(Uint8Array.from(DST_A), true);
    f.promisc = false;
    const spec = new RxFilterSpec().load(f, HDR);
    const t2 = buffers(40, 256);
    const kept = frame(200, 50);
    send(s, [frame(200, 48, DST_B), frame(1400, 49), kept]);
    expect(uringReadvMerged(s.ring, t2, 0, 40, 64, NEED, HDR + 1000, spec)).toBe(3);
    expect([t2.bytes[0], t2.used[0]]).toEqual([-(HDR + 200), 0]);
    expect([t2.bytes[1], t2.used[1]]).toEqual([HDR + 1400, 0]);
    expect([t2.bytes[2], t2.used[2]]).toEqual([HDR + 200, 1]);
    expect(same(stream(0, 1, 256, HDR + 200).subarray(HDR), kept)).toBe(true);
  });

  it('staged: a frame that fits its buffer is read into it; one a byte longer, and every frame after it, settle from the stage', () => {
    const s = setupRing();
    // Buffers of 256: a frame of 256 bytes with the header fills one exactly, 257 takes two.
    const sizes = [64, 244, 100, 245, 64, 300, 64];
    const sent = sizes.map((len, i) => frame(len, 60 + i));
    send(s, sent);
    const t = buffers(40, 256);
    expect(uringReadvMerged(s.ring, t, 0, 40, 64, NEED, NEED)).toBe(sent.length);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    expect(Array.from(t.used.subarray(0, sent.length))).toEqual([1, 1, 1, 2, 1, 2, 1]);
    expectPacked(t, sent, 256);
  });

  it('staged: buffers of many pieces are read through the stage, beside buffers read directly, in order', () => {
    const s = setupRing();
    // Even buffers: 256 bytes in 2 pieces. Odd ones: 288 bytes in 12 pieces of 24, too many to be read
    // into directly. NEED still spans 6 buffers, so the rounds are staged.
    const t = new IovecTable(16 * 12 + 64, 48);
    for (let b = 0; b < 16; b++) {
      const at = b * 4096;
      mem.fill(MARK, at, at + 4096);
      if (b % 2 === 0) {
        t.push(region, at, 100);
        t.push(region, at + 100, 156);
      } else {
        for (let k = 0; k < 12; k++) t.push(region, at + 24 * k, 24);
      }
      t.endFrame();
    }
    // Each fits its own buffer; the fourth fills its 288 bytes exactly, the fifth its 256.
    const sent = [64, 200, 64, 276, 244, 64].map((len, i) => frame(len, 70 + i));
    send(s, sent);
    expect(uringReadvMerged(s.ring, t, 0, 16, 16, NEED, NEED)).toBe(sent.length);
    expect(t.status).toBe(MERGED_STOP.EMPTY);
    expect(Array.from(t.used.subarray(0, sent.length))).toEqual([1, 1, 1, 1, 1, 1]);
    for (let i = 0; i < sent.length; i++) {
      expect(t.bytes[i], `frame ${i}`).toBe(HDR + sent[i]!.length);
      expect(same(stream(i, 1, 288, HDR + sent[i]!.length).subarray(HDR), sent[i]!), `frame ${i} bytes`).toBe(true);
    }
  });

  it('staged: frames read past the buffers left wait in the stash (NO_ROOM) and go first at the next call, in order', () => {
    const s = setupRing();
    // 8 frames of 412 bytes with the header take 2 buffers each: 12 buffers hold 6.
    const sent = Array.from({ length: 8 }, (_, i) => frame(400, i));
    send(s, sent);
    const t = buffers(12, 256);
    expect(uringReadvMerged(s.ring, t, 0, 12, 32, NEED, NEED)).toBe(6);
    expect(t.status).toBe(MERGED_STOP.NO_ROOM);
    expectPacked(t, sent.slice(0, 6), 256);
    const held = uringRxStash(s.ring, false);
    expect(held).toBeGreaterThanOrEqual(1); // read by the same rounds; the rest waits in the kernel
    const later = frame(100, 9);
    send(s, [later]);
    // `frames` bounds what leaves the stash too.
    const t2 = buffers(12, 256);
    expect(uringReadvMerged(s.ring, t2, 0, 12, 1, NEED, NEED)).toBe(1);
    expect(t2.status).toBe(MERGED_STOP.FRAMES);
    expectPacked(t2, [sent[6]!], 256);
    expect(uringRxStash(s.ring, false)).toBe(held - 1);
    const t3 = buffers(12, 256);
    expect(uringReadvMerged(s.ring, t3, 0, 12, 32, NEED, NEED)).toBe(2);
    expect(t3.status).toBe(MERGED_STOP.EMPTY);
    expectPacked(t3, [sent[7]!, later], 256);
    expect(uringRxStash(s.ring, false)).toBe(0);
  });

  // Guest memory that shrank under some buffers (test/helpers/shrunk.ts): the tap drops each frame whose
  // READV fails, and a frame read after it in the round is not copied into the buffers that failed.
  describe('a READV that fails loses its frame, and every frame after it in its round: each is counted', () => {
    function lose(buffers: Array<[number, number]>, frames: number, need: number): { got: number | string; status: number; failures: number; errno: number; stagedNext: boolean } {
      const s = setupRing();
      const m = shrunkMemory(buffers);
      try {
        send(s, Array.from({ length: frames }, (_, i) => frame(100, 70 + i)));
        const t = m.table;
        t.setReadFailures(0, 0);
        let got: number | string;
        try {
          got = uringReadvMerged(s.ring, t, 0, buffers.length, 8, need, need);
        } catch (e) {
          got = nativeErrorOf(() => {
            throw e;
          }).code;
        }
        expect(poll([s.tap], 0)).toBe(0); // every frame was taken off the tap
        return { got, status: t.status, failures: t.readFailures, errno: t.readErrno, stagedNext: t.stagedNext };
      } finally {
        m.close();
      }
    }
    const oneEach: Array<[number, number]> = [[0, 1536], [PAGE, 1536], [2048, 1536]]; // one buffer per READV

    it('copy-down rounds: frame 0 read, READV 1 fails, frame 2 lost (ERROR stands for one, the word for the other)', () => {
      expect(lose(oneEach, 3, NEED)).toMatchObject({ got: 1, status: MERGED_STOP.ERROR, failures: 1, errno: 14 });
    });

    it('copy-down rounds: nothing read (the exception stands for one failure, the word for the two others)', () => {
      expect(lose([[PAGE, 1536], [PAGE + 2048, 1536], [0, 1536]], 3, NEED)).toMatchObject({ got: 'EFAULT', failures: 2, errno: 14 });
    });

    it('staged rounds (NEED spans 6 buffers of 256): frame 0 read into its buffer, READV 1 fails, frame 2 lost', () => {
      const small: Array<[number, number]> = [[0, 256], [PAGE, 256], ...Array.from({ length: 15 }, (_, k): [number, number] => [256 * (k + 1), 256])];
      expect(lose(small, 3, NEED)).toMatchObject({ got: 1, status: MERGED_STOP.ERROR, failures: 1, errno: 14, stagedNext: true });
    });
  });

  it('staged: a stop drops what the stash holds and says how many; the next call reads only what came after', () => {
    const s = setupRing();
    send(s, Array.from({ length: 8 }, (_, i) => frame(400, i)));
    expect(uringReadvMerged(s.ring, buffers(12, 256), 0, 12, 32, NEED, NEED)).toBe(6);
    const held = uringRxStash(s.ring, true);
    expect(held).toBe(2);
    expect(uringRxStash(s.ring, false)).toBe(0);
    const later = frame(100, 9);
    send(s, [later]);
    const t = buffers(12, 256);
    expect(uringReadvMerged(s.ring, t, 0, 12, 32, NEED, NEED)).toBe(1);
    expectPacked(t, [later], 256);
    expect(() => uringRxStash(0, false)).toThrow(RangeError);
    expect(() => uringRxStash(s.ring, 1 as unknown as boolean)).toThrow(TypeError);
    expect(nativeErrorOf(() => uringRxStash(0x7fff_fff0, false)).code).toBe('EBADF');
  });

  it('after a frame above 4 KiB, the ring reads in copy-down rounds (no stash; frames left wait in the kernel)', () => {
    ns = createNetns();
    const tap = openTapIn(ns, { vnetHdr: true, nonblocking: true, address: false });
    tapSetVnetHdrSize(tap.fd, HDR);
    ns.exec('ip', 'link', 'set', tap.name, 'mtu', '9000');
    const s = { tap: tap.fd, pkt: openPacketIn(ns, tap.name) };
    const ring = uringCreate([s.tap]).id;
    rings.push(ring);
    const need = HDR + 9014; // a group of 5 buffers of 2048: the stage, until a big frame comes
    const big = frame(5000, 1);
    send(s, [big]);
    const t = buffers(8, 2048);
    expect(uringReadvMerged(ring, t, 0, 8, 32, need, need)).toBe(1);
    expectPacked(t, [big], 2048);
    expect(t.stagedNext).toBe(false); // copy-down rounds next: they want room for a frame per READV
    // Copy-down now: 8 frames of one buffer each into 8 buffers, a group of 5 per READV. Rounds stop
    // once no group fits (NO_ROOM); what is not read waits in the kernel, not in the stash.
    const sent = Array.from({ length: 8 }, (_, i) => frame(1000, 10 + i));
    send(s, sent);
    const t2 = buffers(8, 2048);
    const n = uringReadvMerged(ring, t2, 0, 8, 32, need, need);
    expect(t2.status).toBe(MERGED_STOP.NO_ROOM);
    expect(n).toBe(4);
    expectPacked(t2, sent.slice(0, 4), 2048);
    expect(t2.stagedNext).toBe(false);
    expect(uringRxStash(ring, false)).toBe(0);
  });

  it('hostile arguments: refused in TypeScript and again in C++, before anything is read', () => {
    const s = setupRing();
    send(s, [frame(100, 1)]);
    const t = buffers(4, 2048);
    expect(() => uringReadvMerged(0, t, 0, 4, 8, NEED, NEED)).toThrow(RangeError);
    expect(() => uringReadvMerged(s.ring, t, 0, 5, 8, NEED, NEED)).toThrow(RangeError);
    expect(() => uringReadvMerged(s.ring, t, 0, 4, 8, NEED, NEED, new Uint8Array(1296) as unknown as RxFilterSpec)).toThrow(TypeError);
    const raw = (filter: Uint8Array | undefined) =>
      binding.uringReadvMerged(s.ring, t.words, t.maxEntries, t.maxFrames, 0, 4, 8, NEED, NEED, filter);
    expect(() => raw(new Uint8Array(100))).toThrow(TypeError); // shorter than a spec
    const lying = new Uint8Array(RxFilterSpec.BYTES);
    lying[1] = 65; // more unicast MACs than a spec holds
    expect(() => raw(lying)).toThrow(RangeError);
    const bad = buffers(2, 2048);
    bad.push(region, REGION - 10, 11); // past the mapping
    bad.endFrame();
    const e = nativeErrorOf(() => uringReadvMerged(s.ring, bad, 0, 3, 8, 1, NEED));
    expect([e.code, e.syscall]).toEqual(['EFAULT', 'iovec']);
    expect(nativeErrorOf(() => uringReadvMerged(999_999, t, 0, 4, 8, NEED, NEED)).code).toBe('EBADF');
    expect(raw(undefined)).toBe(1); // the frame was still there
  });
});

describe('the native RX filter (RxFilterSpec) decides as RxFilter.accept does', () => {
  const macArb = fc.oneof(
    fc.uint8Array({ minLength: 6, maxLength: 6 }),
    fc.constantFrom([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], DST_A, DST_B, [0x01, 0x00, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1]).map((m) => Uint8Array.from(m)),
  );
  it('on generated filters and frames', () => {
    const seen = [0, 0];
    fc.assert(
      fc.property(
        fc.record({
          flags: fc.array(fc.boolean(), { minLength: 7, maxLength: 7 }),
          mac: macArb,
          uni: fc.array(macArb, { maxLength: 4 }),
          multi: fc.array(macArb, { maxLength: 4 }),
          vlans: fc.array(fc.integer({ min: 0, max: 4095 }), { maxLength: 6 }),
        }),
        macArb,
        fc.nat(),
        fc.boolean(),
        fc.integer({ min: 0, max: 4095 }),
        fc.integer({ min: 0, max: 2000 }),
        (fs, other, pick, tagged, vid, len) => {
          const f = new RxFilter();
          f.reset(fs.mac, fs.flags[6]!);
          [f.promisc, f.allmulti, f.alluni, f.nomulti, f.nouni, f.nobcast] = fs.flags;
          const join = (ms: Uint8Array[]) => {
            const out = new Uint8Array(ms.length * 6);
            ms.forEach((m, i) => out.set(m, i * 6));
            return out;
          };
          f.uni = join(fs.uni);
          f.multi = join(fs.multi);
          for (const v of fs.vlans) f.vlans[v >>> 5]! |= 1 << (v & 31);
          // Mostly a destination the filter names (its MAC, a table entry), so both verdicts come often.
          const named = [fs.mac, ...fs.uni, ...fs.multi];
          const dst = pick % 4 === 0 ? other : named[pick % named.length]!;
          const head = new Uint8Array(16);
          head.set(dst, 0);
          head.set([0x02, 0, 0, 0, 0, 1], 6);
          if (tagged) head.set([0x81, 0x00, vid >> 8, vid & 0xff], 12);
          const spec = new RxFilterSpec().load(f, HDR);
          const shown = head.subarray(0, Math.min(16, len));
          const verdict = f.accept(head, 0, len);
          expect(rxFilterAccepts(spec, shown, len)).toBe(verdict);
          seen[verdict ? 1 : 0]!++;
        },
      ),
      { numRuns: 3000 },
    );
    expect(Math.min(...seen), `accepted ${seen[1]}, rejected ${seen[0]}`).toBeGreaterThan(300);
  });
  it('an RxFilterSpec refuses tables over 64 MACs or not whole', () => {
    const f = new RxFilter();
    f.uni = new Uint8Array(65 * 6);
    expect(() => new RxFilterSpec().load(f, HDR)).toThrow(RangeError);
    f.uni = new Uint8Array(7);
    expect(() => new RxFilterSpec().load(f, HDR)).toThrow(RangeError);
  });
});
