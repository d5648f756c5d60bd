/**
 * Tap I/O through a restricted io_uring (native/uring.cc), against the real kernel: a tap inside a
 * fresh network namespace, an AF_PACKET socket on the same interface as the other end of the wire.
 *
 *   memfd mapping ──uringWritevBatch──▶ ring ──▶ tap fd (fixed file 0) ──▶ AF_PACKET socket
 *   memfd mapping ◀──uringReadvBatch─── ring ◀── tap fd (fixed file 0) ◀── AF_PACKET socket
 *
 * Then the ring's restrictions: whatever else an SQE asks (open a file, connect, read another fd,
 * a non-fixed fd, a NOP, a register op after enabling), the ring refuses it.
 */
import { mkdtempSync, openSync, closeSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  close,
  fdRead,
  fdWrite,
  IovecTable,
  mappingBuffer,
  memfdCreate,
  mmap,
  munmap,
  nativePath,
  poll,
  tapSetVnetHdrSize,
  uringClose,
  uringCreate,
  uringFds,
  uringReadvBatch,
  uringRegister,
  uringTry,
  uringWritevBatch,
  URING_SLOT_EMPTY,
} from '../../native/index.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, openPacketIn, openTapIn } from '../../harness/netns.ts';
import { nativeErrorOf } from '../helpers/errors.ts';
import { PAGE, shrunkMemory } from '../helpers/shrunk.ts';

const pre = netnsPrerequisites();
const ETHERTYPE = 0x88b5;
const REGION = 4 << 20;
const HDR = 12;
const EACCES = 13;
const EBADF = 9;
const IORING_REGISTER_FILES = 2;
const IORING_REGISTER_FILES_UPDATE = 6;

let memfd: number;
let region: number;
let mem: Uint8Array;
const rings: number[] = [];

beforeAll(() => {
  if (!pre.ok) return;
  memfd = memfdCreate('lgnet-uring-test', REGION);
  region = mmap(memfd, 0, REGION);
  mem = new Uint8Array(mappingBuffer(region));
});
afterEach(() => {
  for (const id of rings.splice(0)) uringClose(id);
  destroyAllNetns();
});
afterAll(() => {
  destroyAllNetns();
  if (pre.ok) {
    munmap(region);
    close(memfd);
  }
});

function frame(len: number, seq: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01], 0);
  f[12] = ETHERTYPE >> 8;
  f[13] = ETHERTYPE & 0xff;
  new DataView(f.buffer).setUint32(14, seq);
  for (let i = 18; i < len; i++) f[i] = (seq * 31 + i) & 0xff;
  return f;
}

/** A tap with a 12-byte vnet header in a fresh namespace, its wire, and a ring for it. */
function setup(): { tap: number; pkt: number; ring: number; ringFd: number } {
  const ns = createNetns();
  const t = openTapIn(ns, { vnetHdr: true, nonblocking: true, address: false });
  tapSetVnetHdrSize(t.fd, HDR);
  const pkt = openPacketIn(ns, t.name);
  const r = uringCreate([t.fd]);
  rings.push(r.id);
  return { tap: t.fd, pkt, ring: r.id, ringFd: r.fd };
}

/** Frames of our ethertype arriving on a nonblocking fd within ms (bounded). */
function collect(fd: number, want: number, ms: number): Uint8Array[] {
  const got: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  const deadline = performance.now() + ms;
  for (let spins = 0; spins < 100_000 && got.length < want; spins++) {
    const left = Math.ceil(deadline - performance.now());
    if (left <= 0 || poll([fd], left) === 0) break;
    const n = fdRead(fd, buf);
    if (n >= 14 && ((buf[12]! << 8) | buf[13]!) === ETHERTYPE) got.push(buf.slice(0, n));
  }
  return got;
}

/** An RX table: `slots` buffers of `size` bytes (header + frame), each split in two iovecs. */
function rxTable(slots: number, size = 2048): IovecTable {
  const t = new IovecTable(2 * slots, slots);
  for (let i = 0; i < slots; i++) {
    t.push(region, i * size, 100);
    t.push(region, i * size + 100, size - 100);
    t.endFrame();
  }
  return t;
}

