/**
 * native/iovec.ts: IovecTable's layout and checks, its entry accessors, and the checked copy between a
 * table's frames and a byte array (readFrame/writeFrame), first over plain ArrayBuffers standing for
 * mappings, then over the native registry, where it must refuse exactly what writevBatch refuses.
 */
import { afterEach, describe, expect, it } from 'vitest';

import { IOVEC_WORDS, IovecTable, MappingViews } from '../../native/iovec.ts';
import * as native from '../../native/index.ts';
import { nativeErrorOf } from '../helpers/errors.ts';

/** Mappings 1 and 2: 64 and 32 bytes, each byte its index + the id's base. */
function fixture(): { bufs: Map<number, ArrayBuffer>; maps: MappingViews; resolved: number[] } {
  const bufs = new Map<number, ArrayBuffer>();
  for (const [id, size, base] of [[1, 64, 0], [2, 32, 100]] as const) {
    const b = new ArrayBuffer(size);
    new Uint8Array(b).forEach((_, i, a) => (a[i] = base + i));
    bufs.set(id, b);
  }
  const resolved: number[] = [];
  const maps = new MappingViews((id) => {
    resolved.push(id);
    const b = bufs.get(id);
    if (!b) throw new RangeError(`no mapping ${id}`);
    return b;
  });
  return { bufs, maps, resolved };
}


describe('IovecTable', () => {
  it('take() gives back a table given back on this thread, as new; another shape is a new table', () => {
    const a = IovecTable.take(64, 8);
    a.push(1, 4096, 100);
    a.endFrame();
    a.bytes[0] = 100;
    a.giveBack();
    a.giveBack(); // twice: kept once
    const b = IovecTable.take(64, 8);
    expect(b).toBe(a);
    expect(b.count).toBe(0);
    expect(b.frames).toBe(0);
    expect(Array.from(b.words).every((w) => w === 0)).toBe(true);
    expect(IovecTable.take(64, 8), 'the one kept was taken').not.toBe(a);
    b.giveBack();
    expect(IovecTable.take(64, 9), 'another shape').not.toBe(a);
    expect(IovecTable.take(64, 8)).toBe(a);
  });

  it('lays entries, frameEnd and bytes over one buffer and splits offsets into 32-bit halves', () => {
    const t = new IovecTable(4, 2);
    expect(t.words.length).toBe(4 * IOVEC_WORDS + 3 * 2 + 1); // entries, frameEnd, bytes, used, status
    expect(t.used.buffer).toBe(t.words.buffer);
    expect(t.entries.buffer).toBe(t.words.buffer);
    expect(t.frameEnd.buffer).toBe(t.words.buffer);
    expect(t.bytes.buffer).toBe(t.words.buffer);
    t.push(7, 2 ** 32 + 5, 100);
    t.push(7, 0, 0);
    t.endFrame();
    t.push(8, 16, 1);
    t.endFrame();
    expect(Array.from(t.entries.subarray(0, 12))).toEqual([7, 5, 1, 100, 7, 0, 0, 0, 8, 16, 0, 1]);
    expect(Array.from(t.frameEnd)).toEqual([2, 3]);
    expect([t.count, t.frames, t.frameEntries(0), t.frameEntries(1)]).toEqual([3, 2, 2, 1]);
    t.bytes[1] = -1;
    expect(t.words[4 * IOVEC_WORDS + 2 + 1]).toBe(0xffffffff);
    t.reset();
    expect([t.count, t.frames]).toEqual([0, 0]);
  });

  it('refuses what would not fit or make sense', () => {
    expect(() => new IovecTable(0, 1)).toThrow(RangeError);
    expect(() => new IovecTable(2, 3)).toThrow(RangeError);
    const t = new IovecTable(2, 1);
    expect(() => t.endFrame()).toThrow(RangeError); // empty frame
    expect(() => t.push(-1, 0, 1)).toThrow(RangeError);
    expect(() => t.push(1, -1, 1)).toThrow(RangeError);
    expect(() => t.push(1, 2 ** 53, 1)).toThrow(RangeError);
    expect(() => t.push(1, 0, 2 ** 32)).toThrow(RangeError);
    t.push(1, 0, 1);
    t.push(1, 0, 1);
    expect(() => t.push(1, 0, 1)).toThrow(RangeError); // entries full
    t.endFrame();
    t.reset();
    t.push(1, 0, 1);
    t.endFrame();
    expect(() => t.push(1, 0, 1)).toThrow(RangeError); // frames full
  });

  it('reads entries back through its accessors, offsets above 2^32 included', () => {
    const t = new IovecTable(4, 2);
    t.push(7, 2 ** 40 + 3, 100);
    t.push(9, 0xffff_ffff, 0);
    t.endFrame();
    t.push(8, 16, 1);
    t.endFrame();
    expect([0, 1, 2].map((i) => [t.entryMapping(i), t.entryOffset(i), t.entryLength(i)])).toEqual([
      [7, 2 ** 40 + 3, 100],
      [9, 0xffff_ffff, 0],
      [8, 16, 1],
    ]);
    expect([t.frameStart(0), t.frameEnd[0], t.frameStart(1), t.frameEnd[1]]).toEqual([0, 2, 2, 3]);
    expect([t.frameLength(0), t.frameLength(1)]).toEqual([100, 1]);
  });

  /** Three frames: [1:0+10], [1:10+20, 2:0+5], [2:8+4]. */
  const threeFrames = (maxEntries: number, maxFrames: number): IovecTable => {
    const t = new IovecTable(maxEntries, maxFrames);
    t.push(1, 0, 10);
    t.endFrame();
    t.push(1, 10, 20);
    t.push(2, 0, 5);
    t.endFrame();
    t.push(2, 8, 4);
    t.endFrame();
    return t;
  };

  it('copies the frames after a refused one into another table, renumbered from 0', () => {
    const t = threeFrames(4, 3);
    const rest = new IovecTable(4, 3);
    rest.copyFramesFrom(t, 1);
    expect([rest.count, rest.frames, rest.frameEnd[0], rest.frameEnd[1]]).toEqual([3, 2, 2, 3]);
    expect([0, 1, 2].map((i) => [rest.entryMapping(i), rest.entryOffset(i), rest.entryLength(i)])).toEqual([
      [1, 10, 20],
      [2, 0, 5],
      [2, 8, 4],
    ]);
    rest.copyFramesFrom(t, 3);
    expect([rest.count, rest.frames]).toEqual([0, 0]);
    expect(() => rest.copyFramesFrom(t, 4)).toThrow(RangeError);
    expect(() => new IovecTable(2, 3).copyFramesFrom(t, 0)).toThrow(RangeError); // too small
  });

  it('drops its first frames in place: the rest move to the front, renumbered from 0, and more can follow', () => {
    const t = threeFrames(6, 4);
    t.dropFrames(1);
    expect([t.count, t.frames, t.frameEnd[0], t.frameEnd[1]]).toEqual([3, 2, 2, 3]);
    expect([0, 1, 2].map((i) => [t.entryMapping(i), t.entryOffset(i), t.entryLength(i)])).toEqual([
      [1, 10, 20],
      [2, 0, 5],
      [2, 8, 4],
    ]);
    t.push(3, 1, 2);
    t.endFrame();
    expect([t.frames, t.frameStart(2), t.frameEnd[2], t.entryMapping(3)]).toEqual([3, 3, 4, 3]);
    t.dropFrames(0);
    expect(t.frames).toBe(3);
    t.dropFrames(3);
    expect([t.count, t.frames]).toEqual([0, 0]);
    expect(() => t.dropFrames(1)).toThrow(RangeError);
  });
});

