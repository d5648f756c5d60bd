/**
 * The pair backend: two harness guests on two NetDevices in this process, back to back, with the
 * filter hook deciding per frame: accept bridges, deny drops and counts, host writes to a host tap.
 */
import { afterAll, afterEach, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { NetDevice } from '../../device/net.ts';
import { PairBackend } from '../../device/pair-backend.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns, destroyAllNetns, openPacketIn, openTapIn } from '../../harness/netns.ts';

afterAll(() => destroyAllNetns());
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const MAC_A = new Uint8Array([0x52, 0x54, 0, 0, 0, 0xa]);
const MAC_B = new Uint8Array([0x52, 0x54, 0, 0, 0, 0xb]);

async function guest(backend: PairBackend['a'], mac: Uint8Array, features: bigint) {
  const dev = new NetDevice({ backend, mac });
  const ram = new GuestRam(32 << 20);
  const drv = new VirtioNetDriver(ram, { features: features & dev.offered, queueSize: 64 });
  await drv.attach(dev);
  cleanups.push(async () => { await dev.close(); drv.close(); ram.close(); });
  return { dev, drv };
}

function frame(dst: Uint8Array, src: Uint8Array, type: number, tag: number, len = 100): Uint8Array {
  const p = new Uint8Array(len - 14);
  p[0] = tag;
  return ethernet(dst, src, type, p);
}

it('accept bridges both ways, deny drops and counts, host goes to the host tap', async () => {
  const ns = createNetns('lgpair');
  const host = openTapIn(ns, { vnetHdr: true, address: false });
  native.tapSetVnetHdrSize(host.fd, 10);
  const sniff = openPacketIn(ns, host.name);
  const pair = new PairBackend({
    filter: { module: new URL('./fixtures/pair-filter.ts', import.meta.url).href },
    hostFd: host.fd,
  });
  // Side A is legacy (10-byte header), side B VERSION_1 with MRG_RXBUF: the pair converts headers.
  const a = await guest(pair.a, MAC_A, mask('MAC', 'RING_EVENT_IDX'));
  const b = await guest(pair.b, MAC_B, mask('MAC', 'VERSION_1', 'MRG_RXBUF'));

  const sent = [frame(MAC_B, MAC_A, 0x88b5, 1), frame(MAC_B, MAC_A, 0x88b6, 2), frame(MAC_B, MAC_A, 0x88b7, 3), frame(MAC_B, MAC_A, 0x88b5, 4, 1514)];
  for (const f of sent) expect(a.drv.send(f)).toBe(true);
  expect(await a.drv.drainTx()).toBe(0);
  const atB = await b.drv.waitRx(2, { timeoutMs: 3000 });
  expect(atB.map((f) => f.frame[14])).toEqual([1, 4]);
  expect(Buffer.from(atB[1]!.frame).equals(Buffer.from(sent[3]!))).toBe(true);
  expect(atB.every((f) => f.numBuffers === 1)).toBe(true);

  const ma = a.dev.metrics().queues[1]!;
  expect(ma.txDropFiltered).toBe(1);
  expect(ma.txHost).toBe(1);
  // The host frame arrived on the host tap, whole.
  const buf = new Uint8Array(2048);
  let n = -1;
  for (let i = 0; i < 100 && n < 0; i++) {
    n = native.fdRead(sniff, buf);
    if (n < 0) await new Promise((r) => setTimeout(r, 10));
  }
  expect(n).toBe(100);
  expect(buf[14]).toBe(3);

  // And back: B → A (legacy header on A's side).
  expect(b.drv.send(frame(MAC_A, MAC_B, 0x88b5, 9, 60))).toBe(true);
  const atA = await a.drv.waitRx(1, { timeoutMs: 3000 });
  expect(atA.length).toBe(1);
  expect(atA[0]!.frame.length).toBe(60);
  expect(atA[0]!.frame[14]).toBe(9);
  expect(a.dev.metrics().queues[0]!.frames).toBe(1);
  expect(b.dev.metrics().queues[0]!.frames).toBe(2);
});

it('a sender faster than the peer: every frame is delivered or counted as dropped', async () => {
  const pair = new PairBackend({ slots: 16 });
  const a = await guest(pair.a, MAC_A, mask('MAC', 'VERSION_1'));
  const b = await guest(pair.b, MAC_B, mask('MAC', 'VERSION_1'));
  for (let i = 0; i < 100; i++) {
    a.drv.send(frame(MAC_B, MAC_A, 0x88b5, i & 0xff));
    if (i % 10 === 9) await a.drv.drainTx();
  }
  let got = 0;
  const deadline = Date.now() + 5000;
  while (got + b.dev.metrics().queues[0]!.rxDropTooBig < 100 && Date.now() < deadline) {
    got += (await b.drv.waitRx(1, { timeoutMs: 100 })).length;
  }
  const dropped = a.dev.metrics().queues[1]!.txDropBackend;
  expect(got + dropped).toBe(100); // every frame delivered or counted
  expect(got).toBeGreaterThanOrEqual(16); // at least what the ring holds
});
