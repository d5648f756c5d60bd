/**
 * A packed ring's SET_VRING_BASE in the two encodings front-ends send. QEMU sends the avail position
 * in the low half and the used position in the high half; DPDK's virtio-user (and SPDK's) send the
 * avail half alone, 0x8000 at a fresh start. Read as QEMU's, that start put the whole ring in flight,
 * and the first chain broke the queue (VRING_TOO_MANY_IN_FLIGHT). Both must carry traffic for laps.
 */
import { describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { BROADCAST, ip4, mac, udpFrame, UDP_OFFSET } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { netnsPrerequisites, openPacketIn } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { packedBaseOf } from '../../sandbox/vhost-user/vrings.ts';
import { encodePackedRingBase } from '../../vring/index.ts';
import { expectedPayload, udpSend, until, VHOST_USER_NET_FEATURES, vuBedPerDescribe } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
const MAGIC = 0x4c474e54;
const PACKED = (VHOST_USER_NET_FEATURES & ~mask('RING_PACKED')) | mask('RING_PACKED');
const QSIZE = 64;
const FRAMES = 5 * QSIZE; // five laps of the ring each way

describe('packedBaseOf', () => {
  it('takes QEMU\'s two halves as they are', () => {
    for (const b of [
      encodePackedRingBase({ lastAvailIdx: 0, availWrap: 1, lastUsedIdx: 0, usedWrap: 1 }), // a fresh start
      encodePackedRingBase({ lastAvailIdx: 17, availWrap: 0, lastUsedIdx: 12, usedWrap: 0 }),
      encodePackedRingBase({ lastAvailIdx: 5, availWrap: 0, lastUsedIdx: 0, usedWrap: 0 }), // used at the second lap's start
      encodePackedRingBase({ lastAvailIdx: 0, availWrap: 0, lastUsedIdx: 0, usedWrap: 0 }),
      encodePackedRingBase({ lastAvailIdx: 3, availWrap: 1, lastUsedIdx: 250, usedWrap: 0 }),
    ]) {
      expect(packedBaseOf(b)).toBe(b);
    }
  });
  it('reads an avail half with wrap 1 over a used half of 0 as the avail half alone (DPDK\'s virtio-user)', () => {
    expect(packedBaseOf(0x8000)).toBe(0x8000_8000);
    expect(packedBaseOf(0x8000 | 37)).toBe(((0x8000 | 37) * 0x1_0001) >>> 0);
  });
});

describe.skipIf(!pre.ok).each([
  { sender: 'QEMU', base: (): number | undefined => undefined },
  { sender: 'DPDK virtio-user', base: (): number | undefined => 0x8000 },
])('a packed ring started with SET_VRING_BASE as $sender sends it', ({ base }) => {
  const theBed = vuBedPerDescribe();

  it(`carries ${FRAMES} frames each way through a ${QSIZE}-entry ring, no queue broken`, async () => {
    const bed = theBed();
    const ram = new GuestRam(24 << 20);
    const drv = new VirtioNetDriver(ram, { features: PACKED & bed.dev.offered, pairs: 1, queueSize: QSIZE });
    const fe = await VhostUserFrontend.connect(bed.path);
    const sniff = openPacketIn(bed.ns, 'lgtap0');
    try {
      await fe.attachDriver(drv, ram, { base: (i) => base() ?? drv.queueSetups().find((q) => q.index === i)!.setup.lastAvail ?? 0 });
      expect(drv.format).toBe('packed');
      drv.fillRx();

      // TX: each frame carries its sequence number; the tap must show each once.
      const seen = new Set<number>();
      const buf = new Uint8Array(2048);
      const drain = (): void => {
        for (;;) {
          const n = native.fdRead(sniff, buf);
          if (n <= 0) return;
          const dv = new DataView(buf.buffer, 0, n);
          if (n >= UDP_OFFSET + 16 && dv.getUint16(12) === 0x0800 && dv.getUint32(UDP_OFFSET + 8) === MAGIC) seen.add(dv.getUint32(UDP_OFFSET + 12));
        }
      };
      const payload = new Uint8Array(64);
      const pv = new DataView(payload.buffer);
      pv.setUint32(0, MAGIC);
      const deadline = Date.now() + 15_000;
      for (let seq = 0; seq < FRAMES && Date.now() < deadline; ) {
        pv.setUint32(4, seq);
        const f = udpFrame({ srcMac: mac(bed.guestMac), dstMac: BROADCAST, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 40000, dstPort: 9, payload });
        if (drv.send(f, { kick: seq % 8 === 7 })) {
          if (seq++ % 8 === 7) drain(); // a capture read only after the burst can overflow the socket
        } else {
          drv.flushTx();
          drv.reclaimTx();
          drain();
          await new Promise((r) => setTimeout(r, 1));
        }
      }
      drv.flushTx();
      const sent = await until(() => (drv.reclaimTx(), drain(), drv.tx[0]!.q.inFlight === 0 && seen.size >= FRAMES), 5000, 1);
      expect(sent, `TX frames completed (device: ${bed.dev.metrics().queues[0]!.frames}) and seen on the tap (${seen.size})`).toBe(true);
      expect(seen.size).toBe(FRAMES);

      // RX: datagrams from the host reach the guest intact, refilled as they come.
      const got: Uint8Array[] = [];
      const take = (): void => {
        for (const r of drv.receive()) if (r.frame.length >= UDP_OFFSET + 8 && r.frame[23] === 17 && ((r.frame[36]! << 8) | r.frame[37]!) === 7200) got.push(r.frame);
        drv.fillRx();
      };
      const sender = udpSend(bed.ns, bed.guestIp, 7200, 200, FRAMES, 1);
      try {
        expect(await until(() => (take(), got.length >= FRAMES), 15_000, 1), `RX frames received (${got.length})`).toBe(true);
      } finally {
        sender.kill();
      }
      for (const f of got) {
        const p = f.subarray(UDP_OFFSET + 8, UDP_OFFSET + 8 + 200);
        expect(Buffer.from(p).equals(Buffer.from(expectedPayload(200, p[0]!)))).toBe(true);
      }
      const m = bed.dev.metrics().queues;
      expect(m.map((q) => q.queueBroken)).toEqual([0, 0]);
      expect(m[0]!.frames).toBeGreaterThanOrEqual(FRAMES);
      expect(m[1]!.frames).toBeGreaterThanOrEqual(FRAMES);
    } finally {
      fe.close();
      drv.close();
      ram.close();
    }
  });
});