const seqAt = (slot: number, size = 2048): number => new DataView(mem.buffer, mem.byteOffset + slot * size + HDR + 14, 4).getUint32(0);

describe.runIf(pre.ok)('io_uring tap I/O', () => {
  it('uringWritevBatch: one enter sends every frame, byte for byte, in order', () => {
    const { ring, pkt } = setup();
    const sizes = [64, 1514, 60, 300, 1000, 64, 64, 1514];
    const t = new IovecTable(64, 16);
    const sent = sizes.map((len, i) => {
      const f = frame(len, i);
      const at = 1 << 20 | (i * 2048);
      mem.fill(0, i * 64, i * 64 + HDR); // no offloads
      mem.set(f, at);
      t.push(region, i * 64, HDR);
      t.push(region, at, 14);
      t.push(region, at + 14, len - 14);
      t.endFrame();
      return f;
    });
    expect(uringWritevBatch(ring, t)).toBe(sizes.length);
    sizes.forEach((len, i) => expect(t.bytes[i]).toBe(HDR + len));
    const got = collect(pkt, sizes.length, 2000);
    expect(got.map((g) => Buffer.from(g).toString('hex'))).toEqual(sent.map((f) => Buffer.from(f).toString('hex')));
  });

  it('uringWritevBatch: a frame the tap refuses gets its -errno; the frames after it still go', () => {
    const { ring, pkt } = setup();
    const t = new IovecTable(16, 4);
    for (let i = 0; i < 3; i++) {
      mem.fill(0, i * 64, i * 64 + HDR);
      mem.set(frame(100, i), (1 << 20) + i * 2048);
      t.push(region, i * 64, i === 1 ? 4 : HDR); // frame 1: shorter than its vnet header
      if (i !== 1) t.push(region, (1 << 20) + i * 2048, 100);
      t.endFrame();
    }
    expect(uringWritevBatch(ring, t)).toBe(3);
    expect(t.bytes[0]).toBe(HDR + 100);
    expect(t.bytes[1]).toBeLessThan(0);
    expect(t.bytes[2]).toBe(HDR + 100);
    expect(collect(pkt, 2, 2000).map((g) => new DataView(g.buffer).getUint32(14))).toEqual([0, 2]);
  });

  it('uringReadvBatch: an empty tap answers at once with 0; waiting frames land in order', () => {
    const { ring, pkt, tap } = setup();
    const t = rxTable(8);
    const t0 = performance.now();
    expect(uringReadvBatch(ring, t)).toBe(0);
    expect(performance.now() - t0).toBeLessThan(500); // no READV was parked waiting for a frame
    const sizes = [64, 1514, 200];
    sizes.forEach((len, i) => expect(fdWrite(pkt, frame(len, 10 + i))).toBe(len));
    expect(poll([tap], 2000)).toBe(1);
    const got = uringReadvBatch(ring, t);
    expect(got).toBe(3);
    sizes.forEach((len, i) => {
      expect(t.bytes[i]).toBe(HDR + len);
      expect(seqAt(i)).toBe(10 + i);
    });
  });

  it('uringReadvBatch: a backlog larger than the first window is read in growing rounds, in order', () => {
    const { ring, pkt } = setup();
    const n = 100;
    for (let i = 0; i < n; i++) expect(fdWrite(pkt, frame(64, i))).toBe(64);
    const t = rxTable(128);
    const got = uringReadvBatch(ring, t);
    expect(got).toBe(n);
    for (let i = 0; i < n; i++) {
      expect(t.bytes[i]).toBe(HDR + 64);
      expect(seqAt(i)).toBe(i);
    }
    expect(uringReadvBatch(ring, t)).toBe(0);
  });

  it('uringReadvBatch under a concurrent sender: every frame read is in order, none given back empty', async () => {
    const { ring, pkt } = setup();
    const total = 20_000;
    // A sender thread writes numbered frames while this thread reads bursts: frames arrive between
    // the READVs of one enter, which is where a hole (EAGAIN, then a frame) can appear.
    const sender = new Worker(
      `const { workerData: w } = require('node:worker_threads');
       const b = require(w.path);
       const f = new Uint8Array(64);
       f.set([2,0,0,0,0,2, 2,0,0,0,0,1, 0x88,0xb5]);
       const dv = new DataView(f.buffer);
       for (let i = 0, tries = 0; i < w.total && tries < 50000000; tries++) {
         dv.setUint32(14, i);
         try { b.fdWrite(w.fd, f); i++; } catch { /* EAGAIN/ENOBUFS: again */ }
       }`,
      { eval: true, workerData: { path: nativePath, fd: pkt, total } },
    );
    const done = new Promise<void>((res) => sender.once('exit', () => res()));
    let finished = false;
    void done.then(() => (finished = true));
    const t = rxTable(32);
    const seen: number[] = [];
    let empties = 0;
    const deadline = performance.now() + 20_000;
    for (let rounds = 0; rounds < 1_000_000 && performance.now() < deadline; rounds++) {
      const got = uringReadvBatch(ring, t);
      for (let i = 0; i < got; i++) {
        if (t.bytes[i] === URING_SLOT_EMPTY) empties++;
        else seen.push(seqAt(i));
      }
      if (got === 0) {
        if (finished) break; // the sender is done and the tap is empty
        await new Promise((r) => setImmediate(r));
      }
    }
    await done;
    expect(empties).toBe(0); // equal buffers: a frame after a hole always moves down
    expect(seen.length).toBeGreaterThan(total / 10);
    for (let i = 1; i < seen.length; i++) if (seen[i]! <= seen[i - 1]!) expect.fail(`frame ${seen[i]} after ${seen[i - 1]}`);
  }, 30_000);

  it('uringReadvBatch: a frame longer than its slot reads as room + 1, not as one that fills it; written says what went in', () => {
    const { ring, pkt, tap } = setup();
    const t = rxTable(4, HDR + 300);
    const room = HDR + 300;
    // Too long, exactly the room, short: a tap alone would report the first two alike (room).
    const sizes = [1000, 300, 100];
    for (const [i, len] of sizes.entries()) expect(fdWrite(pkt, frame(len, 50 + i))).toBe(len);
    expect(poll([tap], 2000)).toBe(1);
    t.written.fill(7);
    expect(uringReadvBatch(ring, t)).toBe(3);
    expect([...t.bytes.subarray(0, 3)]).toEqual([room + 1, room, HDR + 100]);
    expect([...t.written.subarray(0, 4)]).toEqual([room, room, HDR + 100, 0]);
    sizes.forEach((_, i) => expect(seqAt(i, room)).toBe(50 + i));
  });

  it('uringReadvBatch under a concurrent sender: table.written covers every byte put into a slot, settled or not', async () => {
    const { ring, pkt } = setup();
    const LEN = 64; // + HDR: what each READV puts at the start of its slot
    // For 2 s, as fast as it goes: the reader keeps falling behind and catching up, and each catch-up
    // is a round where a frame can land after an empty slot (often thousands of times in 2 s; on a
    // machine busy with other work, sometimes never). A fixed count ends within tens of ms instead.
    const sender = new Worker(
      `const { workerData: w } = require('node:worker_threads');
       const b = require(w.path);
       const f = new Uint8Array(w.len);
       f.set([2,0,0,0,0,2, 2,0,0,0,0,1, 0x88,0xb5]);
       for (const until = Date.now() + w.ms; Date.now() < until;) {
         try { b.fdWrite(w.fd, f); } catch { /* EAGAIN/ENOBUFS: again */ }
       }`,
      { eval: true, workerData: { path: nativePath, fd: pkt, ms: 2000, len: LEN } },
    );
    const done = new Promise<void>((res) => sender.once('exit', () => res()));
    let finished = false;
    void done.then(() => (finished = true));
    const SLOTS = 32;
    const SIZE = 2048;
    const t = rxTable(SLOTS, SIZE);
    const CANARY = 0xa5; // no byte of a frame here, nor of its vnet header, is 0xa5
    let frames = 0;
    let leftovers = 0; // slots holding more than their result says: io_uring's copy-down (timing-dependent)
    const deadline = performance.now() + 20_000;
    try {
      for (let rounds = 0; rounds < 1_000_000 && performance.now() < deadline; rounds++) {
        for (let s = 0; s < SLOTS; s++) mem.fill(CANARY, s * SIZE, s * SIZE + HDR + LEN + 4);
        const got = uringReadvBatch(ring, t);
        for (let s = 0; s < SLOTS; s++) {
          let end = HDR + LEN + 4;
          while (end > 0 && mem[s * SIZE + end - 1] === CANARY) end--;
          const w = t.written[s]!;
          if (end > w) expect.fail(`slot ${s} of ${got}: ${end} bytes changed, written says ${w}`);
          const reported = s < got ? Math.max(t.bytes[s]!, 0) : 0;
          if (w < reported) expect.fail(`slot ${s} of ${got}: a frame of ${reported} bytes, written says ${w}`);
          if (w > reported) leftovers++;
        }
        frames += got;
        if (got === 0) {
          if (finished) break;
          await new Promise((r) => setImmediate(r));
        }
      }
    } finally {
      await sender.terminate(); // a failure above must not leave it writing into a namespace torn down
      await done;
    }
    expect(frames).toBeGreaterThan(1000);
    console.info(`uring written under a concurrent sender: ${frames} frames, ${leftovers} slots left holding a copied-down frame`);
  }, 30_000);

  it('uringReadvBatch: a READV that fails past the first frame is counted, its slot given back empty, never copied into', () => {
    const { ring, pkt, tap } = setup();
    const m = shrunkMemory(); // the tap drops the frame whose copy into the missing page fails
    const { view, table: t } = m;
    try {
      for (const seq of [0, 1, 2]) expect(fdWrite(pkt, frame(100, seq))).toBe(100);
      expect(poll([tap], 2000)).toBe(1);
      // One round of three READVs (a fresh ring's window is 4): frame 0, EFAULT, frame 2.
      expect(uringReadvBatch(ring, t)).toBe(3);
      expect([...t.bytes.subarray(0, 3)]).toEqual([HDR + 100, URING_SLOT_EMPTY, HDR + 100]);
      expect([t.readFailures, t.readErrno]).toEqual([1, 14]); // EFAULT
      expect(new DataView(view.buffer, view.byteOffset).getUint32(HDR + 14)).toBe(0);
      expect(new DataView(view.buffer, view.byteOffset).getUint32(2048 + HDR + 14)).toBe(2); // in place, not copied into the failed slot
      expect(uringReadvBatch(ring, t)).toBe(0); // frame 1 is gone
      expect(t.readFailures).toBe(0);
    } finally {
      m.close();
    }
  });

  it('uringReadvBatch: when nothing was read, the exception stands for one failed READV and the status word counts the others', () => {
    const { ring, pkt, tap } = setup();
    const m = shrunkMemory([[PAGE, 1500], [PAGE + 2048, 1500], [0, 1500]]); // two slots in the page that is gone
    try {
      for (const seq of [0, 1]) expect(fdWrite(pkt, frame(100, seq))).toBe(100);
      expect(poll([tap], 2000)).toBe(1);
      // One round: EFAULT, EFAULT, EAGAIN. Both frames are gone.
      expect(nativeErrorOf(() => uringReadvBatch(ring, m.table)).code).toBe('EFAULT');
      expect([m.table.readFailures, m.table.readErrno]).toEqual([1, 14]);
      expect(poll([tap], 0)).toBe(0);
    } finally {
      m.close();
    }
  });

  it('a bad entry refuses the whole burst before anything reaches the kernel', () => {
    const { ring, pkt } = setup();
    const t = new IovecTable(8, 4);
    mem.set(frame(64, 1), 1 << 20);
    t.push(region, 1 << 20, 64);
    t.endFrame();
    t.push(region, REGION - 10, 11); // past the mapping
    t.endFrame();
    const e = nativeErrorOf(() => uringWritevBatch(ring, t));
    expect(e.code).toBe('EFAULT');
    expect(e.syscall).toBe('iovec');
    expect(collect(pkt, 1, 200)).toEqual([]);
    expect(nativeErrorOf(() => uringReadvBatch(ring, t)).code).toBe('EFAULT');
  });

  it('a closed ring is refused (EBADF) and leaves uringFds()', () => {
    const { ring, ringFd } = setup();
    expect(uringFds()).toContain(ringFd);
    uringClose(ring);
    rings.splice(rings.indexOf(ring), 1);
    expect(uringFds()).not.toContain(ringFd);
    expect(nativeErrorOf(() => uringWritevBatch(ring, rxTable(1))).code).toBe('EBADF');
  });
});

