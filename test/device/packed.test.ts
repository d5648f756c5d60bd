/**
 * Packed rings (VIRTIO_F_RING_PACKED) end to end: the embedded NetDevice on a real tap in a test-made
 * namespace, the harness driver as the guest with packed queues. Frames go both ways through the tap
 * — the guest's TX is read back from an AF_PACKET socket on the tap, and frames written to that
 * socket reach the guest's RX — with MRG_RXBUF, EVENT_IDX and indirect descriptors each on and off,
 * on small rings that wrap many times; then a queue stop and restart in the middle of the traffic
 * (stopQueue reports the packed ring base, startQueue resumes from it), a TX blast, and a control
 * command on a packed control queue. Every frame carries a run tag and a sequence number: none may
 * be lost or arrive twice. EtherType 0x88b5 (local experiments) keeps the namespace's stack out of it.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { DEFAULT_OFFERED, mask, type FeatureName } from '../../device/features.ts';
import { ethernet } from '../../harness/frames.ts';
import { destroyAllNetns, openPacketIn } from '../../harness/netns.ts';
import { decodePackedRingBase, PACKED_RING_BASE_START } from '../../vring/index.ts';
import { createBed, type Bed } from './helpers.ts';

afterAll(() => destroyAllNetns());

/** lgnet does not offer packed rings by default yet: these beds do. */
const OFFER = DEFAULT_OFFERED | mask('RING_PACKED');
const TYPE = 0x88b5;

let bed: Bed | undefined;
let current: Packed | undefined;
afterEach(async () => {
  // A sniffer still reading after a failed test stops before its socket goes with the namespace.
  if (current) current.stopped = true;
  current = undefined;
  await bed?.close();
  bed = undefined;
});

let runSerial = 1;

interface Packed {
  bed: Bed;
  sniff: number;
  run: number;
  /** Set when the bed is closed: sniffers stop reading. */
  stopped: boolean;
}

async function packedBed(extra: FeatureName[], o: { queueSize?: number; rxBufferSize?: number; ctrl?: boolean } = {}): Promise<Packed> {
  bed = await createBed({
    accept: ['VERSION_1', 'MAC', 'RING_PACKED', ...extra],
    device: { features: OFFER },
    driver: {
      queueSize: o.queueSize ?? 8,
      ...(o.rxBufferSize !== undefined ? { rxBufferSize: o.rxBufferSize } : {}),
      ...(o.ctrl ? { ctrl: { maxPairs: 1 } } : {}),
    },
  });
  expect(bed.drv.format).toBe('packed');
  expect(bed.dev.features.packed).toBe(true);
  current = { bed, sniff: openPacketIn(bed.ns, 'lgtap0'), run: runSerial++, stopped: false };
  return current;
}

/** A tagged frame of `len` bytes: run (u16) and sequence number (u32) first, then a pattern. */
function tagged(dst: Uint8Array, src: Uint8Array, run: number, seq: number, len: number): Uint8Array {
  const p = new Uint8Array(len - 14);
  const dv = new DataView(p.buffer);
  dv.setUint16(0, run);
  dv.setUint32(2, seq);
  for (let i = 6; i < p.length; i++) p[i] = (i + seq * 13) & 0xff;
  return ethernet(dst, src, TYPE, p);
}

/** The sequence number of a frame of this run, or -1. */
function seqOf(f: Uint8Array, run: number): number {
  if (f.length < 20 || f[12] !== TYPE >> 8 || f[13] !== (TYPE & 0xff)) return -1;
  const dv = new DataView(f.buffer, f.byteOffset, f.length);
  return dv.getUint16(14) === run ? dv.getUint32(16) : -1;
}

/** Frame sizes that vary: minimum, odd, full MTU. */
const sizeOf = (seq: number): number => [60, 1514, 333, 98, 1000][seq % 5]!;

