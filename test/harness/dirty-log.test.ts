/**
 * The harness's dirty-log checker itself (harness/dirty-log.ts), with no back-end: DirtyLog's bits are
 * where the spec puts them (byte p >> 3, bit p & 7; QEMU's little-endian u64 words), collect() takes
 * and clears them, and the auditor finds what it exists to find: a page the "device" wrote without
 * marking is reported with what lives there, while the driver's own writes are not. The front-end's
 * side of SET_LOG_BASE and of starting/stopping logging is checked against a hand-played back-end on
 * a socketpair.
 */
import { describe, expect, it } from 'vitest';
import { readdirSync, readlinkSync } from 'node:fs';
import * as native from '../../native/index.ts';
import { DIRTY_PAGE_SIZE, DirtyLog, DirtyLogAudit, usedNotTaken } from '../../harness/dirty-log.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { SplitRingBuilder } from '../../harness/rings.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { mask } from '../../device/features.ts';
import {
  decodeHeader, decodeLog, decodeU64, decodeVringAddr, encodeMessage, encodeU64, F_LOG_ALL, FLAGS, HEADER_SIZE,
  PROTOCOL_F, REQ, VRING_F_LOG,
} from '../../sandbox/vhost-user/messages.ts';
import { availAreaSize, descAreaSize } from '../../vring/index.ts';

const PAGE = DIRTY_PAGE_SIZE;

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** A second mapping of the log's memfd, as a back-end would hold it: the whole file, bytes. */
function backendView(log: DirtyLog): { u8: Uint8Array; close(): void } {
  const id = native.mmap(log.fd, 0, log.offset + log.size + log.tail);
  return { u8: new Uint8Array(native.mappingBuffer(id)), close: () => native.munmap(id) };
}

