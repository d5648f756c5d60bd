/** Two queue pairs on a multiqueue tap, one worker per queue: traffic on both pairs. */
import { afterAll, afterEach, expect, it } from 'vitest';
import { ip4, udpFrame } from '../../harness/frames.ts';
import { destroyAllNetns } from '../../harness/netns.ts';
import { createBed, expectedPayload, udpSend, udpSink, type Bed } from './helpers.ts';

afterAll(() => destroyAllNetns());
let bed: Bed | undefined;
afterEach(async () => {
  await bed?.close();
  bed = undefined;
});

it('TX on both pairs reaches the namespace; RX flows spread over both pairs', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'MAC', 'MQ', 'RING_EVENT_IDX'], queuePairs: 2 });
  const sink = await udpSink(bed, 7300, 4, 5000);
  for (let seq = 0; seq < 4; seq++) {
    const frame = udpFrame({
      srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
      srcPort: 5003, dstPort: 7300, payload: expectedPayload(80, seq),
    });
    expect(bed.drv.send(frame, { pair: seq & 1 })).toBe(true);
    expect(await bed.drv.drainTx(seq & 1)).toBe(0);
  }
  expect((await sink.datagrams()).length).toBe(4);
  const q = bed.dev.metrics().queues;
  expect(q[1]!.frames).toBe(2);
  expect(q[3]!.frames).toBe(2);
  // Eight flows (eight source ports) from the namespace: the tap hashes them over its two queues.
  const senders = Array.from({ length: 8 }, () => udpSend(bed!, 6600, 64, 20, 2));
  const deadline = Date.now() + 8000;
  let got0 = 0;
  let got1 = 0;
  while (got0 + got1 < 160 && Date.now() < deadline) {
    got0 += bed.drv.receive(0).length;
    got1 += bed.drv.receive(1).length;
    await new Promise((r) => setTimeout(r, 10));
  }
  for (const s of senders) s.kill();
  expect(got0 + got1).toBe(160);
  expect(got0).toBeGreaterThan(0);
  expect(got1).toBeGreaterThan(0);
});
