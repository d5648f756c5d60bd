/**
 * Frames both ways through a NetDevice on a real tap in a test-made namespace, with the harness
 * driver as the guest: byte-for-byte at 60, 1514 and 9000 bytes, with and without MRG_RXBUF.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { udpFrame } from '../../harness/frames.ts';
import { destroyAllNetns } from '../../harness/netns.ts';
import { createBed, expectedPayload, ip4, udpSend, udpSink, type Bed } from './helpers.ts';
import type { FeatureName } from '../../device/features.ts';

afterAll(() => destroyAllNetns());

const BASE: FeatureName[] = ['VERSION_1', 'RING_EVENT_IDX', 'RING_INDIRECT_DESC', 'MAC', 'MTU', 'STATUS', 'CSUM', 'GUEST_CSUM'];

for (const variant of ['plain', 'mrg'] as const) {
  describe(`traffic (${variant})`, () => {
    let bed: Bed | undefined;
    afterEach(async () => {
      await bed?.close();
      bed = undefined;
    });

    for (const size of [60, 1514, 9000]) {
      it(`TX: ${size}-byte frames reach a UDP socket in the namespace byte for byte`, async () => {
        bed = await createBed({ accept: variant === 'mrg' ? [...BASE, 'MRG_RXBUF'] : BASE, mtu: 9000 });
        const payloadLen = size - 42;
        const sink = await udpSink(bed, 7000, 5, 8000);
        for (let seq = 0; seq < 5; seq++) {
          const frame = udpFrame({
            srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
            srcPort: 5000, dstPort: 7000, payload: expectedPayload(payloadLen, seq),
          });
          expect(frame.length).toBe(size);
          expect(bed.drv.send(frame, { split: seq % 2 ? [5, 20] : [] })).toBe(true);
        }
        expect(await bed.drv.drainTx()).toBe(0);
        const got = await sink.datagrams();
        expect(got.map((d) => d.len)).toEqual([payloadLen, payloadLen, payloadLen, payloadLen, payloadLen]);
        got.forEach((d, seq) => expect(d.hex).toBe(Buffer.from(expectedPayload(payloadLen, seq)).toString('hex')));
        const m = bed.dev.metrics().queues[1]!;
        expect(m.frames).toBe(5);
      });

      it(`RX: ${size}-byte frames from the namespace arrive in guest buffers byte for byte`, async () => {
        bed = await createBed({ accept: variant === 'mrg' ? [...BASE, 'MRG_RXBUF'] : BASE, mtu: 9000 });
        const payloadLen = size - 42;
        const sender = udpSend(bed, 6000, payloadLen, 5, 5);
        const frames = await bed.drv.waitRx(5, { timeoutMs: 8000 });
        sender.kill();
        const udp = frames.filter((f) => f.frame.length >= 42 && f.frame[23] === 17);
        expect(udp.length).toBe(5);
        udp.forEach((f, seq) => {
          expect(f.frame.length).toBe(size);
          expect(Buffer.from(f.frame.subarray(42)).equals(Buffer.from(expectedPayload(payloadLen, seq)))).toBe(true);
          if (variant === 'mrg') expect(f.numBuffers).toBe(Math.ceil((size + 12) / 2048));
          else expect(f.numBuffers).toBe(1);
        });
      });
    }
  });
}
