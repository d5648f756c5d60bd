/**
 * Driving a vhost-user net back-end with the harness, the way QEMU would but without a VM: a back-end
 * (`lgnet serve` by default) serves a tap inside a throw-away network namespace; the harness connects
 * as the VMM (VhostUserFrontend), plays the guest's virtio-net driver (VirtioNetDriver) over a memfd of
 * guest RAM, sends one frame that shows up on the tap, and receives one written to the tap.
 * docs/HARNESS.md walks through it. Needs root (namespaces, taps).
 *
 *   sudo npx tsx scripts/harness-example.ts
 *   sudo npx tsx scripts/harness-example.ts --backend 'dpdk-testpmd --no-pci --no-huge -m 512
 *        --vdev net_vhost0,iface={socket} --vdev net_tap0,iface={tap} -- --forward-mode=io --auto-start'
 *
 * With --backend, any command works: {socket} and {tap} are replaced, it runs inside the namespace, and
 * it is ready once the socket and the tap exist. In a project that depends on lgnet, the imports are
 * `from 'lgnet/harness'` and `from 'lgnet'`; this copy runs from the source tree.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { featureMask, native } from '../index.ts';
import { createNetns, frames, GuestRam, openPacketIn, VhostUserFrontend, VirtioNetDriver, type Netns } from '../harness/index.ts';

const LGNET = fileURLToPath(new URL('../bin/lgnet', import.meta.url));
const GUEST_MAC = '52:54:00:12:34:56';
const TAP = 'lgex0';
/** An EtherType for local experiments (IEEE 802): the host stack ignores it, so no other traffic. */
const ETHERTYPE = 0x88b5;
/** VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit, not a virtio one; the driver must not see it. */
const PROTOCOL_FEATURES_BIT = 1n << 30n;

const at = process.argv.indexOf('--backend');
const backendCmd = at > 0 ? process.argv[at + 1]! : undefined;