describe('DirtyLog', () => {
  it('sizes the bitmap in whole u64 words, one bit per 4 KiB page', () => {
    expect(DirtyLog.sizeFor(0)).toBe(8);
    expect(DirtyLog.sizeFor(1)).toBe(8);
    expect(DirtyLog.sizeFor(64 * PAGE)).toBe(8);
    expect(DirtyLog.sizeFor(64 * PAGE + 1)).toBe(16);
    expect(DirtyLog.sizeFor(16 << 20)).toBe(512); // 4096 pages
    const ram = new GuestRam(1 << 20, { gpa: 3 << 20 });
    const log = new DirtyLog(ram);
    try {
      expect(log.size).toBe(DirtyLog.sizeFor(4 << 20)); // covers up to the highest address, not the size
      expect(log.pages).toBe(log.size * 8);
    } finally {
      log.close();
      ram.close();
    }
  });

  it('puts page p at byte p >> 3, bit p & 7 of the shared file (QEMU u64 word p >> 6, bit p & 63)', () => {
    const log = new DirtyLog(64 << 20, { offset: PAGE });
    const peer = backendView(log);
    try {
      const pages = [0, 1, 7, 8, 63, 64, 1000, 16383];
      for (const p of pages) log.mark(p * PAGE + 123, 1);
      const bitmap = peer.u8.subarray(log.offset, log.offset + log.size);
      const words = new DataView(bitmap.buffer, bitmap.byteOffset, bitmap.byteLength);
      for (const p of pages) {
        expect(bitmap[p >> 3]! & (1 << (p & 7))).not.toBe(0);
        expect((words.getBigUint64((p >> 6) * 8, true) >> BigInt(p & 63)) & 1n).toBe(1n);
      }
      expect(bitmap.reduce((n, b) => n + popcount(b), 0)).toBe(pages.length);
      expect(peer.u8.subarray(0, log.offset).every((b) => b === 0)).toBe(true); // the offset is respected
      expect(log.dirtyPages()).toEqual(pages.map((p) => p * PAGE));
    } finally {
      peer.close();
      log.close();
    }
  });

  it('reads what a back-end marks through its own mapping; a range marks every page it touches', () => {
    const log = new DirtyLog(8 << 20);
    const peer = backendView(log);
    try {
      peer.u8[5] = 0b1000_0001; // pages 40 and 47
      expect(log.isDirty(40 * PAGE)).toBe(true);
      expect(log.isDirty(47 * PAGE + PAGE - 1)).toBe(true);
      expect(log.isDirty(41 * PAGE)).toBe(false);
      expect(log.isDirty((8 << 20) + PAGE * 64)).toBe(false); // past the bitmap: never
      log.mark(2 * PAGE - 1, 2); // straddles pages 1 and 2
      expect(log.dirtyPages()).toEqual([1, 2, 40, 47].map((p) => p * PAGE));
    } finally {
      peer.close();
      log.close();
    }
  });

  it('collect() fetches and clears per word; clear() empties; bytes past the last whole word count too', () => {
    const log = new DirtyLog(0, { size: 13 }); // 3 words and one trailing byte: 104 pages
    try {
      log.mark(0, 1);
      log.mark(33 * PAGE, 1);
      log.mark(103 * PAGE, 1); // in the trailing byte
      expect(log.collect()).toEqual([0, 33 * PAGE, 103 * PAGE]);
      expect(log.collect()).toEqual([]);
      expect(log.dirtyPages()).toEqual([]);
      log.mark(5 * PAGE, 10 * PAGE);
      expect(log.dirtyPages().length).toBe(10);
      log.clear();
      expect(log.dirtyPages()).toEqual([]);
      log.mark(104 * PAGE, 1); // past the bitmap: dropped, never written outside it
      expect(log.dirtyPages()).toEqual([]);
      expect(log.strayBytes()).toBe(0);
    } finally {
      log.close();
    }
  });

  it('reports bytes written outside the bitmap (a back-end that ignored mmap_offset or mmap_size)', () => {
    const log = new DirtyLog(1 << 20, { offset: PAGE, tail: 64 });
    const peer = backendView(log);
    try {
      expect(log.strayBytes()).toBe(0);
      peer.u8[0] = 1; // as if the offset were ignored
      peer.u8[PAGE + log.size + 3] = 1; // past mmap_size
      expect(log.strayBytes()).toBe(2);
    } finally {
      peer.close();
      log.close();
    }
  });

  it('refuses a misaligned offset, and close() gives the fd back (idempotent)', () => {
    expect(() => new DirtyLog(1 << 20, { offset: 100 })).toThrow(RangeError);
    const before = fdCount();
    const log = new DirtyLog(1 << 20);
    expect(fdCount()).toBe(before + 1);
    expect(readlinkSync(`/proc/self/fd/${log.fd}`)).toContain(log.name);
    log.close();
    log.close();
    expect(fdCount()).toBe(before);
  });
});

/** A driver over fresh RAM with a log and an auditor, and the device side played by a ring builder. */
function rig(queueSize = 8) {
  const ram = new GuestRam(4 << 20);
  const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1'), queueSize });
  const log = new DirtyLog(ram);
  const audit = new DirtyLogAudit(ram, log, { driver: drv });
  const rx = drv.rx[0]!;
  const rxRing = SplitRingBuilder.over(ram.mem, rx.setup);
  return {
    ram, drv, log, audit, rx, rxRing,
    /** The device's side of one RX completion: frame bytes into the next offered buffer, the used element, used.idx. */
    completeRx(n: number, usedSlot: number, opts: { markBuffer?: boolean; markUsed?: boolean } = {}): { addr: number; len: number } {
      const head = ram.read(rx.setup.avail + 4 + 2 * usedSlot, 2);
      const h = head[0]! | (head[1]! << 8);
      const addr = rx.slots[rx.slotOf[h]!]!;
      const bytes = new Uint8Array(12 + n).map((_, i) => (i < 12 ? 0 : (i * 7 + 1) & 255 || 1));
      bytes[10] = 1; // num_buffers
      ram.write(addr, bytes);
      if (opts.markBuffer !== false) log.mark(addr, bytes.length);
      rxRing.setUsedElem(usedSlot, h, bytes.length);
      rxRing.setUsedIdx(usedSlot + 1);
      if (opts.markUsed !== false) log.mark(rx.setup.used, 4 + 8 * (usedSlot + 1));
      return { addr, len: bytes.length };
    },
    close() {
      drv.close();
      log.close();
      ram.close();
    },
  };
}

