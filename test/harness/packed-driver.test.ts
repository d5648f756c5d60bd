/**
 * The harness's guest driver on packed rings (VIRTIO_F_RING_PACKED), with no device: every queue of a
 * VirtioNetDriver is served here by lgnet's vring PackedQueue, in this process, over the same GuestRam
 * memfd. The driver is used only through its public API (send, flushTx, reclaimTx, drainTx, fillRx,
 * receive, waitRx, ctrl, its rings' eventfds and queues); the "device" below is a few lines over
 * PackedQueue. Checked: the layout vhost-user carries, frames both ways byte for byte, many wraps on
 * sizes that are and are not powers of 2, indirect tables, MRG_RXBUF, kick and interrupt suppression
 * with and without EVENT_IDX, completions out of order, the control queue, the dirty-log helpers, a
 * hostile device, and the front-end's packed ring base on the wire.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { mask, type FeatureName } from '../../device/features.ts';
import { DirtyLogAudit, usedNotTaken } from '../../harness/dirty-log.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { PackedRingBuilder } from '../../harness/rings.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver, type DriverRing } from '../../harness/virtio-net.ts';
import { decodeHeader, decodeVringAddr, decodeVringState, encodeMessage, encodeU64, encodeVringState, FLAGS, HEADER_SIZE, REQ } from '../../sandbox/vhost-user/messages.ts';
import {
  EVENT_AREA_SIZE,
  PACKED_DESC_SIZE,
  PACKED_RING_BASE_START,
  PackedQueue,
  decodePackedRingBase,
  encodePackedRingBase,
  packedDescAreaSize,
  packedPos,
  type DescriptorChain,
} from '../../vring/index.ts';

const HDR = 12; // VERSION_1: virtio_net_hdr_v1 with num_buffers

/** One of the driver's queues, served by a PackedQueue over the same RAM. */
class Served {
  readonly ring: DriverRing;
  readonly q: PackedQueue;
  /** Interrupts the "device" sent on the call eventfd. */
  signals = 0;

  constructor(ring: DriverRing, ram: GuestRam, indirect: boolean) {
    this.ring = ring;
    const s = ring.setup;
    // vhost-user's naming: avail is the driver event area, used the device event area.
    this.q = new PackedQueue({ size: s.size, desc: s.desc, driver: s.avail, device: s.used, eventIdx: ring.q.eventIdx, indirect });
    this.q.attach(ram.mem);
    this.q.setBase(s.lastAvail!);
  }

  /** Every chain available now, popped (bounded by the ring size). */
  popAll(): DescriptorChain[] {
    const out: DescriptorChain[] = [];
    for (let c = this.q.pop(); c !== null && out.length <= this.q.size; c = this.q.pop()) out.push(c);
    return out;
  }

  /** The readable bytes of a chain. */
  static bytes(c: DescriptorChain): Uint8Array {
    const b = new Uint8Array(c.readableLen);
    expect(c.readBytes(0, b, 0, b.length)).toBe(true);
    return b;
  }

  /** Completes [id, len] pairs in the order given, publishes them once and signals if asked to. */
  complete(done: ReadonlyArray<readonly [number, number]>): boolean {
    for (const [id, len] of done) this.q.addUsed(id, len);
    this.q.flush();
    const signal = this.q.needsNotification();
    if (signal) {
      native.eventfdWrite(this.ring.callFd, 1);
      this.signals++;
    }
    return signal;
  }

  /** Kicks the driver sent since the last call. */
  kicks(): number {
    return native.poll([this.ring.kickFd], 0) ? native.eventfdRead(this.ring.kickFd) : 0;
  }
}

interface Bed {
  ram: GuestRam;
  drv: VirtioNetDriver;
  rx: Served;
  tx: Served;
  ctrl: Served | null;
}

const open: Array<{ ram: GuestRam; drv: VirtioNetDriver }> = [];
afterEach(() => {
  for (const b of open.splice(0)) {
    b.drv.close();
    b.ram.close();
  }
});

function bed(features: FeatureName[] = [], o: { queueSize?: number; rxBufferSize?: number; indirect?: boolean; ctrl?: boolean } = {}): Bed {
  const ram = new GuestRam(32 << 20);
  const drv = new VirtioNetDriver(ram, {
    features: mask('VERSION_1', 'RING_PACKED', ...features),
    queueSize: o.queueSize ?? 8,
    ...(o.rxBufferSize !== undefined ? { rxBufferSize: o.rxBufferSize } : {}),
    ...(o.ctrl ? { ctrl: { maxPairs: 1 } } : {}),
  });
  open.push({ ram, drv });
  const indirect = o.indirect ?? features.includes('RING_INDIRECT_DESC');
  return {
    ram,
    drv,
    rx: new Served(drv.rx[0]!, ram, indirect),
    tx: new Served(drv.tx[0]!, ram, indirect),
    ctrl: drv.ctrlRing ? new Served(drv.ctrlRing, ram, indirect) : null,
  };
}