describe('IovecTable read failures', () => {
  it('encodes them in the status word beside readvMerged\'s bits, as the native reads do: count (saturating at 255) and first errno', () => {
    const t = new IovecTable(4, 2);
    t.setReadFailures(1, 14);
    expect([t.readFailures, t.readErrno, t.status, t.stagedNext]).toEqual([1, 14, 0, false]);
    t.setReadFailures(300, 5);
    expect([t.readFailures, t.readErrno]).toEqual([255, 5]);
    t.setReadFailures(0, 14);
    expect([t.readFailures, t.readErrno, t.words[t.words.length - 1]]).toEqual([0, 0, 0]);
  });
});

describe('IovecTable checked copy', () => {
  it('reads and writes a frame as one byte stream across entries and mappings', () => {
    const { bufs, maps } = fixture();
    const t = new IovecTable(4, 2);
    t.push(1, 60, 4); // stream bytes 0..3  = mapping 1 [60, 64)
    t.push(2, 0, 3); //  stream bytes 4..6  = mapping 2 [0, 3)
    t.push(1, 0, 2); //  stream bytes 7..8  = mapping 1 [0, 2)
    t.endFrame();
    t.push(2, 10, 1);
    t.endFrame();
    const dst = new Uint8Array(12).fill(0xee);
    // From stream byte 2, 10 wanted: only 7 are left in the frame.
    expect(t.readFrame(0, 2, dst, 1, 10, maps)).toBe(7);
    expect(Array.from(dst)).toEqual([0xee, 62, 63, 100, 101, 102, 0, 1, 0xee, 0xee, 0xee, 0xee]);
    expect(t.readFrame(1, 0, dst, 0, 1, maps)).toBe(1);
    expect(dst[0]).toBe(110);
    expect(t.readFrame(0, 9, dst, 0, 1, maps)).toBe(0); // past the frame's end

    const src = Uint8Array.of(0xa0, 0xa1, 0xa2, 0xa3, 0xa4);
    expect(t.writeFrame(0, 3, src, 0, 5, maps)).toBe(5);
    const m1 = new Uint8Array(bufs.get(1)!);
    const m2 = new Uint8Array(bufs.get(2)!);
    expect([m1[62], m1[63], m2[0], m2[1], m2[2], m2[3], m1[0], m1[1]]).toEqual([62, 0xa0, 0xa1, 0xa2, 0xa3, 103, 0xa4, 1]);
    expect(t.writeFrame(0, 8, src, 0, 5, maps)).toBe(1); // the buffers end first
    expect(m1[1]).toBe(0xa0);
  });

  it('wraps each mapping once and reuses the view', () => {
    const { maps, resolved } = fixture();
    expect(maps.bytes(1)).toBe(maps.bytes(1));
    maps.bytes(2);
    expect(resolved).toEqual([1, 2]);
  });

  it('clear() drops every view: the next use resolves the mapping again (after a memory change)', () => {
    const { bufs, maps, resolved } = fixture();
    const before = maps.bytes(1);
    bufs.set(1, new ArrayBuffer(128)); // the id now names other memory
    maps.clear();
    expect(maps.bytes(1)).not.toBe(before);
    expect(maps.bytes(1).length).toBe(128);
    expect(resolved).toEqual([1, 1]);
  });

  it('refuses a frame with an entry outside its mapping, EFAULT as native does, before a byte moves', () => {
    const { bufs, maps } = fixture();
    const before = (id: number) => Array.from(new Uint8Array(bufs.get(id)!));
    const m1 = before(1);
    for (const [off, len] of [[60, 5], [64, 1], [65, 0], [2 ** 32 + 1, 1]] as const) {
      const t = new IovecTable(2, 1);
      t.push(1, 0, 8); // in bounds, and first: it must not be written either
      t.push(1, off, len);
      t.endFrame();
      const dst = new Uint8Array(16);
      const r = nativeErrorOf(() => t.readFrame(0, 0, dst, 0, 16, maps));
      expect([r.code, r.errno, r.syscall]).toEqual(['EFAULT', 14, 'iovec']);
      expect(r.message).toContain(`entry 1 [${off}, +${len}) lies outside mapping 1 of 64 bytes`);
      expect(dst.every((b) => b === 0)).toBe(true);
      const w = nativeErrorOf(() => t.writeFrame(0, 0, new Uint8Array(16).fill(0xff), 0, 16, maps));
      expect(w.code).toBe('EFAULT');
      expect(before(1)).toEqual(m1);
    }
    // Entry [64, +0) ends at the mapping's end: in bounds.
    const t = new IovecTable(1, 1);
    t.push(1, 64, 0);
    t.endFrame();
    expect(t.readFrame(0, 0, new Uint8Array(1), 0, 1, maps)).toBe(0);
  });

  it('passes on the resolver\'s refusal of an unknown mapping, and refuses bad arguments', () => {
    const { maps } = fixture();
    const t = new IovecTable(2, 1);
    t.push(3, 0, 1);
    t.endFrame();
    expect(() => t.readFrame(0, 0, new Uint8Array(1), 0, 1, maps)).toThrow('no mapping 3');
    const u = new IovecTable(2, 2);
    u.push(1, 0, 8);
    u.endFrame();
    const dst = new Uint8Array(4);
    expect(() => u.readFrame(1, 0, dst, 0, 1, maps)).toThrow(RangeError); // no frame 1 yet
    expect(() => u.readFrame(0, -1, dst, 0, 1, maps)).toThrow(RangeError);
    expect(() => u.readFrame(0, 0, dst, 2, 3, maps)).toThrow(RangeError); // dst too short
    expect(() => u.writeFrame(0, 0, dst, -1, 1, maps)).toThrow(RangeError);
  });
});

