/**
 * Tap frames through batched readv/writev, against the real kernel: a tap inside a fresh network
 * namespace, and an AF_PACKET socket bound to the same interface as the other end of the wire.
 *
 *   memfd mapping ──writevBatch──▶ tap fd ──▶ [tap interface in ns] ──▶ AF_PACKET socket
 *   memfd mapping ◀──readvBatch─── tap fd ◀── [tap interface in ns] ◀── AF_PACKET socket
 *
 * The tap has no address and the namespace has IPv6 off, so the kernel sends nothing of its own.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  close,
  fdRead,
  fdWrite,
  IFF,
  IovecTable,
  mappingBuffer,
  memfdCreate,
  mmap,
  munmap,
  poll,
  readvBatch,
  eventfdCreate,
  setCloexec,
  tapGetFeatures,
  tapInfo,
  tapNetnsInode,
  tapOpen,
  tapSetOffload,
  tapSetQueue,
  tapSetVnetHdrSize,
  TUN_F,
  withNetns,
  writevBatch,
} from '../../native/index.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, openPacketIn, openTapIn, type Netns } from '../../harness/netns.ts';
import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { openSync, statSync } from 'node:fs';
import { nativeErrorOf } from '../helpers/errors.ts';
import { shrunkMemory } from '../helpers/shrunk.ts';

const pre = netnsPrerequisites();
/** An fd of `path` opened read-write, as any process may. */
const openRaw = (path: string): number => openSync(path, 'r+');
if (!pre.ok) console.warn(`tap tests skipped: ${pre.why}`);

const ETHERTYPE = 0x88b5; // IEEE local experimental
const REGION = 1 << 20;

let ns: Netns;
let memfd: number;
let region: number;
let mem: Uint8Array;

beforeAll(() => {
  if (!pre.ok) return;
  memfd = memfdCreate('lgnet-tap-test', REGION);
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

function frame(len: number, seq: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01], 0); // dst, src: locally administered
  f[12] = ETHERTYPE >> 8;
  f[13] = ETHERTYPE & 0xff;
  for (let i = 14; i < len; i++) f[i] = (seq * 31 + i) & 0xff;
  return f;
}

/** Frames of our ethertype that arrive on a nonblocking fd within ms (bounded count and time). */
function collect(fd: number, want: number, ms: number): Uint8Array[] {
  const got: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  const deadline = performance.now() + ms;
  for (let spins = 0; spins < 10_000 && got.length < want; spins++) {
    const left = Math.ceil(deadline - performance.now());
    if (left <= 0) break;
    if (poll([fd], left) === 0) break;
    const n = fdRead(fd, buf);
    if (n <= 0) continue;
    if (n >= 14 && ((buf[12]! << 8) | buf[13]!) === ETHERTYPE) got.push(buf.slice(0, n));
  }
  return got;
}

function setupTap(vnetHdr: boolean): { tap: number; name: string; pkt: number } {
  ns = createNetns();
  const t = openTapIn(ns, { vnetHdr, nonblocking: true, address: false });
  const pkt = openPacketIn(ns, t.name);
  return { tap: t.fd, name: t.name, pkt };
}


const HDR_AT = 0; // virtio_net_hdr slots: 64 bytes apart
const FRAME_AT = 64 * 1024; // frames: 2 KiB apart

