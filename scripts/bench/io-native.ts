/**
 * npx tsx scripts/bench/io-native.ts [FRAMELEN] — the two tap I/O paths at the native boundary, with
 * no device and no second thread: bursts of 32 frames from JS through readvBatch/writevBatch (a syscall
 * per frame) and through uringReadvBatch/uringWritevBatch (one io_uring_enter per burst), alternating
 * in ROUNDS rounds on one tap. RX drains a backlog written beforehand through an AF_PACKET socket (the
 * tap's queue is made long enough), so no sender competes for the CPUs; TX sends to a MAC nothing owns.
 * Prints the median frames/s of each and the per-round spread. Options: LGNET_BENCH_ROUNDS (default 8).
 */
import * as native from '../../native/index.ts';
import { createNetns, openPacketIn, openTapIn } from '../../harness/netns.ts';

const LEN = Number(process.argv[2] ?? 64);
const ROUNDS = Number(process.env['LGNET_BENCH_ROUNDS'] ?? 8);
const BURST = 32;
const BACKLOG = 4000;
const TX_BURSTS = 3000;

const ns = createNetns('lgionat');
const fps: Record<string, number[]> = { 'rx uring': [], 'rx syscall': [], 'tx uring': [], 'tx syscall': [] };
try {
  const tap = openTapIn(ns, { vnetHdr: true, nonblocking: true, address: false });
  native.tapSetVnetHdrSize(tap.fd, 12);
  ns.exec('ip', 'link', 'set', tap.name, 'txqueuelen', String(BACKLOG + 1000));
  const pkt = openPacketIn(ns, tap.name);
  const ring = native.uringCreate([tap.fd]);
  const memfd = native.memfdCreate('lgnet-io-native', 1 << 20);
  const region = native.mmap(memfd, 0, 1 << 20);
  const frame = new Uint8Array(LEN);
  frame.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5]);
  new Uint8Array(native.mappingBuffer(region)).set(frame, 512 * 1024); // header at 600 KiB stays zero
  const rx = new native.IovecTable(2 * BURST, BURST);
  const tx = new native.IovecTable(2 * BURST, BURST);
  for (let i = 0; i < BURST; i++) {
    rx.push(region, i * 2048, 12);
    rx.push(region, i * 2048 + 12, 2036);
    rx.endFrame();
    tx.push(region, 600 * 1024, 12);
    tx.push(region, 512 * 1024, LEN);
    tx.endFrame();
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const io of ['uring', 'syscall'] as const) {
      let put = 0;
      for (let i = 0; i < BACKLOG; i++) {
        try {
          if (native.fdWrite(pkt, frame) > 0) put++;
        } catch {
          break; // the socket's buffer is full
        }
      }
      let got = 0;
      const t0 = performance.now();
      for (let k = 0; k < BACKLOG && got < put; k++) {
        const n = io === 'uring' ? native.uringReadvBatch(ring.id, rx, BURST) : native.readvBatch(tap.fd, rx, BURST);
        if (n === 0) break;
        got += n;
      }
      fps[`rx ${io}`]!.push(got / ((performance.now() - t0) / 1000));
      let sent = 0;
      const t1 = performance.now();
      for (let k = 0; k < TX_BURSTS; k++) sent += io === 'uring' ? native.uringWritevBatch(ring.id, tx, BURST) : native.writevBatch(tap.fd, tx, BURST);
      fps[`tx ${io}`]!.push(sent / ((performance.now() - t1) / 1000));
    }
  }
  native.uringClose(ring.id);
  native.munmap(region);
  native.close(memfd);
} finally {
  ns.destroy();
}
const sorted = (x: number[]): number[] => [...x].sort((a, b) => a - b);
const med = (x: number[]): number => sorted(x)[x.length >> 1]!;
for (const [k, v] of Object.entries(fps)) {
  const s = sorted(v);
  console.log(`${LEN} B ${k.padEnd(10)} median ${(med(v) / 1e6).toFixed(3)} M/s  (${(s[0]! / 1e6).toFixed(3)}–${(s[s.length - 1]! / 1e6).toFixed(3)} over ${v.length} rounds)`);
}
for (const dir of ['rx', 'tx']) console.log(`${LEN} B ${dir} uring/syscall ${(med(fps[`${dir} uring`]!) / med(fps[`${dir} syscall`]!)).toFixed(3)}`);