/** Reads this run's frames off the packet socket until `count` arrived or `timeoutMs` passed. */
async function sniffed(p: Packed, count: number, timeoutMs = 5000): Promise<Map<number, Uint8Array[]>> {
  const got = new Map<number, Uint8Array[]>();
  let n = 0;
  const buf = new Uint8Array(2048);
  const deadline = Date.now() + timeoutMs;
  while (n < count && Date.now() < deadline && !p.stopped) {
    const len = native.fdRead(p.sniff, buf);
    if (len < 0) {
      await new Promise((r) => setTimeout(r, 5));
      continue;
    }
    const f = buf.slice(0, len);
    const seq = seqOf(f, p.run);
    if (seq < 0) continue;
    add(got, seq, f);
    n++;
  }
  // A moment more: a duplicate would show up now.
  await new Promise((r) => setTimeout(r, 50));
  if (p.stopped) return got;
  for (let len = native.fdRead(p.sniff, buf); len >= 0; len = native.fdRead(p.sniff, buf)) {
    const f = buf.slice(0, len);
    const seq = seqOf(f, p.run);
    if (seq >= 0) add(got, seq, f);
  }
  return got;
}

/** Appends in place: a capture can hold thousands of one frame (blastTx's), and copying is quadratic. */
function add(got: Map<number, Uint8Array[]>, seq: number, f: Uint8Array): void {
  const list = got.get(seq);
  if (list) list.push(f);
  else got.set(seq, [f]);
}

/** Sends frames `from`…`to`−1 guest → tap, waiting for completions whenever the ring is full. */
async function sendRange(p: Packed, from: number, to: number, opts: { indirect?: boolean } = {}): Promise<Uint8Array[]> {
  const { bed: b } = p;
  const out: Uint8Array[] = [];
  for (let seq = from; seq < to; seq++) {
    const f = tagged(b.tapMac, b.guestMac, p.run, seq, sizeOf(seq));
    // Alternate layouts: one descriptor, header apart, header split across three (ANY_LAYOUT), as
    // far as the ring holds them (indirect frames take one slot whatever their pieces).
    const indirect = opts.indirect === true && seq % 2 === 0;
    const layouts = [[], [b.drv.hdrLen], [5, b.drv.hdrLen + 6]].filter((l) => indirect || l.length < b.drv.tx[0]!.q.size);
    const split = layouts[seq % layouts.length]!;
    for (let tries = 0; !b.drv.send(f, { split, indirect }); tries++) {
      if (tries > 50) throw new Error(`TX ring stayed full (frame ${seq})`);
      await b.drv.tx[0]!.waitCall(100);
    }
    out.push(f);
  }
  return out;
}

/** Expects exactly frames `from`…`to`−1 of `sent`, once each. */
function expectExactlyOnce(got: Map<number, Uint8Array[]>, sent: Map<number, Uint8Array>, what: string): void {
  const dup = [...got].filter(([, v]) => v.length > 1).map(([k]) => k);
  expect(dup, `${what}: duplicated`).toEqual([]);
  const missing = [...sent.keys()].filter((k) => !got.has(k));
  expect(missing, `${what}: lost`).toEqual([]);
  expect([...got.keys()].filter((k) => !sent.has(k)), `${what}: never sent`).toEqual([]);
  for (const [seq, f] of sent) expect(Buffer.from(got.get(seq)![0]!).equals(Buffer.from(f)), `${what}: frame ${seq} bytes`).toBe(true);
}

/** Writes frames `from`…`to`−1 tap → guest through the packet socket. */
function inject(p: Packed, from: number, to: number): Map<number, Uint8Array> {
  const sent = new Map<number, Uint8Array>();
  for (let seq = from; seq < to; seq++) {
    const f = tagged(p.bed.guestMac, p.bed.tapMac, p.run, seq, sizeOf(seq));
    expect(native.fdWrite(p.sniff, f)).toBe(f.length);
    sent.set(seq, f);
  }
  return sent;
}

/** Receives until `count` frames of this run arrived (others are ignored); seq → frames. */
async function received(p: Packed, count: number, timeoutMs = 8000): Promise<{ got: Map<number, Uint8Array[]>; numBuffers: number[] }> {
  const got = new Map<number, Uint8Array[]>();
  const numBuffers: number[] = [];
  let n = 0;
  const deadline = Date.now() + timeoutMs;
  while (n < count && Date.now() < deadline) {
    for (const r of await p.bed.drv.waitRx(1, { timeoutMs: Math.max(1, Math.min(200, deadline - Date.now())) })) {
      const seq = seqOf(r.frame, p.run);
      if (seq < 0) continue;
      add(got, seq, r.frame);
      numBuffers.push(r.numBuffers);
      n++;
    }
  }
  await new Promise((r) => setTimeout(r, 50));
  for (const r of p.bed.drv.receive()) {
    const seq = seqOf(r.frame, p.run);
    if (seq >= 0) add(got, seq, r.frame);
  }
  return { got, numBuffers };
}