describe('IovecTable checked copy over the native registry', () => {
  const fds: number[] = [];
  const ids: number[] = [];
  afterEach(() => {
    for (const id of ids.splice(0)) native.munmap(id);
    for (const fd of fds.splice(0)) native.close(fd);
  });

  it('moves bytes through native mappings and refuses the entry writevBatch refuses, alike', () => {
    const id = native.mmapAnonymous(4096);
    ids.push(id);
    const maps = new MappingViews(native.mappingBuffer);
    expect(maps.bytes(id).length).toBe(native.mappingSize(id));
    const t = new IovecTable(2, 1);
    t.push(id, 4090, 6);
    t.endFrame();
    expect(t.writeFrame(0, 0, Uint8Array.of(1, 2, 3, 4, 5, 6), 0, 6, maps)).toBe(6);
    expect(Array.from(new Uint8Array(native.mappingBuffer(id), 4090, 6))).toEqual([1, 2, 3, 4, 5, 6]);

    const bad = new IovecTable(2, 1);
    bad.push(id, 4090, 7);
    bad.endFrame();
    const fd = native.memfdCreate('lgnet-iovec', 0);
    fds.push(fd);
    const fromNative = nativeErrorOf(() => native.writevBatch(fd, bad));
    const fromTs = nativeErrorOf(() => bad.checkFrame(0, maps));
    expect([fromTs.code, fromTs.errno, fromTs.syscall]).toEqual([fromNative.code, fromNative.errno, fromNative.syscall]);
    expect(fromTs.message).toBe(fromNative.message);
  });
});