for (const variant of [
  { name: 'without IFF_VNET_HDR', vnetHdr: false, hdrLen: 0 },
  { name: 'with IFF_VNET_HDR (10-byte header)', vnetHdr: true, hdrLen: 10 },
  { name: 'with IFF_VNET_HDR and TUNSETVNETHDRSZ 12', vnetHdr: true, hdrLen: 12 },
]) {
  describe.runIf(pre.ok)(`tap ${variant.name}`, () => {
    function open() {
      const s = setupTap(variant.vnetHdr);
      if (variant.hdrLen === 12) tapSetVnetHdrSize(s.tap, 12);
      return s;
    }

    it('writevBatch: frames split over several iovecs arrive byte for byte at the AF_PACKET socket', () => {
      const { tap, pkt } = open();
      const sizes = [64, 1514, 60, 300, 1000];
      const table = new IovecTable(64, 8);
      const sent: Uint8Array[] = [];
      sizes.forEach((len, i) => {
        const f = frame(len, i);
        sent.push(f);
        const at = FRAME_AT + i * 2048;
        mem.set(f, at);
        if (variant.hdrLen > 0) {
          mem.fill(0, HDR_AT + i * 64, HDR_AT + i * 64 + variant.hdrLen); // no offloads, GSO_NONE
          table.push(region, HDR_AT + i * 64, variant.hdrLen);
        }
        table.push(region, at, 14); // Ethernet header
        table.push(region, at + 14, len - 14); // the rest
        table.endFrame();
      });
      const done = writevBatch(tap, table);
      expect(done).toBe(sizes.length);
      for (let i = 0; i < sizes.length; i++) expect(table.bytes[i]).toBe(variant.hdrLen + sizes[i]!);
      const got = collect(pkt, sizes.length, 2000);
      expect(got.length).toBe(sizes.length);
      got.forEach((g, i) => expect(Buffer.from(g).equals(Buffer.from(sent[i]!))).toBe(true));
    });

    it('readvBatch: frames sent by the AF_PACKET socket land in the mapping; EAGAIN ends the batch', () => {
      const { tap, pkt } = open();
      const table = new IovecTable(64, 8);
      const slots = 8;
      for (let i = 0; i < slots; i++) {
        if (variant.hdrLen > 0) table.push(region, HDR_AT + i * 64, variant.hdrLen);
        table.push(region, FRAME_AT + i * 2048, 100); // split the buffer: 100 + 1948 bytes
        table.push(region, FRAME_AT + i * 2048 + 100, 1948);
        table.endFrame();
      }
      // Nothing pending: EAGAIN on the first frame is not an error.
      expect(readvBatch(tap, table)).toBe(0);

      const sizes = [64, 1514, 200];
      const sent = sizes.map((len, i) => frame(len, 100 + i));
      for (const f of sent) expect(fdWrite(pkt, f)).toBe(f.length);
      expect(poll([tap], 2000)).toBe(1);
      const done = readvBatch(tap, table);
      expect(done).toBe(sizes.length); // the 4th readv hit EAGAIN
      for (let i = 0; i < done; i++) {
        expect(table.bytes[i]).toBe(variant.hdrLen + sizes[i]!);
        const at = FRAME_AT + i * 2048;
        expect(Buffer.from(mem.subarray(at, at + sizes[i]!)).equals(Buffer.from(sent[i]!))).toBe(true);
        if (variant.hdrLen > 0) {
          const hdr = mem.subarray(HDR_AT + i * 64, HDR_AT + i * 64 + variant.hdrLen);
          expect(hdr[1]).toBe(0); // gso_type NONE
        }
      }
    });

    it('readvBatch: a frame longer than its buffers reads as their room + 1, not as one that fills them; written says what went in', () => {
      const { tap, pkt } = open();
      const table = new IovecTable(16, 4);
      for (let i = 0; i < 4; i++) {
        if (variant.hdrLen > 0) table.push(region, HDR_AT + i * 64, variant.hdrLen);
        table.push(region, FRAME_AT + i * 2048, 300);
        table.endFrame();
      }
      const room = variant.hdrLen + 300;
      // Too long, exactly the room, short: a tap alone would report the first two alike (room).
      const sizes = [1000, 300, 100];
      for (const [i, len] of sizes.entries()) expect(fdWrite(pkt, frame(len, 40 + i))).toBe(len);
      expect(poll([tap], 2000)).toBe(1);
      mem.fill(0xee, FRAME_AT + 3 * 2048, FRAME_AT + 3 * 2048 + 300);
      table.written.fill(7);
      expect(readvBatch(tap, table)).toBe(3);
      expect([...table.bytes.subarray(0, 3)]).toEqual([room + 1, room, variant.hdrLen + 100]);
      expect([...table.written.subarray(0, 4)]).toEqual([room, room, variant.hdrLen + 100, 0]);
      for (const [i, len] of sizes.entries()) {
        const at = FRAME_AT + i * 2048;
        const n = Math.min(len, 300);
        expect(Buffer.from(mem.subarray(at, at + n)).equals(Buffer.from(frame(len, 40 + i).subarray(0, n))), `frame ${i}`).toBe(true);
      }
      expect(mem.subarray(FRAME_AT + 3 * 2048, FRAME_AT + 3 * 2048 + 300).every((b) => b === 0xee)).toBe(true);
    });
  });
}