describe('packed rings: frames both ways through the tap', () => {
  for (const mrg of [false, true]) {
    for (const eventIdx of [false, true]) {
      for (const indirect of [false, true]) {
        const extra: FeatureName[] = [...(mrg ? ['MRG_RXBUF' as const] : []), ...(eventIdx ? ['RING_EVENT_IDX' as const] : []), ...(indirect ? ['RING_INDIRECT_DESC' as const] : [])];
        const name = `MRG_RXBUF ${mrg ? 'on' : 'off'}, EVENT_IDX ${eventIdx ? 'on' : 'off'}, indirect ${indirect ? 'on' : 'off'}`;
        it(`${name}: 40 frames each way wrap an 8-entry ring, none lost or duplicated`, async () => {
          // With MRG_RXBUF, 512-byte buffers: a 1514-byte frame takes four of them.
          const p = await packedBed(extra, { queueSize: 8, ...(mrg ? { rxBufferSize: 512 } : {}) });
          const b = p.bed;
          expect(b.dev.features.mrgRxbuf).toBe(mrg);
          expect(b.dev.features.eventIdx).toBe(eventIdx);
          expect(b.dev.features.indirect).toBe(indirect);

          // Guest → tap.
          const sniffing = sniffed(p, 40);
          const out = await sendRange(p, 0, 40, { indirect });
          expect(await b.drv.drainTx(0, 5000)).toBe(0);
          expectExactlyOnce(await sniffing, new Map(out.map((f, i) => [i, f])), 'TX');
          const mt = b.dev.metrics().queues[1]!;
          expect(mt.frames).toBe(40);
          // 40 frames of 1 to 3 descriptors through 8 slots: the wrap counter flipped many times.
          expect(b.drv.tx[0]!.q.availIdx).toBe(b.drv.tx[0]!.q.usedCursor);

          // Tap → guest.
          const sent = inject(p, 100, 140);
          const { got, numBuffers } = await received(p, 40);
          expectExactlyOnce(got, sent, 'RX');
          if (mrg) expect(Math.max(...numBuffers)).toBe(Math.ceil((1514 + 12) / 512));
          else expect(numBuffers.every((n) => n === 1)).toBe(true);
          const mr = b.dev.metrics().queues[0]!;
          expect(mr.frames).toBeGreaterThanOrEqual(40);
          expect(b.dev.status & 0x40).toBe(0); // never NEEDS_RESET
        });
      }
    }
  }

  it('a 2-entry ring and a 256-entry ring, both ways', async () => {
    for (const queueSize of [2, 256]) {
      const p = await packedBed(['RING_EVENT_IDX', 'MRG_RXBUF'], { queueSize });
      const sniffing = sniffed(p, 25);
      const out = await sendRange(p, 0, 25);
      expect(await p.bed.drv.drainTx(0, 5000)).toBe(0);
      expectExactlyOnce(await sniffing, new Map(out.map((f, i) => [i, f])), `TX, size ${queueSize}`);
      const sent = inject(p, 200, 225);
      expectExactlyOnce((await received(p, 25)).got, sent, `RX, size ${queueSize}`);
      await bed!.close();
      bed = undefined;
    }
  });
});

