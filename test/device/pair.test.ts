/**
 * The pair backend: two harness guests on two NetDevices in this process, back to back, with the
 * filter hook deciding per frame: accept bridges, deny drops and counts, host writes to a host tap.
 * Then its ports alone, opened through the backend registry (device/backends.ts) over native
 * mappings: the header conversion, and frames outside guest memory refused the way a tap refuses them.
 */
import { afterAll, afterEach, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { IovecTable, MappingViews } from '../../native/iovec.ts';
import type { FrameFilter, PortContext } from '../../device/backend.ts';
import { BACKEND_KINDS, openPorts } from '../../device/backends.ts';
import { NetConfigError, NET_ERROR } from '../../device/errors.ts';
import { decode, mask } from '../../device/features.ts';
import { createCounters, M } from '../../device/metrics.ts';
import { NetDevice } from '../../device/net.ts';
import { PairBackend, VERDICT } from '../../device/pair-backend.ts';
import { ethernet } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns, destroyAllNetns, openPacketIn, openTapIn } from '../../harness/netns.ts';
import { sniffFrame } from '../helpers/sniff.ts';

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
  // Sent: the two accepted and the one handed to the host; the denied one is a drop only.
  expect(ma.frames).toBe(3);
  expect(ma.bytes).toBe(100 + 100 + 1514);
  // The host frame arrived on the host tap, whole.
  const got = await sniffFrame(sniff);
  expect(got?.length).toBe(100);
  expect(got?.[14]).toBe(3);

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

/** A table of one or more frames, each a list of [offset, length] pieces of mapping `id`. */
function table(id: number, ...frames: Array<Array<[number, number]>>): IovecTable {
  const t = new IovecTable(8, 4);
  for (const f of frames) {
    for (const [off, len] of f) t.push(id, off, len);
    t.endFrame();
  }
  return t;
}

function refusal(fn: () => unknown): native.NativeError {
  try {
    fn();
  } catch (e) {
    if (e instanceof native.NativeError) return e;
    throw e;
  }
  throw new Error('expected a NativeError');
}

function pairPorts() {
  const pair = new PairBackend({ slots: 4 });
  pair.a.configure(decode(mask('MAC'))); // legacy: 10-byte header
  pair.b.configure(decode(mask('MAC', 'VERSION_1'))); // 12-byte header
  const ctx = (): PortContext => ({ counters: createCounters(), frameFilter: undefined, mappings: new MappingViews(native.mappingBuffer) });
  const a = openPorts(pair.a.port(0), ctx());
  const b = openPorts(pair.b.port(0), ctx());
  const id = native.mmapAnonymous(16384);
  const ram = new Uint8Array(native.mappingBuffer(id));
  cleanups.push(() => { native.munmap(id); pair.a.close(); pair.b.close(); });
  return { a, b, id, ram };
}

it('pair ports, opened by kind: a legacy header becomes a VERSION_1 one, the frame crosses intact', () => {
  const { a, b, id, ram } = pairPorts();
  // A's guest: 10-byte header 1..10 and a 60-byte frame, split 6 | 4 + 60 over two buffers.
  const hdr = Uint8Array.from({ length: 10 }, (_, i) => i + 1);
  const body = Uint8Array.from({ length: 60 }, (_, i) => 0x40 + i);
  ram.set(hdr.subarray(0, 6), 0);
  ram.set(hdr.subarray(6), 100);
  ram.set(body, 104);
  expect(a.tx.send(table(id, [[0, 6], [100, 64]]), 0)).toBe(1);
  // B's guest: two buffers, 40 + 100 bytes, prefilled so that written zeros show.
  ram.fill(0xee, 4096, 4096 + 40);
  ram.fill(0xee, 5000, 5100);
  const rx = table(id, [[4096, 40], [5000, 100]]);
  expect(b.rx.vnetHdrLen).toBe(12);
  expect(b.rx.recv(rx, 1)).toBe(1);
  expect(rx.bytes[0]).toBe(12 + 60);
  const got = Uint8Array.of(...ram.subarray(4096, 4096 + 40), ...ram.subarray(5000, 5000 + 32));
  expect(Array.from(got)).toEqual([...hdr, 0, 0, ...body]);
  expect(ram[5032]).toBe(0xee); // nothing past the frame
  expect(b.rx.recv(rx, 1)).toBe(0);
});

