/**
 * The switch backend: harness guests on NetDevices of this process, each on a port of one learning
 * switch. Asserted on real queue workers and shared memory: a broadcast reaches every other port; a
 * unicast goes where its destination was learned, and floods while it is not; a MAC seen on another
 * port moves there at once; the filter hook drops, hands to the host tap, or lets through, with the
 * sending port as `dir`; two ports sending to a third at once deliver every frame once, in each
 * sender's order (and two producer threads at full speed on one ring); a port whose ring is full loses
 * frames only as counted; and a port sending from thousands of made-up sources cannot push another
 * port's address out of the table.
 */
import { afterAll, afterEach, expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { NetDevice } from '../../device/net.ts';
import { SwitchBackend, openPorts, type SwitchPortSpec } from '../../device/switch-backend.ts';
import { decode } from '../../device/features.ts';
import { createCounters } from '../../device/metrics.ts';
import { startWorker } from '../../device/thread.ts';
import { IovecTable, MappingViews } from '../../native/iovec.ts';
import type { Backend } from '../../device/backend.ts';
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

const macOf = (k: number) => new Uint8Array([0x52, 0x54, 0, 0, 0, k]);
const BROADCAST = new Uint8Array(6).fill(0xff);
const FEATURES = mask('MAC', 'VERSION_1', 'RING_EVENT_IDX');

async function guest(backend: Backend, k: number, features = FEATURES, queueSize = 64) {
  const dev = new NetDevice({ backend, mac: macOf(k) });
  const ram = new GuestRam(32 << 20);
  const drv = new VirtioNetDriver(ram, { features: features & dev.offered, queueSize });
  await drv.attach(dev);
  cleanups.push(async () => { await dev.close(); drv.close(); ram.close(); });
  return { dev, drv };
}

async function network(ports: number, opts: Partial<ConstructorParameters<typeof SwitchBackend>[0]> = {}) {
  const sw = new SwitchBackend({ ports, ...opts });
  const guests = [];
  for (let i = 0; i < ports; i++) guests.push(await guest(sw.ports[i]!, 0xa + i));
  return { sw, guests };
}

/** A frame from `src` to `dst` whose payload starts with `tag` (and the sender's sequence number). */
function frame(dst: Uint8Array, src: Uint8Array, tag: number, seq = 0, type = 0x88b5): Uint8Array {
  const p = new Uint8Array(86);
  p[0] = tag;
  p[1] = seq >> 8;
  p[2] = seq & 0xff;
  return ethernet(dst, src, type, p);
}

type Guest = Awaited<ReturnType<typeof guest>>;

/** Sends one frame from `g` and waits until its TX queue has given the buffer back. */
async function send(g: Guest, f: Uint8Array): Promise<void> {
  expect(g.drv.send(f, { kick: true })).toBe(true);
  expect(await g.drv.drainTx()).toBe(0);
}

/** The tags of what reaches `g` within `ms`. */
async function tags(g: Guest, want: number, ms = 1500): Promise<number[]> {
  return (await g.drv.waitRx(want, { timeoutMs: ms })).map((r) => r.frame[14]!);
}

it('broadcast floods, a learned unicast goes to its port alone, an unknown one floods, a moved MAC follows', async () => {
  const { guests: [a, b, c] } = await network(3);
  const [A, B, C] = [macOf(0xa), macOf(0xb), macOf(0xc)];
  // A's broadcast: everyone but A. The switch learns A on port 0.
  await send(a!, frame(BROADCAST, A, 1));
  expect(await tags(b!, 1)).toEqual([1]);
  expect(await tags(c!, 1)).toEqual([1]);
  expect(await tags(a!, 1, 300)).toEqual([]);
  // B to A: learned, so to port 0 alone. The switch learns B.
  await send(b!, frame(A, B, 2));
  expect(await tags(a!, 1)).toEqual([2]);
  expect(await tags(c!, 1, 300)).toEqual([]);
  // C to a MAC never seen: flooded to A and B.
  await send(c!, frame(macOf(0x77), C, 3));
  expect(await tags(a!, 1)).toEqual([3]);
  expect(await tags(b!, 1)).toEqual([3]);
  // A to C, which has sent (learned): C alone.
  await send(a!, frame(C, A, 4));
  expect(await tags(c!, 1)).toEqual([4]);
  expect(await tags(b!, 1, 300)).toEqual([]);
  // A's MAC now speaks from port 2 (a guest that moved): frames for it go there at once.
  await send(c!, frame(BROADCAST, A, 5));
  expect(await tags(a!, 1)).toEqual([5]);
  expect(await tags(b!, 1)).toEqual([5]);
  await send(b!, frame(A, B, 6));
  expect(await tags(c!, 1)).toEqual([6]);
  expect(await tags(a!, 1, 300)).toEqual([]);
  // Every frame sent counted as sent, each delivery as received.
  expect(a!.dev.metrics().queues[1]!.frames).toBe(2);
  expect(b!.dev.metrics().queues[0]!.frames).toBe(3);
  expect(c!.dev.metrics().queues[0]!.frames).toBe(3);
});

it('the filter hook sees the sending port: deny drops and counts, host goes to the host tap, accept forwards', async () => {
  const ns = createNetns('lgsw');
  const host = openTapIn(ns, { vnetHdr: true, address: false });
  native.tapSetVnetHdrSize(host.fd, 10);
  const sniff = openPacketIn(ns, host.name);
  const { guests: [a, b] } = await network(2, {
    filter: { module: new URL('./fixtures/switch-filter.ts', import.meta.url).href },
    hostFd: host.fd,
  });
  const [A, B] = [macOf(0xa), macOf(0xb)];
  await send(a!, frame(B, A, 1, 0, 0x88b6)); // deny
  await send(a!, frame(B, A, 2, 0, 0x88b7)); // host
  await send(a!, frame(B, A, 3, 0, 0x88b5)); // accept
  await send(b!, frame(A, B, 4, 0, 0x88b6)); // the fixture denies 0x88b6 from port 0 only
  expect(await tags(b!, 1)).toEqual([3]);
  expect(await tags(a!, 1)).toEqual([4]);
  const ta = a!.dev.metrics().queues[1]!;
  expect([ta.txDropFiltered, ta.txHost, ta.frames]).toEqual([1, 1, 2]);
  const got = await sniffFrame(sniff);
  expect(got?.length).toBe(100);
  expect(got?.[14]).toBe(2);
});

it('two ports sending to a third at once: every frame arrives once, in each sender\'s order', async () => {
  const { guests: [a, b, c] } = await network(3);
  const [A, B, C] = [macOf(0xa), macOf(0xb), macOf(0xc)];
  await send(c!, frame(BROADCAST, C, 0)); // the switch learns C
  expect((await tags(a!, 1)).length + (await tags(b!, 1)).length).toBe(2);
  // Rounds of 32 frames from each sender at once, both TX workers claiming slots of C's ring
  // together; C takes each round whole (its 64 buffers) before the next, so its ring never fills.
  const ROUNDS = 12;
  const PER = 32;
  const seen: number[][] = [[], []];
  for (let round = 0; round < ROUNDS; round++) {
    for (const [k, g] of [a!, b!].entries()) {
      for (let i = 0; i < PER; i++) expect(g.drv.send(frame(C, k === 0 ? A : B, 10 + k, round * PER + i))).toBe(true);
    }
    a!.drv.flushTx();
    b!.drv.flushTx();
    const got = await c!.drv.waitRx(2 * PER, { timeoutMs: 5000 });
    for (const r of got) seen[r.frame[14]! - 10]!.push((r.frame[15]! << 8) | r.frame[16]!);
    expect(await a!.drv.drainTx()).toBe(0);
    expect(await b!.drv.drainTx()).toBe(0);
  }
  const all = Array.from({ length: ROUNDS * PER }, (_, i) => i);
  expect(seen[0]).toEqual(all);
  expect(seen[1]).toEqual(all);
  expect(a!.dev.metrics().queues[1]!.txDropBackend + b!.dev.metrics().queues[1]!.txDropBackend).toBe(0);
  expect(c!.dev.metrics().queues[0]!.frames).toBe(2 * ROUNDS * PER);
});

it('a port whose ring is full: the frames it could not take are counted, by the sender and by the switch', async () => {
  const sw = new SwitchBackend({ ports: 2, slots: 4 });
  const a = await guest(sw.ports[0]!, 0xa);
  const b = await guest(sw.ports[1]!, 0xb, FEATURES, 16);
  const [A, B] = [macOf(0xa), macOf(0xb)];
  await send(b, frame(A, B, 0)); // the switch learns B
  expect(await tags(a, 1)).toEqual([0]);
  // B takes no frames from its queue meanwhile: 16 go into its buffers, 4 wait in the ring, the rest drop.
  const N = 60;
  for (let i = 0; i < N; i++) await send(a, frame(B, A, 1, i));
  const tx = a.dev.metrics().queues[1]!;
  expect(tx.frames + tx.txDropBackend).toBe(N);
  expect(tx.txDropBackend).toBeGreaterThanOrEqual(N - 16 - 4);
  expect(sw.stats()[1]!.ringFull).toBe(tx.txDropBackend);
  expect(sw.stats()[0]!.ringFull).toBe(0);
  // What was taken arrives, in order, as B gives its buffers back.
  const got: number[] = [];
  const deadline = Date.now() + 5000;
  while (got.length < tx.frames && Date.now() < deadline) for (const r of await b.drv.waitRx(1, { timeoutMs: 100 })) got.push((r.frame[15]! << 8) | r.frame[16]!);
  expect(got.length).toBe(tx.frames);
  expect(got).toEqual([...got].sort((x, y) => x - y));
});

it('the ring under two producers on other threads at full speed: each frame arrives once and in order, or is counted as dropped', async () => {
  const sw = new SwitchBackend({ ports: 3, slots: 64 });
  for (const p of sw.ports) p.configure(decode(FEATURES));
  const spec = (i: number) => sw.ports[i]!.port(0) as SwitchPortSpec;
  const ctx = () => ({ counters: createCounters(), frameFilter: undefined, mappings: new MappingViews(native.mappingBuffer) });
  const mapping = native.mmapAnonymous(1 << 20);
  const ram = new Uint8Array(native.mappingBuffer(mapping));
  cleanups.push(() => { native.munmap(mapping); for (const p of sw.ports) p.close(); });
  const consumer = openPorts(spec(2), ctx());
  const C = macOf(0xc);
  // Port 2 speaks once, so that the producers' frames for C go to its ring alone.
  ram.set(BROADCAST, 512 + 12);
  ram.set(C, 512 + 18);
  const hello = new IovecTable(1, 1);
  hello.push(mapping, 512, 12 + 64);
  hello.endFrame();
  expect(consumer.tx.send(hello, 0)).toBe(1);

  const COUNT = 200_000;
  const ready = new Int32Array(new SharedArrayBuffer(4));
  const done = new Int32Array(new SharedArrayBuffer(4));
  const producers = [0, 1].map((k) => startWorker(new URL('./fixtures/switch-producer.ts', import.meta.url), {
    workerData: { spec: spec(k), mapping, base: 4096 * (k + 1), count: COUNT, tag: 10 + k, dst: C, src: macOf(0xa + k), ready, done },
  }));
  const reports = producers.map((w) => new Promise<{ dropped: number }>((res, rej) => { w.once('message', res); w.once('error', rej); }));
  const seen: number[][] = [[], []];
  const RX = 65536;
  const t = new IovecTable(16, 16);
  const deadline = Date.now() + 60_000;
  for (let idle = 0; idle < 2 && Date.now() < deadline;) {
    t.reset();
    for (let k = 0; k < 16; k++) {
      t.push(mapping, RX + k * 2048, 2048);
      t.endFrame();
    }
    const got = consumer.rx.recv(t, 16);
    for (let f = 0; f < got; f++) {
      const at = RX + f * 2048 + 12;
      seen[ram[at + 14]! - 10]!.push((ram[at + 15]! << 16) | (ram[at + 16]! << 8) | ram[at + 17]!);
    }
    // Both producers finished and the ring found empty twice: nothing more comes.
    idle = got === 0 && Atomics.load(done, 0) === 2 ? idle + 1 : 0;
  }
  const dropped = (await Promise.all(reports)).map((r) => r.dropped);
  await Promise.all(producers.map((w) => w.terminate()));
  const full = sw.stats()[2]!.ringFull;
  expect(full).toBe(dropped[0]! + dropped[1]!);
  for (const k of [0, 1]) {
    const s = seen[k]!;
    for (let i = 1; i < s.length; i++) if (s[i]! <= s[i - 1]!) throw new Error(`producer ${k}: ${s[i]} after ${s[i - 1]} at ${i}`);
    expect(s.length + dropped[k]!, `producer ${k}`).toBe(COUNT);
    expect(s.length, `producer ${k}`).toBeGreaterThan(0);
  }
}, 90_000);

it('a port sending from thousands of made-up addresses cannot push another port out of the MAC table', async () => {
  const { guests: [a, b, c] } = await network(3);
  const [A, B, C] = [macOf(0xa), macOf(0xb), macOf(0xc)];
  await send(b!, frame(BROADCAST, B, 1)); // the switch learns B
  await send(a!, frame(BROADCAST, A, 2)); // and A
  expect(await tags(a!, 1)).toEqual([1]);
  expect(await tags(b!, 1)).toEqual([2]);
  expect(await tags(c!, 2)).toEqual([1, 2]);
  // A sends 20,000 frames to B, each from another locally administered source.
  const src = new Uint8Array(6);
  for (let i = 0; i < 20_000; i++) {
    src.set([0x02, 0x66, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff, 0x01]);
    while (!a!.drv.send(frame(B, src, 3, i & 0xffff))) await a!.drv.drainTx();
    if (i % 32 === 31) a!.drv.flushTx();
  }
  a!.drv.flushTx();
  expect(await a!.drv.drainTx()).toBe(0);
  const tx = a!.dev.metrics().queues[1]!;
  expect(tx.frames - 1 + tx.txDropBackend).toBe(20_000); // the broadcast before, then B's ring filled: the rest counted
  // B takes what reached it; C got none of it (B stayed learned while A's sources came and went).
  while ((await b!.drv.waitRx(64, { timeoutMs: 300 })).length > 0);
  expect(await tags(c!, 1, 300)).toEqual([]);
  // C to B still goes to B alone: B's entry was not pushed out, so nothing floods to A.
  await send(c!, frame(B, C, 4));
  expect(await tags(b!, 1)).toEqual([4]);
  expect(await tags(a!, 1, 300)).toEqual([]);
});
