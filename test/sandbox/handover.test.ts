/**
 * Ring hand-over, as a migration does it between two back-ends: the harness guest runs on lgnet A,
 * A's rings are stopped with GET_VRING_BASE, and lgnet B (another device, on another tap) resumes them
 * from those bases with SET_VRING_BASE over the same guest memory. Frames in flight at the switch are
 * neither lost nor sent twice: every TX frame leaves through exactly one of the two taps, and every RX
 * frame a back-end took from its tap reaches the guest once, intact. B then announces the guest with
 * SEND_RARP on its tap.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { BROADCAST, ip4, mac, udpFrame, UDP_OFFSET } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { destroyAllNetns, netnsPrerequisites, openPacketIn } from '../../harness/netns.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createVuBed, expectedPayload, udpSend, until, VHOST_USER_NET_FEATURES, type VuBed } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
const MAGIC = 0x4c474e54; // "LGNT": marks the test's own TX frames

/** Drains a nonblocking packet socket: TX frames of this test by sequence number, and RARP frames. */
function drain(fd: number, seqs: number[], rarp: Uint8Array[]): void {
  const buf = new Uint8Array(2048);
  for (;;) {
    const n = native.fdRead(fd, buf);
    if (n <= 0) return;
    const dv = new DataView(buf.buffer, 0, n);
    if (dv.getUint16(12) === 0x8035) rarp.push(buf.slice(0, n));
    else if (n >= UDP_OFFSET + 16 && dv.getUint16(12) === 0x0800 && buf[23] === 17 && dv.getUint32(UDP_OFFSET + 8) === MAGIC) seqs.push(dv.getUint32(UDP_OFFSET + 12));
  }
}

async function switchOver(drv: VirtioNetDriver, ram: GuestRam, from: VhostUserFrontend, fromBed: VuBed, to: VuBed): Promise<VhostUserFrontend> {
  const bases = await from.stopDriver(drv);
  from.close();
  expect(await until(() => fromBed.server.connection === null)).toBe(true);
  const fe = await VhostUserFrontend.connect(to.path);
  await fe.attachDriver(drv, ram, { base: (i) => bases.get(i) ?? 0 });
  return fe;
}

const SPLIT = VHOST_USER_NET_FEATURES & ~mask('RING_PACKED');

