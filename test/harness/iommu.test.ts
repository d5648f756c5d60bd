/**
 * The harness as QEMU's vIOMMU (VIRTIO_F_ACCESS_PLATFORM), with no back-end: the main channel and the
 * back-end channel are real socketpairs, and the test plays the back-end by hand. It writes IOTLB
 * MISS messages onto the back-end channel and reads what HarnessIommu answers on the main channel:
 * UPDATEs of the page around the miss, honouring deny / readOnly / writeOnly / serve, replies when
 * NEED_REPLY asks, unexpected messages ignored and counted. Then the driver's side: DriverQueue and
 * PackedDriverQueue with a dmaOffset write IOVAs into descriptors and indirect tables, and
 * VhostUserFrontend sends ring addresses (and the dirty log's) as IOVAs.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { DEFAULT_IOVA_OFFSET, HarnessIommu, IOMMU_PERM, type IommuFrontend } from '../../harness/iommu.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import {
  BACKEND_REQ, decodeHeader, decodeIotlb, decodeU64, decodeVringAddr, encodeIotlb, encodeMessage, encodeU64, F_LOG_ALL, F_PROTOCOL_FEATURES,
  FLAGS, HEADER_SIZE, IOTLB_TYPE, protocolMask, REQ, VRING_F_LOG, type IotlbPayload,
} from '../../sandbox/vhost-user/messages.ts';
import { createDriverQueue, DriverQueue, driverRingLayout, GuestMemory, PackedDriverQueue, type RingFormat } from '../../vring/index.ts';

const PAGE = 4096;
const SLAVE_REQ_AND_ACK = protocolMask('SLAVE_REQ', 'REPLY_ACK');

interface Msg {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

/**
 * The back-end's side of the main channel, played by hand: it records every message, answers the
 * requests that have a reply, and acknowledges NEED_REPLY (at once, or when release() is called while
 * `hold` is on). The fd of SET_SLAVE_REQ_FD is kept as `channel`; other fds are closed.
 */
class FakeBackend {
  readonly got: Msg[] = [];
  offered = 0n;
  protocol = 0n;
  hold = false;
  channel = -1;
  private held: Msg[] = [];
  private inbox = new Uint8Array(0);
  private fds: number[] = [];
  private readonly poller: native.FdPoller;
  readonly fd: number;

  constructor(fd: number) {
    this.fd = fd;
    native.setNonblocking(fd, true);
    this.poller = new native.FdPoller(fd, () => this.onReadable());
    this.poller.start(native.POLL.READABLE);
  }

  private onReadable(): void {
    const buf = new Uint8Array(4096);
    for (;;) {
      const r = native.recvMsg(this.fd, buf);
      this.fds.push(...r.fds);
      if (r.bytes <= 0) break;
      const merged = new Uint8Array(this.inbox.length + r.bytes);
      merged.set(this.inbox);
      merged.set(buf.subarray(0, r.bytes), this.inbox.length);
      this.inbox = merged;
    }
    while (this.inbox.length >= HEADER_SIZE) {
      const h = decodeHeader(this.inbox.subarray(0, HEADER_SIZE));
      if (this.inbox.length < HEADER_SIZE + h.size) break;
      const m = { request: h.request, flags: h.flags, payload: this.inbox.slice(HEADER_SIZE, HEADER_SIZE + h.size), fds: this.fds.splice(0) };
      this.inbox = this.inbox.slice(HEADER_SIZE + h.size);
      this.onMessage(m);
    }
  }

  private onMessage(m: Msg): void {
    this.got.push(m);
    if (m.request === REQ.SET_SLAVE_REQ_FD && m.fds.length === 1) this.channel = m.fds[0]!;
    else for (const f of m.fds) native.close(f);
    const answer = (v: bigint) => native.sendMsg(this.fd, encodeMessage(m.request, FLAGS.VERSION | FLAGS.REPLY, encodeU64(v)));
    if (m.request === REQ.GET_FEATURES) answer(this.offered);
    else if (m.request === REQ.GET_PROTOCOL_FEATURES) answer(this.protocol);
    else if (m.request === REQ.GET_QUEUE_NUM) answer(2n);
    else if (m.request === REQ.GET_MAX_MEM_SLOTS) answer(8n);
    else if (m.request === REQ.SET_LOG_BASE) answer(0n);
    else if (m.flags & FLAGS.NEED_REPLY) {
      if (this.hold) this.held.push(m);
      else answer(0n);
    }
  }