describe.runIf(pre.ok)('tap: bounds checks and errors', () => {
  it('an out-of-bounds entry anywhere in the batch refuses the whole batch before any syscall', () => {
    const { tap, pkt } = setupTap(false);
    const good = frame(64, 1);
    mem.set(good, FRAME_AT);
    const bad: Array<[string, (t: IovecTable) => void, string]> = [
      ['unknown mapping id', (t) => t.push(region + 1, 0, 10), 'EFAULT'],
      ['offset + length past the mapping', (t) => t.push(region, REGION - 10, 11), 'EFAULT'],
      ['offset past the mapping', (t) => t.push(region, REGION + 1, 0), 'EFAULT'],
      [
        'offset near 2^64 (overflow)',
        (t) => {
          t.push(region, 0, 64);
          const w = (t.count - 1) * 4;
          t.entries[w + 1] = 0xffffffff;
          t.entries[w + 2] = 0xffffffff;
        },
        'EFAULT',
      ],
    ];
    for (const [what, addBad, code] of bad) {
      const t = new IovecTable(8, 4);
      t.push(region, FRAME_AT, 64); // a good frame first
      t.endFrame();
      addBad(t);
      t.endFrame();
      const e = nativeErrorOf(() => writevBatch(tap, t));
      expect(e.code, what).toBe(code);
      expect(e.syscall, what).toBe('iovec');
    }
    // Frame-shape mistakes: EINVAL.
    const t = new IovecTable(8, 4);
    t.push(region, FRAME_AT, 64);
    t.endFrame();
    t.frameEnd[1] = 0; // goes backwards
    expect(nativeErrorOf(() => writevBatch(tap, t, 2)).code).toBe('EINVAL');
    t.frameEnd[1] = 9; // past the table
    expect(nativeErrorOf(() => writevBatch(tap, t, 2)).code).toBe('EINVAL');
    const wide = new IovecTable(1100, 1);
    for (let i = 0; i < 1025; i++) wide.push(region, FRAME_AT, 0);
    wide.endFrame();
    expect(nativeErrorOf(() => writevBatch(tap, wide)).code).toBe('EINVAL'); // > IOV_MAX
    const full = new IovecTable(1100, 1);
    for (let i = 0; i < 1024; i++) full.push(region, FRAME_AT, 1);
    full.endFrame();
    const r = nativeErrorOf(() => readvBatch(tap, full)); // IOV_MAX: a read keeps one for its spill byte
    expect([r.code, r.syscall]).toEqual(['EINVAL', 'iovec']);
    expect(() => writevBatch(tap, t, 5)).toThrow(RangeError); // more frames than the table has

    // The good first frames were never written.
    expect(collect(pkt, 1, 300)).toEqual([]);
    // And the same good frame on its own goes through.
    const ok = new IovecTable(1, 1);
    ok.push(region, FRAME_AT, 64);
    ok.endFrame();
    expect(writevBatch(tap, ok)).toBe(1);
    expect(collect(pkt, 1, 2000).length).toBe(1);
  });

  it('readvBatch: a readv that fails past the first frame ends the batch and says so; the tap dropped that frame', () => {
    const { tap, pkt } = setupTap(true);
    tapSetVnetHdrSize(tap, 12);
    // The tap's copy of the header into the missing page fails with EFAULT. (A tap checks only the
    // header's copy: a fault in the frame's bytes reads as success.)
    const m = shrunkMemory();
    const { id, view, table: t } = m;
    try {
      for (const seq of [0, 1, 2]) expect(fdWrite(pkt, frame(100, seq))).toBe(100);
      expect(poll([tap], 2000)).toBe(1);
      t.written.fill(7);
      expect(readvBatch(tap, t)).toBe(1);
      expect(t.bytes[0]).toBe(12 + 100);
      expect([t.readFailures, t.readErrno]).toEqual([1, 14]); // EFAULT
      expect(t.written[1]).toBe(1500); // a failed read may have written any of its buffers
      // Frame 1 is gone: the next read gets frame 2.
      const next = new IovecTable(1, 1);
      next.push(id, 2048, 1500);
      next.endFrame();
      expect(readvBatch(tap, next)).toBe(1);
      expect(next.readFailures).toBe(0);
      expect(Buffer.from(view.subarray(2048 + 12, 2048 + 112)).equals(Buffer.from(frame(100, 2)))).toBe(true);
      expect(Buffer.from(view.subarray(12, 112)).equals(Buffer.from(frame(100, 0)))).toBe(true);
    } finally {
      m.close();
    }
  });

  it('a bad fd fails with EBADF and the syscall name', () => {
    const t = new IovecTable(1, 1);
    t.push(region, 0, 10);
    t.endFrame();
    const fd = memfdCreate('x', 0);
    close(fd);
    const w = nativeErrorOf(() => writevBatch(fd, t));
    expect([w.code, w.syscall]).toEqual(['EBADF', 'writev']);
    const r = nativeErrorOf(() => readvBatch(fd, t));
    expect([r.code, r.syscall]).toEqual(['EBADF', 'readv']);
    expect(nativeErrorOf(() => tapSetVnetHdrSize(fd, 12)).syscall).toBe('ioctl(TUNSETVNETHDRSZ)');
  });

  it('tapSetQueue: a detached queue takes none of the frames sent to the tap; attached again, it takes its share', () => {
    ns = createNetns();
    const q0 = openTapIn(ns, { vnetHdr: false, multiQueue: true, nonblocking: true, address: false });
    const q1 = withNetns(ns.path, () => tapOpen({ name: q0.name, vnetHdr: false, multiQueue: true, nonblocking: true }));
    ns.track(q1.fd);
    const wire = openPacketIn(ns, q0.name);
    // One datagram per source port: the tap picks a queue for each by a hash of its flow.
    const send = (flows: number, base: number): void => {
      for (let k = 0; k < flows; k++) {
        const f = udpFrame({ srcMac: mac('02:00:00:00:00:01'), dstMac: mac('02:00:00:00:00:02'), srcIp: ip4('10.9.0.1'), dstIp: ip4('10.9.0.2'), srcPort: base + k, dstPort: 9, payload: new Uint8Array(16) });
        expect(fdWrite(wire, f)).toBe(f.length);
      }
    };
    const buf = new Uint8Array(2048);
    const drain = (fd: number): number => {
      let n = 0;
      while (fdRead(fd, buf) > 0) n++;
      return n;
    };
    tapSetQueue(q1.fd, false);
    expect(nativeErrorOf(() => tapSetQueue(q1.fd, false))).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETQUEUE)' });
    send(64, 30000);
    expect([drain(q0.fd), drain(q1.fd)]).toEqual([64, 0]);
    tapSetQueue(q1.fd, true);
    expect(nativeErrorOf(() => tapSetQueue(q1.fd, true)).code).toBe('EINVAL');
    send(64, 31000);
    const got = [drain(q0.fd), drain(q1.fd)];
    expect(got[0]! + got[1]!).toBe(64);
    expect(got[0], `${got}`).toBeGreaterThan(0); // 64 flows on one queue of two: 2^-63
    expect(got[1], `${got}`).toBeGreaterThan(0);
    // A single-queue tap has no queue to detach.
    const single = openTapIn(ns, { vnetHdr: false, address: false });
    expect(nativeErrorOf(() => tapSetQueue(single.fd, false)).code).toBe('EINVAL');
  });

  it('multi-queue taps attach by name; features and offloads', () => {
    ns = createNetns();
    const first = openTapIn(ns, { vnetHdr: true, multiQueue: true, nonblocking: true, address: false });
    const second = withNetns(ns.path, () => tapOpen({ name: first.name, vnetHdr: true, multiQueue: true }));
    ns.track(second.fd);
    expect(second.name).toBe(first.name);
    const features = tapGetFeatures(first.fd);
    expect(features & IFF.TAP).toBe(IFF.TAP);
    expect(features & IFF.VNET_HDR).toBe(IFF.VNET_HDR);
    expect(features & IFF.MULTI_QUEUE).toBe(IFF.MULTI_QUEUE);
    tapSetOffload(first.fd, TUN_F.CSUM | TUN_F.TSO4 | TUN_F.TSO6 | TUN_F.TSO_ECN);
    tapSetOffload(first.fd, 0);
    // A single-queue tap cannot be attached twice.
    const single = openTapIn(ns, { vnetHdr: false, address: false });
    const e = nativeErrorOf(() => withNetns(ns.path, () => tapOpen({ name: single.name, vnetHdr: false })));
    expect(e.syscall).toBe('ioctl(TUNSETIFF)');
    expect(e.code).toBe('EBUSY');
  });

  it('tapInfo names the interface of an fd (a detached queue too) and its flags; an unattached tun fd and an eventfd fail', () => {
    ns = createNetns();
    const mq = openTapIn(ns, { vnetHdr: true, multiQueue: true, nonblocking: true, address: false });
    const q1 = withNetns(ns.path, () => tapOpen({ name: mq.name, vnetHdr: true, multiQueue: true }));
    ns.track(q1.fd);
    const a = tapInfo(mq.fd);
    expect(a.name).toBe(mq.name);
    expect(a.flags & (IFF.TAP | IFF.NO_PI | IFF.VNET_HDR | IFF.MULTI_QUEUE)).toBe(IFF.TAP | IFF.NO_PI | IFF.VNET_HDR | IFF.MULTI_QUEUE);
    expect(a.flags & IFF.TUN).toBe(0);
    expect(tapInfo(q1.fd)).toEqual(a);
    const plain = openTapIn(ns, { vnetHdr: false, address: false });
    const p = tapInfo(plain.fd);
    expect(p.name).toBe(plain.name);
    expect(p.flags & (IFF.VNET_HDR | IFF.MULTI_QUEUE)).toBe(0);
    // A detached queue still names its interface (it can be attached again).
    tapSetQueue(q1.fd, false);
    expect(tapInfo(q1.fd)).toEqual({ name: a.name, flags: a.flags | IFF.DETACH_QUEUE });
    tapSetQueue(q1.fd, true);
    // A tun fd attached to nothing has no interface.
    const bare = openRaw('/dev/net/tun');
    try {
      expect(nativeErrorOf(() => tapInfo(bare))).toMatchObject({ code: 'EBADFD', syscall: 'ioctl(TUNGETIFF)' });
    } finally {
      close(bare);
    }
    const efd = eventfdCreate({ nonblocking: true });
    try {
      expect(['ENOTTY', 'EINVAL']).toContain(nativeErrorOf(() => tapInfo(efd)).code);
      // setCloexec on any fd, both ways.
      setCloexec(efd, false);
      setCloexec(efd, true);
    } finally {
      close(efd);
    }
    expect(nativeErrorOf(() => setCloexec(efd, true))).toMatchObject({ code: 'EBADF', syscall: 'fcntl' });
  });

  it("tapNetnsInode names the namespace of the tap's interface, not the caller's; an unattached tun fd fails", () => {
    ns = createNetns();
    const t = openTapIn(ns, { vnetHdr: true, nonblocking: true, address: false });
    const inode = tapNetnsInode(t.fd);
    expect(inode).toBe(statSync(ns.path).ino);
    expect(inode).not.toBe(statSync('/proc/self/ns/net').ino);
    const bare = openRaw('/dev/net/tun');
    try {
      expect(nativeErrorOf(() => tapNetnsInode(bare))).toMatchObject({ code: 'EBADFD', syscall: 'ioctl(TUNGETDEVNETNS)' });
    } finally {
      close(bare);
    }
  });
});
