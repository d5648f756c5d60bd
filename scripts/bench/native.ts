/**
 * npm run bench:native — what crossing into the addon costs, side by side with C on the same machine
 * in the same run (DESIGN.md, "Targets"):
 *
 *   nop            ns per N-API call
 *   tx 64 / 1514   frames/s: writevBatch (bursts of 32, virtio_net_hdr + frame as 2 iovecs, IFF_VNET_HDR
 *                  with 12-byte header) vs scripts/bench/tap-loop.c doing writev per frame on the same fd
 *   rx 64          frames/s: readvBatch (bursts of 32) vs a C readv loop, both fed by a C AF_PACKET
 *                  sender (sendmmsg) on the tap's interface
 *
 * The tap lives in a namespace this bench creates (no address, IPv6 off, link up) and removes. Frames go
 * to a MAC nothing owns with ethertype 0x88b5, so the kernel drops them early. Each measurement runs
 * ~2.5 s per side, as ROUNDS interleaved JS/C rounds (machines here are shared and noisy, so we report
 * medians and the median of the per-round ratios). Results print and go to bench/results/native.json.
 * Needs root and a C compiler (cc). LGNET_BENCH_SECONDS changes the time per side.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';

import {
  close,
  IovecTable,
  mappingBuffer,
  memfdCreate,
  mmap,
  munmap,
  nop,
  poll,
  readvBatch,
  tapSetVnetHdrSize,
  writevBatch,
} from '../../native/index.ts';
import { createNetns, openPacketIn, openTapIn } from '../../harness/netns.ts';
import { buildTapLoop, isMain, ROOT, runTapLoop, type TapLoopResult } from './common.ts';

let SECONDS = Number(process.env['LGNET_BENCH_SECONDS'] ?? 2.5);
const BURST = 32;
let ROUNDS = 5;
const HDR = 12;

type CResult = TapLoopResult;

function nsPerNop(): number {
  const n = 5_000_000;
  for (let i = 0; i < 200_000; i++) nop();
  let best = Infinity;
  for (let round = 0; round < 3; round++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) nop();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / n);
  }
  return best;
}

function jsWrite(tap: number, region: number, mem: Uint8Array, len: number, seconds: number): CResult {
  const table = new IovecTable(2 * BURST, BURST);
  mem.fill(0, 0, HDR);
  for (let i = 0; i < BURST; i++) {
    const at = 4096 + i * 2048 * (len > 2048 ? Math.ceil(len / 2048) : 1);
    mem[at] = 0x02;
    mem.fill(0, at + 1, at + 5);
    mem[at + 5] = 0x02;
    mem.set([0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5], at + 6);
    for (let j = 14; j < len; j++) mem[at + j] = j & 0xff;
    table.push(region, 0, HDR);
    table.push(region, at, len);
    table.endFrame();
  }
  let frames = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < seconds * 1000) {
    for (let k = 0; k < 32; k++) frames += writevBatch(tap, table);
    t = performance.now();
  }
  return { mode: 'write', frames, seconds: (t - t0) / 1000, fps: frames / ((t - t0) / 1000) };
}

function jsRead(tap: number, region: number, seconds: number): CResult {
  const table = new IovecTable(2 * BURST, BURST);
  for (let i = 0; i < BURST; i++) {
    table.push(region, i * 16, HDR);
    table.push(region, 4096 + i * 2048, 2048);
    table.endFrame();
  }
  let frames = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < seconds * 1000) {
    const n = readvBatch(tap, table);
    frames += n;
    if (n === 0) poll([tap], 100);
    t = performance.now();
  }
  return { mode: 'read', frames, seconds: (t - t0) / 1000, fps: frames / ((t - t0) / 1000) };
}

/** Runs `measure` while a C sender feeds the tap from an AF_PACKET socket. */
async function withSender(bin: string, pkt: number, len: number, measure: () => CResult): Promise<{ reader: CResult; sender: CResult }> {
  const child = spawn(bin, ['send', '3', String(len), String(SECONDS + 1)], { stdio: ['ignore', 'pipe', 'pipe', pkt] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((res) => child.on('close', () => res()));
  await new Promise((r) => setTimeout(r, 200)); // let it reach full rate
  try {
    const reader = measure();
    await Promise.race([exited, new Promise((r) => setTimeout(r, (SECONDS + 5) * 1000))]);
    return { reader, sender: out ? (JSON.parse(out) as CResult) : { mode: 'send', frames: 0, seconds: 0, fps: 0 } };
  } finally {
    if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const fmt = (fps: number): string => `${(fps / 1e6).toFixed(3)} M/s`;

/**
 * Runs the native benchmark (also used by the full suite, scripts/bench/suite.ts). `seconds` is the
 * time per side, `rounds` the interleaved JS/C rounds; results go to `outDir`/native.json.
 */
export async function benchNative(opts: { seconds?: number; rounds?: number; outDir?: string } = {}): Promise<Record<string, unknown>> {
  if (opts.seconds !== undefined) SECONDS = opts.seconds;
  if (opts.rounds !== undefined) ROUNDS = opts.rounds;
  const bin = buildTapLoop();
  const results: Record<string, unknown> = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    cpu: cpus()[0]?.model,
    seconds: SECONDS,
    rounds: ROUNDS,
    burst: BURST,
    loadavg: loadavg(),
  };
  const ns = nsPerNop();
  results['nopNs'] = ns;
  console.log(`nop(): ${ns.toFixed(1)} ns per N-API call`);

  const netns = createNetns('lgnet-bench');
  const memfd = memfdCreate('lgnet-bench', 1 << 20);
  const region = mmap(memfd, 0, 1 << 20);
  const mem = new Uint8Array(mappingBuffer(region));
  try {
    const tap = openTapIn(netns, { vnetHdr: true, nonblocking: true, address: false });
    tapSetVnetHdrSize(tap.fd, HDR);

    for (const len of [64, 1514]) {
      jsWrite(tap.fd, region, mem, len, 0.3); // warm up
      const jsRounds: number[] = [];
      const cRounds: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        jsRounds.push(jsWrite(tap.fd, region, mem, len, SECONDS / ROUNDS).fps);
        cRounds.push(runTapLoop(bin, tap.fd, ['write', String(HDR), String(len), String(SECONDS / ROUNDS)], SECONDS).fps);
      }
      const js = median(jsRounds);
      const c = median(cRounds);
      const ratio = median(jsRounds.map((j, i) => j / cRounds[i]!));
      results[`tx${len}`] = { writevBatch: js, c, ratio, jsRounds, cRounds };
      console.log(`tx ${String(len).padStart(4)} B: writevBatch ${fmt(js)}  C writev ${fmt(c)}  ratio ${ratio.toFixed(3)}`);
    }

    const pkt = openPacketIn(netns, tap.name);
    const len = 64;
    jsRead(tap.fd, region, 0.1);
    const js = await withSender(bin, pkt, len, () => jsRead(tap.fd, region, SECONDS));
    const c = await withSender(bin, pkt, len, () => runTapLoop(bin, tap.fd, ['read', String(HDR), String(SECONDS)], SECONDS));
    const ratio = js.reader.fps / c.reader.fps;
    results[`rx${len}`] = {
      readvBatch: js.reader.fps,
      c: c.reader.fps,
      ratio,
      senderDuringJs: js.sender.fps,
      senderDuringC: c.sender.fps,
    };
    console.log(
      `rx ${String(len).padStart(4)} B: readvBatch ${fmt(js.reader.fps)}  C readv ${fmt(c.reader.fps)}  ratio ${ratio.toFixed(3)}` +
        `  (C sender offered ${fmt(js.sender.fps)} / ${fmt(c.sender.fps)})`,
    );
  } finally {
    netns.destroy();
    munmap(region);
    close(memfd);
  }
  const outDir = opts.outDir ?? join(ROOT, 'bench/results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'native.json'), JSON.stringify(results, null, 2) + '\n');
  console.log(`wrote ${join(outDir, 'native.json')}`);
  return results;
}

if (isMain(import.meta.url)) await benchNative();