  /** Acknowledges what `hold` kept back, in order. */
  release(): void {
    this.hold = false;
    for (const m of this.held.splice(0)) native.sendMsg(this.fd, encodeMessage(m.request, FLAGS.VERSION | FLAGS.REPLY, encodeU64(0)));
  }

  /** The IOTLB messages received, decoded, each with its flags. */
  iotlb(): Array<IotlbPayload & { flags: number }> {
    return this.got.filter((m) => m.request === REQ.IOTLB_MSG).map((m) => ({ ...decodeIotlb(m.payload), flags: m.flags }));
  }

  async waitFor(pred: () => boolean, what: string, ms = 2000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`the front-end did not send ${what}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  close(): void {
    this.poller.close();
    native.closeQuietly(this.fd);
    native.closeQuietly(this.channel);
    for (const f of this.fds) native.closeQuietly(f);
  }
}

/** Sends a MISS for iova on the back-end channel. */
function miss(channel: number, iova: number | bigint, perm: number = IOMMU_PERM.RW, flags: number = FLAGS.VERSION): void {
  const bytes = encodeMessage(BACKEND_REQ.IOTLB_MSG, flags, encodeIotlb({ iova, perm, type: IOTLB_TYPE.MISS }));
  expect(native.sendMsg(channel, bytes)).toBe(bytes.length);
}

/** The next whole message on the back-end channel (the IOMMU's replies), or null if none comes in `ms`. */
async function readChannel(fd: number, ms = 1000): Promise<Msg | null> {
  const deadline = Date.now() + ms;
  while (!native.poll([fd], 0)) {
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 2));
  }
  const hdr = new Uint8Array(HEADER_SIZE);
  const r = native.recvMsg(fd, hdr);
  if (r.bytes === 0) return null;
  const h = decodeHeader(hdr);
  const payload = new Uint8Array(h.size);
  for (let got = 0; got < h.size; ) got += native.recvMsg(fd, payload.subarray(got)).bytes;
  return { request: h.request, flags: h.flags, payload, fds: r.fds };
}

interface Rig {
  ram: GuestRam;
  fe: VhostUserFrontend;
  be: FakeBackend;
  iommu: HarnessIommu;
}

const open: Array<() => void> = [];
afterEach(() => {
  for (const c of open.splice(0).reverse()) c();
});

/** RAM at 1 MiB, a front-end on a socketpair with SLAVE_REQ (and REPLY_ACK unless told), an attached IOMMU. */
async function rig(o: { ramSize?: number; gpa?: number; replyAck?: boolean; iommu?: ConstructorParameters<typeof HarnessIommu>[2] } = {}): Promise<Rig> {
  const ram = new GuestRam(o.ramSize ?? 1 << 20, { gpa: o.gpa ?? 0x10_0000 });
  const [a, b] = native.unixSocketpair();
  const fe = VhostUserFrontend.fromFd(a, { timeoutMs: 2000 });
  const be = new FakeBackend(b);
  fe.protocolFeatures = o.replyAck === false ? protocolMask('SLAVE_REQ') : SLAVE_REQ_AND_ACK;
  const iommu = new HarnessIommu(fe, ram, o.iommu);
  open.push(() => ram.close(), () => fe.close(), () => be.close(), () => iommu.close());
  await iommu.attach();
  await be.waitFor(() => be.channel >= 0, 'SET_SLAVE_REQ_FD'); // without REPLY_ACK attach() does not wait
  return { ram, fe, be, iommu };
}

describe('HarnessIommu: the back-end channel', () => {
  it('attach() sends SET_SLAVE_REQ_FD with one fd and no payload, acknowledged under REPLY_ACK; the fd is the other end of the channel', async () => {
    const r = await rig();
    const m = r.be.got.find((x) => x.request === REQ.SET_SLAVE_REQ_FD)!;
    expect(m.payload.length).toBe(0);
    expect(m.flags & FLAGS.NEED_REPLY).toBe(FLAGS.NEED_REPLY);
    expect(r.iommu.attached).toBe(true);
    await expect(r.iommu.attach()).rejects.toThrow(/already attached/);
    // What the back-end writes on its fd reaches the IOMMU.
    miss(r.be.channel, r.iommu.toIova(r.ram.gpa));
    await r.iommu.waitMisses(1);
  });

  it('attach() needs SLAVE_REQ negotiated', async () => {
    const ram = new GuestRam(1 << 20);
    const [a, b] = native.unixSocketpair();
    const fe = VhostUserFrontend.fromFd(a, { timeoutMs: 500 });
    const iommu = new HarnessIommu(fe, ram);
    open.push(() => ram.close(), () => fe.close(), () => native.close(b), () => iommu.close());
    await expect(iommu.attach()).rejects.toMatchObject({ code: 'FRONTEND_NOT_OFFERED' });
  });

  it('a miss is answered with an UPDATE of its page: iova aligned down, the front-end address of that page, RW; acknowledged', async () => {
    const { ram, iommu, be } = await rig();
    const gpa = ram.gpa + 0x2345;
    miss(be.channel, iommu.toIova(gpa), IOMMU_PERM.WO);
    const [m] = await iommu.waitMisses(1);
    expect(m).toEqual({ iova: DEFAULT_IOVA_OFFSET + gpa, perm: IOMMU_PERM.WO, answer: 'update' });
    await iommu.idle();
    const [u] = be.iotlb();
    expect(u).toMatchObject({ type: IOTLB_TYPE.UPDATE, iova: BigInt(iommu.toIova(ram.gpa + 0x2000)), size: BigInt(PAGE), perm: IOMMU_PERM.RW });
    expect(u!.uaddr).toBe(BigInt(ram.uaddr + 0x2000));
    expect(u!.flags & FLAGS.NEED_REPLY).toBe(FLAGS.NEED_REPLY); // synchronous under REPLY_ACK, as QEMU sends it
    expect(iommu.updates).toBe(1);
    expect(iommu.unserved).toBe(0);
    expect(iommu.errors).toEqual([]);
    expect(iommu.toGpa(iommu.toIova(gpa))).toBe(gpa);
  });

  it('without REPLY_ACK the UPDATE asks for no acknowledgement', async () => {
    const { ram, iommu, be } = await rig({ replyAck: false });
    expect(be.got[0]!.flags & FLAGS.NEED_REPLY).toBe(0);
    miss(be.channel, iommu.toIova(ram.gpa + 5));
    await iommu.waitMisses(1);
    await iommu.idle();
    await be.waitFor(() => be.iotlb().length === 1, 'the UPDATE');
    expect(be.iotlb()[0]!.flags & FLAGS.NEED_REPLY).toBe(0);
  });

  it('larger pages: the range is the page clipped to the RAM; misses outside the RAM (below, above, past 2^53) are recorded and not answered', async () => {
    const { ram, iommu, be } = await rig({ gpa: 0, ramSize: 0x10_1000, iommu: { pageSize: 0x1_0000 } });
    miss(be.channel, iommu.toIova(0x1_2345));
    miss(be.channel, iommu.toIova(0x10_0800)); // the RAM's last, partial 64 KiB page
    miss(be.channel, iommu.toIova(0x10_1000)); // just past the end
    miss(be.channel, 0x1234); // below the IOVA window
    miss(be.channel, 1n << 60n);
    await iommu.waitMisses(5);
    await iommu.idle();
    const u = be.iotlb();
    expect(u.map((x) => [x.iova, x.size, x.uaddr])).toEqual([
      [BigInt(iommu.toIova(0x1_0000)), 0x1_0000n, BigInt(ram.uaddr + 0x1_0000)],
      [BigInt(iommu.toIova(0x10_0000)), 0x1000n, BigInt(ram.uaddr + 0x10_0000)],
    ]);
    expect(iommu.misses.map((m) => m.answer)).toEqual(['update', 'update', 'outside', 'outside', 'outside']);
    expect(iommu.misses[4]!.iova).toBeGreaterThanOrEqual(2 ** 53);
    expect(iommu.unserved).toBe(3);
    expect(iommu.updates).toBe(2);
  });

  it('NEED_REPLY on a miss: u64 0 after the UPDATE was acknowledged; 1 when it was not served', async () => {
    const { ram, iommu, be } = await rig();
    be.hold = true; // the UPDATE's acknowledgement waits
    miss(be.channel, iommu.toIova(ram.gpa + 0x3000), IOMMU_PERM.RO, FLAGS.VERSION | FLAGS.NEED_REPLY);
    await be.waitFor(() => be.iotlb().length === 1, 'the UPDATE');
    expect(await readChannel(be.channel, 50)).toBeNull(); // no reply before the mapping is in place
    be.release();
    const ok = (await readChannel(be.channel))!;
    expect(ok.request).toBe(BACKEND_REQ.IOTLB_MSG);
    expect(ok.flags).toBe(FLAGS.VERSION | FLAGS.REPLY);
    expect(decodeU64(ok.payload)).toBe(0n);

    miss(be.channel, iommu.toIova(ram.gpa + ram.size), IOMMU_PERM.RO, FLAGS.VERSION | FLAGS.NEED_REPLY);
    const no = (await readChannel(be.channel))!;
    expect(decodeU64(no.payload)).toBe(1n);
    await iommu.idle();
    expect(be.iotlb().length).toBe(1);
  });

  it('rules: deny is not served, readOnly is perm 1, writeOnly perm 2, later rules win, and a mapping stops at a rule’s edge', async () => {
    const { ram, iommu, be } = await rig();
    const g = ram.gpa;
    iommu.deny(g + 0x1_0000, 0x2000);
    iommu.readOnly(g + 0x2_0000, PAGE);
    iommu.writeOnly(g + 0x3_0000, PAGE);
    iommu.readOnly(g + 0x4_0800, 0x100); // inside a page
    iommu.allow(g + 0x1_1000, PAGE); // the second denied page again
    const at = [0x1_0010, 0x1_1010, 0x2_0fff, 0x3_0000, 0x4_0010, 0x4_0880, 0x4_0f00];
    for (const o of at) miss(be.channel, iommu.toIova(g + o));
    await iommu.waitMisses(at.length);
    await iommu.idle();
    expect(iommu.misses.map((m) => m.answer)).toEqual(['denied', 'update', 'update', 'update', 'update', 'update', 'update']);
    const u = be.iotlb().map((x) => ({ gpa: iommu.toGpa(Number(x.iova)) - g, size: Number(x.size), perm: x.perm, uaddr: Number(x.uaddr) - ram.uaddr }));
    expect(u).toEqual([
      { gpa: 0x1_1000, size: PAGE, perm: 3, uaddr: 0x1_1000 },
      { gpa: 0x2_0000, size: PAGE, perm: 1, uaddr: 0x2_0000 },
      { gpa: 0x3_0000, size: PAGE, perm: 2, uaddr: 0x3_0000 },
      { gpa: 0x4_0000, size: 0x800, perm: 3, uaddr: 0x4_0000 },
      { gpa: 0x4_0800, size: 0x100, perm: 1, uaddr: 0x4_0800 },
      { gpa: 0x4_0900, size: 0x700, perm: 3, uaddr: 0x4_0900 },
    ]);
    expect(iommu.unserved).toBe(1);
    iommu.clearRules();
    miss(be.channel, iommu.toIova(g + 0x1_0010));
    await iommu.waitMisses(at.length + 1);
    await iommu.idle();
    expect(iommu.misses.at(-1)!.answer).toBe('update');
  });

  it('serve = false records misses and answers none (nor the used-ring push); on again, the next is served', async () => {
    const { ram, iommu, be } = await rig({ iommu: { serve: false } });
    miss(be.channel, iommu.toIova(ram.gpa + 0x5000));
    miss(be.channel, iommu.toIova(ram.gpa + 0x6000), IOMMU_PERM.RO);
    expect(await iommu.waitMisses(2)).toMatchObject([{ answer: 'off' }, { answer: 'off', perm: 1 }]);
    expect(await iommu.prefetch(ram.gpa)).toBe(false);
    await iommu.idle();
    expect(be.iotlb()).toEqual([]);
    expect(iommu.unserved).toBe(2);
    iommu.serve = true;
    miss(be.channel, iommu.toIova(ram.gpa + 0x5000));
    await iommu.waitMisses(3);
    await iommu.idle();
    expect(be.iotlb().length).toBe(1);
  });

  it('messages that are not a well-formed MISS are counted and ignored (a status 1 when NEED_REPLY asks); the framing survives, a miss in pieces too', async () => {
    const { ram, iommu, be } = await rig();
    const send = (b: Uint8Array) => expect(native.sendMsg(be.channel, b)).toBe(b.length);
    const good = encodeIotlb({ iova: iommu.toIova(ram.gpa), perm: 3, type: IOTLB_TYPE.MISS });
    send(encodeMessage(BACKEND_REQ.CONFIG_CHANGE_MSG, FLAGS.VERSION)); // another request
    send(encodeMessage(BACKEND_REQ.IOTLB_MSG, FLAGS.VERSION, good.subarray(0, 24))); // short
    send(encodeMessage(BACKEND_REQ.IOTLB_MSG, FLAGS.VERSION, encodeIotlb({ iova: iommu.toIova(ram.gpa), size: PAGE, uaddr: 1, perm: 3, type: IOTLB_TYPE.UPDATE })));
    send(encodeMessage(BACKEND_REQ.IOTLB_MSG, FLAGS.VERSION, encodeIotlb({ iova: iommu.toIova(ram.gpa), perm: 3, type: IOTLB_TYPE.ACCESS_FAIL })));
    send(encodeMessage(BACKEND_REQ.IOTLB_MSG, FLAGS.VERSION, encodeIotlb({ iova: iommu.toIova(ram.gpa), perm: 0, type: IOTLB_TYPE.MISS }))); // no access
    send(encodeMessage(BACKEND_REQ.IOTLB_MSG, FLAGS.VERSION | FLAGS.REPLY, good)); // a reply, unasked
    send(encodeMessage(BACKEND_REQ.IOTLB_MSG, 2, good)); // version 2
    send(encodeMessage(BACKEND_REQ.VRING_HOST_NOTIFIER_MSG, FLAGS.VERSION | FLAGS.NEED_REPLY, new Uint8Array(24)));
    const nack = (await readChannel(be.channel))!;
    expect([nack.request, nack.flags, decodeU64(nack.payload)]).toEqual([BACKEND_REQ.VRING_HOST_NOTIFIER_MSG, FLAGS.VERSION | FLAGS.REPLY, 1n]);
    const whole = encodeMessage(BACKEND_REQ.IOTLB_MSG, FLAGS.VERSION, good);
    send(whole.subarray(0, 7));
    await new Promise((r) => setTimeout(r, 20));
    send(whole.subarray(7));
    await iommu.waitMisses(1);
    await iommu.idle();
    expect(iommu.unexpected).toBe(8);
    expect(iommu.misses).toEqual([{ iova: iommu.toIova(ram.gpa), perm: 3, answer: 'update' }]);
    expect(be.iotlb().length).toBe(1);
  });

  it('map, invalidate and invalidateAll send what QEMU sends; bad ranges throw', async () => {
    const { ram, iommu, be } = await rig();
    await iommu.map(ram.gpa + 0x8000, 0x3000, IOMMU_PERM.RO);
    await iommu.invalidate(ram.gpa + 0x8000, 0x1000);
    await iommu.invalidateAll();
    expect(be.iotlb().map(({ type, iova, size, uaddr, perm }) => ({ type, iova, size, uaddr, perm }))).toEqual([
      { type: IOTLB_TYPE.UPDATE, iova: BigInt(DEFAULT_IOVA_OFFSET + ram.gpa + 0x8000), size: 0x3000n, uaddr: BigInt(ram.uaddr + 0x8000), perm: 1 },
      { type: IOTLB_TYPE.INVALIDATE, iova: BigInt(DEFAULT_IOVA_OFFSET + ram.gpa + 0x8000), size: 0x1000n, uaddr: 0n, perm: 0 },
      { type: IOTLB_TYPE.INVALIDATE, iova: BigInt(DEFAULT_IOVA_OFFSET + ram.gpa), size: BigInt(ram.size), uaddr: 0n, perm: 0 },
    ]);
    expect([iommu.updates, iommu.invalidates]).toEqual([1, 2]);
    await expect(iommu.map(ram.gpa + ram.size - 0x1000, 0x2000)).rejects.toThrow(RangeError);
    await expect(iommu.map(ram.gpa, 0x1000, 0)).rejects.toThrow(RangeError);
    expect(() => new HarnessIommu(r0(), ram, { offset: 0x1234 })).toThrow(RangeError);
    expect(() => new HarnessIommu(r0(), ram, { offset: 2 ** 53 - PAGE })).toThrow(RangeError);
    expect(() => new HarnessIommu(r0(), ram, { pageSize: 0x3000 })).toThrow(RangeError);
    expect(() => iommu.toGpa(5)).toThrow(RangeError);
    function r0(): IommuFrontend {
      return iommu.fe;
    }
  });

  it('waitMisses rejects with FRONTEND_TIMEOUT, and close() rejects what waits, closes the channel and stops reading', async () => {
    const { ram, iommu, be } = await rig();
    await expect(iommu.waitMisses(1, 30)).rejects.toMatchObject({ code: 'FRONTEND_TIMEOUT', message: expect.stringMatching(/0 IOTLB misses within 30 ms, not the 1/) });
    const waiting = iommu.waitMisses(2, 5000);
    miss(be.channel, iommu.toIova(ram.gpa));
    await iommu.waitMisses(1);
    iommu.close();
    await expect(waiting).rejects.toMatchObject({ code: 'FRONTEND_CLOSED' });
    // The back-end sees its channel closed.
    const buf = new Uint8Array(64);
    expect(native.poll([be.channel], 1000)).toBe(1);
    native.setNonblocking(be.channel, true);
    expect(native.recvMsg(be.channel, buf).bytes).toBe(0);
    iommu.close(); // idempotent
    await expect(iommu.waitMisses(5)).rejects.toMatchObject({ code: 'FRONTEND_CLOSED' });
  });

  it('a miss served while another request waits for its reply: each reply reaches its own request', async () => {
    const { ram, fe, iommu, be } = await rig();
    be.hold = true;
    const num = fe.setVringNum(0, 256);
    await be.waitFor(() => be.got.some((m) => m.request === REQ.SET_VRING_NUM), 'SET_VRING_NUM');
    miss(be.channel, iommu.toIova(ram.gpa + 0x7000));
    await be.waitFor(() => be.iotlb().length === 1, 'the UPDATE');
    be.release(); // acknowledges SET_VRING_NUM, then IOTLB_MSG
    await num;
    await iommu.idle();
    expect(iommu.errors).toEqual([]);
    expect(iommu.updates).toBe(1);
  });
});

// ---- the driver's side: descriptors and ring addresses as IOVAs

const OFF = DEFAULT_IOVA_OFFSET;

function memory(): GuestMemory {
  return new GuestMemory([{ gpa: 0x10_0000, size: 1 << 20, buffer: new ArrayBuffer(1 << 20) }]);
}

/** Reads the 64-bit address at gpa, as a number (< 2^53 here). */
function addrAt(mem: GuestMemory, gpa: number): number {
  return mem.readU32(gpa) + mem.readU32(gpa + 4) * 2 ** 32;
}

describe('driver queues with dmaOffset', () => {
  for (const format of ['split', 'packed'] as RingFormat[]) {
    it(`${format}: buffers and indirect tables are written as gpa + dmaOffset; the table's bytes stay at its gpa; default 0 writes gpas`, () => {
      for (const dmaOffset of [0, OFF]) {
        const mem = memory();
        const l = driverRingLayout(format, 8, 0x10_0000);
        const q = createDriverQueue(mem, { format, size: 8, desc: l.desc, avail: l.avail, used: l.used, ...(dmaOffset ? { dmaOffset } : {}) });
        q.init();
        expect(q.dmaOffset).toBe(dmaOffset);
        const bufs = [{ addr: 0x11_0000, len: 100 }, { addr: 0x11_1000, len: 200 }];
        expect(q.add([bufs[0]!], [bufs[1]!])).toBeGreaterThanOrEqual(0);
        // Split: the free list hands out descriptors 0 then 1; packed: slots 0 and 1.
        expect(addrAt(mem, l.desc)).toBe(0x11_0000 + dmaOffset);
        expect(addrAt(mem, l.desc + 16)).toBe(0x11_1000 + dmaOffset);
        const table = 0x12_0000;
        expect(q.add([bufs[0]!], [bufs[1]!], { indirectAt: table })).toBeGreaterThanOrEqual(0);
        expect(addrAt(mem, l.desc + 32)).toBe(table + dmaOffset);
        expect(mem.readU32(l.desc + 32 + 8)).toBe(32);
        expect(addrAt(mem, table)).toBe(0x11_0000 + dmaOffset);
        expect(addrAt(mem, table + 16)).toBe(0x11_1000 + dmaOffset);
      }
    });
  }

  it('DriverQueue and PackedDriverQueue take dmaOffset directly; a bad one, or an address it pushes past 2^53, is a RangeError', () => {
    const mem = memory();
    const s = driverRingLayout('split', 4, 0x10_0000);
    const q = new DriverQueue(mem, { size: 4, desc: s.desc, avail: s.avail, used: s.used, dmaOffset: 0x1000 });
    q.init();
    q.add([{ addr: 0x10_8000, len: 1 }], []);
    expect(addrAt(mem, s.desc)).toBe(0x10_9000);
    const p = driverRingLayout('packed', 4, 0x18_0000);
    const pq = new PackedDriverQueue(mem, { size: 4, desc: p.desc, driver: p.avail, device: p.used, dmaOffset: 0x2000 });
    pq.init();
    pq.add([], [{ addr: 0x10_8000, len: 1 }]);
    expect(addrAt(mem, p.desc)).toBe(0x10_a000);
    expect(() => new DriverQueue(mem, { size: 4, desc: s.desc, avail: s.avail, used: s.used, dmaOffset: -1 })).toThrow(RangeError);
    expect(() => new PackedDriverQueue(mem, { size: 4, desc: p.desc, driver: p.avail, device: p.used, dmaOffset: 0.5 })).toThrow(RangeError);
    const far = new DriverQueue(mem, { size: 4, desc: s.desc, avail: s.avail, used: s.used, dmaOffset: 2 ** 53 - 0x10_0000 });
    far.init();
    expect(() => far.add([{ addr: 0x10_8000, len: 1 }], [])).toThrow(RangeError);
  });

  it('VirtioNetDriver with dmaOffset: TX and RX descriptors carry IOVAs', () => {
    const ram = new GuestRam(4 << 20);
    open.push(() => ram.close());
    const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1'), queueSize: 8, dmaOffset: OFF });
    open.push(() => drv.close());
    expect(drv.dmaOffset).toBe(OFF);
    drv.fillRx();
    expect(drv.send(ethernet(new Uint8Array(6), new Uint8Array(6), 0x88b5, new Uint8Array(46)))).toBe(true);
    for (const r of [drv.rx[0]!, drv.tx[0]!]) {
      const a = addrAt(ram.mem, r.setup.desc);
      expect(a).toBeGreaterThanOrEqual(OFF + ram.gpa);
      expect(r.slots).toContain(a - OFF);
    }
  });
});

