/**
 * Embedding lgnet in a VMM, in one process and without privileges: two virtio-net devices back to back
 * (PairBackend), each with guest RAM in a memfd and a guest driven by the harness's virtio-net driver,
 * which plays the part of the guest kernel. The VMM's side is spelled out step by step — what a VMM
 * calls when its guest writes the device's registers — then guest A sends frames to guest B, with a
 * rate limit and a pcap capture on A. docs/EMBEDDING.md walks through it.
 *
 *   npx tsx scripts/embed-example.ts [capture.pcap]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { closePcap, featureMask, NetDevice, openPcap, PairBackend } from '../index.ts';
import { frames, GuestRam, VirtioNetDriver } from '../harness/index.ts';

const MAC_A = '52:54:00:00:00:0a';
const MAC_B = '52:54:00:00:00:0b';
const pcapPath = process.argv[2] ?? join(mkdtempSync(join(tmpdir(), 'lgnet-embed-')), 'a.pcap');

// 1. The backend and the devices. The VMM opens everything a device needs before the guest runs.
const pair = new PairBackend();
const pcap = openPcap(pcapPath);
const devA = new NetDevice({
  backend: pair.a,
  mac: MAC_A,
  capture: { fd: pcap }, // every frame of A's queues, for tcpdump -r
  rateLimit: { tx: { ops: { size: 8, refillMs: 100 } } }, // A sends at most 80 frames/s (bursts of 8)
});
const devB = new NetDevice({ backend: pair.b, mac: MAC_B });

/** What the VMM does as the guest's driver brings a device up (virtio 1.2 §3.1). */
async function bringUp(dev: NetDevice, ram: GuestRam, drv: VirtioNetDriver): Promise<void> {
  dev.setFeatures(drv.features); // the driver wrote its feature bits and FEATURES_OK
  await dev.setMemory([ram.region()]); // guest RAM: fds the device maps (memfd here; QEMU's with vhost-user)
  for (const { index, setup } of drv.queueSetups()) dev.setupQueue(index, setup); // queue size, addresses, kick and call eventfds
  await dev.start(); // DRIVER_OK: one worker per queue starts serving
}

// 2. Two guests. GuestRam is a memfd; VirtioNetDriver lays its rings out in it, as a guest kernel would.
const ramA = new GuestRam(32 << 20);
const ramB = new GuestRam(32 << 20);
const want = featureMask('VERSION_1', 'MAC', 'RING_EVENT_IDX', 'MRG_RXBUF');
const drvA = new VirtioNetDriver(ramA, { features: want & devA.offered, queueSize: 64 });
const drvB = new VirtioNetDriver(ramB, { features: want & devB.offered, queueSize: 64 });
await bringUp(devA, ramA, drvA);
await bringUp(devB, ramB, drvB);
for (const d of [drvA, drvB]) d.fillRx(); // the guests post receive buffers

// 3. Traffic: A sends 24 frames to B; the rate limit spreads them over ~0.2 s.
const mac = frames.mac;
const t0 = performance.now();
for (let i = 0; i < 24; i++) {
  const payload = new Uint8Array(86).fill(i);
  drvA.send(frames.ethernet(mac(MAC_B), mac(MAC_A), 0x88b5, payload));
}
const got = await drvB.waitRx(24, { timeoutMs: 5000 });
const ms = performance.now() - t0;
console.log(`B received ${got.length} frames from A in ${ms.toFixed(0)} ms`);

// 4. Metrics, any time, from any thread: per-queue counters the workers keep in shared memory.
const txA = devA.metrics().queues[1]!;
const rxB = devB.metrics().queues[0]!;
console.log(`A tx: frames ${txA.frames}, bytes ${txA.bytes}, throttled ${txA.throttled} times, captured ${txA.captured}`);
console.log(`B rx: frames ${rxB.frames}, interrupts ${rxB.interrupts} (suppressed ${rxB.interruptsSuppressed})`);

// 5. Teardown: devices first (workers stop, used rings flushed), then what they used.
await devA.close();
await devB.close();
closePcap(pcap);
for (const x of [drvA, drvB, ramA, ramB]) x.close();
console.log(`capture: ${pcapPath}`);
