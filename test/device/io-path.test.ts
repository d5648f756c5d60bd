/**
 * The tap's two I/O paths through a whole NetDevice: io_uring (one io_uring_enter per burst) and
 * readv/writev per frame, forced with TapOptions.io. Which path runs is visible (TapBackend.io and
 * each queue's `ioUring` metric), both move frames in order and count alike, and where io_uring is
 * refused 'auto' falls back while 'uring' says why it cannot start. The whole device suite runs on
 * each path too: LGNET_IO=uring or LGNET_IO=syscall before `vitest run test/device`.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';

import * as native from '../../native/index.ts';
import { requestedIo, TapBackend, type TapIo } from '../../device/tap-backend.ts';
import { NET_ERROR, NetConfigError } from '../../device/errors.ts';
import { udpFrame } from '../../harness/frames.ts';
import { createNetns, destroyAllNetns, netnsPrerequisites, openPacketIn } from '../../harness/netns.ts';
import type { NetDriverOptions } from '../../harness/virtio-net.ts';
import { createBed, expectedPayload, ip4, udpSend, udpSink, type Bed } from './helpers.ts';
import type { FeatureName } from '../../device/features.ts';

const pre = netnsPrerequisites();
const BASE: FeatureName[] = ['VERSION_1', 'RING_EVENT_IDX', 'MAC', 'MTU', 'CSUM', 'GUEST_CSUM'];
afterAll(() => destroyAllNetns());

for (const io of ['uring', 'syscall'] as const) {
  describe.runIf(pre.ok)(`tap I/O forced to '${io}'`, () => {
    let bed: Bed | undefined;
    let saved: string | undefined;
    afterEach(async () => {
      await bed?.close();
      bed = undefined;
      if (saved === undefined) delete process.env['LGNET_IO'];
      else process.env['LGNET_IO'] = saved;
    });
    /** A bed whose TapBackend takes `io` from LGNET_IO (the way the suite is forced to a path). */
    async function open(driver?: Partial<NetDriverOptions>): Promise<Bed> {
      saved = process.env['LGNET_IO'];
      process.env['LGNET_IO'] = io;
      bed = await createBed({ accept: BASE, ...(driver ? { driver } : {}) });
      return bed;
    }

    it('the path is the one asked for, in TapBackend.io and in every data queue\'s ioUring metric', async () => {
      const b = await open();
      expect(b.backend.io).toBe(io);
      expect(b.backend.ioReason).toBe('asked');
      expect(b.backend.ringFds.length).toBe(io === 'uring' ? 2 : 0);
      const q = b.dev.metrics().queues;
      expect([q[0]!.ioUring, q[1]!.ioUring]).toEqual(io === 'uring' ? [1, 1] : [0, 0]);
    });

    it('TX: a frame the kernel refuses mid-burst is counted once; the frames around it go, once each', async () => {
      const b = await open();
      const sink = await udpSink(b, 7100, 4, 8000);
      const mk = (seq: number) => udpFrame({
        srcMac: b.guestMac, dstMac: b.tapMac, srcIp: ip4(b.guestIp), dstIp: ip4(b.hostIp),
        srcPort: 5000, dstPort: 7100, payload: expectedPayload(100, seq),
      });
      // One burst: good, refused (vnet hdr_len beyond the frame: the tap answers EINVAL), good, good, good.
      expect(b.drv.send(mk(0), { kick: false })).toBe(true);
      expect(b.drv.send(mk(99), { hdr: { hdrLen: 60_000 }, kick: false })).toBe(true);
      for (let seq = 1; seq < 3; seq++) expect(b.drv.send(mk(seq), { kick: false })).toBe(true);
      expect(b.drv.send(mk(3), { kick: true })).toBe(true);
      expect(await b.drv.drainTx()).toBe(0);
      const got = await sink.datagrams();
      expect(got.map((d) => d.hex)).toEqual([0, 1, 2, 3].map((seq) => Buffer.from(expectedPayload(100, seq)).toString('hex')));
      const m = b.dev.metrics().queues[1]!;
      expect(m.frames).toBe(4);
      expect(m.txDropBackend).toBe(1);
      expect(m.backendErrno).toBe(22); // EINVAL
    });

    it('RX: a stream of datagrams arrives complete and in order', async () => {
      const b = await open();
      const n = 200;
      const sender = udpSend(b, 6100, 200, n, 0);
      const frames = await b.drv.waitRx(n, { timeoutMs: 10_000 });
      sender.kill();
      const udp = frames.filter((f) => f.frame.length >= 42 && f.frame[23] === 17);
      expect(udp.length).toBe(n);
      udp.forEach((f, seq) => expect(Buffer.from(f.frame.subarray(42)).equals(Buffer.from(expectedPayload(200, seq)))).toBe(true));
      const m = b.dev.metrics().queues[0]!;
      expect(m.frames).toBeGreaterThanOrEqual(n);
      expect(m.rxDropShortBuffer + m.rxDropTooBig + m.rxDropBackend).toBe(0);
    });

    it('RX without MRG_RXBUF: a frame longer than the guest\'s buffer is counted too big, never delivered cut short', async () => {
      // 600-byte buffers (a guest may post less than a full frame's room without MRG_RXBUF).
      const b = await open({ rxBufferSize: 600 });
      const wire = openPacketIn(b.ns, 'lgtap0');
      const mk = (seq: number, size: number) => udpFrame({
        srcMac: b.tapMac, dstMac: b.guestMac, srcIp: ip4(b.hostIp), dstIp: ip4(b.guestIp),
        srcPort: 7200, dstPort: 7201, payload: expectedPayload(size, seq),
      });
      // Waiting in the tap together, so that one burst reads all three.
      const sent = [mk(0, 100), mk(1, 1000), mk(2, 100)];
      for (const f of sent) expect(native.fdWrite(wire, f)).toBe(f.length);
      const ours = (f: { frame: Uint8Array }) => f.frame.length === 0 || (f.frame.length >= 42 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === 7201);
      const got = (await b.drv.waitRx(3, { timeoutMs: 5000 })).filter(ours);
      // The long one's chain comes back with length 0: nothing of it reaches the guest as a frame.
      expect(got.map((f) => f.frame.length)).toEqual([sent[0]!.length, 0, sent[2]!.length]);
      expect(Buffer.from(got[0]!.frame).equals(Buffer.from(sent[0]!))).toBe(true);
      expect(Buffer.from(got[2]!.frame).equals(Buffer.from(sent[2]!))).toBe(true);
      const m = b.dev.metrics().queues[0]!;
      expect(m.rxDropTooBig).toBe(1);
      expect(m.frames).toBeGreaterThanOrEqual(2);
    });
  });
}