describe('DirtyLogAudit', () => {
  it('names every queue area and buffer of the driver, split by who writes it', () => {
    const r = rig();
    try {
      const l = DirtyLogAudit.layoutOf(r.drv);
      const rx = r.drv.rx[0]!.setup;
      const tx = r.drv.tx[0]!.setup;
      expect(l.driverWritten).toContainEqual({ gpa: rx.desc, len: descAreaSize(8), what: 'desc table of queue 0' });
      expect(l.driverWritten).toContainEqual({ gpa: tx.avail, len: availAreaSize(8), what: 'avail ring of queue 1' });
      expect(l.deviceWritten.map((x) => x.what)).toContain('used ring of queue 1');
      expect(l.deviceWritten.filter((x) => x.what.startsWith('RX buffer')).length).toBe(8);
      expect(l.driverWritten.filter((x) => x.what.startsWith('TX buffer')).length).toBe(8);
      expect(l.driverWritten.find((x) => x.what === 'TX buffer 1 of queue 1')!.gpa).toBe(r.drv.tx[0]!.slots[1]);
    } finally {
      r.close();
    }
  });

  it('ignores what the driver writes: RX buffers posted, TX frames queued', () => {
    const r = rig();
    try {
      r.audit.begin();
      r.drv.fillRx();
      for (let i = 0; i < 5; i++) expect(r.drv.send(new Uint8Array(1400).fill(i + 1))).toBe(true);
      const report = r.audit.check();
      expect(report.changedPages).toBe(0);
      expect(report.ok).toBe(true);
    } finally {
      r.close();
    }
  });

  it('passes a device that marks what it writes, and reports an RX buffer written without a mark', () => {
    const r = rig();
    try {
      r.drv.fillRx();
      r.audit.begin();
      r.completeRx(100, 0);
      let report = r.audit.check();
      expect(report.changedPages).toBe(2); // the buffer's page and the used ring's
      expect(report.ok).toBe(true);

      const { addr } = r.completeRx(200, 1, { markBuffer: false });
      report = r.audit.check();
      expect(report.ok).toBe(false);
      expect(report.unlogged.map((u) => u.gpa)).toEqual([Math.floor(addr / PAGE) * PAGE]);
      expect(report.unlogged[0]!.what.some((w) => /^RX buffer \d of queue 0$/.test(w))).toBe(true);
      expect(report.summary).toMatch(/RX buffer \d of queue 0.*not logged/);
    } finally {
      r.close();
    }
  });

  it('reports a used ring written without a mark, and names it', () => {
    const r = rig();
    try {
      r.drv.fillRx();
      r.audit.begin();
      r.completeRx(60, 0, { markUsed: false });
      const report = r.audit.check();
      expect(report.unlogged.length).toBe(1);
      expect(report.unlogged[0]!.gpa).toBe(r.rx.setup.used - (r.rx.setup.used % PAGE));
      expect(report.unlogged[0]!.what).toContain('used ring of queue 0');
    } finally {
      r.close();
    }
  });

  it('excludes driver bytes one by one: a device write beside them on the same page still counts', () => {
    const r = rig();
    try {
      const page = 3 << 20; // unallocated by the driver
      r.audit.exclude({ gpa: page, len: 100, what: 'the test’s own bytes' });
      r.audit.begin();
      r.ram.write(page, new Uint8Array(100).fill(9));
      expect(r.audit.check().ok).toBe(true);
      r.ram.write(page + 100, new Uint8Array([1]));
      const report = r.audit.check();
      expect(report.unlogged).toEqual([{ gpa: page, what: ['the test’s own bytes'], changedBytes: 1, required: [] }]);
      r.log.mark(page + 4095, 1);
      expect(r.audit.check().ok).toBe(true);
    } finally {
      r.close();
    }
  });

  it('an unmarked write anywhere else is reported as unlabelled', () => {
    const r = rig();
    try {
      r.audit.begin();
      r.ram.write((3 << 20) + 5 * PAGE + 7, new Uint8Array([0xaa, 0xbb]));
      const report = r.audit.check();
      expect(report.unlogged).toEqual([{ gpa: (3 << 20) + 5 * PAGE, what: ['unlabelled'], changedBytes: 2, required: [] }]);
    } finally {
      r.close();
    }
  });

  it('require(): a range written with the bytes it already held must be marked too', () => {
    const r = rig();
    try {
      r.drv.fillRx();
      r.audit.begin();
      const { addr, len } = r.completeRx(100, 0, { markBuffer: false });
      r.audit.snapshot(); // as if the bytes had been there before: the diff cannot see them
      r.audit.require(addr, len, 'RX frame 0');
      const report = r.audit.check();
      expect(report.unlogged.length).toBe(1);
      expect(report.unlogged[0]!.required).toEqual(['RX frame 0']);
      expect(report.unlogged[0]!.changedBytes).toBe(0);
      r.log.mark(addr, len);
      expect(r.audit.check().ok).toBe(true);
      r.audit.snapshot(); // forgets required ranges
      r.log.clear();
      expect(r.audit.check().ok).toBe(true);
    } finally {
      r.close();
    }
  });

  it('sync() plays pre-copy rounds: marked-then-written pages are lost and reported, written-then-marked ones are not', async () => {
    const r = rig();
    try {
      const page = 3 << 20;
      r.audit.begin();
      // Correct order: write, mark; a round copies the page; later writes are marked again.
      r.ram.write(page, new Uint8Array([1]));
      r.log.mark(page, 1);
      expect(r.audit.sync()).toBe(1);
      expect(r.log.dirtyPages()).toEqual([]); // collected
      expect(r.audit.check().ok).toBe(true);
      r.ram.write(page + 1, new Uint8Array([2]));
      r.log.mark(page + 1, 1);
      expect(r.audit.check().ok).toBe(true);
      // Wrong order: mark, a round collects and copies, then the write lands and nothing marks it.
      r.log.mark(page + PAGE, 1);
      r.audit.sync();
      r.ram.write(page + PAGE, new Uint8Array([3]));
      const report = r.audit.check();
      expect(report.unlogged.map((u) => u.gpa)).toEqual([page + PAGE]);
    } finally {
      r.close();
    }
  });

  it('sync(): a required range collected by an earlier round still counts as marked', () => {
    const r = rig();
    try {
      const page = 3 << 20;
      r.audit.begin();
      r.ram.write(page, new Uint8Array(10).fill(1));
      r.log.mark(page, 10);
      r.audit.require(page, 10, 'RX frame 0');
      r.audit.sync();
      expect(r.audit.check().ok).toBe(true);
      r.audit.begin(); // a new period forgets what was synced
      r.audit.require(page, 10, 'RX frame 0');
      expect(r.audit.check().unlogged.map((u) => u.required)).toEqual([['RX frame 0']]);
    } finally {
      r.close();
    }
  });

  it('replaceLog(): until the next begin(), a mark in the old log or the new one counts', () => {
    const r = rig();
    const next = new DirtyLog(r.ram);
    try {
      const page = 3 << 20;
      r.audit.begin();
      r.ram.write(page, new Uint8Array([1]));
      r.log.mark(page, 1); // in the old log, before the switch
      r.audit.replaceLog(next);
      r.ram.write(page + PAGE, new Uint8Array([1]));
      next.mark(page + PAGE, 1);
      expect(r.audit.log).toBe(next);
      expect(r.audit.check().ok).toBe(true);
      r.audit.begin(); // only the new log from here on
      r.ram.write(page + 2 * PAGE, new Uint8Array([1]));
      r.log.mark(page + 2 * PAGE, 1); // a mark in the replaced log does not count any more
      expect(r.audit.check().unlogged.map((u) => u.gpa)).toEqual([page + 2 * PAGE]);
    } finally {
      next.close();
      r.close();
    }
  });

  it('usedNotTaken() lists the completions the driver has not taken, with their buffers', () => {
    const r = rig(4);
    try {
      r.drv.fillRx();
      expect(usedNotTaken(r.rx)).toEqual([]);
      const a = r.completeRx(100, 0);
      const b = r.completeRx(300, 1);
      const pending = usedNotTaken(r.rx);
      expect(pending.map((p) => [p.idx, p.addr, p.len])).toEqual([[0, a.addr, a.len], [1, b.addr, b.len]]);
      const got = r.drv.receive();
      expect(got.map((f) => f.frame.length)).toEqual([100, 300]);
      expect(usedNotTaken(r.rx)).toEqual([]);
    } finally {
      r.close();
    }
  });

  it('counts stray bytes of the log file as a failure', () => {
    const r = rig();
    const log = new DirtyLog(r.ram, { tail: 8 });
    const peer = backendView(log);
    try {
      const audit = new DirtyLogAudit(r.ram, log, { driver: r.drv });
      audit.begin();
      peer.u8[log.size + 1] = 0xff;
      const report = audit.check();
      expect(report.unlogged).toEqual([]);
      expect(report.strayLogBytes).toBe(1);
      expect(report.ok).toBe(false);
    } finally {
      peer.close();
      log.close();
      r.close();
    }
  });
});

