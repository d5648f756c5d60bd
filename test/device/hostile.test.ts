/**
 * A hostile guest. Malformed TX chains are completed, counted under their reason and never sent, and
 * the next good frame still flows. A broken ring (a descriptor loop, CVE-2019-9547's class) marks that
 * queue broken; the other queue keeps working and the process lives on.
 */
import { afterAll, afterEach, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { ip4, udpFrame } from '../driver/frames.ts';
import { destroyAllNetns } from '../helpers/netns.ts';
import { createBed, expectedPayload, udpSend, udpSink, type Bed } from './helpers.ts';

afterAll(() => destroyAllNetns());
let bed: Bed | undefined;
afterEach(async () => {
  await bed?.close();
  bed = undefined;
});

function good(b: Bed, seq: number, port: number): Uint8Array {
  return udpFrame({
    srcMac: b.guestMac, dstMac: b.tapMac, srcIp: ip4(b.guestIp), dstIp: ip4(b.hostIp),
    srcPort: 5002, dstPort: port, payload: expectedPayload(100, seq),
  });
}

it('each malformed TX chain is counted and skipped; good frames around it are delivered', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'CSUM', 'MAC'] }); // no HOST_TSO*
  const sink = await udpSink(bed, 7200, 6, 5000);
  const drv = bed.drv;
  let seq = 0;
  const cases: Array<[string, () => void]> = [
    ['txDropShort', () => drv.send(new Uint8Array(5))],
    ['txDropTooBig', () => drv.send(new Uint8Array(65_600))],
    ['txDropGsoNotNegotiated', () => drv.send(good(bed!, 99, 7200), { hdr: { flags: 1, gsoType: 1, gsoSize: 1400, csumStart: 34, csumOffset: 6 } })],
    ['txDropCsumOutOfRange', () => drv.send(good(bed!, 99, 7200), { hdr: { flags: 1, csumStart: 140, csumOffset: 6 } })],
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
  expect(got.map((d) => d.hex)).toEqual([0, 1, 2, 3, 4, 5].map((s) => Buffer.from(expectedPayload(100, s)).toString('hex')));
  const m = bed.dev.metrics().queues[1]!;
  for (const [name] of cases) expect(m[name as keyof typeof m], name).toBe(1);
  expect(m.frames).toBe(6);
  expect(bed.dev.metrics().queues[1]!.broken).toBeNull();
});

it('a descriptor loop breaks the TX queue only; RX keeps delivering', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC'] });
  const broken = new Promise<{ queue: number; code: string }>((r) => bed!.dev.once('broken', r));
  const tx = bed.drv.tx[0]!;
  const { desc, avail } = tx.setup;
  const mem = bed.ram.mem;
  // Descriptor 0: a 64-byte buffer whose NEXT points to itself.
  mem.writeU64(desc, bed.ram.alloc(64));
  mem.writeU32(desc + 8, 64);
  mem.writeU16(desc + 12, 1); // VRING_DESC_F_NEXT
  mem.writeU16(desc + 14, 0);
  mem.writeU16(avail + 4, 0); // avail.ring[0] = head 0
  mem.writeU16(avail + 2, 1); // avail.idx = 1
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