describe('VhostUserFrontend behind a HarnessIommu', () => {
  const ACCESS_PLATFORM = 1n << 33n;

  async function attached(o: { packed?: boolean; pushUsed?: boolean } = {}) {
    const ram = new GuestRam(4 << 20, { gpa: 0x10_0000 });
    const [a, b] = native.unixSocketpair();
    const fe = VhostUserFrontend.fromFd(a, { timeoutMs: 2000 });
    const be = new FakeBackend(b);
    be.offered = mask('VERSION_1', ...(o.packed ? (['RING_PACKED'] as const) : [])) | ACCESS_PLATFORM | (1n << BigInt(F_PROTOCOL_FEATURES)) | (1n << BigInt(F_LOG_ALL));
    be.protocol = protocolMask('REPLY_ACK', 'SLAVE_REQ', 'LOG_SHMFD', 'STATUS');
    const iommu = new HarnessIommu(fe, ram, { pushUsed: o.pushUsed ?? true });
    const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1', ...(o.packed ? (['RING_PACKED'] as const) : [])), queueSize: 8, dmaOffset: iommu.offset });
    open.push(() => ram.close(), () => fe.close(), () => be.close(), () => iommu.close(), () => drv.close());
    const neg = (await fe.attachDriver(drv, ram, { iommu }))!;
    return { ram, fe, be, iommu, drv, neg };
  }

  for (const packed of [false, true]) {
    it(`${packed ? 'packed' : 'split'}: ACCESS_PLATFORM and SLAVE_REQ + REPLY_ACK negotiated, the channel handed over before SET_OWNER, rings as IOVAs, each used ring pushed after DRIVER_OK`, async () => {
      const { ram, be, iommu, drv, neg, fe } = await attached({ packed });
      expect(neg.features & ACCESS_PLATFORM).toBe(ACCESS_PLATFORM);
      expect(neg.protocolFeatures & SLAVE_REQ_AND_ACK).toBe(SLAVE_REQ_AND_ACK);
      expect(fe.iommu).toBe(iommu);
      const order = be.got.map((m) => m.request);
      expect(order.indexOf(REQ.SET_SLAVE_REQ_FD)).toBeGreaterThan(order.indexOf(REQ.SET_PROTOCOL_FEATURES));
      expect(order.indexOf(REQ.SET_SLAVE_REQ_FD)).toBeLessThan(order.indexOf(REQ.SET_OWNER));
      const addrs = be.got.filter((m) => m.request === REQ.SET_VRING_ADDR).map((m) => decodeVringAddr(m.payload));
      const setups = drv.queueSetups();
      expect(addrs.length).toBe(setups.length);
      for (const [i, { index, setup }] of setups.entries()) {
        expect(addrs[i]).toMatchObject({ index, desc: BigInt(setup.desc + OFF), avail: BigInt(setup.avail + OFF), used: BigInt(setup.used + OFF) });
      }
      // After SET_STATUS: one UPDATE per queue, of the page holding its used ring (device area).
      const status = order.lastIndexOf(REQ.SET_STATUS);
      const pushed = be.got.slice(status).filter((m) => m.request === REQ.IOTLB_MSG).map((m) => decodeIotlb(m.payload));
      expect(pushed.map((u) => [u.type, u.iova, u.size, u.uaddr])).toEqual(
        setups.map(({ setup }) => {
          const page = Math.floor(setup.used / PAGE) * PAGE;
          return [IOTLB_TYPE.UPDATE, BigInt(page + OFF), BigInt(PAGE), BigInt(ram.uaddr + page - ram.gpa)];
        }),
      );
      expect(iommu.updates).toBe(setups.length);
    });
  }

  it('the dirty log re-sends SET_VRING_ADDR with IOVAs, log address included; pushUsed: false pushes nothing', async () => {
    const { ram, be, fe, drv } = await attached({ pushUsed: false });
    expect(be.iotlb()).toEqual([]);
    const log = await fe.startDirtyLog(drv, ram);
    open.push(() => log.close());
    const addrs = be.got.filter((m) => m.request === REQ.SET_VRING_ADDR).map((m) => decodeVringAddr(m.payload)).filter((a) => a.flags & VRING_F_LOG);
    expect(addrs.length).toBe(2);
    for (const [i, { setup }] of drv.queueSetups().entries()) {
      expect(addrs[i]).toMatchObject({ desc: BigInt(setup.desc + OFF), used: BigInt(setup.used + OFF), log: BigInt(setup.used + OFF) });
    }
    await fe.stopDirtyLog();
  });

  it('refuses a driver that does not write the IOMMU’s IOVAs, and a back-end without ACCESS_PLATFORM or SLAVE_REQ', async () => {
    const ram = new GuestRam(4 << 20);
    const [a, b] = native.unixSocketpair();
    const fe = VhostUserFrontend.fromFd(a, { timeoutMs: 2000 });
    const be = new FakeBackend(b);
    const iommu = new HarnessIommu(fe, ram);
    const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1'), queueSize: 8 });
    open.push(() => ram.close(), () => fe.close(), () => be.close(), () => iommu.close(), () => drv.close());
    await expect(fe.attachDriver(drv, ram, { iommu })).rejects.toThrow(/dmaOffset/);
    const ok = new VirtioNetDriver(ram, { features: mask('VERSION_1'), queueSize: 8, dmaOffset: iommu.offset });
    open.push(() => ok.close());
    be.offered = mask('VERSION_1') | (1n << BigInt(F_PROTOCOL_FEATURES));
    be.protocol = SLAVE_REQ_AND_ACK;
    await expect(fe.attachDriver(ok, ram, { iommu })).rejects.toMatchObject({ code: 'FRONTEND_NOT_OFFERED', message: expect.stringMatching(/ACCESS_PLATFORM/) });
    be.offered |= ACCESS_PLATFORM;
    be.protocol = protocolMask('REPLY_ACK');
    await expect(fe.attachDriver(ok, ram, { iommu })).rejects.toMatchObject({ code: 'FRONTEND_NOT_OFFERED', message: expect.stringMatching(/SLAVE_REQ/) });
    expect(be.got.some((m) => m.request === REQ.SET_SLAVE_REQ_FD)).toBe(false);
  });
});