describe('packed rings: stop and restart', () => {
  it('stopQueue returns the packed ring base, startQueue resumes from it; nothing lost or duplicated', async () => {
    const p = await packedBed(['RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'MRG_RXBUF'], { queueSize: 8, rxBufferSize: 512 });
    const b = p.bed;
    const tx = b.drv.tx[0]!;

    // Some traffic first, so that the positions are mid-ring, in a later lap.
    const sniff1 = sniffed(p, 13);
    const first = await sendRange(p, 0, 13);
    expect(await b.drv.drainTx()).toBe(0);
    expectExactlyOnce(await sniff1, new Map(first.map((f, i) => [i, f])), 'TX before the stop');
    const rx1 = inject(p, 1000, 1011);
    expectExactlyOnce((await received(p, 11)).got, rx1, 'RX before the stop');

    // Stop both queues; the device reports where it is in the packed encoding.
    const txBase = await b.dev.stopQueue(1);
    const rxBase = await b.dev.stopQueue(0);
    const t = decodePackedRingBase(txBase);
    // Every TX frame was completed: the device's avail and used positions are where the driver published.
    expect(t.lastAvailIdx | (t.availWrap << 15)).toBe(tx.q.availIdx);
    expect(t.lastUsedIdx | (t.usedWrap << 15)).toBe(tx.q.usedCursor);
    expect(txBase).not.toBe(PACKED_RING_BASE_START);
    const r = decodePackedRingBase(rxBase);
    expect(r.lastUsedIdx | (r.usedWrap << 15)).toBe(b.drv.rx[0]!.q.usedCursor);

    // While stopped: TX frames are queued in the ring, RX frames wait in the tap.
    const sniff2 = sniffed(p, 7 + 5, 8000);
    const queued = await sendRange(p, 13, 18, { indirect: true }); // 5 frames, ring not full
    await new Promise((res) => setTimeout(res, 100));
    expect(tx.q.inFlight).toBe(5); // nobody took them
    const rx2 = inject(p, 2000, 2006);
    expect(b.drv.receive()).toEqual([]);

    // Restart from the bases the device reported (setupQueue kept them as lastAvail).
    await b.dev.startQueue(1);
    await b.dev.startQueue(0);
    const more = await sendRange(p, 18, 25);
    expect(await b.drv.drainTx(0, 5000)).toBe(0);
    const all = [...first, ...queued, ...more];
    const got = await sniff2;
    expectExactlyOnce(got, new Map(all.slice(13).map((f, i) => [13 + i, f])), 'TX across the restart');
    expect(b.dev.metrics().queues[1]!.frames).toBe(25);
    const rx3 = inject(p, 3000, 3009);
    expectExactlyOnce((await received(p, 15)).got, new Map([...rx2, ...rx3]), 'RX across the restart');

    // And a restart from a stop in the middle of a stream: frames still in the ring at the stop are
    // taken after the restart, once.
    const sniff3 = sniffed(p, 30, 10_000);
    const stream = sendRange(p, 100, 130);
    await new Promise((res) => setTimeout(res, 5));
    await b.dev.stopQueue(1);
    await new Promise((res) => setTimeout(res, 50));
    await b.dev.startQueue(1);
    const streamed = await stream;
    expect(await b.drv.drainTx(0, 5000)).toBe(0);
    expectExactlyOnce(await sniff3, new Map(streamed.map((f, i) => [100 + i, f])), 'TX across a stop mid-stream');
  });
});

describe('packed rings: the rest of the driver', () => {
  it('blastTx keeps a packed TX ring full; every completion is a frame the device sent', async () => {
    const p = await packedBed(['RING_EVENT_IDX'], { queueSize: 64 });
    const f = tagged(p.bed.tapMac, p.bed.guestMac, p.run, 0, 60);
    const r = p.bed.drv.blastTx(f, 0.3);
    expect(r.frames).toBeGreaterThan(100);
    expect(p.bed.dev.metrics().queues[1]!.frames).toBeGreaterThanOrEqual(r.frames);
    expect(p.bed.drv.tx[0]!.q.inFlight).toBe(0);
    // The ring is usable afterwards.
    const sniffing = sniffed(p, 1);
    await sendRange(p, 7, 8);
    expect(await p.bed.drv.drainTx()).toBe(0);
    expect([...(await sniffing).keys()]).toContain(7);
  });

  it('ctrl() on a packed control queue: the device answers OK, and ERR for an unknown command', async () => {
    const p = await packedBed(['CTRL_VQ', 'CTRL_RX'], { ctrl: true });
    expect(p.bed.drv.ctrlRing!.q.format).toBe('packed');
    expect(await p.bed.drv.ctrl(0, 0, new Uint8Array([1]))).toBe(0); // VIRTIO_NET_CTRL_RX_PROMISC on
    expect(await p.bed.drv.ctrl(0, 0, new Uint8Array([0]))).toBe(0);
    expect(await p.bed.drv.ctrl(0, 99, new Uint8Array([0]))).toBe(1);
  });
});