describe.runIf(pre.ok)('io_uring restrictions: the ring does I/O on its tap and nothing else', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'lgnet-uring-'));
    writeFileSync(join(dir, 'secret'), 'not for the ring');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('READV on fixed file 0 (the tap) works through uringTry', () => {
    const { ring, pkt } = setup();
    expect(fdWrite(pkt, frame(80, 7))).toBe(80);
    const buf = new Uint8Array(2048);
    expect(uringTry(ring, 'readv', { fd: 0, fixed: true, buf })).toBe(HDR + 80);
    expect(new DataView(buf.buffer).getUint32(HDR + 14)).toBe(7);
  });

  it('OPENAT, CONNECT, NOP, CLOSE and READ are refused (EACCES)', () => {
    const { ring, tap } = setup();
    const path = new TextEncoder().encode(join(dir, 'secret') + '\0');
    expect(uringTry(ring, 'openat', { fd: -100, buf: path })).toBe(-EACCES);
    expect(uringTry(ring, 'openat', { fd: 0, fixed: true, buf: path })).toBe(-EACCES);
    // sockaddr_in for 127.0.0.1:9 (discard)
    const sin = new Uint8Array(16);
    sin.set([2, 0, 0, 9, 127, 0, 0, 1]);
    expect(uringTry(ring, 'connect', { fd: 0, fixed: true, buf: sin })).toBe(-EACCES);
    expect(uringTry(ring, 'nop', { fd: 0, fixed: true })).toBe(-EACCES);
    expect(uringTry(ring, 'close', { fd: tap })).toBe(-EACCES);
    expect(uringTry(ring, 'read', { fd: 0, fixed: true, buf: new Uint8Array(64) })).toBe(-EACCES);
  });

  it('READV/WRITEV on an fd that is not registered are refused, and the file is untouched', () => {
    const { ring } = setup();
    const fd = openSync(join(dir, 'secret'), 'r+');
    try {
      const buf = new Uint8Array(64);
      // A plain fd: IOSQE_FIXED_FILE is required.
      expect(uringTry(ring, 'readv', { fd, buf })).toBe(-EACCES);
      expect(uringTry(ring, 'writev', { fd, buf: new TextEncoder().encode('overwritten') })).toBe(-EACCES);
      // A fixed slot that holds nothing (only slot 0 is registered), and the fd's own number as a slot.
      expect(uringTry(ring, 'readv', { fd: 1, fixed: true, buf })).toBe(-EBADF);
      expect(uringTry(ring, 'readv', { fd, fixed: true, buf })).toBe(-EBADF);
      expect(buf.every((b) => b === 0)).toBe(true);
      const check = Buffer.alloc(64);
      expect(check.subarray(0, readSync(fd, check, 0, 64, 0)).toString()).toBe('not for the ring');
    } finally {
      closeSync(fd);
    }
  });

  it('no register operation once enabled but dropping the files (EACCES): files cannot be added or swapped', () => {
    const { ring } = setup();
    for (const op of [IORING_REGISTER_FILES, IORING_REGISTER_FILES_UPDATE]) {
      const e = nativeErrorOf(() => uringRegister(ring, op));
      expect(e.code).toBe('EACCES');
      expect(e.syscall).toBe('io_uring_register');
    }
  });
});