// 1. A namespace and a back-end serving a tap inside it. Everything here is undone in `finally`.
const ns: Netns = createNetns('lgex');
const dir = mkdtempSync(join(tmpdir(), 'lgnet-harness-example-'));
const socket = join(dir, 'vhost-user.sock');
let backend: ChildProcess | undefined;
let ram: GuestRam | undefined;
let fe: VhostUserFrontend | undefined;
let drv: VirtioNetDriver | undefined;
try {
  const argv = backendCmd
    ? backendCmd.replaceAll('{socket}', socket).replaceAll('{tap}', TAP).split(/\s+/).filter(Boolean)
    : [LGNET, 'serve', '--socket', socket, '--tap', TAP, '--mac', GUEST_MAC, '--log-level', 'warn'];
  backend = ns.spawn(argv); // ip netns exec …: the process is the back-end itself, killed by pid at the end
  let log = '';
  backend.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  backend.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const deadline = Date.now() + 30_000;
  while (!existsSync(socket) || !tapExists(ns, TAP)) {
    if (backend.exitCode !== null || Date.now() > deadline) throw new Error(`the back-end did not come up:\n${log}`);
    await sleep(50);
  }
  ns.exec('ip', 'link', 'set', TAP, 'up');
  const tapMac = frames.mac(ns.exec('cat', `/sys/class/net/${TAP}/address`).trim());
  const sniff = openPacketIn(ns, TAP); // sees what the back-end writes to the tap; writes go the other way
  console.log(`netns=${ns.name} backend pid=${backend.pid} socket=${socket} tap=${TAP}`);

  // 2. The VMM's part: connect, negotiate, share guest RAM, hand over the rings the driver laid out.
  ram = new GuestRam(16 << 20);
  fe = await VhostUserFrontend.connect(socket, { timeoutMs: 10_000 });
  const neg = await fe.negotiate({ features: (offered) => offered & featureMask('VERSION_1') });
  drv = new VirtioNetDriver(ram, { features: neg.features & ~PROTOCOL_FEATURES_BIT, queueSize: 64 });
  await fe.attachDriver(drv, ram, { negotiate: false }); // SET_MEM_TABLE, SET_VRING_* per queue
  drv.fillRx(); // the guest posts receive buffers
  console.log(`negotiated features 0x${neg.features.toString(16)}, protocol features 0x${neg.protocolFeatures.toString(16)}`);

  // 3. Guest → tap: one frame through the TX queue; the sniffer on the tap sees it. Some back-ends
  // (testpmd) bring their port up a moment after DRIVER_OK and drop what comes before: send again.
  const out = frames.ethernet(tapMac, frames.mac(GUEST_MAC), ETHERTYPE, new TextEncoder().encode('hello from the guest'));
  let seen: Uint8Array | null = null;
  for (let attempt = 0; attempt < 5 && !seen; attempt++) {
    drv.send(out);
    seen = await readFrame(sniff, (f) => f.length >= out.length && Buffer.from(f.subarray(0, out.length)).equals(Buffer.from(out)), 1000);
  }
  if (!seen) throw new Error('the frame the guest sent never reached the tap');
  console.log(`guest → tap: ${out.length} bytes, payload "${text(seen.subarray(14, out.length))}"`);
  if ((await drv.drainTx(0, 5000)) !== 0) throw new Error('the back-end did not complete the TX chain');

  // 4. Tap → guest: a frame written to the tap arrives in an RX buffer, after the virtio_net_hdr.
  const back = frames.ethernet(frames.mac(GUEST_MAC), tapMac, ETHERTYPE, new TextEncoder().encode('hello from the namespace'));
  const ours = (f: { frame: Uint8Array }) => f.frame[12] === ETHERTYPE >> 8 && f.frame[13] === (ETHERTYPE & 0xff);
  let got: { hdr: Uint8Array; frame: Uint8Array } | undefined;
  for (let attempt = 0; attempt < 5 && !got; attempt++) {
    if (native.fdWrite(sniff, back) !== back.length) throw new Error('could not write to the tap');
    got = (await drv.waitRx(1, { timeoutMs: 1000 })).find(ours);
  }
  if (!got) throw new Error('the frame written to the tap never reached the guest');
  console.log(`tap → guest: ${got.frame.length} bytes after a ${got.hdr.length}-byte header, payload "${text(got.frame.subarray(14, back.length))}"`);
} finally {
  // 5. Teardown: the connection first (the back-end stops the rings), then the back-end, by its pid.
  fe?.close();
  drv?.close();
  ram?.close();
  if (backend?.pid !== undefined && backend.exitCode === null) {
    const exited = new Promise<number | null>((resolve) => backend!.once('exit', (code) => resolve(code)));
    process.kill(backend.pid, 'SIGTERM');
    const code = await Promise.race([exited, sleep(5000).then(() => 'timeout' as const)]);
    if (code === 'timeout') process.kill(backend.pid, 'SIGKILL');
    console.log(`backend exited: ${code}`);
  }
  ns.destroy();
  rmSync(dir, { recursive: true, force: true });
}

function tapExists(n: Netns, name: string): boolean {
  try {
    n.exec('test', '-e', `/sys/class/net/${name}`);
    return true;
  } catch {
    return false;
  }
}

/** Reads frames from a nonblocking packet socket until one matches, or the timeout. */
async function readFrame(fd: number, match: (f: Uint8Array) => boolean, timeoutMs: number): Promise<Uint8Array | null> {
  const buf = new Uint8Array(65_536);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (native.poll([fd], 0) === 0) {
      await sleep(10);
      continue;
    }
    const n = native.fdRead(fd, buf);
    if (n > 0 && match(buf.subarray(0, n))) return buf.slice(0, n);
  }
  return null;
}

function text(b: Uint8Array): string {
  return new TextDecoder().decode(b);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