// ---- the front-end's side, against a back-end played by hand on a socketpair

interface Msg {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

/** The next message the front-end sent on `fd` (waits up to 2 s without blocking the event loop). */
async function nextMessage(fd: number): Promise<Msg> {
  const deadline = Date.now() + 2000;
  while (!native.poll([fd], 0)) {
    if (Date.now() > deadline) throw new Error('the front-end sent nothing');
    await new Promise((r) => setTimeout(r, 5));
  }
  const hdr = new Uint8Array(HEADER_SIZE);
  const r = native.recvMsg(fd, hdr);
  expect(r.bytes).toBe(HEADER_SIZE);
  const h = decodeHeader(hdr);
  const payload = new Uint8Array(h.size);
  for (let got = 0; got < h.size;) got += native.recvMsg(fd, payload.subarray(got)).bytes;
  return { request: h.request, flags: h.flags, payload, fds: r.fds };
}

function reply(fd: number, request: number, payload: Uint8Array): void {
  native.sendMsg(fd, encodeMessage(request, FLAGS.VERSION | FLAGS.REPLY, payload));
}

function pair(protocol: bigint): { fe: VhostUserFrontend; be: number; dropBackend(): void; close(): void } {
  const [a, be] = native.unixSocketpair();
  const fe = VhostUserFrontend.fromFd(a, { timeoutMs: 1000 });
  fe.protocolFeatures = protocol;
  let open = true;
  const dropBackend = () => {
    if (open) native.close(be);
    open = false;
  };
  return { fe, be, dropBackend, close: () => { fe.close(); dropBackend(); } };
}

const LOG_SHMFD = 1n << BigInt(PROTOCOL_F.LOG_SHMFD);

describe('VhostUserFrontend: SET_LOG_BASE and starting/stopping the log', () => {
  it('setLogBase sends size, offset and exactly one fd, and waits for the reply LOG_SHMFD promises', async () => {
    const p = pair(LOG_SHMFD);
    const log = new DirtyLog(1 << 20, { offset: PAGE });
    try {
      let done = false;
      const call = p.fe.setLogBase(log.fd, log.size, log.offset).then(() => (done = true));
      const m = await nextMessage(p.be);
      expect(m.request).toBe(REQ.SET_LOG_BASE);
      expect(m.flags & FLAGS.NEED_REPLY).toBe(0);
      expect(decodeLog(m.payload)).toEqual({ mmapSize: BigInt(log.size), mmapOffset: BigInt(PAGE) });
      expect(m.fds.length).toBe(1);
      expect(readlinkSync(`/proc/self/fd/${m.fds[0]}`)).toContain(log.name);
      native.close(m.fds[0]!);
      await new Promise((r) => setTimeout(r, 20));
      expect(done).toBe(false); // still waiting for the reply
      reply(p.be, REQ.SET_LOG_BASE, encodeU64(0));
      await call;
      expect(done).toBe(true);
    } finally {
      log.close();
      p.close();
    }
  });

  it('setLogBase: without LOG_SHMFD waits for nothing; a non-zero reply is a refusal; a drop is FRONTEND_CLOSED', async () => {
    const log = new DirtyLog(1 << 20);
    const a = pair(0n);
    try {
      await a.fe.setLogBase(log.fd, log.size);
      const m = await nextMessage(a.be);
      for (const fd of m.fds) native.close(fd);
    } finally {
      a.close();
    }
    const b = pair(LOG_SHMFD);
    try {
      const call = b.fe.setLogBase(log.fd, log.size);
      const m = await nextMessage(b.be);
      for (const fd of m.fds) native.close(fd);
      reply(b.be, REQ.SET_LOG_BASE, encodeU64(1));
      await expect(call).rejects.toMatchObject({ code: 'FRONTEND_NACK' });
    } finally {
      b.close();
    }
    const c = pair(LOG_SHMFD);
    try {
      const call = c.fe.setLogBase(log.fd, log.size);
      const m = await nextMessage(c.be);
      for (const fd of m.fds) native.close(fd);
      c.dropBackend();
      await expect(call).rejects.toMatchObject({ code: 'FRONTEND_CLOSED' });
    } finally {
      c.close();
      log.close();
    }
  });

  it('startDirtyLog: SET_LOG_BASE, SET_FEATURES with LOG_ALL, SET_VRING_ADDR with F_LOG at the used ring; stopDirtyLog undoes both', async () => {
    const p = pair(LOG_SHMFD);
    const ram = new GuestRam(2 << 20);
    const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1'), queueSize: 8 });
    const LOG_ALL = 1n << BigInt(F_LOG_ALL);
    try {
      // Pretend negotiation happened: what GET_FEATURES offered and SET_FEATURES sent.
      p.fe.offeredFeatures = mask('VERSION_1') | LOG_ALL;
      p.fe.features = mask('VERSION_1');
      const start = p.fe.startDirtyLog(drv, ram);
      const base = await nextMessage(p.be);
      expect(base.request).toBe(REQ.SET_LOG_BASE);
      expect(decodeLog(base.payload).mmapSize).toBe(BigInt(DirtyLog.sizeFor(2 << 20)));
      for (const fd of base.fds) native.close(fd);
      reply(p.be, REQ.SET_LOG_BASE, encodeU64(0));
      const feat = await nextMessage(p.be);
      expect(feat.request).toBe(REQ.SET_FEATURES);
      expect(decodeU64(feat.payload)).toBe(mask('VERSION_1') | LOG_ALL);
      for (const { index, setup } of drv.queueSetups()) {
        const m = await nextMessage(p.be);
        expect(m.request).toBe(REQ.SET_VRING_ADDR);
        const a = decodeVringAddr(m.payload);
        expect(a.index).toBe(index);
        expect(a.flags).toBe(VRING_F_LOG);
        expect(Number(a.log)).toBe(setup.used); // guest physical
        expect(Number(a.used)).toBe(VhostUserFrontend.uaddrOf(ram, setup.used));
      }
      const log = await start;
      expect(log.size).toBe(DirtyLog.sizeFor(2 << 20));

      await p.fe.stopDirtyLog();
      const off = await nextMessage(p.be);
      expect(off.request).toBe(REQ.SET_FEATURES);
      expect(decodeU64(off.payload)).toBe(mask('VERSION_1'));
      for (let i = 0; i < drv.queueSetups().length; i++) {
        const m = await nextMessage(p.be);
        expect(m.request).toBe(REQ.SET_VRING_ADDR);
        expect(decodeVringAddr(m.payload).flags).toBe(0);
      }
      await p.fe.stopDirtyLog(); // already off: sends nothing
      expect(native.poll([p.be], 50)).toBe(0);
      log.close();
    } finally {
      drv.close();
      ram.close();
      p.close();
    }
  });

  it('startDirtyLog refuses a back-end that does not offer LOG_ALL or LOG_SHMFD, sending nothing', async () => {
    const before = fdCount();
    const ram = new GuestRam(1 << 20);
    const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1'), queueSize: 4 });
    const a = pair(LOG_SHMFD);
    const b = pair(0n);
    try {
      await expect(a.fe.startDirtyLog(drv, ram)).rejects.toMatchObject({ code: 'FRONTEND_NOT_OFFERED' });
      b.fe.offeredFeatures = 1n << BigInt(F_LOG_ALL);
      await expect(b.fe.startDirtyLog(drv, ram)).rejects.toMatchObject({ code: 'FRONTEND_NOT_OFFERED' });
      expect(native.poll([a.be, b.be], 20)).toBe(0);
    } finally {
      a.close();
      b.close();
      drv.close();
      ram.close();
    }
    expect(fdCount()).toBe(before); // nothing left open, no log created
  });
});

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}