it('pair ports refuse a frame outside guest memory with EFAULT, as writev/readv do, and go on after it', () => {
  const { a, b, id, ram } = pairPorts();
  ram.fill(7, 0, 200);
  const good: Array<[number, number]> = [[0, 80]];
  const outside: Array<[number, number]> = [[16384 - 40, 80]];
  // TX: a bad frame first is thrown and nothing is committed.
  const e = refusal(() => a.tx.send(table(id, outside, good), 0));
  expect([e.code, e.syscall]).toEqual(['EFAULT', 'iovec']);
  const rx1 = table(id, [[4096, 2048]]);
  expect(b.rx.recv(rx1, 1)).toBe(0);
  // A bad frame after a good one: the good one is sent, the bad one is the next call's `first`.
  const t = table(id, good, outside, good);
  expect(a.tx.send(t, 0)).toBe(1);
  expect(refusal(() => a.tx.send(t, 1)).code).toBe('EFAULT');
  expect(a.tx.send(t, 2)).toBe(1);
  // RX: a good frame lands, the next one into buffers outside memory stays for the next call…
  const rx2 = table(id, [[4096, 2048]], [[16384 - 40, 2048]]);
  expect(b.rx.recv(rx2, 2)).toBe(1);
  expect(rx2.bytes[0]).toBe(12 + 70);
  // …which refuses it and drops it, as a tap drops a frame its readv could not copy out.
  const r = refusal(() => b.rx.recv(table(id, [[16384 - 40, 2048]]), 1));
  expect([r.code, r.syscall]).toEqual(['EFAULT', 'iovec']);
  expect(b.rx.recv(table(id, [[4096, 2048]]), 1)).toBe(0);
});

it('the registry refuses a spec of a kind it does not know', () => {
  expect(BACKEND_KINDS).toEqual(['tap', 'pair', 'switch']);
  const ctx: PortContext = { counters: createCounters(), frameFilter: undefined, mappings: new MappingViews(native.mappingBuffer) };
  for (const kind of ['nope', 'constructor', '']) {
    const e = (() => {
      try {
        openPorts({ kind }, ctx);
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    expect(e).toBeInstanceOf(NetConfigError);
    expect((e as NetConfigError).code).toBe(NET_ERROR.UNKNOWN_BACKEND);
    expect((e as NetConfigError).message).toContain(`kind ${JSON.stringify(kind)}`);
  }
});

it('a HOST frame the host fd refuses is that frame\'s drop alone: the frames around it go on', () => {
  // A host fd whose every write fails: a socket whose peer is gone (EPIPE; Node ignores SIGPIPE).
  const [host, peer] = native.unixSocketpair();
  native.close(peer);
  const pair = new PairBackend({ slots: 4, hostFd: host });
  const f = decode(mask('MAC', 'VERSION_1'));
  pair.a.configure(f);
  pair.b.configure(f);
  const toHost: FrameFilter = (b, off) => (b[off + 14] === 2 ? VERDICT.HOST : VERDICT.ACCEPT);
  const c = createCounters();
  const a = openPorts(pair.a.port(0), { counters: c, frameFilter: toHost, mappings: new MappingViews(native.mappingBuffer) });
  const b = openPorts(pair.b.port(0), { counters: createCounters(), frameFilter: undefined, mappings: new MappingViews(native.mappingBuffer) });
  const id = native.mmapAnonymous(16384);
  const ram = new Uint8Array(native.mappingBuffer(id));
  cleanups.push(() => { native.munmap(id); pair.a.close(); pair.b.close(); native.close(host); });
  // Three frames, 12-byte header then 60 bytes, tagged 1, 2 (to the host) and 3.
  for (const [k, at] of [0, 128, 256].entries()) ram.set(frame(MAC_B, MAC_A, 0x88b5, k + 1, 60), at + 12);
  const t = table(id, [[0, 72]], [[128, 72]], [[256, 72]]);
  // All three taken; the second is the port's drop, counted with its errno, and not sent.
  expect(a.tx.send(t, 0)).toBe(3);
  expect([...a.tx.refused!.subarray(0, 3)]).toEqual([0, 1, 0]);
  expect(c[M.txDropBackend]).toBe(1);
  expect(c[M.backendErrno]).toBe(32); // EPIPE
  expect(c[M.txHost]).toBe(0);
  // The other side reads the first and the third.
  const rt = table(id, [[4096, 2048]], [[8192, 2048]]);
  expect(b.rx.recv(rt, 2)).toBe(2);
  expect([ram[4096 + 12 + 14], ram[8192 + 12 + 14]]).toEqual([1, 3]);
  expect(b.rx.recv(rt, 2)).toBe(0);
});