let serial = 0;
/** A distinct Ethernet frame of `len` bytes (EtherType 0x88b5, local experiments). */
function frame(len = 60): Uint8Array {
  const n = serial++;
  const payload = new Uint8Array(len - 14);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + n * 7) & 0xff;
  payload[0] = n & 0xff;
  payload[1] = (n >>> 8) & 0xff;
  return ethernet(new Uint8Array([2, 0, 0, 0, 0, 2]), new Uint8Array([2, 0, 0, 0, 0, 1]), 0x88b5, payload);
}

/** Takes every TX chain the driver offered: [id, frame after the header], the header checked empty. */
function takeTx(b: Bed): Array<[number, Uint8Array, DescriptorChain]> {
  return b.tx.popAll().map((c) => {
    const bytes = Served.bytes(c);
    expect(Array.from(bytes.subarray(0, HDR))).toEqual(new Array(HDR).fill(0));
    return [c.head, bytes.slice(HDR), c];
  });
}

/**
 * Writes frames into RX chains as a device does: header + frame; with MRG_RXBUF over as many chains
 * as it takes, num_buffers in the first header. Completes in delivery order (or `order` over the ids
 * used) and returns whether it signalled.
 */
function deliver(b: Bed, frames: Uint8Array[], o: { mrg?: boolean; order?: (ids: number[][]) => number[][] } = {}): boolean {
  const used: Array<Array<[number, number]>> = [];
  for (const f of frames) {
    const all = new Uint8Array(HDR + f.length);
    all.set(f, HDR);
    const parts: Array<[DescriptorChain, number]> = [];
    for (let off = 0; off < all.length;) {
      const c = b.rx.q.pop();
      if (!c) throw new Error('the driver posted too few RX buffers');
      const n = Math.min(c.writableLen, all.length - off);
      if (!o.mrg && n < all.length) throw new Error('an RX buffer too small for the frame without MRG_RXBUF');
      parts.push([c, n]);
      off += n;
    }
    all[10] = parts.length; // num_buffers (le16)
    let off = 0;
    for (const [c, n] of parts) {
      expect(c.writeBytes(0, all, off, n)).toBe(true);
      off += n;
    }
    used.push(parts.map(([c, n]) => [c.head, n]));
  }
  const ids = used.map((u) => u.map(([id]) => id));
  const order = o.order ? o.order(ids) : ids;
  const lenOf = new Map(used.flat());
  return b.rx.complete(order.flat().map((id) => [id, lenOf.get(id)!] as const));
}

describe('layout', () => {
  it('lays out each queue as a packed ring: desc = descriptor ring, avail = driver area, used = device area', () => {
    const b = bed([], { queueSize: 5 });
    expect(b.drv.format).toBe('packed');
    for (const r of [...b.drv.rx, ...b.drv.tx]) {
      const s = r.setup;
      expect(r.format).toBe('packed');
      expect(r.q.format).toBe('packed');
      expect(s.desc % 16).toBe(0);
      expect(s.avail).toBe(s.desc + packedDescAreaSize(5));
      expect(s.used).toBe(s.avail + EVENT_AREA_SIZE);
      expect(s.lastAvail).toBe(PACKED_RING_BASE_START);
      expect(r.q.initBase).toBe(PACKED_RING_BASE_START);
      expect(r.q.areas()).toEqual([
        { gpa: s.desc, len: 5 * PACKED_DESC_SIZE, what: 'descriptor ring', writer: 'both' },
        { gpa: s.avail, len: EVENT_AREA_SIZE, what: 'driver event area', writer: 'driver' },
        { gpa: s.used, len: EVENT_AREA_SIZE, what: 'device event area', writer: 'device' },
      ]);
      expect(r.q.usedCursor).toBe(packedPos(0, 1));
    }
    // The same driver without RING_PACKED keeps split rings, starting at 0.
    const ram = new GuestRam(4 << 20);
    const split = new VirtioNetDriver(ram, { features: mask('VERSION_1'), queueSize: 8 });
    open.push({ ram, drv: split });
    expect(split.format).toBe('split');
    expect(split.rx[0]!.q.format).toBe('split');
    expect(split.rx[0]!.setup.lastAvail).toBe(0);
    expect(split.rx[0]!.q.areas().map((a) => a.what)).toEqual(['desc table', 'avail ring', 'used ring']);
  });
});

