/**
 * A hostile guest. Malformed TX chains are completed, counted under their reason and never sent, and
 * the next good frame still flows. A broken ring (a descriptor loop, CVE-2019-9547's class) marks that
 * queue broken; the other queue keeps working and the process lives on.
 */
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { ip4, udpFrame } from '../../harness/frames.ts';
import { SplitRingBuilder } from '../../harness/rings.ts';
import { createBed, expectedPayload, udpSend, udpSink, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

function good(b: Bed, seq: number, port: number): Uint8Array {
  return udpFrame({
    srcMac: b.guestMac, dstMac: b.tapMac, srcIp: ip4(b.guestIp), dstIp: ip4(b.hostIp),
    srcPort: 5002, dstPort: port, payload: expectedPayload(100, seq),
  });
}

it('each malformed TX chain is counted and skipped; good frames around it are delivered; all are completed in ring order', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'CSUM', 'MAC'] }); // no HOST_TSO*
  const sink = await udpSink(bed, 7200, 7, 5000);
  const drv = bed.drv;
  let seq = 0;
  const cases: Array<[string, () => void]> = [
    ['txDropShort', () => drv.send(new Uint8Array(5))],
    ['txDropTooBig', () => drv.send(new Uint8Array(65_600))],
    ['txDropGsoNotNegotiated', () => drv.send(good(bed!, 99, 7200), { hdr: { flags: 1, gsoType: 1, gsoSize: 1400, csumStart: 34, csumOffset: 6 } })],
    ['txDropCsumOutOfRange', () => drv.send(good(bed!, 99, 7200), { hdr: { flags: 1, csumStart: 140, csumOffset: 6 } })],
    ['txDropTooManyPieces', () => drv.send(good(bed!, 99, 7200), { split: Array.from({ length: 99 }, (_, i) => 20 + i) })],
    ['txDropWritable', () => {
      const r = drv.tx[0]!;
      const buf = drv.ram.alloc(256);
      r.q.add([{ addr: buf, len: 12 + 60 }], [{ addr: buf + 128, len: 16 }]);
      r.publishAndKick();
    }],
  ];
  for (const [, bad] of cases) {
    expect(drv.send(good(bed, seq++, 7200))).toBe(true);
    bad();
  }
  expect(drv.send(good(bed, seq++, 7200))).toBe(true);
  expect(await drv.drainTx(0, 5000)).toBe(0);
  const got = await sink.datagrams();
  expect(got.map((d) => d.hex)).toEqual([0, 1, 2, 3, 4, 5, 6].map((s) => Buffer.from(expectedPayload(100, s)).toString('hex')));
  const m = bed.dev.metrics().queues[1]!;
  for (const [name] of cases) expect(m[name as keyof typeof m], name).toBe(1);
  expect(m.frames).toBe(7);
  expect(bed.dev.metrics().queues[1]!.broken).toBeNull();
  // One burst held them all, and every chain was completed in the order it was made available,
  // the malformed ones in their places (what VIRTIO_F_IN_ORDER promises a driver).
  const ring = SplitRingBuilder.over(bed.ram.mem, drv.tx[0]!.setup, bed.ram);
  expect(ring.usedIdx).toBe(13);
  expect(Array.from({ length: 13 }, (_, j) => ring.usedElem(j).id)).toEqual(Array.from({ length: 13 }, (_, j) => ring.availEntry(j)));
});

it('an RX chain in more pieces than a readv takes is completed with 0 and counted; the next chain gets the frame', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'RING_INDIRECT_DESC'] });
  const rx = bed.drv.rx[0]!;
  const ring = SplitRingBuilder.over(bed.ram.mem, rx.setup, bed.ram);
  // Stop RX, and turn the next chain the device would pop into an indirect table of 300 writable
  // 8-byte pieces (2400 bytes: room enough, but more pieces than one readv takes). The driver still
  // holds that head as a one-descriptor chain, which is what the device returns it as.
  const base = await bed.dev.stopQueue(0);
  const head = ring.availEntry(base);
  const table = ring.indirectTable(Array.from({ length: 300 }, () => ({ len: 8, write: true })));
  expect(table.len).toBe(300 * 16);
  ring.addIndirectRef(table, { desc: head, offer: false });
  bed.dev.setupQueue(0, { ...rx.setup, lastAvail: base });
  await bed.dev.startQueue(0);
  const sender = udpSend(bed, 6310, 100, 3, 10);
  const isOurs = (f: { frame: Uint8Array }) => f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === 6310;
  const frames: Array<{ frame: Uint8Array }> = [];
  for (let i = 0; i < 50 && frames.filter(isOurs).length < 3; i++) frames.push(...(await bed.drv.waitRx(1, { timeoutMs: 100 })));
  sender.kill();
  expect(frames.filter(isOurs).length).toBe(3);
  expect(frames.filter((f) => f.frame.length === 0).length).toBe(1); // the unusable chain, completed with 0
  const m = bed.dev.metrics().queues[0]!;
  expect(m.rxDropTooManyPieces).toBe(1);
  expect(m.broken).toBeNull();
});

it('a descriptor loop breaks the TX queue only; RX keeps delivering', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC'] });
  const broken = new Promise<{ queue: number; code: string }>((r) => bed!.dev.once('broken', r));
  const tx = bed.drv.tx[0]!;
  // Behind the driver's back: descriptor 0 becomes a 64-byte buffer whose NEXT points to itself, and
  // goes into the available ring where the driver would have put its next chain.
  const ring = SplitRingBuilder.over(bed.ram.mem, tx.setup, bed.ram);
  expect(ring.addDescLoop([0], { len: 64 })).toBe(0);
  expect(ring.availIdx).toBe(1);
  native.eventfdWrite(tx.kickFd, 1);
  const e = await broken;
  expect(e.queue).toBe(1);
  expect(e.code).toBe('VRING_DESC_LOOP');
  const m = bed.dev.metrics().queues[1]!;
  expect(m.queueBroken).toBe(1);
  expect(m.broken).toMatch(/VRING_DESC_LOOP/);
  expect(bed.dev.status & 0x40).toBe(0x40); // DEVICE_NEEDS_RESET
  // The RX queue of the same device still works.
  const sender = udpSend(bed, 6300, 100, 3, 10);
  const frames = await bed.drv.waitRx(3, { timeoutMs: 5000 });
  sender.kill();
  expect(frames.filter((f) => f.frame[23] === 17).length).toBe(3);
  // Stopping a broken queue is clean.
  await bed.dev.stopQueue(1);
});
