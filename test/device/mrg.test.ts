/**
 * MRG_RXBUF: a 9000-byte frame spread over 4 small RX chains, num_buffers right, the chains it did not
 * need given back to the ring (rewound), and the next frame landing in them.
 */
import { expect, it } from 'vitest';
import { createBed, expectedPayload, udpSend, type Bed } from './helpers.ts';

// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

it('a 9000-byte frame fills 4 chains of 2304 bytes; the other 4 are rewound', async () => {
  bed = await createBed({
    accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', 'MTU'],
    mtu: 9000,
    driver: { queueSize: 8, rxBufferSize: 2304 },
  });
  const sender = udpSend(bed, 6100, 9000 - 42, 1);
  const r = bed.drv.rx[0]!;
  // Take the completion without reposting, to see what the device consumed.
  expect(await r.waitCall(5000)).toBe(true);
  sender.kill();
  const frames = bed.drv.receive();
  expect(frames.length).toBe(1);
  expect(frames[0]!.numBuffers).toBe(4);
  expect(frames[0]!.frame.length).toBe(9000);
  expect(Buffer.from(frames[0]!.frame.subarray(42)).equals(Buffer.from(expectedPayload(8958, 0)))).toBe(true);
  // The device popped all 8 chains for the burst, used 4 and rewound 4: its next avail index is 4.
  expect(await bed.dev.stopQueue(0)).toBe(4);
  const m = bed.dev.metrics().queues[0]!;
  expect(m.frames).toBe(1);
  expect(m.rxDropTooBig + m.rxDropShortBuffer).toBe(0);
  // Restarted, the device takes the next frame into the rewound chains first.
  await bed.dev.startQueue(0);
  const again = udpSend(bed, 6100, 3000, 1);
  const next = await bed.drv.waitRx(1, { timeoutMs: 5000 });
  again.kill();
  expect(next.length).toBe(1);
  expect(next[0]!.numBuffers).toBe(2);
});