describe('traffic', () => {
  it('sends and receives frames byte for byte; drainTx and waitRx see the completions', async () => {
    const b = bed();
    const out = [frame(60), frame(1514), frame(200)];
    for (const f of out) expect(b.drv.send(f)).toBe(true);
    expect(b.tx.kicks()).toBe(3); // device event area zero: ENABLE, a kick per publish
    const got = takeTx(b);
    expect(got.map(([, f]) => f)).toEqual(out);
    expect(b.drv.tx[0]!.q.inFlight).toBe(3);
    setTimeout(() => b.tx.complete(got.map(([id]) => [id, 0] as const)), 20);
    expect(await b.drv.drainTx(0, 2000)).toBe(0);
    expect(b.drv.tx[0]!.q.freeCount).toBe(8);

    expect(b.drv.fillRx()).toBe(8);
    const inn = [frame(60), frame(1514), frame(98)];
    setTimeout(() => deliver(b, inn), 20);
    const rx = await b.drv.waitRx(3, { timeoutMs: 2000 });
    expect(rx.map((r) => r.frame)).toEqual(inn);
    expect(rx.every((r) => r.numBuffers === 1 && r.hdr.length === HDR)).toBe(true);
    // receive() reposted the three buffers.
    expect(b.drv.rx[0]!.q.inFlight).toBe(8);
    expect(b.rx.q.availPending()).toBe(8);
  });

  for (const size of [1, 3, 4, 5, 8]) {
    it(`wraps a ${size}-entry ring again and again, multi-descriptor chains straddling its end`, () => {
      const b = bed([], { queueSize: size, rxBufferSize: 2048 });
      const laps = new Set<number>();
      let sent = 0;
      for (let round = 0; round < 12 * size + 5; round++) {
        // 1 to 3 descriptors per frame (those that do not fit a tiny ring wait for the next round).
        const pieces = Math.min(1 + (round % 3), size);
        const f = frame(60 + round);
        const split = pieces === 1 ? [] : pieces === 2 ? [HDR] : [HDR, HDR + 14];
        expect(b.drv.send(f, { split })).toBe(true);
        const got = takeTx(b);
        expect(got).toHaveLength(1);
        expect(got[0]![1]).toEqual(f);
        expect(got[0]![2].descCount).toBe(pieces);
        b.tx.complete([[got[0]![0], 0]]);
        expect(b.drv.reclaimTx()).toBe(1);
        laps.add(b.drv.tx[0]!.q.usedCursor >>> 15);
        sent++;
      }
      expect(sent).toBeGreaterThan(2 * size);
      expect(laps).toEqual(new Set([0, 1]));
      expect(b.drv.tx[0]!.q.freeCount).toBe(size);

      b.drv.fillRx();
      for (let round = 0; round < 6 * size + 3; round++) {
        const batch = Array.from({ length: 1 + (round % size) }, () => frame(64 + round));
        deliver(b, batch);
        expect(b.drv.receive().map((r) => r.frame)).toEqual(batch);
        laps.add(b.drv.rx[0]!.q.usedCursor >>> 15);
      }
      expect(b.drv.rx[0]!.q.inFlight).toBe(size);
    });
  }

  it('indirect: a frame of many pieces takes one slot, so a small ring holds a full burst', () => {
    const b = bed(['RING_INDIRECT_DESC'], { queueSize: 4 });
    const out = Array.from({ length: 4 }, () => frame(300));
    for (const f of out) expect(b.drv.send(f, { split: [4, HDR, 40, 100], indirect: true })).toBe(true);
    expect(b.drv.tx[0]!.q.freeCount).toBe(0);
    expect(b.drv.send(frame(), { indirect: true })).toBe(false); // four ids out: the ring is full
    const got = takeTx(b);
    expect(got.map(([, f]) => f)).toEqual(out);
    for (const [, , c] of got) {
      expect(c.indirect).toBe(true);
      expect(c.descCount).toBe(5);
    }
    b.tx.complete(got.map(([id]) => [id, 0] as const));
    // The same pieces without indirect need five slots: they do not fit at all.
    expect(b.drv.send(frame(300), { split: [4, HDR, 40, 100] })).toBe(false);
    expect(b.drv.tx[0]!.q.freeCount).toBe(4);
    expect(b.drv.send(frame(300), { split: [HDR, 40, 100] })).toBe(true);
    expect(takeTx(b)[0]![2].indirect).toBe(false);
  });

  it('MRG_RXBUF: a frame spread over several buffers, across the ring end, is merged by receive()', () => {
    const b = bed(['MRG_RXBUF'], { queueSize: 5, rxBufferSize: 256 });
    b.drv.fillRx();
    for (let round = 0; round < 8; round++) {
      const big = frame(700); // 712 bytes with the header: 3 buffers of 256
      const small = frame(100);
      expect(deliver(b, [small], { mrg: true })).toBe(true);
      expect(b.drv.receive().map((r) => [r.numBuffers, r.frame])).toEqual([[1, small]]);
      deliver(b, [big], { mrg: true });
      const [r] = b.drv.receive();
      expect(r!.numBuffers).toBe(3);
      expect(r!.frame).toEqual(big);
    }
    expect(b.drv.rx[0]!.q.inFlight).toBe(5);
  });
});