describe.skipIf(!pre.ok).each([
  { ring: 'split', features: SPLIT },
  { ring: 'packed', features: SPLIT | mask('RING_PACKED') },
])('ring hand-over between two lgnet back-ends (GET_VRING_BASE → SET_VRING_BASE), $ring rings', ({ features }) => {
  let a: VuBed;
  let b: VuBed;
  beforeAll(async () => {
    a = await createVuBed();
    b = await createVuBed();
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    destroyAllNetns();
  });

  it('TX: 600 frames sent through a switch in mid-stream leave exactly once, through A or B', async () => {
    const ram = new GuestRam(48 << 20);
    const drv = new VirtioNetDriver(ram, { features: features & a.dev.offered, pairs: 1, queueSize: 256 });
    const sniffA = openPacketIn(a.ns, 'lgtap0');
    const sniffB = openPacketIn(b.ns, 'lgtap0');
    const seqs: number[] = [];
    const rarp: Uint8Array[] = [];
    let fe = await VhostUserFrontend.connect(a.path);
    try {
      await fe.attachDriver(drv, ram);
      expect(drv.format).toBe((features & mask('RING_PACKED')) !== 0n ? 'packed' : 'split');
      drv.fillRx();
      const N = 600;
      const payload = new Uint8Array(64);
      const pv = new DataView(payload.buffer);
      pv.setUint32(0, MAGIC);
      const deadline = Date.now() + 20_000;
      for (let seq = 0; seq < N && Date.now() < deadline; ) {
        pv.setUint32(4, seq);
        const f = udpFrame({ srcMac: mac(a.guestMac), dstMac: BROADCAST, srcIp: ip4(a.guestIp), dstIp: ip4(a.hostIp), srcPort: 40000, dstPort: 9, payload });
        if (drv.send(f, { kick: seq % 8 === 7 })) {
          seq++;
          if (seq % 16 === 0) {
            drain(sniffA, seqs, rarp);
            drain(sniffB, seqs, rarp);
          }
          // The switch comes while frames are queued and kicked, some taken by A and some not yet.
          if (seq === 250) {
            // A has sent some of what is queued (not all, usually): then the switch.
            expect(await until(() => (drain(sniffA, seqs, rarp), a.dev.metrics().queues[1]!.frames >= 64), 5000, 1)).toBe(true);
            fe = await switchOver(drv, ram, fe, a, b);
          }
        } else {
          drv.flushTx();
          drv.reclaimTx();
          drain(sniffA, seqs, rarp);
          drain(sniffB, seqs, rarp);
          await new Promise((r) => setTimeout(r, 1));
        }
      }
      drv.flushTx();
      // Read the taps while the last frames go out: a packet socket's buffer holds only so many.
      const settled = await until(() => {
        drv.reclaimTx();
        drain(sniffA, seqs, rarp);
        drain(sniffB, seqs, rarp);
        return drv.tx[0]!.q.inFlight === 0 && seqs.length >= N;
      }, 5000, 1);
      expect(settled, `all frames completed and seen (${seqs.length} seen)`).toBe(true);
      const sorted = [...seqs].sort((x, y) => x - y);
      expect(sorted.length, 'frames seen on the two taps').toBe(N);
      expect(sorted.every((s, i) => s === i), 'each sequence number exactly once').toBe(true);
      const txA = a.dev.metrics().queues[1]!.frames;
      const txB = b.dev.metrics().queues[1]!.frames;
      expect(txA).toBeGreaterThan(0);
      expect(txB).toBeGreaterThan(0);

      // After the move B announces the guest on its segment.
      await fe.sendRarp(mac(a.guestMac));
      expect(await until(() => (drain(sniffB, seqs, rarp), rarp.length > 0), 3000)).toBe(true);
      const r = rarp[0]!;
      expect(r.length).toBe(60);
      expect([...r.subarray(0, 6)]).toEqual([...BROADCAST]);
      expect([...r.subarray(6, 12)]).toEqual([...mac(a.guestMac)]);
      expect(b.server.metrics.rarp).toBe(1);
    } finally {
      fe.close();
      drv.close();
      ram.close();
    }
  });

  it('RX: frames each back-end took from its tap reach the guest once and intact across the switch', async () => {
    const ram = new GuestRam(48 << 20);
    const drv = new VirtioNetDriver(ram, { features: features & a.dev.offered, pairs: 1, queueSize: 256 });
    const rx0 = (bed: VuBed) => bed.dev.metrics().queues[0]!.frames;
    const baseA = rx0(a);
    const baseB = rx0(b);
    let fe = await VhostUserFrontend.connect(a.path);
    const got: Uint8Array[] = [];
    const take = (): void => {
      for (const f of drv.receive()) if (f.frame.length >= UDP_OFFSET + 8 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === 7100) got.push(f.frame);
      drv.fillRx();
    };
    try {
      await fe.attachDriver(drv, ram);
      drv.fillRx();
      const fromA = udpSend(a.ns, a.guestIp, 7100, 700, 80, 1);
      expect(await until(() => (take(), got.length >= 20), 5000)).toBe(true);
      fe = await switchOver(drv, ram, fe, a, b); // A stops while its stream still runs
      fromA.kill();
      take();
      const fromB = udpSend(b.ns, b.guestIp, 7100, 700, 80, 1);
      const deliveredA = rx0(a) - baseA;
      expect(await until(() => (take(), got.length >= deliveredA + 80), 8000)).toBe(true);
      fromB.kill();
      await new Promise((r) => setTimeout(r, 50));
      take();
      // Exactly what A delivered before it stopped, then all 80 of B's: nothing lost, nothing twice.
      expect(got.length).toBe(deliveredA + (rx0(b) - baseB));
      expect(rx0(b) - baseB).toBe(80);
      // Each payload is one of the sender's (sequence numbers restart with B's sender).
      for (const f of got) {
        const p = f.subarray(UDP_OFFSET + 8, UDP_OFFSET + 8 + 700);
        const seq = p[0]!; // payload byte 0 is the sender's sequence number (below 256 here)
        expect(Buffer.from(p).equals(Buffer.from(expectedPayload(700, seq)))).toBe(true);
      }
    } finally {
      fe.close();
      drv.close();
      ram.close();
    }
  });
});