describe('choosing the path', () => {
  it('LGNET_IO and the option: auto, uring, syscall; anything else is NET_BAD_IO', () => {
    expect(requestedIo(undefined, {})).toBe('auto');
    expect(requestedIo(undefined, { LGNET_IO: '' })).toBe('auto');
    expect(requestedIo(undefined, { LGNET_IO: 'syscall' })).toBe('syscall');
    expect(requestedIo('uring', { LGNET_IO: 'syscall' })).toBe('uring'); // the option wins over the environment
    for (const bad of ['io_uring', 'URING', 'readv']) {
      let err: unknown;
      try {
        requestedIo(undefined, { LGNET_IO: bad });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(NetConfigError);
      expect((err as NetConfigError).code).toBe(NET_ERROR.BAD_IO);
      expect((err as Error).message).toContain('LGNET_IO');
    }
    expect(() => new TapBackend({ io: 'fast' as TapIo })).toThrow(/auto, uring, syscall/);
  });

  it.runIf(pre.ok && process.arch === 'x64')('where io_uring_setup is refused, auto falls back to syscalls and says why; uring refuses to start', () => {
    const ns = createNetns('lguring');
    const child = fileURLToPath(new URL('./fixtures/no-uring.ts', import.meta.url));
    const r = spawnSync(process.execPath, ['--import', 'tsx', child, ns.path], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { auto: { io: string; ioReason: string; ringFds: number[]; spec: Record<string, unknown> }; uring: { code?: string; message?: string } };
    expect(out.auto.io).toBe('syscall');
    expect(out.auto.ioReason).toMatch(/io_uring_setup failed with EPERM/);
    expect(out.auto.ringFds).toEqual([]);
    expect(out.auto.spec).not.toHaveProperty('txRing');
    expect(out.uring.code).toBe(NET_ERROR.IO_URING_UNAVAILABLE);
    expect(out.uring.message).toMatch(/LGNET_IO/);
  });

  it.runIf(pre.ok)('closing the backend closes its rings and lets go of the tap at once', () => {
    const ns = createNetns('lguring');
    const b = native.withNetns(ns.path, () => new TapBackend({ name: 'lgreopen0', io: 'uring' }));
    const fds = b.ringFds;
    expect(fds.length).toBe(2);
    for (const fd of fds) expect(native.uringFds()).toContain(fd);
    b.close();
    for (const fd of fds) expect(native.uringFds()).not.toContain(fd);
    // A closed ring would hold its registered tap until a kernel work queue frees it: the name would
    // be busy (EBUSY) for a while. The rings unregister their tap as they close.
    const again = native.withNetns(ns.path, () => new TapBackend({ name: 'lgreopen0', io: 'uring' }));
    expect(again.name).toBe('lgreopen0');
    again.close();
  });
});