describe('completions out of order', () => {
  it('TX: ids come back in any order, each skipping its own slot count, and every slot is free again', () => {
    const b = bed([], { queueSize: 8 });
    const out = [frame(), frame(), frame(), frame()];
    const splits = [[], [HDR], [HDR, 20], []]; // 1 + 2 + 3 + 1 slots
    out.forEach((f, i) => expect(b.drv.send(f, { split: splits[i]! })).toBe(true));
    expect(b.drv.tx[0]!.q.freeCount).toBe(1);
    const got = takeTx(b);
    expect(got.map(([, f]) => f)).toEqual(out);
    b.tx.complete([got[2]!, got[0]!, got[3]!, got[1]!].map(([id]) => [id, 0] as const));
    expect(b.drv.reclaimTx()).toBe(4);
    expect(b.drv.tx[0]!.q.freeCount).toBe(8);
    expect(b.drv.tx[0]!.q.inFlight).toBe(0);
    // The used descriptors took 4 slots of 7: the next frames still land where the device looks.
    const again = [frame(), frame(), frame(), frame()];
    again.forEach((f) => expect(b.drv.send(f, { split: [HDR] })).toBe(true));
    expect(takeTx(b).map(([, f]) => f)).toEqual(again);
  });

  it('RX: frames are received in the order the device completes them', () => {
    const b = bed([], { queueSize: 4 });
    b.drv.fillRx();
    const inn = [frame(), frame(), frame(), frame()];
    deliver(b, inn, { order: (ids) => [ids[2]!, ids[0]!, ids[3]!, ids[1]!] });
    expect(b.drv.receive().map((r) => r.frame)).toEqual([inn[2], inn[0], inn[3], inn[1]]);
    // Reposted: a second round, reversed.
    const more = [frame(), frame(), frame()];
    deliver(b, more, { order: (ids) => [...ids].reverse() });
    expect(b.drv.receive().map((r) => r.frame)).toEqual([...more].reverse());
  });
});

