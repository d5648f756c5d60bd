/**
 * The vhost-user server end to end, driven by the harness front-end over a real unix socket: an
 * in-process NetDevice on a tap in a test namespace. Frames flow both ways through rings the front-end
 * set up; GET_VRING_BASE returns where the device stopped; a dropped connection leaves the server
 * ready for the next one, whose traffic flows again; client mode reconnects to a restarted VMM. The
 * CONFIG protocol feature is offered only when asked for, and GET/SET_CONFIG only work once negotiated.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { nativeErrorOf } from '../helpers/errors.ts';
import { mask } from '../../device/features.ts';
import { NetDevice } from '../../device/net.ts';
import { TapBackend } from '../../device/tap-backend.ts';
import * as native from '../../native/index.ts';
import { CFG } from '../../device/config.ts';
import { VU } from '../../sandbox/vhost-user/errors.ts';
import { encodeConfig, encodeU64, FLAGS, PROTOCOL_F, protocolMask, REQ } from '../../sandbox/vhost-user/messages.ts';
import { netDeviceHooks, OFFERED_PROTOCOL_FEATURES, VhostUserServer } from '../../sandbox/vhost-user/server.ts';
import { ip4, mac, udpFrame, UDP_OFFSET } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver, waitReadable } from '../../harness/virtio-net.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { INFLIGHT, inflightQueueRegionSize } from '../../vring/index.ts';
import { destroyAllNetns, netnsPrerequisites } from '../../harness/netns.ts';
import { createVuBed, expectedPayload, udpSend, udpSink, until, VHOST_USER_NET_FEATURES, type Guest, type VuBed } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();
const CONFIG = protocolMask('CONFIG');

async function sendUdp(bed: VuBed, g: Guest, port: number, payload: Uint8Array): Promise<void> {
  const tapMac = mac(bed.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
  const frame = udpFrame({ srcMac: mac(bed.guestMac), dstMac: tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 40000, dstPort: port, payload });
  expect(g.drv.send(frame)).toBe(true);
  expect(await g.drv.drainTx(0, 5000)).toBe(0);
}

async function expectTraffic(bed: VuBed, g: Guest, port: number): Promise<void> {
  // TX: harness guest → tap → UDP socket in the namespace.
  const sink = await udpSink(bed.ns, bed.hostIp, port, 1, 5000);
  const payload = expectedPayload(100, port & 0xff);
  await sendUdp(bed, g, port, payload);
  const got = await sink.datagrams();
  expect(got.length).toBe(1);
  expect(got[0]!.hex).toBe(Buffer.from(payload).toString('hex'));
  // RX: UDP from the namespace → tap → RX ring of the harness guest.
  const sender = udpSend(bed.ns, bed.guestIp, port + 1, 200, 3, 20);
  const frames = await g.drv.waitRx(3, { timeoutMs: 5000 });
  sender.kill();
  const udp = frames.filter((f) => f.frame.length >= 42 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === port + 1);
  expect(udp.length).toBe(3);
  for (let i = 0; i < 3; i++) {
    expect(Buffer.from(udp[i]!.frame.subarray(UDP_OFFSET + 8, UDP_OFFSET + 8 + 200)).equals(Buffer.from(expectedPayload(200, i)))).toBe(true);
  }
}

describe.skipIf(!pre.ok)('vhost-user server: harness front-end ↔ lgnet ↔ tap', () => {
  let bed: VuBed;
  beforeAll(async () => {
    bed = await createVuBed();
  });
  afterAll(async () => {
    await bed?.close();
    destroyAllNetns();
  });

  it('negotiates: features without the control queue, protocol features, queue number, memory slots, config', async () => {
    const g = await bed.guest({ attach: false });
    try {
      const neg = await g.fe.negotiate({ features: (offered) => offered & VHOST_USER_NET_FEATURES });
      expect(neg.offered & (1n << 30n)).not.toBe(0n);
      expect(neg.offered & mask('CTRL_VQ')).toBe(0n);
      expect(neg.protocolOffered).toBe(OFFERED_PROTOCOL_FEATURES | CONFIG); // the bed opts in to CONFIG
      expect(neg.queueNum).toBe(1);
      expect(neg.maxMemSlots).toBe(32);
      const cfg = await g.fe.getConfig(0, 6);
      expect(Buffer.from(cfg).toString('hex')).toBe('525400123456');
      const mtu = await g.fe.getConfig(10, 2);
      expect(mtu[0]! | (mtu[1]! << 8)).toBe(1500);
      await g.fe.setStatus(0x0f);
      expect(await g.fe.getStatus()).toBe(0x0f);
      await g.fe.netSetMtu(1500);
      await g.fe.sendRarp(mac(bed.guestMac));
      const inflight = await g.fe.getInflightFd(2, 256);
      expect(inflight.mmapSize).toBeGreaterThanOrEqual(2 * (16 + 16 * 256));
      await g.fe.setInflightFd(inflight.fd, inflight);
      native.close(inflight.fd);
      expect(g.fe.isClosed).toBe(false);
    } finally {
      g.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
  });

  it('CONFIG is opt-in: not offered by default, and then GET/SET_CONFIG are refused as requests of a feature not negotiated', async () => {
    expect(OFFERED_PROTOCOL_FEATURES & CONFIG).toBe(0n);
    // A second server with the default options, on the same device (one front-end at a time on either).
    const plain = new VhostUserServer({ device: netDeviceHooks(bed.dev), path: join(bed.dir, 'plain.sock') });
    plain.start();
    try {
      const fe = await VhostUserFrontend.connect(plain.path);
      try {
        const neg = await fe.negotiate(); // the harness asks for CONFIG; the offer lacks it
        expect(neg.protocolOffered).toBe(OFFERED_PROTOCOL_FEATURES);
        expect(neg.protocolFeatures & CONFIG).toBe(0n);
        // GET_CONFIG has a reply of its own: the refusal is the spec's error form, an empty payload.
        fe.sendRequest(REQ.GET_CONFIG, encodeConfig({ offset: 0, size: 6 }));
        const m = await fe.readMessage(2000);
        expect(m.request).toBe(REQ.GET_CONFIG);
        expect(m.flags & FLAGS.REPLY).toBe(FLAGS.REPLY);
        expect(m.payload.length).toBe(0);
        expect(await fe.waitClosed(2000)).toBe(true);
      } finally {
        fe.close();
      }
      expect(plain.metrics.errors[VU.UNSUPPORTED_REQUEST]).toBe(1);
      // SET_CONFIG with NEED_REPLY: REPLY_ACK 1, then the drop; the config space is untouched.
      const fe2 = await VhostUserFrontend.connect(plain.path);
      try {
        await fe2.negotiate();
        await expect(fe2.setConfig(0, new Uint8Array([0x52, 0x54, 0, 9, 9, 9]))).rejects.toMatchObject({ code: 'FRONTEND_NACK' });
        expect(await fe2.waitClosed(2000)).toBe(true);
      } finally {
        fe2.close();
      }
      expect(plain.metrics.errors[VU.UNSUPPORTED_REQUEST]).toBe(2);
      expect(Buffer.from(bed.dev.readConfig(0, 6)).toString('hex')).toBe('525400123456');
      // Asking for CONFIG anyway is asking for a feature that was not offered.
      const fe3 = await VhostUserFrontend.connect(plain.path);
      try {
        fe3.sendRequest(REQ.SET_PROTOCOL_FEATURES, encodeU64(OFFERED_PROTOCOL_FEATURES | CONFIG));
        expect(await fe3.waitClosed(2000)).toBe(true);
      } finally {
        fe3.close();
      }
      expect(plain.metrics.errors[VU.PROTOCOL_FEATURES_NOT_OFFERED]).toBe(1);
      expect(await until(() => plain.connection === null)).toBe(true);
    } finally {
      await plain.close();
    }
  });

  it('listenFd: a listening socket made elsewhere is served and closed, never unlinked; one that does not listen is refused and left open', async () => {
    const path = join(bed.dir, 'handed.sock');
    const made = native.unixListen(path);
    const server = new VhostUserServer({ device: netDeviceHooks(bed.dev), listenFd: made });
    expect(server.path).toBe(path); // named by its bound path
    server.start();
    try {
      const fe = await VhostUserFrontend.connect(path);
      try {
        expect((await fe.negotiate()).protocolOffered).toBe(OFFERED_PROTOCOL_FEATURES);
      } finally {
        fe.close();
      }
    } finally {
      await server.close();
    }
    expect(statSync(path).isSocket()).toBe(true); // the maker's file
    expect(nativeErrorOf(() => native.socketInfo(made)).code).toBe('EBADF'); // the server's to close
    unlinkSync(path);
    const [a, b] = native.unixSocketpair();
    try {
      const refused = new VhostUserServer({ device: netDeviceHooks(bed.dev), listenFd: a });
      expect(refused.path).toBe(`fd:${a}`);
      expect(() => refused.start()).toThrow(expect.objectContaining({ code: VU.BAD_LISTEN_FD }));
      await refused.close();
      expect(native.socketInfo(a).listening).toBe(false); // left open
      expect(() => new VhostUserServer({ device: netDeviceHooks(bed.dev), listenFd: a, client: true })).toThrow(RangeError);
    } finally {
      native.close(a);
      native.close(b);
    }
  });

  it('CONFIG opted in: GET_CONFIG reads the config space and SET_CONFIG writes the MAC, once negotiated; not negotiated, refused', async () => {
    const g = await bed.guest({ attach: false });
    try {
      const neg = await g.fe.negotiate();
      expect(neg.protocolFeatures & CONFIG).toBe(CONFIG);
      const cfg = await g.fe.getConfig(0, CFG.SIZE);
      expect(cfg).toEqual(bed.dev.readConfig(0, CFG.SIZE));
      expect(Buffer.from(cfg.subarray(CFG.MAC, CFG.MAC + 6)).toString('hex')).toBe('525400123456');
      expect(cfg[CFG.MTU]! | (cfg[CFG.MTU + 1]! << 8)).toBe(1500);
      await g.fe.setConfig(CFG.MAC, new Uint8Array([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
      expect(Buffer.from(await g.fe.getConfig(CFG.MAC, 6)).toString('hex')).toBe('525400aabbcc');
      await g.fe.setConfig(CFG.MAC, mac(bed.guestMac));
      expect(Buffer.from(await g.fe.getConfig(CFG.MAC, 6)).toString('hex')).toBe('525400123456');
      expect(g.fe.isClosed).toBe(false);
    } finally {
      g.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
    // Offered but not negotiated: refused all the same.
    const before = bed.server.metrics.errors[VU.UNSUPPORTED_REQUEST] ?? 0;
    const fe = await VhostUserFrontend.connect(bed.path);
    try {
      const neg = await fe.negotiate({ protocolFeatures: OFFERED_PROTOCOL_FEATURES });
      expect(neg.protocolOffered & CONFIG).toBe(CONFIG);
      expect(neg.protocolFeatures & CONFIG).toBe(0n);
      await expect(fe.getConfig(0, 6)).rejects.toMatchObject({ code: 'FRONTEND_NACK' });
      expect(await fe.waitClosed(2000)).toBe(true);
    } finally {
      fe.close();
    }
    expect(bed.server.metrics.errors[VU.UNSUPPORTED_REQUEST]).toBe(before + 1);
    expect(await until(() => bed.server.connection === null)).toBe(true);
  });

  it('frames flow both ways; GET_VRING_BASE returns where each ring stopped', async () => {
    const g = await bed.guest();
    try {
      await expectTraffic(bed, g, 5100);
      const bases = await g.fe.stopDriver(g.drv);
      // TX: one frame sent → next avail 1. RX: every chain the device took was filled and used (unused
      // ones are rewound), so it stops at the used ring's idx.
      const usedIdx = (q: { used: number }) => { const b = g.ram.read(q.used + 2, 2); return b[0]! | (b[1]! << 8); };
      expect(bases.get(1)).toBe(1);
      expect(bases.get(0)).toBe(usedIdx(g.drv.rx[0]!.setup));
      expect(bases.get(0)).toBeGreaterThanOrEqual(3);
      expect(bed.dev.metrics().queues.every((q) => !q.running)).toBe(true);
    } finally {
      g.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
  });

  it('a dropped connection resets the device; the next front-end gets traffic again', async () => {
    const first = await bed.guest();
    await expectTraffic(bed, first, 5200);
    first.close(); // no GET_VRING_BASE: the front-end just goes away
    expect(await until(() => bed.server.connection === null)).toBe(true);
    expect(bed.dev.metrics().queues.every((q) => !q.running)).toBe(true);
    const second = await bed.guest();
    try {
      await expectTraffic(bed, second, 5300);
    } finally {
      second.close();
    }
    expect(bed.server.metrics.connections).toBeGreaterThanOrEqual(3);
  });

  it('REPLY_ACK: every request with NEED_REPLY gets u64 0; without REPLY_ACK the rings still start', async () => {
    const g = await bed.guest({ attach: false });
    try {
      // Negotiate without REPLY_ACK: no acks, the front-end uses GET_FEATURES as a barrier.
      await g.fe.attachDriver(g.drv, g.ram, { protocolFeatures: OFFERED_PROTOCOL_FEATURES & ~(1n << BigInt(PROTOCOL_F.REPLY_ACK)) });
      expect(g.fe.replyAck).toBe(false);
      g.drv.fillRx();
      await expectTraffic(bed, g, 5400);
      // An explicit NEED_REPLY is answered even so.
      const m = await g.fe.request(REQ.SET_VRING_ENABLE, new Uint8Array([1, 0, 0, 0, 1, 0, 0, 0]), { needReply: true });
      expect(m?.payload).toEqual(new Uint8Array(8));
    } finally {
      g.close();
    }
  });

  it('started but disabled: nothing runs until enabled; a TX ring disabled again is consumed and discarded (counted, never sent), RX supplies nothing', async () => {
    const g = await bed.guest({ attach: false });
    try {
      await g.fe.attachDriver(g.drv, g.ram, { enable: false });
      const q = (i: number) => bed.dev.metrics().queues[i]!;
      // Kicked but never enabled: parked (QEMU enables right after; queued TX waits for that).
      expect(q(0).running || q(1).running).toBe(false);
      await g.fe.setVringEnable(0, true);
      await g.fe.setVringEnable(1, true);
      expect(q(0).running && q(1).running).toBe(true);
      await g.fe.setVringEnable(0, false);
      await g.fe.setVringEnable(1, false);
      expect(q(0).running).toBe(false);
      expect(q(1).running).toBe(true);
      // A frame sent on the disabled TX ring is completed (the driver gets its buffer back) but the
      // namespace never sees it.
      const sink = await udpSink(bed.ns, bed.hostIp, 5540, 1, 1500);
      const before = q(1).txDropDisabled;
      await sendUdp(bed, g, 5540, expectedPayload(100, 1));
      expect(q(1).txDropDisabled - before).toBe(1);
      expect(await sink.datagrams()).toEqual([]);
      await g.fe.setVringEnable(1, true);
      await g.fe.setVringEnable(0, true);
      await g.fe.setVringEnable(1, true);
      expect(q(0).running && q(1).running).toBe(true);
      await g.fe.setVringEnable(0, false);
      expect(q(0).running).toBe(false);
      await g.fe.setVringEnable(0, true);
      g.drv.fillRx();
      await expectTraffic(bed, g, 5500);
    } finally {
      g.close();
    }
  });

  it('inflight: a ring started on a record that lists a chain the last back-end left takes up that chain, not the next slot', async () => {
    const g = await bed.guest({ attach: false });
    let region = -1;
    try {
      await g.fe.negotiate({ features: g.drv.features });
      const tx = g.drv.tx[0]!.setup;
      const inflight = await g.fe.getInflightFd(2, tx.size);
      region = native.mmap(inflight.fd, 0, inflight.mmapSize);
      const txRecord = new DataView(native.mappingBuffer(region), inflightQueueRegionSize(tx.size), inflightQueueRegionSize(tx.size));
      // Three frames A, B, C in avail slots 0..2. As a back-end with out-of-order completion would have
      // left them: A and C completed (used.idx 2), B popped and in flight when it died.
      const tapMac = mac(bed.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
      const payloads = [0, 1, 2].map((i) => expectedPayload(80, 0x40 + i));
      for (const payload of payloads) {
        const f = udpFrame({ srcMac: mac(bed.guestMac), dstMac: tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 40000, dstPort: 5570, payload });
        expect(g.drv.send(f, { kick: false })).toBe(true);
      }
      g.drv.tx[0]!.publishAndKick();
      const avail = g.ram.read(tx.avail + 4, 6);
      const [a, b, c] = [0, 1, 2].map((i) => avail[2 * i]! | (avail[2 * i + 1]! << 8));
      const used = new DataView(g.ram.u8.buffer, g.ram.u8.byteOffset + tx.used - g.ram.gpa);
      used.setUint32(4, a!, true);
      used.setUint32(12, c!, true);
      used.setUint16(2, 2, true);
      txRecord.setUint16(INFLIGHT.VERSION, 1, true);
      txRecord.setUint16(INFLIGHT.DESC_NUM, tx.size, true);
      txRecord.setUint16(INFLIGHT.USED_IDX, 2, true);
      txRecord.setUint8(INFLIGHT.DESC + b! * INFLIGHT.DESC_SIZE + INFLIGHT.D_INFLIGHT, 1);
      txRecord.setUint32(INFLIGHT.DESC + b! * INFLIGHT.DESC_SIZE + INFLIGHT.D_COUNTER, 2, true);
      await g.fe.setInflightFd(inflight.fd, inflight);
      native.close(inflight.fd);

      // The front-end restores last_avail from used.idx (2), as QEMU does after a back-end crash:
      // without the record, slot 2 (C) would go out again and B never.
      const sink = await udpSink(bed.ns, bed.hostIp, 5570, 2, 1500);
      await g.fe.attachDriver(g.drv, g.ram, { negotiate: false, base: (i) => (i === 1 ? 2 : 0) });
      g.drv.fillRx(); // so that nothing the namespace sends waits in the tap for the next test
      const got = await sink.datagrams();
      expect(got.map((d) => d.hex)).toEqual([Buffer.from(payloads[1]!).toString('hex')]);
      expect(bed.dev.metrics().queues[1]!.inflightResubmitted).toBe(1);
      expect(used.getUint16(2, true)).toBe(3);
      expect(used.getUint32(4 + 2 * 8, true)).toBe(b);
      // From then on lgnet records into the same buffer: two more frames, completed and cleared.
      expect(txRecord.getUint16(INFLIGHT.USED_IDX, true)).toBe(3);
      await sendUdp(bed, g, 5571, expectedPayload(60, 1));
      await sendUdp(bed, g, 5571, expectedPayload(60, 2));
      expect(await until(() => txRecord.getUint16(INFLIGHT.USED_IDX, true) === 5)).toBe(true);
      for (let h = 0; h < tx.size; h++) expect(txRecord.getUint8(INFLIGHT.DESC + h * INFLIGHT.DESC_SIZE), `head ${h}`).toBe(0);
      const last = txRecord.getUint16(INFLIGHT.LAST_BATCH_HEAD, true);
      expect(txRecord.getUint32(INFLIGHT.DESC + last * INFLIGHT.DESC_SIZE + INFLIGHT.D_COUNTER, true)).toBeGreaterThan(2);
    } finally {
      if (region >= 0) native.munmap(region);
      g.close();
    }
  });

  it('ADD_MEM_REG of the same region twice (QEMU multiqueue: one vhost device per pair) counts references', async () => {
    const g = await bed.guest({ attach: false });
    try {
      await g.fe.negotiate({ features: g.drv.features });
      const region = VhostUserFrontend.regionOf(g.ram);
      await g.fe.addMemReg(region);
      await g.fe.addMemReg(region); // the second vhost device of the same connection
      for (const { index, setup } of g.drv.queueSetups()) await g.fe.startRing(g.ram, index, setup);
      g.drv.fillRx();
      const running = () => bed.dev.metrics().queues.filter((q) => q.running).length;
      expect(running()).toBe(2);
      expect(bed.server.connection!.mem.count).toBe(1);
      await g.fe.remMemReg(region); // one reference left: rings keep running
      expect(running()).toBe(2);
      await expectTraffic(bed, g, 5650);
      await g.fe.remMemReg(region); // gone: the rings stop instead of reading unmapped memory
      expect(running()).toBe(0);
      await g.fe.addMemReg(region); // back: they start again where they stopped
      expect(running()).toBe(2);
      await expectTraffic(bed, g, 5660);
    } finally {
      g.close();
    }
  });

  it('a queue the guest breaks signals SET_VRING_ERR\'s eventfd and GET_STATUS shows NEEDS_RESET', async () => {
    const g = await bed.guest();
    const err = native.eventfdCreate({ nonblocking: true });
    try {
      await g.fe.setVringErr(1, err);
      // The guest claims far more TX buffers than the ring holds (DESIGN.md: reject idx - last_avail > size).
      const tx = g.drv.tx[0]!.setup;
      g.ram.write(tx.avail + 2, new Uint8Array([0x00, 0x10])); // avail.idx = 4096 on a 256-entry ring
      native.eventfdWrite(tx.kickFd, 1);
      expect(await until(() => native.poll([err], 0) !== 0, 5000)).toBe(true);
      expect(native.eventfdRead(err)).toBe(1);
      expect((await g.fe.getStatus()) & 0x40).toBe(0x40);
      expect(bed.dev.metrics().queues[1]!.broken).not.toBeNull();
    } finally {
      native.close(err);
      g.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
    expect(bed.dev.metrics().queues[1]!.broken).toBeNull(); // the reset on disconnect clears it
  });

  it('SET_VRING_CALL on a running ring swaps the fd without losing traffic', async () => {
    const g = await bed.guest();
    try {
      await g.fe.setVringCall(0, g.drv.rx[0]!.callFd);
      await g.fe.setVringCall(1, g.drv.tx[0]!.callFd);
      await expectTraffic(bed, g, 5600);
      expect(bed.server.connection!.vrings.fdCount()).toBe(4);
    } finally {
      g.close();
    }
  });

  it('SET_VRING_CALL to another eventfd (QEMU masking the interrupt): the running ring is not restarted, and signals only the new fd', async () => {
    const g = await bed.guest();
    const masked = native.eventfdCreate({ nonblocking: true });
    // Observes the device's own stopQueue (a restart would stop the ring first); it still runs.
    const stops = vi.spyOn(bed.dev, 'stopQueue');
    try {
      await g.fe.setVringCall(0, masked);
      expect(stops, 'the ring went on without a stop and a start').not.toHaveBeenCalled();
      expect(bed.server.connection!.vrings.state(0).running).toBe(true);
      const sender = udpSend(bed.ns, bed.guestIp, 5611, 200, 1, 0);
      expect(await waitReadable(masked, 5000), 'the interrupt went to the new fd').toBe(true);
      sender.kill();
      expect(await waitReadable(g.drv.rx[0]!.callFd, 100), 'the driver\'s old fd is not written').toBe(false);
      expect((await g.drv.waitRx(1, { timeoutMs: 5000 })).length).toBe(1);
      // Unmasked: back to the driver's fd, and traffic both ways as before.
      await g.fe.setVringCall(0, g.drv.rx[0]!.callFd);
      expect(stops).not.toHaveBeenCalled();
      await expectTraffic(bed, g, 5612);
      expect(bed.server.connection!.vrings.fdCount()).toBe(4);
    } finally {
      stops.mockRestore();
      native.close(masked);
      g.close();
    }
  });
});

describe.skipIf(!pre.ok)('vhost-user server: client mode', () => {
  let ns: ReturnType<typeof import('../../harness/netns.ts').createNetns> | undefined;
  afterEach(() => {
    destroyAllNetns();
    ns = undefined;
  });

  it('connects to a listening front-end, and reconnects after it restarts', async () => {
    const { createNetns } = await import('../../harness/netns.ts');
    ns = createNetns('lgvuc');
    const backend = native.withNetns(ns.path, () => new TapBackend({ name: 'lgtap0' }));
    const dev = new NetDevice({ backend, mac: '52:54:00:12:34:57', features: VHOST_USER_NET_FEATURES });
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'lgnet-vuc-'));
    const path = join(dir, 'vmm.sock');
    const server = new VhostUserServer({ device: netDeviceHooks(dev), path, client: true, reconnectMs: 100 });
    const ram = new GuestRam(16 << 20);
    const drv = new VirtioNetDriver(ram, { features: dev.offered, queueSize: 64 });
    try {
      server.start(); // nobody listens yet: it retries
      await new Promise((r) => setTimeout(r, 250));
      let listener = VhostUserFrontend.listen(path);
      let fe = await listener.accept(3000);
      await fe.attachDriver(drv, ram);
      expect(dev.metrics().queues.filter((q) => q.running).length).toBe(2);
      // The VMM goes away and comes back.
      fe.close();
      listener.close();
      expect(await until(() => server.connection === null)).toBe(true);
      listener = VhostUserFrontend.listen(path);
      fe = await listener.accept(3000);
      await fe.attachDriver(drv, ram);
      expect(dev.metrics().queues.filter((q) => q.running).length).toBe(2);
      fe.close();
      listener.close();
    } finally {
      await server.close();
      drv.close();
      ram.close();
      await dev.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!pre.ok)('vhost-user server: two queue pairs', () => {
  let bed: VuBed;
  beforeAll(async () => {
    bed = await createVuBed({ pairs: 2 });
  });
  afterAll(async () => {
    await bed?.close();
    destroyAllNetns();
  });

  it('GET_QUEUE_NUM says 2; all four rings run; TX on the second pair reaches the namespace', async () => {
    const g = await bed.guest();
    try {
      expect(await g.fe.getQueueNum()).toBe(2);
      expect(bed.dev.metrics().queues.filter((q) => q.running).map((q) => q.index)).toEqual([0, 1, 2, 3]);
      const tapMac = mac(bed.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
      const sink = await udpSink(bed.ns, bed.hostIp, 5700, 1, 5000);
      const payload = expectedPayload(300, 7);
      g.drv.send(udpFrame({ srcMac: mac(bed.guestMac), dstMac: tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 40001, dstPort: 5700, payload }), { pair: 1 });
      expect(await g.drv.drainTx(1, 5000)).toBe(0);
      expect((await sink.datagrams()).map((d) => d.hex)).toEqual([Buffer.from(payload).toString('hex')]);
      const bases = await g.fe.stopDriver(g.drv);
      expect(bases.get(3)).toBe(1);
      expect(bases.get(1)).toBe(0);
    } finally {
      g.close();
    }
  });
});
