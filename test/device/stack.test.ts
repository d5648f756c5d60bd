/**
 * The harness's tiny guest stack behind a NetDevice: `ping` from the namespace gets answers (ARP and
 * ICMP echo both cross the device), and a UDP frame sent with a partial checksum (NEEDS_CSUM) is
 * completed on its way out and accepted by a real socket.
 */
import { once } from 'node:events';
import { expect, it } from 'vitest';
import { answer, ip4, UDP_OFFSET, udpFrame } from '../../harness/frames.ts';
import { createBed, expectedPayload, udpSink, type Bed } from './helpers.ts';


// createBed() tracks what it makes: closed after each test (test/helpers/bed.ts).
let bed: Bed | undefined;

/** Answers ARP and ICMP echo until stopped. */
function responder(b: Bed): { stop(): Promise<void>; answered: () => number } {
  let running = true;
  let answered = 0;
  const self = { mac: b.guestMac, ip: ip4(b.guestIp) };
  const loop = (async () => {
    while (running) {
      for (const f of b.drv.receive()) {
        const reply = answer(f.frame, self);
        if (reply && b.drv.send(reply)) answered++;
      }
      b.drv.reclaimTx();
      await b.drv.rx[0]!.waitCall(20);
    }
  })();
  return { async stop() { running = false; await loop; }, answered: () => answered };
}

it('ping from the namespace to the harness guest: 20 of 20 answered', async () => {
  bed = await createBed();
  bed.ns.exec('ip', 'neigh', 'del', bed.guestIp, 'dev', 'lgtap0'); // make ARP cross the device too
  const r = responder(bed);
  try {
    // Asynchronously: the responder runs on this thread's event loop.
    const child = bed.ns.spawn(['ping', '-c', '20', '-i', '0.05', '-W', '2', bed.guestIp]);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    await once(child, 'exit');
    expect(out).toMatch(/20 packets transmitted, 20 received, 0% packet loss/);
    expect(r.answered()).toBeGreaterThanOrEqual(21); // 20 echoes and at least one ARP reply
  } finally {
    await r.stop();
  }
});

it('checksum offload: a UDP frame with NEEDS_CSUM and only the pseudo-header sum is delivered', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'CSUM', 'GUEST_CSUM', 'MAC'] });
  const sink = await udpSink(bed, 7100, 2, 5000);
  for (let seq = 0; seq < 2; seq++) {
    const frame = udpFrame({
      srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
      srcPort: 5001, dstPort: 7100, payload: expectedPayload(300, seq), partialCsum: true,
    });
    expect(bed.drv.send(frame, { hdr: { flags: 1, csumStart: UDP_OFFSET, csumOffset: 6 } })).toBe(true);
  }
  expect(await bed.drv.drainTx()).toBe(0);
  const got = await sink.datagrams();
  expect(got.length).toBe(2);
  expect(got[1]!.hex).toBe(Buffer.from(expectedPayload(300, 1)).toString('hex'));
});

it('control: without NEEDS_CSUM the same partial-sum frame is dropped by the host (the test can fail)', async () => {
  bed = await createBed({ accept: ['VERSION_1', 'CSUM', 'GUEST_CSUM', 'MAC'] });
  const sink = await udpSink(bed, 7101, 1, 1500);
  const frame = udpFrame({
    srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
    srcPort: 5001, dstPort: 7101, payload: expectedPayload(300, 0), partialCsum: true,
  });
  bed.drv.send(frame);
  expect(await bed.drv.drainTx()).toBe(0);
  expect((await sink.datagrams()).length).toBe(0);
});