describe('event suppression', () => {
  it('kicks follow the device event area: DISABLE none, ENABLE every publish', () => {
    const b = bed();
    b.tx.q.disableNotification();
    for (let i = 0; i < 3; i++) b.drv.send(frame());
    expect(b.tx.kicks()).toBe(0);
    b.tx.q.enableNotification();
    b.drv.send(frame());
    b.drv.send(frame(), { kick: false });
    b.drv.send(frame(), { kick: false });
    expect(b.tx.kicks()).toBe(1);
    b.drv.flushTx();
    expect(b.tx.kicks()).toBe(1); // one publish of two frames: one kick
    expect(takeTx(b)).toHaveLength(6);
  });

  it('EVENT_IDX kicks: only when the descriptor at the device’s off_wrap is published', () => {
    const b = bed(['RING_EVENT_IDX']);
    expect(b.tx.q.enableNotification(b.tx.q.lastAvail)).toBe(false); // DESC at slot 0
    b.drv.send(frame());
    expect(b.tx.kicks()).toBe(1); // slot 0 published
    b.drv.send(frame());
    b.drv.send(frame());
    expect(b.tx.kicks()).toBe(0); // slots 1 and 2: not asked for
    const got = takeTx(b); // the device pops and asks for the next slot
    expect(got).toHaveLength(3);
    b.tx.complete(got.map(([id]) => [id, 0] as const));
    b.drv.send(frame());
    expect(b.tx.kicks()).toBe(1);
  });

  it('interrupts: the driver turns them off and on; without EVENT_IDX every flush signals while on', () => {
    const b = bed();
    b.drv.fillRx();
    expect(deliver(b, [frame()])).toBe(true);
    expect(deliver(b, [frame()])).toBe(true);
    b.drv.rx[0]!.q.setInterrupts(false);
    expect(deliver(b, [frame()])).toBe(false);
    b.drv.rx[0]!.q.setInterrupts(true);
    expect(deliver(b, [frame()])).toBe(true);
    expect(b.drv.receive()).toHaveLength(4);
  });

  it('EVENT_IDX interrupts: signalled when the used descriptor the driver asked for is written', async () => {
    const b = bed(['RING_EVENT_IDX']);
    b.drv.fillRx();
    expect(deliver(b, [frame()])).toBe(true); // slot 0, where init() asked
    expect(deliver(b, [frame()])).toBe(false); // slot 1: the driver has not taken slot 0 yet
    expect(deliver(b, [frame()])).toBe(false);
    expect(await b.drv.waitRx(3, { timeoutMs: 1000 })).toHaveLength(3); // takes them, asks for slot 3
    expect(deliver(b, [frame(), frame()])).toBe(true);
    b.drv.rx[0]!.q.setInterrupts(false);
    expect(b.drv.receive()).toHaveLength(2);
    expect(deliver(b, [frame()])).toBe(false);
    expect(b.rx.signals).toBe(2);
  });
});

describe('control queue', () => {
  it('ctrl() sends a command on a packed control queue and returns the ack', async () => {
    const b = bed(['CTRL_VQ'], { ctrl: true });
    expect(b.ctrl!.ring.q.format).toBe('packed');
    for (const ack of [0, 1]) {
      const answer = b.drv.ctrl(0, 1, new Uint8Array([ack ? 0 : 1]));
      const [c] = b.ctrl!.popAll();
      expect(Array.from(Served.bytes(c!))).toEqual([0, 1, ack ? 0 : 1]);
      expect(c!.writableLen).toBe(1);
      c!.writeBytes(0, new Uint8Array([ack]), 0, 1);
      b.ctrl!.complete([[c!.head, 1]]);
      expect(await answer).toBe(ack);
    }
  });
});

describe('dirty-log helpers on packed rings', () => {
  it('usedNotTaken() lists published completions, out of order, with their buffers, taking none', () => {
    const b = bed([], { queueSize: 4, rxBufferSize: 2048 });
    const r = b.drv.rx[0]!;
    b.drv.fillRx();
    expect(usedNotTaken(r)).toEqual([]);
    const inn = [frame(60), frame(70), frame(80)];
    deliver(b, inn, { order: (ids) => [ids[1]!, ids[2]!, ids[0]!] });
    const pending = usedNotTaken(r);
    expect(pending.map((p) => p.len)).toEqual([HDR + 70, HDR + 80, HDR + 60]);
    expect(pending.map((p) => p.idx)).toEqual([packedPos(0, 1), packedPos(1, 1), packedPos(2, 1)]);
    for (const p of pending) {
      expect(p.slot).toBeGreaterThanOrEqual(0);
      expect(b.ram.read(p.addr + HDR, p.len - HDR)).toEqual(inn[[1, 2, 0][pending.indexOf(p)]!]);
    }
    expect(usedNotTaken(r)).toEqual(pending); // nothing taken
    expect(b.drv.receive().map((x) => x.frame)).toEqual([inn[1], inn[2], inn[0]]);
    expect(usedNotTaken(r)).toEqual([]);
  });

  it('DirtyLogAudit.layoutOf: the descriptor ring and the driver area are the driver’s, the device area the device’s', () => {
    const b = bed([], { queueSize: 4 });
    const l = DirtyLogAudit.layoutOf(b.drv);
    const s = b.drv.rx[0]!.setup;
    expect(l.driverWritten).toContainEqual({ gpa: s.desc, len: packedDescAreaSize(4), what: 'descriptor ring of queue 0' });
    expect(l.driverWritten).toContainEqual({ gpa: s.avail, len: EVENT_AREA_SIZE, what: 'driver event area of queue 0' });
    expect(l.deviceWritten).toContainEqual({ gpa: s.used, len: EVENT_AREA_SIZE, what: 'device event area of queue 0' });
  });
});

describe('a hostile device', () => {
  it('a used descriptor for an id the driver never handed over is refused (VRING_USED_BAD_ID)', () => {
    const b = bed([], { queueSize: 4 });
    b.drv.send(frame());
    // Forge the device's write behind the driver, with the builder over the driver's own ring.
    const forge = PackedRingBuilder.over(b.ram.mem, b.drv.tx[0]!.setup);
    forge.writeUsed(packedPos(0, 1), 3, 0);
    expect(() => b.drv.reclaimTx()).toThrow(expect.objectContaining({ code: 'VRING_USED_BAD_ID' }));
  });
});

// ---- the front-end's packed ring base, against a back-end played by hand on a socketpair

/** The next message on `fd`: request, payload and fds (closed here). */
async function nextMessage(fd: number): Promise<{ request: number; payload: Uint8Array }> {
  const deadline = Date.now() + 2000;
  while (!native.poll([fd], 0)) {
    if (Date.now() > deadline) throw new Error('the front-end sent nothing');
    await new Promise((r) => setTimeout(r, 5));
  }
  const hdr = new Uint8Array(HEADER_SIZE);
  const r = native.recvMsg(fd, hdr);
  const h = decodeHeader(hdr);
  const payload = new Uint8Array(h.size);
  for (let got = 0; got < h.size;) got += native.recvMsg(fd, payload.subarray(got)).bytes;
  for (const f of r.fds) native.close(f);
  return { request: h.request, payload };
}

describe('VhostUserFrontend on packed rings', () => {
  it('SET_VRING_BASE carries the packed encoding (fresh: 0x80008000, or what attachDriver’s base gives); GET_VRING_BASE passes through', async () => {
    const b = bed([], { queueSize: 8 });
    const [a, be] = native.unixSocketpair();
    const fe = VhostUserFrontend.fromFd(a, { timeoutMs: 1000 });
    try {
      fe.features = b.drv.features; // negotiated elsewhere; no protocol features, so no ENABLE and no REPLY_ACK
      const moved = encodePackedRingBase({ lastAvailIdx: 5, availWrap: 0, lastUsedIdx: 3, usedWrap: 0 });
      for (const base of [undefined, (i: number) => (i === 1 ? moved : PACKED_RING_BASE_START)]) {
        const attach = fe.attachDriver(b.drv, b.ram, { negotiate: false, ...(base ? { base } : {}) });
        expect((await nextMessage(be)).request).toBe(REQ.SET_MEM_TABLE);
        for (const { index, setup } of b.drv.queueSetups()) {
          const seen: Record<number, Uint8Array> = {};
          for (let k = 0; k < 5; k++) {
            const m = await nextMessage(be);
            seen[m.request] = m.payload;
          }
          expect(decodeVringState(seen[REQ.SET_VRING_NUM]!)).toEqual({ index, num: 8 });
          expect(decodeVringState(seen[REQ.SET_VRING_BASE]!)).toEqual({ index, num: base && index === 1 ? moved : PACKED_RING_BASE_START });
          const addr = decodeVringAddr(seen[REQ.SET_VRING_ADDR]!);
          expect(Number(addr.desc)).toBe(VhostUserFrontend.uaddrOf(b.ram, setup.desc));
          expect(Number(addr.avail)).toBe(VhostUserFrontend.uaddrOf(b.ram, setup.avail)); // the driver event area
          expect(Number(addr.used)).toBe(VhostUserFrontend.uaddrOf(b.ram, setup.used)); // the device event area
        }
        expect((await nextMessage(be)).request).toBe(REQ.GET_FEATURES); // the closing barrier
        native.sendMsg(be, encodeMessage(REQ.GET_FEATURES, FLAGS.VERSION | FLAGS.REPLY, encodeU64(b.drv.features)));
        await attach;
      }
      const stop = fe.stopDriver(b.drv);
      for (const { index } of b.drv.queueSetups()) {
        const m = await nextMessage(be);
        expect(m.request).toBe(REQ.GET_VRING_BASE);
        native.sendMsg(be, encodeMessage(REQ.GET_VRING_BASE, FLAGS.VERSION | FLAGS.REPLY, encodeVringState({ index, num: index === 1 ? moved : PACKED_RING_BASE_START })));
      }
      const bases = await stop;
      expect(bases.get(1)).toBe(moved);
      expect(decodePackedRingBase(bases.get(1)!)).toEqual({ lastAvailIdx: 5, availWrap: 0, lastUsedIdx: 3, usedWrap: 0 });
      expect(bases.get(0)).toBe(PACKED_RING_BASE_START);
    } finally {
      fe.close();
      native.close(be);
    }
  });
});
