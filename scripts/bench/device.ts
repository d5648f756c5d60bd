/**
 * npm run bench:device — frames/s through a NetDevice, side by side with the C tap loop in the same run
 * (DESIGN.md, "Targets": ≥ 0.7× the C loop).
 *
 *   tx 64 / 1514   the harness keeps the TX ring full (frames laid out once, descriptors recycled);
 *                  lgnet's TX worker drains it into a tap with one writevBatch per burst.
 *                  Reference: tap-loop.c writev(header, frame) per frame on the same tap.
 *   rx 64 / 1514   a C AF_PACKET sender feeds the tap; lgnet's RX worker reads into guest buffers with
 *                  one readvBatch per burst while the harness recycles them.
 *                  Reference: tap-loop.c readv loop on the same tap with the same sender.
 *   dirty log      the four lgnet figures again with dirty logging on (NetDevice.startDirtyLog),
 *                  as ratios to the same figures with logging off.
 *   packed         the four lgnet figures again on packed rings, as ratios to split rings.
 *   mrg            RX with MRG_RXBUF against plain RX (no MRG_RXBUF), 64 and 1514 B, in alternating
 *                  rounds on fresh devices (the plain figure is re-measured beside each MRG one, so
 *                  drift on a shared machine hits both): 2048-byte buffers (one per frame), 1024-byte
 *                  buffers for 1514 B (each frame spans two), and 64 B into a Linux guest's RX ring
 *                  (1536-byte buffers, GUEST_TSO4/6: every frame is offered room for 64 KiB). Each
 *                  round runs free (placed by the scheduler) and pinned (the workers and the harness on
 *                  one CPU, the sender on another); with the rates, the RX worker's CPU per frame.
 *   ping           latency: one ICMP echo at a time from the harness to the namespace's kernel through
 *                  lgnet and back (kick → TX worker → tap write → the kernel answers → RX worker → tap read
 *                  → used + call eventfd → harness), with the features and buffers a Linux guest uses
 *                  (MRG_RXBUF with 1536-byte buffers, GUEST_TSO4/6); LGNET_BENCH_PINGS echoes (default
 *                  500), LGNET_BENCH_PING_GAP_US apart (default 2000, so every echo finds lgnet asleep).
 *                  Reference: tap-loop.c writes the same frame to the tap, polls and reads the reply
 *                  (one thread, no ring: the floor of the kernel's own round trip). Then 100 echoes
 *                  under ftrace, spaced so and back to back, cut into hops (ftrace.ts; needs root;
 *                  LGNET_BENCH_TRACE_RAW=FILE keeps the raw trace, LGNET_BENCH_TRACE_SYSCALLS=1 adds
 *                  every system call's entry and exit to it). Last, the echo with the queue pair's two
 *                  workers pinned to one CPU (NetDeviceOptions.cpus) against the same unpinned, in
 *                  alternating rounds on fresh devices.
 *   in-process     two devices of this process, guest A sending to guest B: on a two-port switch
 *                  (SwitchBackend) against the pair backend, 64 and 1514 B, in LGNET_BENCH_IO_ROUNDS
 *                  alternating rounds; a window of 128 frames in flight, so neither drops; with the
 *                  CPU per frame of A's TX worker and B's RX worker.
 *   io             lgnet on each tap I/O path (io_uring, readv/writev) against both C limits, the
 *                  per-frame loop (write/read) and the io_uring loop (uwrite/uread: as many WRITEVs or
 *                  READVs per io_uring_enter as lgnet's burst, LGNET_BENCH_BURST), tx/rx at 64 and
 *                  1514 B, in LGNET_BENCH_IO_ROUNDS rounds (default 3) on fresh devices; medians and
 *                  the spread over rounds (skipped when a measurement lasts under a second: the smoke
 *                  test). The tx/rx figures at the top also give the C io_uring loop beside the C
 *                  per-frame one. It also prints what one system call costs here (tap-loop nullsys:
 *                  getppid), which decides how much fewer of them gain, and, pinned, the queue
 *                  worker's CPU per frame beside the C writer's time per frame.
 *
 * The figures above the io section run on the path TapBackend chooses by itself (io 'auto', or
 * LGNET_IO): io_uring where the kernel allows it.
 *
 * The harness (the "guest") runs on the main thread, lgnet's worker on another: on a 2-vCPU machine
 * that is one core each. Frames go to a MAC nothing owns, so the namespace's kernel drops them early.
 * Results print and go to bench/results/device.json. Options: LGNET_BENCH_SECONDS (per measurement),
 * LGNET_BENCH_BUSYPOLL (device busy-poll rounds, default 0), LGNET_BENCH_JAIL=1 is reserved for the jail
 * comparison, LGNET_BENCH_ONLY=mrg runs the MRG_RXBUF comparison alone, LGNET_BENCH_MRG_ROUNDS its rounds
 * (default 3), LGNET_BENCH_ONLY=io the I/O path comparison alone, LGNET_BENCH_ONLY=macvtap the device on a macvtap alone, LGNET_BENCH_ONLY=switch the in-process comparison alone, LGNET_BENCH_ONLY=ping the latency
 * case alone, LGNET_BENCH_COALESCE=off the device without interrupt coalescing (NetDevice coalesce
 * { rxUsecs: 0, txUsecs: 0 }), =RX,TX with holds of RX and TX µs, LGNET_BENCH_BURST the device's chains per
 * burst and the C io_uring loops' operations per enter (default DEFAULT_BURST, 64).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { DEFAULT_BURST, NetDevice } from '../../device/net.ts';
import { TapBackend, type TapIo } from '../../device/tap-backend.ts';
import type { Backend } from '../../device/backend.ts';
import { PairBackend } from '../../device/pair-backend.ts';
import { SwitchBackend } from '../../device/switch-backend.ts';
import { ethernet, icmpEchoRequest, ip4, isIcmpEchoReply, mac } from '../../harness/frames.ts';
import { GuestRam } from '../../harness/guest-ram.ts';
import { VirtioNetDriver } from '../../harness/virtio-net.ts';
import { createNetns, openPacketIn, type Netns } from '../../harness/netns.ts';
import { macvtapIndex } from '../netns.ts';
import { buildTapLoop, ROOT, runTapLoop, runTapLoopRaw, stat, threadCpu, threadSchedstat, withSender } from './common.ts';
import { isTapWrite, next, parse, put, traceOff, traceSetup, tracefs, workerHops, type Ev, type Hops } from './ftrace.ts';

const SECONDS = Number(process.env['LGNET_BENCH_SECONDS'] ?? 2);
const ONLY = process.env['LGNET_BENCH_ONLY'] ?? '';
const MRG_ROUNDS = Number(process.env['LGNET_BENCH_MRG_ROUNDS'] ?? 3);
const IO_ROUNDS = Number(process.env['LGNET_BENCH_IO_ROUNDS'] ?? 3);
/** Seconds of traffic a fresh device gets before it is measured (the MRG comparison). */
const WARMUP = 0.5;
const BUSY_POLL = Number(process.env['LGNET_BENCH_BUSYPOLL'] ?? 0);
/** LGNET_BENCH_COALESCE: 'off', or 'RX_USECS,TX_USECS' (the device's holds); unset, the defaults. */
function benchCoalesce(v: string | undefined): { coalesce?: { rxUsecs: number; txUsecs: number; buffers?: number } } {
  if (!v) return {};
  if (v === 'off') return { coalesce: { rxUsecs: 0, txUsecs: 0 } };
  const [rx, tx] = v.split(',').map(Number);
  return { coalesce: { rxUsecs: rx!, txUsecs: tx ?? rx! } };
}
const COALESCE = benchCoalesce(process.env['LGNET_BENCH_COALESCE']);
/** LGNET_BENCH_BURST: the device's chains per burst, and the C io_uring loops' operations per enter. */
const BURST = Number(process.env['LGNET_BENCH_BURST'] ?? DEFAULT_BURST);
const HDR = 12;
const QSIZE = 256;

interface Rate { frames: number; seconds: number; fps: number }

/**
 * A device on a tap in `ns`, with the harness attached. `io`: the tap's I/O path (default: its own
 * choice); `tap`: the interface (default lgbench0, made here; a macvtap must exist already).
 */
async function setup(ns: Netns, packed = false, rx: { mrg?: boolean; bufferSize?: number; features?: bigint } = {}, io?: TapIo, cpus?: number[], tap = 'lgbench0') {
  const backend = native.withNetns(ns.path, () => new TapBackend({ name: tap, ...(io ? { io } : {}) }));
  ns.exec('ip', 'link', 'set', tap, 'up');
  const dev = new NetDevice({ backend, mac: '52:54:00:00:00:01', busyPoll: BUSY_POLL, maxQueueSize: QSIZE, burst: BURST, ...COALESCE, ...(cpus ? { cpus } : {}) });
  const ram = new GuestRam(64 << 20);
  const features = mask('VERSION_1', 'RING_EVENT_IDX', 'MAC') | (packed ? mask('RING_PACKED') : 0n) | (rx.mrg ? mask('MRG_RXBUF') : 0n) | (rx.features ?? 0n);
  const drv = new VirtioNetDriver(ram, { features, queueSize: QSIZE, rxBufferSize: rx.bufferSize ?? 2048 });
  await drv.attach(dev);
  return { backend, dev, ram, drv };
}

async function closeSetup(s: Awaited<ReturnType<typeof setup>>): Promise<void> {
  await s.dev.close();
  s.drv.close();
  s.ram.close();
}

/** Keeps the TX ring full for `seconds`; returns the device's TX rate. */
function harnessTx(s: Awaited<ReturnType<typeof setup>>, len: number, seconds: number): Rate {
  const frame = ethernet(new Uint8Array([2, 0, 0, 0, 0, 2]), new Uint8Array([2, 0, 0, 0, 0, 1]), 0x88b5, new Uint8Array(len - 14));
  const r = s.drv.blastTx(frame, seconds);
  return { ...r, fps: r.frames / r.seconds };
}

/** Recycles RX buffers for `seconds` while a sender feeds the tap; returns the device's RX rate. */
function harnessRx(s: Awaited<ReturnType<typeof setup>>, seconds: number): Rate {
  const m0 = s.dev.metrics().queues[0]!.frames;
  const r = s.drv.sinkRx(seconds);
  const frames = s.dev.metrics().queues[0]!.frames - m0;
  return { frames, seconds: r.seconds, fps: frames / r.seconds };
}

const fmt = (fps: number): string => `${(fps / 1e6).toFixed(3)} M/s`;

/** What a Linux guest accepts on RX besides MRG_RXBUF: checksum offload and TSO (GSO frames up to 64 KiB). */
const LINUX_RX = mask('CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6');

/** CPU seconds this process's RX or TX queue workers (lgnet-rx0, lgnet-tx1, …) have used so far. */
function workerCpu(role: 'rx' | 'tx'): number {
  let sum = 0;
  for (const t of threadCpu(process.pid).values()) if (t.comm.startsWith(`lgnet-${role}`)) sum += t.cpu;
  return sum;
}

/**
 * Every frame of the bench goes to 02:00:00:00:00:02 (tap-loop.c fill_frame, harnessTx). A macvtap in
 * bridge mode hands a frame it sends to its own address back to itself, so it has another address
 * while frames go out, and that one while they come in from the sender.
 */
const MACVTAP_TX_MAC = '02:00:00:00:00:03';
const MACVTAP_RX_MAC = '02:00:00:00:00:02';

/**
 * The device on a macvtap (a guest on a host NIC) against the C loops on the same macvtap's fd, 64 and
 * 1514 B each way, and against the device on a tap (`tap`, the figures measured above in this run).
 * The macvtap sits on one end of a veth pair; RX frames come from the C sender on the other end.
 */
async function benchMacvtap(ns: Netns, bin: string, seconds: number, tap?: Record<string, unknown>): Promise<Record<string, unknown>> {
  ns.exec('ip', 'link', 'add', 'lgmva', 'type', 'veth', 'peer', 'name', 'lgmvb');
  ns.exec('ip', 'link', 'add', 'link', 'lgmva', 'name', 'lgbenchm0', 'index', String(macvtapIndex()), 'address', MACVTAP_TX_MAC, 'type', 'macvtap', 'mode', 'bridge');
  for (const l of ['lgmva', 'lgmvb']) ns.exec('ip', 'link', 'set', l, 'up');
  const s = await setup(ns, false, {}, undefined, undefined, 'lgbenchm0');
  const out: Record<string, unknown> = { io: s.backend.io };
  try {
    if (!s.backend.macvtap) throw new Error('the macvtap bench did not open a macvtap');
    const fd = s.backend.fds[0]!;
    const row = (k: string, lg: number, c: number, cu: number, extra: Record<string, unknown> = {}) => {
      const onTap = (tap?.[k] as { lgnet?: number } | undefined)?.lgnet;
      out[k] = { lgnet: lg, c, ratio: lg / c, cUring: cu, ratioUring: lg / cu, ...(onTap ? { onTap, ratioToTap: lg / onTap } : {}), ...extra };
      console.log(`macvtap ${k.slice(0, 2)} ${k.slice(2).padStart(4)} B: lgnet ${fmt(lg)}  C ${fmt(c)}  ratio ${(lg / c).toFixed(3)}  C io_uring ${fmt(cu)}  ratio ${(lg / cu).toFixed(3)}${onTap ? `  lgnet on a tap ${fmt(onTap)}, ratio ${(lg / onTap).toFixed(3)}` : ''}`);
    };
    for (const len of [64, 1514]) {
      harnessTx(s, len, 0.3); // warm up
      const lg = harnessTx(s, len, seconds);
      const c = runTapLoop(bin, fd, ['write', String(HDR), String(len), String(seconds)], seconds);
      const cu = runTapLoop(bin, fd, ['uwrite', String(HDR), String(len), String(seconds), String(BURST)], seconds);
      row(`tx${len}`, lg.fps, c.fps, cu.fps);
    }
    ns.exec('ip', 'link', 'set', 'lgbenchm0', 'address', MACVTAP_RX_MAC);
    const pkt = openPacketIn(ns, 'lgmvb');
    try {
      for (const len of [64, 1514]) {
        const lg = await withSender(bin, pkt, len, seconds, () => harnessRx(s, seconds));
        await s.dev.stopQueue(0); // the C reader takes the macvtap alone
        const c = await withSender(bin, pkt, len, seconds, () => runTapLoop(bin, fd, ['read', String(HDR), String(seconds)], seconds));
        const cu = await withSender(bin, pkt, len, seconds, () => runTapLoop(bin, fd, ['uread', String(HDR), String(seconds), String(BURST)], seconds));
        await s.dev.startQueue(0);
        row(`rx${len}`, lg.result.fps, c.result.fps, cu.result.fps, { offeredDuringLgnet: lg.offered, offeredDuringC: c.offered });
      }
    } finally {
      native.close(pkt);
    }
  } finally {
    await closeSetup(s);
    ns.exec('ip', 'link', 'del', 'lgmva');
  }
  return out;
}

/** Frames the in-process bench keeps between A's TX and B's RX. */
const IN_WINDOW = 128;

/** Guest A and B of the in-process bench. */
const IN_A = mac('02:00:00:00:00:0a');
const IN_B = mac('02:00:00:00:00:0b');

/** A device on `backend` with a harness guest, for the in-process bench. */
async function inProcessGuest(backend: Backend, m: Uint8Array) {
  const dev = new NetDevice({ backend, mac: m, maxQueueSize: QSIZE, burst: BURST, ...COALESCE });
  const ram = new GuestRam(64 << 20);
  const drv = new VirtioNetDriver(ram, { features: mask('VERSION_1', 'RING_EVENT_IDX', 'MAC') & dev.offered, queueSize: QSIZE });
  await drv.attach(dev);
  return { dev, ram, drv };
}

/**
 * Guest A sends `len`-byte frames to guest B through two devices of this process, on the pair
 * backend or on a two-port switch, for `seconds`: the harness keeps A's TX ring full and gives B's
 * RX buffers back as they complete, both from this thread. Returns what B received per second and
 * the CPU its RX worker and A's TX worker spent per frame.
 */
async function inProcessRun(kind: 'pair' | 'switch', len: number, seconds: number): Promise<{ fps: number; txNs: number; rxNs: number; dropped: number }> {
  const backends = kind === 'pair' ? (() => { const p = new PairBackend(); return [p.a, p.b]; })() : new SwitchBackend({ ports: 2 }).ports;
  const a = await inProcessGuest(backends[0]!, IN_A);
  const b = await inProcessGuest(backends[1]!, IN_B);
  try {
    // B speaks first, so that the switch knows where it is (the pair needs nothing).
    b.drv.send(ethernet(mac('ff:ff:ff:ff:ff:ff'), IN_B, 0x88b5, new Uint8Array(50)), { kick: true });
    await b.drv.drainTx();
    await a.drv.waitRx(1, { timeoutMs: 2000 });
    const frame = ethernet(IN_B, IN_A, 0x88b5, new Uint8Array(len - 14));
    // A window of frames in flight, below what B's buffers and the ring hold: neither backend drops
    // (both drop rather than hold the sender back), so what is measured is the path, not the drops.
    let inFlight = 0;
    const pump = (s: number): void => {
      const end = performance.now() + s * 1000;
      while (performance.now() < end) {
        let n = 0;
        while (inFlight + n < IN_WINDOW && a.drv.send(frame)) n++;
        if (n > 0) a.drv.flushTx();
        inFlight += n - b.drv.recycleRx();
      }
    };
    pump(0.3); // warm up
    const rx = () => b.dev.metrics().queues[0]!.frames;
    const drops = () => a.dev.metrics().queues[1]!.txDropBackend;
    const [f0, d0, tx0, rx0, t0] = [rx(), drops(), workerCpu('tx'), workerCpu('rx'), performance.now()];
    pump(seconds);
    const secs = (performance.now() - t0) / 1000;
    const frames = rx() - f0;
    return { fps: frames / secs, txNs: ((workerCpu('tx') - tx0) * 1e9) / frames, rxNs: ((workerCpu('rx') - rx0) * 1e9) / frames, dropped: drops() - d0 };
  } finally {
    for (const g of [a, b]) {
      await g.dev.close();
      g.drv.close();
      g.ram.close();
    }
  }
}

/**
 * Two devices of one process back to back (an embedding VMM's guests): the switch backend against the
 * pair backend, which copies frames the same way without a MAC table or a multi-producer ring, 64 and
 * 1514 B, in LGNET_BENCH_IO_ROUNDS alternating rounds on fresh devices (medians and the spread).
 */
async function benchInProcess(seconds: number, rounds = IO_ROUNDS): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const len of [64, 1514]) {
    const runs: Record<'pair' | 'switch', Array<{ fps: number; txNs: number; rxNs: number; dropped: number }>> = { pair: [], switch: [] };
    for (let r = 0; r < rounds; r++) for (const kind of ['pair', 'switch'] as const) runs[kind].push(await inProcessRun(kind, len, seconds));
    const med = (xs: number[]) => stat(xs).median;
    const ratios = runs.switch.map((s, i) => s.fps / runs.pair[i]!.fps);
    const row = {
      pair: med(runs.pair.map((x) => x.fps)), switch: med(runs.switch.map((x) => x.fps)),
      ratio: med(ratios), ratioMin: Math.min(...ratios), ratioMax: Math.max(...ratios),
      txNs: { pair: med(runs.pair.map((x) => x.txNs)), switch: med(runs.switch.map((x) => x.txNs)) },
      rxNs: { pair: med(runs.pair.map((x) => x.rxNs)), switch: med(runs.switch.map((x) => x.rxNs)) },
      dropped: { pair: runs.pair.reduce((n, x) => n + x.dropped, 0), switch: runs.switch.reduce((n, x) => n + x.dropped, 0) },
    };
    out[`a2b${len}`] = row;
    console.log(`in-process A → B ${String(len).padStart(4)} B: switch ${fmt(row.switch)}  pair ${fmt(row.pair)}  ratio ${row.ratio.toFixed(3)} (${row.ratioMin.toFixed(3)}–${row.ratioMax.toFixed(3)})  TX worker ${row.txNs.switch.toFixed(0)} vs ${row.txNs.pair.toFixed(0)} ns/frame, RX worker ${row.rxNs.switch.toFixed(0)} vs ${row.rxNs.pair.toFixed(0)}, dropped ${row.dropped.switch} vs ${row.dropped.pair}`);
  }
  return out;
}

/**
 * RX with MRG_RXBUF against plain RX: MRG_ROUNDS rounds, each measuring every case on a fresh plain
 * device and then on a fresh MRG_RXBUF device, twice: left to the scheduler ('free'), and pinned
 * (the device's workers and the harness on one CPU, the sender alone on another). Free, the RX worker
 * shares its CPU with the sender in some runs and not in others, which moves a rate by up to 2×
 * whatever the path; pinned, both paths run in the same placement, and the sender (which never
 * sleeps) cannot starve the harness of the CPU it needs to give buffers back. Reports each case's median
 * rates, the median and range of the per-round ratios, and the RX worker's CPU time per frame.
 */
async function benchMrg(ns: Netns, bin: string, seconds: number, rounds = MRG_ROUNDS, pinnedOnly = false): Promise<Record<string, unknown>> {
  const warmup = Math.min(WARMUP, seconds);
  const cases = [
    { name: 'rx64', len: 64, bufferSize: 2048 },
    { name: 'rx1514', len: 1514, bufferSize: 2048 },
    { name: 'rx1514x2', len: 1514, bufferSize: 1024 },
    { name: 'rx64lnx', len: 64, bufferSize: 1536, features: LINUX_RX },
  ];
  const plan = pinPlan();
  if (!plan) console.log('mrg: one CPU only, so no pinned case');
  const placements = plan ? (pinnedOnly ? (['pinned'] as const) : (['free', 'pinned'] as const)) : (['free'] as const);
  // series[placement][case][plain|mrg|plainCpu|mrgCpu]: rates (frames/s) and RX worker ns per frame.
  const series: Record<string, Record<string, Record<string, number[]>>> = {};
  const push = (pl: string, name: string, key: string, v: number): void => void (((series[pl] ??= {})[name] ??= {})[key] ??= []).push(v);
  for (let round = 0; round < rounds; round++) {
    for (const placement of placements) {
      const pin = placement === 'pinned' ? plan : null;
      for (const withMrg of [false, true]) {
        for (const c of cases) {
          // Plain RX needs a buffer that holds a whole frame: the small-buffer case compares against 2048.
          const rx = withMrg ? { mrg: true, bufferSize: c.bufferSize, features: c.features ?? 0n } : { bufferSize: 2048 };
          const s = await setup(ns, false, rx, undefined, pin ? [pin.worker] : undefined);
          try {
            const pkt = openPacketIn(ns, 'lgbench0'); // closed with the namespace
            // A fresh device is a fresh worker thread: warm its JIT up before measuring.
            const place = rxPlacement(pin);
            const r = await withSender(bin, pkt, c.len, warmup + seconds, () => onCpu(place.harness, () => {
              harnessRx(s, warmup);
              const c0 = workerCpu('rx');
              const rate = harnessRx(s, seconds);
              return { ...rate, cpuNs: ((workerCpu('rx') - c0) / rate.frames) * 1e9 };
            }), place.senderWrap);
            const k = withMrg ? 'mrg' : 'plain';
            push(placement, c.name, k, r.result.fps);
            push(placement, c.name, `${k}Cpu`, r.result.cpuNs);
          } finally {
            await closeSetup(s);
          }
        }
      }
    }
  }
  const summary = (x: Record<string, number[]>) => {
    const ratios = x['mrg']!.map((v, i) => v / x['plain']![i]!);
    // CPU: plain's ns per frame over MRG_RXBUF's, so that above 1.0 means MRG_RXBUF is cheaper, as for rates.
    const cpuRatios = x['mrgCpu']!.map((v, i) => x['plainCpu']![i]! / v);
    const r = stat(ratios);
    const cr = stat(cpuRatios);
    return {
      plain: x['plain']!, mrg: x['mrg']!, plainMedian: stat(x['plain']!).median, mrgMedian: stat(x['mrg']!).median,
      ratioMedian: r.median, ratioMin: r.min, ratioMax: r.max,
      plainCpuNs: x['plainCpu']!, mrgCpuNs: x['mrgCpu']!, cpuRatioMedian: cr.median, cpuRatioMin: cr.min, cpuRatioMax: cr.max,
    };
  };
  const out: Record<string, unknown> = { rounds, placement: plan ? { workerAndHarness: plan.worker, sender: plan.harness } : null };
  for (const c of cases) {
    const free = series['free'] ? summary(series['free'][c.name]!) : null;
    const pinned = series['pinned'] ? summary(series['pinned'][c.name]!) : null;
    out[c.name] = { bufferSize: c.bufferSize, ...(free ?? {}), ...(pinned ? { pinned } : {}) };
    for (const [label, x] of [['free', free], ['pinned', pinned]] as const) {
      if (!x) continue;
      console.log(`${c.name.padEnd(8)} MRG_RXBUF (${c.bufferSize} B buffers), ${label.padEnd(6)}: lgnet ${fmt(stat(x.mrg).median)}  plain ${fmt(stat(x.plain).median)}  ` +
        `ratio ${x.ratioMedian.toFixed(3)} (${x.ratioMin.toFixed(3)}–${x.ratioMax.toFixed(3)} over ${rounds} rounds); RX worker ${stat(x.mrgCpuNs).median.toFixed(0)} vs ${stat(x.plainCpuNs).median.toFixed(0)} ns per frame, ` +
        `plain/MRG ${x.cpuRatioMedian.toFixed(3)} (${x.cpuRatioMin.toFixed(3)}–${x.cpuRatioMax.toFixed(3)})`);
    }
  }
  return out;
}

/**
 * The placement of the io section's pinned case: lgnet's queue workers on the last CPU this process may
 * use (NetDeviceOptions.cpus), the harness (the main thread) on the first, and the C loops on the
 * workers' CPU (taskset). RX moves the harness to the workers' CPU and gives the first to the sender.
 * Null with fewer than two CPUs.
 */
function pinPlan(): { worker: number; harness: number; all: number[] } | null {
  const all = native.threadAffinity();
  return all.length >= 2 ? { worker: all[all.length - 1]!, harness: all[0]!, all } : null;
}

/**
 * Pinned RX (the mrg and io sections): the harness moves beside the workers, since it gives them
 * their buffers back, and the sender, which never sleeps, gets the plan's harness CPU to itself.
 */
function rxPlacement(plan: { worker: number; harness: number; all: number[] } | null): { harness: { harness: number; all: number[] } | null; senderWrap: string[] } {
  return plan ? { harness: { harness: plan.worker, all: plan.all }, senderWrap: ['taskset', '-c', String(plan.harness)] } : { harness: null, senderWrap: [] };
}

/** Runs `fn` with the main thread (the harness) on `cpu`, then gives it back every CPU it had. */
function onCpu<T>(plan: { harness: number; all: number[] } | null, fn: () => T): T {
  if (!plan) return fn();
  native.setThreadAffinity([plan.harness]);
  try {
    return fn();
  } finally {
    native.setThreadAffinity(plan.all);
  }
}

/**
 * lgnet on each tap I/O path against both C limits (per-frame syscalls, and io_uring bursts of BURST),
 * in IO_ROUNDS rounds, each on fresh devices. Ratios are taken within a round, then summarised. Each
 * lgnet run also records its queue worker's CPU per frame (`<path>WorkerNs`), which tells a slower
 * path from a worker that waited for the harness or the sender.
 */
async function benchIo(ns: Netns, bin: string, seconds: number): Promise<Record<string, unknown>> {
  const names = ['tx64', 'tx1514', 'rx64', 'rx1514'] as const;
  const series: Record<string, Record<string, number[]>> = {};
  const push = (name: string, key: string, v: number): void => void ((series[name] ??= {})[key] ??= []).push(v);
  const plan = pinPlan();
  if (!plan) console.log('io: one CPU only, so no pinned case');
  const paths = plan ? (['uring', 'syscall', 'pinned'] as const) : (['uring', 'syscall'] as const);
  for (let round = 0; round < IO_ROUNDS; round++) {
    for (const path of paths) {
      // 'pinned': io_uring, the workers on one CPU and the harness on another (pinPlan).
      const io = path === 'pinned' ? 'uring' : path;
      const pin = path === 'pinned' ? plan : null;
      const s = await setup(ns, false, {}, io, pin ? [pin.worker] : undefined);
      try {
        if (s.backend.io !== io) throw new Error(`asked for ${io}, got ${s.backend.io}`);
        const tapFd = s.backend.fds[0]!;
        const cWrap = pin ? ['taskset', '-c', String(pin.worker)] : [];
        for (const len of [64, 1514]) {
          onCpu(pin, () => harnessTx(s, len, WARMUP));
          const c0 = workerCpu('tx');
          const rate = onCpu(pin, () => harnessTx(s, len, seconds));
          push(`tx${len}`, path, rate.fps);
          // The TX worker's CPU per frame: what the path costs, whatever the harness's share of the CPUs.
          push(`tx${len}`, `${path}WorkerNs`, ((workerCpu('tx') - c0) / rate.frames) * 1e9);
          // The C loops once per round, on the tap of the syscall device (its TX ring is idle), and
          // pinned to the workers' CPU on the pinned one's.
          if (path !== 'uring') {
            const k = path === 'pinned' ? 'Pinned' : '';
            push(`tx${len}`, `cWritev${k}`, runTapLoop(bin, tapFd, ['write', String(HDR), String(len), String(seconds)], seconds, cWrap).fps);
            push(`tx${len}`, `cUring${k}`, runTapLoop(bin, tapFd, ['uwrite', String(HDR), String(len), String(seconds), String(BURST)], seconds, cWrap).fps);
            // The same loop fed as lgnet is: a thread on the harness's CPU posts the slots, this one
            // sends what is posted and gives them back (what the handoff alone costs C).
            if (pin) push(`tx${len}`, 'cUringFedPinned', runTapLoop(bin, tapFd, ['ufed', String(HDR), String(len), String(seconds), String(BURST), String(pin.harness), String(pin.worker)], seconds).fps);
          }
        }
        const pkt = openPacketIn(ns, 'lgbench0');
        // Pinned, the sender has a CPU to itself, and the reader the other: the C loop alone, or lgnet's
        // worker with the harness that gives it buffers back. (Beside the sender, which never sleeps,
        // the harness waited for the CPU and the worker for buffers: pinned RX read 0.47 of C.)
        const { harness: rxPin, senderWrap } = rxPlacement(pin);
        for (const len of [64, 1514]) {
          const m0 = s.dev.metrics().queues[0]!;
          const lg = await withSender(bin, pkt, len, WARMUP + seconds, () => onCpu(rxPin, () => {
            harnessRx(s, WARMUP);
            const c0 = workerCpu('rx');
            const rate = harnessRx(s, seconds);
            return { ...rate, workerNs: ((workerCpu('rx') - c0) / rate.frames) * 1e9 };
          }), senderWrap);
          push(`rx${len}`, path, lg.result.fps);
          push(`rx${len}`, `${path}WorkerNs`, lg.result.workerNs);
          const m1 = s.dev.metrics().queues[0]!;
          const frames = m1.frames - m0.frames;
          // Per frame: bursts, sleeps and guest-buffer shortages, to tell a slow path from a starved one.
          push(`rx${len}`, `${path}BurstsPerFrame`, (m1.bursts - m0.bursts) / frames);
          push(`rx${len}`, `${path}SleepsPerFrame`, (m1.sleeps - m0.sleeps) / frames);
          push(`rx${len}`, `${path}NoBuffersPerFrame`, (m1.rxNoBuffers - m0.rxNoBuffers) / frames);
          push(`rx${len}`, `${path}Offered`, lg.offered);
          if (path !== 'uring') {
            await s.dev.stopQueue(0); // the C reader takes the tap alone
            const k = path === 'pinned' ? 'Pinned' : '';
            for (const [key, mode] of [[`cReadv${k}`, 'read'], [`cUring${k}`, 'uread']] as const) {
              const c = await withSender(bin, pkt, len, seconds, () => runTapLoop(bin, tapFd, [mode, String(HDR), String(seconds), ...(mode === 'uread' ? [String(BURST)] : [])], seconds, cWrap), senderWrap);
              push(`rx${len}`, key, c.result.fps);
            }
            await s.dev.startQueue(0);
          }
        }
      } finally {
        await closeSetup(s);
      }
    }
  }
  // What one system call costs here decides how much a path with fewer of them gains.
  const nullsys = [0, 1, 2].map(() => (JSON.parse(runTapLoopRaw(bin, -1, ['nullsys', '1000000'], 5)) as { nsPerCall: number }).nsPerCall);
  const out: Record<string, unknown> = { rounds: IO_ROUNDS, syscallNs: nullsys };
  console.log(`a system call (getppid) costs ${stat(nullsys).median.toFixed(0)} ns here (${nullsys.map((v) => v.toFixed(0)).join(', ')})`);
  const spread = (xs: number[]): string => {
    const st = stat(xs);
    return `${st.median.toFixed(3)} (${st.min.toFixed(3)}–${st.max.toFixed(3)})`;
  };
  for (const name of names) {
    const x = series[name]!;
    const perFrame = x['cWritev'] ?? x['cReadv']!;
    const ratio = (a: number[], b: number[]): number[] => a.map((v, i) => v / b[i]!);
    const r = {
      uringVsCPerFrame: ratio(x['uring']!, perFrame),
      uringVsCUring: ratio(x['uring']!, x['cUring']!),
      syscallVsCPerFrame: ratio(x['syscall']!, perFrame),
      uringVsSyscall: ratio(x['uring']!, x['syscall']!),
      ...(x['pinned'] ? { pinnedVsCUringPinned: ratio(x['pinned'], x['cUringPinned']!), pinnedVsUring: ratio(x['pinned'], x['uring']!) } : {}),
      ...(x['cUringFedPinned'] ? { pinnedVsCUringFed: ratio(x['pinned']!, x['cUringFedPinned']), cUringFedVsCUring: ratio(x['cUringFedPinned'], x['cUringPinned']!) } : {}),
    };
    out[name] = { ...x, medians: Object.fromEntries(Object.entries(x).map(([k, v]) => [k, stat(v).median])), ratios: r };
    console.log(`${name.padEnd(7)} lgnet uring ${fmt(stat(x['uring']!).median)}  lgnet syscall ${fmt(stat(x['syscall']!).median)}  ` +
      `C per-frame ${fmt(stat(perFrame).median)}  C io_uring ${fmt(stat(x['cUring']!).median)}`);
    console.log(`${''.padEnd(7)} ratios, median (min–max over ${IO_ROUNDS} rounds): uring/C per-frame ${spread(r.uringVsCPerFrame)}  ` +
      `uring/C io_uring ${spread(r.uringVsCUring)}  syscall/C per-frame ${spread(r.syscallVsCPerFrame)}  uring/syscall ${spread(r.uringVsSyscall)}`);
    if (r.pinnedVsCUringPinned) {
      const where = name.startsWith('rx') ? `workers and harness on CPU ${plan!.worker}, sender on ${plan!.harness}` : `workers on CPU ${plan!.worker}, harness on ${plan!.harness}`;
      console.log(`${''.padEnd(7)} pinned (${where}, C loops on ${plan!.worker}): lgnet uring ${fmt(stat(x['pinned']!).median)}  ` +
        `C io_uring ${fmt(stat(x['cUringPinned']!).median)}  ratio ${spread(r.pinnedVsCUringPinned)}  pinned/unpinned lgnet ${spread(r.pinnedVsUring!)}`);
      // The C writer never waits (a tap write does not block), so its time per frame is its CPU per
      // frame; the C reader sleeps when the sender falls behind, so only lgnet's side is told for RX.
      const worker = `lgnet's ${name.slice(0, 2).toUpperCase()} worker ${stat(x['pinnedWorkerNs']!).median.toFixed(0)} ns`;
      console.log(`${''.padEnd(7)} pinned, CPU per frame: ${worker}` + (name.startsWith('tx') ? `  C io_uring loop ${(1e9 / stat(x['cUringPinned']!).median).toFixed(0)} ns` : ''));
      if (r.pinnedVsCUringFed) {
        console.log(`${''.padEnd(7)} C io_uring fed from CPU ${plan!.harness} (slots posted as the harness posts them) ${fmt(stat(x['cUringFedPinned']!).median)}: ` +
          `fed/unfed C ${spread(r.cUringFedVsCUring!)}  lgnet pinned/fed C ${spread(r.pinnedVsCUringFed)}`);
      }
    }
  }
  return out;
}

const PINGS = Number(process.env['LGNET_BENCH_PINGS'] ?? 500);
const PING_GAP_US = Number(process.env['LGNET_BENCH_PING_GAP_US'] ?? 2000);

/** Echoes traced hop by hop, per spacing. */
const TRACED_PINGS = 100;

/**
 * Runs `echoes` under ftrace (scheduler and read/write system calls of this process's threads) and
 * cuts each echo into its hops: the harness's kick (a write to `kickFd`) → TX worker → tap write (the
 * namespace's kernel answers inside it) → RX worker → tap read → call eventfd → the harness reads it.
 * A tap write or read is the system call that moves the frame: writev/readv, or io_uring_enter on the
 * io_uring path.
 * Without tracefs (not root) it says why and returns no hops.
 */
async function traceEchoes(kickFd: number, callFd: number, echoes: () => Promise<void>): Promise<{ n: number; hops: Record<string, { median: number; p90: number }>; skipped?: string }> {
  try {
    tracefs();
    traceSetup([process.pid]);
  } catch (e) {
    const why = `no ftrace here (${(e as Error).message})`;
    console.log(`  ping trace skipped: ${why}`);
    return { n: 0, hops: {}, skipped: why };
  }
  let text = '';
  try {
    put('tracing_on', '1');
    await echoes();
  } finally {
    text = traceOff();
  }
  if (process.env['LGNET_BENCH_TRACE_RAW']) writeFileSync(process.env['LGNET_BENCH_TRACE_RAW'], text);
  const evs = parse(text);
  const me = process.pid;
  const kickArg = new RegExp(`^fd: (0x)?0*${kickFd.toString(16)},`); // hex, with 0x on newer kernels
  const callArg = new RegExp(`^fd: (0x)?0*${callFd.toString(16)},`);
  const isKick = (e: Ev) => e.tid === me && kickArg.test(e.args);
  const hops: Hops[] = [];
  evs.forEach((e, i) => {
    if (!isTapWrite(e)) return;
    const w = workerHops(evs, i, isKick);
    const back = w ? next(evs, w.call, (x) => x.tid === me && x.name === 'sys_read' && callArg.test(x.args)) : -1;
    if (!w || back < 0) return;
    const t = (k: number) => evs[k]!.ts;
    hops.push({
      'kick → TX worker runs': t(w.run) - t(w.kick),
      'TX worker → tap write': e.ts - t(w.run),
      'tap write → RX worker runs': t(w.rxRun) - e.ts,
      'RX worker → tap read': t(w.readv) - t(w.rxRun),
      'tap read → call eventfd': t(w.call) - t(w.readv),
      'call eventfd → harness reads it': t(back) - t(w.call),
      'kick → harness reads the call (total)': t(back) - t(w.kick),
    });
  });
  // Medians and p90: a hop's maximum can pair events of two echoes (a timer wake-up in between).
  const hopStats: Record<string, { median: number; p90: number }> = {};
  for (const k of hops.length ? Object.keys(hops[0]!) : []) {
    const r = rttStat(hops.map((h) => h[k]!));
    hopStats[k] = { median: r.p50, p90: r.p90 };
  }
  return { n: hops.length, hops: hopStats };
}

/** Summary of round trips in µs (failed ones, < 0, are counted apart). */
function rttStat(rtt: number[]): { n: number; lost: number; min: number; p50: number; avg: number; p90: number; p99: number; max: number } {
  const ok = rtt.filter((x) => x >= 0).sort((a, b) => a - b);
  const q = (f: number) => ok[Math.min(ok.length - 1, Math.floor(f * ok.length))] ?? NaN;
  return { n: ok.length, lost: rtt.length - ok.length, min: ok[0] ?? NaN, p50: q(0.5), avg: ok.reduce((a, b) => a + b, 0) / (ok.length || 1), p90: q(0.9), p99: q(0.99), max: ok[ok.length - 1] ?? NaN };
}

/**
 * One echo at a time through lgnet, against the C floor on the same tap (see the header). The
 * namespace's kernel answers: the tap gets 10.99.0.1/24 and a permanent neighbour entry for the
 * "guest" (10.99.0.2 at the device's MAC), so no ARP is involved.
 */
/**
 * A device set up for echoes as a Linux guest's (MRG_RXBUF, 1536-byte buffers, TSO), the namespace's
 * kernel at 10.99.0.1 answering; `once()` sends one echo and returns its round trip in µs (-1: lost).
 * `cpus`: NetDeviceOptions.cpus.
 */
async function pingSetup(ns: Netns, cpus?: number[]) {
  const features = mask('CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'HOST_TSO4', 'HOST_TSO6');
  const s = await setup(ns, false, { mrg: true, bufferSize: 1536, features }, undefined, cpus);
  ns.exec('ip', 'addr', 'replace', '10.99.0.1/24', 'dev', 'lgbench0');
  ns.exec('ip', 'neigh', 'replace', '10.99.0.2', 'lladdr', '52:54:00:00:00:01', 'dev', 'lgbench0', 'nud', 'permanent');
  const tapMac = mac(ns.exec('cat', '/sys/class/net/lgbench0/address').trim());
  const frame = icmpEchoRequest({ srcMac: mac('52:54:00:00:00:01'), dstMac: tapMac, srcIp: ip4('10.99.0.2'), dstIp: ip4('10.99.0.1') });
  const rx = s.drv.rx[0]!;
  const callFds = Int32Array.of(rx.callFd);
  const once = (): number => {
    const t0 = performance.now();
    if (!s.drv.send(frame)) return -1;
    const deadline = t0 + 1000;
    for (;;) {
      if (s.drv.receive().some((f) => isIcmpEchoReply(f.frame))) break;
      if (performance.now() > deadline) return -1;
      if (native.poll(callFds, 100)) native.eventfdRead(rx.callFd);
    }
    const rtt = (performance.now() - t0) * 1000;
    s.drv.reclaimTx();
    return rtt;
  };
  return { s, frame, once };
}

const pause = (us: number) => (us > 0 ? new Promise((r) => setTimeout(r, us / 1000)) : Promise.resolve());

/**
 * lgnet's echo with its queue pair's two workers pinned to one CPU (NetDeviceOptions.cpus: the last
 * CPU this process may use), against the same unpinned, in alternating rounds on fresh devices.
 */
async function benchPingPinned(ns: Netns, pings: number, rounds: number): Promise<Record<string, unknown>> {
  const allowed = native.threadAffinity();
  const cpu = allowed[allowed.length - 1]!;
  const per = Math.max(1, Math.floor(pings / rounds));
  const free: number[] = [];
  const pinned: number[] = [];
  const p50s: Array<{ free: number; pinned: number }> = [];
  for (let r = 0; r < rounds; r++) {
    const got: Record<string, number[]> = {};
    for (const [k, cpus] of [['free', undefined], ['pinned', [cpu]]] as const) {
      const p = await pingSetup(ns, cpus ? [...cpus] : undefined);
      try {
        for (let i = 0; i < 10; i++) p.once(); // warm up
        const rtt: number[] = [];
        for (let i = 0; i < per; i++) {
          rtt.push(p.once());
          await pause(PING_GAP_US);
        }
        got[k] = rtt;
      } finally {
        await closeSetup(p.s);
      }
    }
    free.push(...got['free']!);
    pinned.push(...got['pinned']!);
    p50s.push({ free: rttStat(got['free']!).p50, pinned: rttStat(got['pinned']!).p50 });
  }
  const a = rttStat(free);
  const b = rttStat(pinned);
  const ratios = p50s.map((x) => x.pinned / x.free);
  console.log(`ping, the pair's workers pinned to CPU ${cpu} against not pinned (${rounds} rounds of ${per}): p50 ${b.p50.toFixed(0)} vs ${a.p50.toFixed(0)} µs, avg ${b.avg.toFixed(0)} vs ${a.avg.toFixed(0)}, p99 ${b.p99.toFixed(0)} vs ${a.p99.toFixed(0)}; p50 ratio per round ${ratios.map((x) => x.toFixed(2)).join(', ')}`);
  return { cpu, rounds, perRound: per, free: a, pinned: b, p50Rounds: p50s, p50Ratio: b.p50 / a.p50, avgRatio: b.avg / a.avg };
}

/**
 * The echo's sizes: `pings` spaced echoes (PINGS in a full run), the spaced-wider series scaled by
 * pings / PINGS, and the pinned comparison in `pinnedRounds` rounds.
 */
interface PingPlan { pings: number; pinnedRounds: number }

async function benchPing(ns: Netns, bin: string, plan: PingPlan): Promise<Record<string, unknown>> {
  const result = await benchPingFree(ns, bin, plan.pings);
  return { ...result, pinned: await benchPingPinned(ns, plan.pings, plan.pinnedRounds) };
}

/** The echo through an unpinned device, traced, against the C floor and the C wake-up chains. */
async function benchPingFree(ns: Netns, bin: string, pings: number): Promise<Record<string, unknown>> {
  const { s, frame, once } = await pingSetup(ns);
  try {
    const rx = s.drv.rx[0]!;
    const lg: number[] = [];
    for (let i = 0; i < pings; i++) {
      lg.push(once());
      await pause(PING_GAP_US);
    }
    // The same echoes under ftrace, hop by hop: spaced as above (every echo finds lgnet asleep) and
    // back to back (the threads' code and data still in cache).
    const trace: Record<string, unknown> = {};
    for (const gapUs of [PING_GAP_US, 0]) {
      trace[`gap${gapUs}`] = await traceEchoes(s.drv.tx[0]!.kickFd, rx.callFd, async () => {
        for (let i = 0; i < Math.min(TRACED_PINGS, pings); i++) {
          once();
          await pause(gapUs);
        }
      });
    }
    // The longer the workers sleep, the longer their next pass takes (docs/PERFORMANCE.md, session 13):
    // echoes spaced wider, with the workers' CPU per time they are scheduled, beside C threads passing
    // a token through 4 eventfd wake-ups (as many as a guest's echo on lgnet) at the same spacing.
    const bySpacing: Record<string, { echoes: number; lgnet: ReturnType<typeof rttStat>; workerRunUsPerWake: number; workerWaitUsPerWake: number; cFourWakeUps: ReturnType<typeof rttStat> }> = {};
    const scale = pings / PINGS;
    for (const [gapUs, full] of [[2000, 200], [10_000, 100], [50_000, 40]] as const) {
      const n = Math.max(5, Math.round(full * scale));
      const s0 = threadSchedstat(process.pid, 'lgnet-');
      const rtt: number[] = [];
      for (let i = 0; i < n; i++) {
        rtt.push(once());
        await pause(gapUs);
      }
      const s1 = threadSchedstat(process.pid, 'lgnet-');
      const slices = s1.slices - s0.slices;
      const w = JSON.parse(runTapLoopRaw(bin, -1, ['wake', '3', String(n), String(gapUs)], n * (gapUs / 1e6 + 0.01) + 10)) as { rtt: number[] };
      bySpacing[`gap${gapUs}`] = {
        echoes: n,
        lgnet: rttStat(rtt),
        workerRunUsPerWake: (s1.runNs - s0.runNs) / 1000 / slices,
        workerWaitUsPerWake: (s1.waitNs - s0.waitNs) / 1000 / slices,
        cFourWakeUps: rttStat(w.rtt),
      };
    }
    await s.dev.stopQueue(0); // the C loop reads the replies itself
    const hex = Buffer.from(frame).toString('hex');
    const c = JSON.parse(runTapLoopRaw(bin, s.backend.fds[0]!, ['ping', String(HDR), hex, String(pings), String(PING_GAP_US)], pings * (PING_GAP_US / 1e6 + 0.01) + 10)) as { rtt: number[] };
    await s.dev.startQueue(0);
    const a = rttStat(lg);
    const b = rttStat(c.rtt);
    // What the thread wake-ups alone cost here: QEMU's own virtio-net answers a guest's echo with 2
    // (vCPU → main loop → vCPU), lgnet's TX and RX workers make it 4 (3 in this harness, whose
    // "guest" is one thread).
    const wake: Record<string, ReturnType<typeof rttStat>> = {};
    const tokens = Math.min(pings, 300);
    for (const hops of [1, 2, 3]) {
      const w = JSON.parse(runTapLoopRaw(bin, -1, ['wake', String(hops), String(tokens), String(PING_GAP_US)], tokens * (PING_GAP_US / 1e6 + 0.01) + 10)) as { rtt: number[] };
      wake[`${hops + 1} wake-ups`] = rttStat(w.rtt);
    }
    const m = s.dev.metrics().queues;
    console.log(`ping (µs): lgnet min ${a.min.toFixed(0)} p50 ${a.p50.toFixed(0)} avg ${a.avg.toFixed(0)} p99 ${a.p99.toFixed(0)} (lost ${a.lost})  C floor min ${b.min.toFixed(0)} p50 ${b.p50.toFixed(0)} avg ${b.avg.toFixed(0)} p99 ${b.p99.toFixed(0)}  lgnet − C: p50 +${(a.p50 - b.p50).toFixed(0)} µs`);
    console.log(`  C threads passing a token through eventfds (µs): ${Object.entries(wake).map(([k, v]) => `${k} p50 ${v.p50.toFixed(0)} p90 ${v.p90.toFixed(0)}`).join(', ')}`);
    console.log(`  rx: interrupts ${m[0]!.interrupts} held ${m[0]!.interruptsHeld} sleeps ${m[0]!.sleeps}; tx: interrupts ${m[1]!.interrupts} held ${m[1]!.interruptsHeld} sleeps ${m[1]!.sleeps}`);
    console.log(`  by spacing (µs): ${Object.entries(bySpacing).map(([k, x]) =>
      `${Number(k.slice(3)) / 1000} ms apart p50 ${x.lgnet.p50.toFixed(0)}, workers' CPU per wake-up ${x.workerRunUsPerWake.toFixed(0)}, C 4 wake-ups p50 ${x.cFourWakeUps.p50.toFixed(0)}`).join('; ')}`);
    for (const [k, v] of Object.entries(trace)) {
      const t = v as { n: number; hops: Record<string, { median: number }> };
      console.log(`  traced, ${k === 'gap0' ? 'back to back' : `${PING_GAP_US} µs apart`} (${t.n} echoes, median µs): ${Object.entries(t.hops).map(([h, x]) => `${h} ${x.median.toFixed(0)}`).join(', ')}`);
    }
    return { pings, gapUs: PING_GAP_US, lgnet: a, c: b, extraP50Us: a.p50 - b.p50, extraAvgUs: a.avg - b.avg, wake, trace, bySpacing, rx: { interrupts: m[0]!.interrupts, held: m[0]!.interruptsHeld, sleeps: m[0]!.sleeps }, tx: { interrupts: m[1]!.interrupts, held: m[1]!.interruptsHeld, sleeps: m[1]!.sleeps } };
  } finally {
    await closeSetup(s);
  }
}

/**
 * Runs the device benchmark; returns the results object (also used by the full bench suite).
 * `mrgRounds`: rounds of the MRG_RXBUF comparison (default LGNET_BENCH_MRG_ROUNDS, 3). `quick` (the
 * smoke test): a fifth of the echoes, one pinned-echo round, and MRG_RXBUF in the pinned placement
 * only, so that every step still runs.
 */
export async function benchDevice(opts: { seconds?: number; mrgRounds?: number; quick?: boolean } = {}): Promise<Record<string, unknown>> {
  const seconds = opts.seconds ?? SECONDS;
  const pingPlan: PingPlan = opts.quick ? { pings: Math.max(20, Math.round(PINGS / 5)), pinnedRounds: 1 } : { pings: PINGS, pinnedRounds: 3 };
  // Compiled into the temporary directory, not .cache/, which a worktree may share with another
  // checkout whose bench may be running its own tap-loop at the time.
  const bin = buildTapLoop(join(tmpdir(), `lgnet-tap-loop-${process.pid}`));
  const results: Record<string, unknown> = {
    date: new Date().toISOString(), node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model,
    seconds, busyPoll: BUSY_POLL, coalesce: process.env['LGNET_BENCH_COALESCE'] ?? 'default', queueSize: QSIZE, loadavg: loadavg(),
  };
  const ns = createNetns('lgnet-bdev');
  let s: Awaited<ReturnType<typeof setup>> | undefined;
  try {
    if (ONLY === 'mrg') {
      results['mrg'] = await benchMrg(ns, bin, seconds, opts.mrgRounds, opts.quick);
      return results;
    }
    if (ONLY === 'ping') {
      results['ping'] = await benchPing(ns, bin, pingPlan);
      return results;
    }
    if (ONLY === 'io') {
      results['io'] = await benchIo(ns, bin, seconds);
      return results;
    }
    if (ONLY === 'macvtap') {
      results['macvtap'] = await benchMacvtap(ns, bin, seconds);
      return results;
    }
    if (ONLY === 'switch') {
      results['inProcess'] = await benchInProcess(seconds);
      return results;
    }
    s = await setup(ns);
    results['io-path'] = { io: s.backend.io, why: s.backend.ioReason };
    console.log(`tap I/O: ${s.backend.io} (${s.backend.ioReason})`);
    const tapFd = s.backend.fds[0]!;
    for (const len of [64, 1514]) {
      harnessTx(s, len, 0.3); // warm up
      const lg = harnessTx(s, len, seconds);
      const c = runTapLoop(bin, tapFd, ['write', String(HDR), String(len), String(seconds)], seconds);
      const cu = runTapLoop(bin, tapFd, ['uwrite', String(HDR), String(len), String(seconds), String(BURST)], seconds);
      const m = s.dev.metrics().queues[1]!;
      results[`tx${len}`] = { lgnet: lg.fps, c: c.fps, ratio: lg.fps / c.fps, cUring: cu.fps, ratioUring: lg.fps / cu.fps, interruptsPerFrame: m.interrupts / m.frames };
      console.log(`tx ${String(len).padStart(4)} B: lgnet ${fmt(lg.fps)}  C writev ${fmt(c.fps)}  ratio ${(lg.fps / c.fps).toFixed(3)}  C io_uring ${fmt(cu.fps)}  ratio ${(lg.fps / cu.fps).toFixed(3)}`);
    }
    const pkt = openPacketIn(ns, 'lgbench0');
    for (const len of [64, 1514]) {
      const lg = await withSender(bin, pkt, len, seconds, () => harnessRx(s!, seconds));
      await s.dev.stopQueue(0); // the C reader takes the tap alone
      const c = await withSender(bin, pkt, len, seconds, () => runTapLoop(bin, tapFd, ['read', String(HDR), String(seconds)], seconds));
      const cu = await withSender(bin, pkt, len, seconds, () => runTapLoop(bin, tapFd, ['uread', String(HDR), String(seconds), String(BURST)], seconds));
      await s.dev.startQueue(0);
      const ratio = lg.result.fps / c.result.fps;
      const ratioUring = lg.result.fps / cu.result.fps;
      results[`rx${len}`] = { lgnet: lg.result.fps, c: c.result.fps, ratio, cUring: cu.result.fps, ratioUring, offeredDuringLgnet: lg.offered, offeredDuringC: c.offered };
      console.log(`rx ${String(len).padStart(4)} B: lgnet ${fmt(lg.result.fps)}  C readv ${fmt(c.result.fps)}  ratio ${ratio.toFixed(3)}  C io_uring ${fmt(cu.result.fps)}  ratio ${ratioUring.toFixed(3)}  (sender offered ${fmt(lg.offered)} / ${fmt(c.offered)})`);
    }
    // The same lgnet measurements with dirty logging on (live migration), against the ones above.
    const log = await s.dev.startDirtyLog();
    const logging: Record<string, unknown> = {};
    for (const len of [64, 1514]) {
      const on = harnessTx(s, len, seconds);
      const off = (results[`tx${len}`] as { lgnet: number }).lgnet;
      logging[`tx${len}`] = { off, on: on.fps, ratio: on.fps / off };
      console.log(`tx ${String(len).padStart(4)} B, dirty log on: lgnet ${fmt(on.fps)}  ratio to logging off ${(on.fps / off).toFixed(3)}`);
    }
    for (const len of [64, 1514]) {
      const on = await withSender(bin, pkt, len, seconds, () => harnessRx(s!, seconds));
      const off = (results[`rx${len}`] as { lgnet: number }).lgnet;
      logging[`rx${len}`] = { off, on: on.result.fps, ratio: on.result.fps / off, dirtyPages: log.collect().length };
      console.log(`rx ${String(len).padStart(4)} B, dirty log on: lgnet ${fmt(on.result.fps)}  ratio to logging off ${(on.result.fps / off).toFixed(3)}`);
    }
    await s.dev.stopDirtyLog();
    results['dirtyLog'] = logging;
    const q = s.dev.metrics().queues;
    results['metrics'] = { rx: q[0], tx: q[1] };
    await closeSetup(s);
    s = undefined;

    // The same lgnet measurements on packed rings, against the split figures above.
    s = await setup(ns, true);
    if (s.drv.format !== 'packed') throw new Error('the packed bench did not negotiate packed rings');
    const packed: Record<string, unknown> = {};
    const pkt2 = openPacketIn(ns, 'lgbench0');
    for (const len of [64, 1514]) {
      harnessTx(s, len, 0.3);
      const p = harnessTx(s, len, seconds);
      const split = (results[`tx${len}`] as { lgnet: number }).lgnet;
      packed[`tx${len}`] = { split, packed: p.fps, ratio: p.fps / split };
      console.log(`tx ${String(len).padStart(4)} B, packed ring: lgnet ${fmt(p.fps)}  ratio to split ${(p.fps / split).toFixed(3)}`);
    }
    for (const len of [64, 1514]) {
      const p = await withSender(bin, pkt2, len, seconds, () => harnessRx(s!, seconds));
      const split = (results[`rx${len}`] as { lgnet: number }).lgnet;
      packed[`rx${len}`] = { split, packed: p.result.fps, ratio: p.result.fps / split };
      console.log(`rx ${String(len).padStart(4)} B, packed ring: lgnet ${fmt(p.result.fps)}  ratio to split ${(p.result.fps / split).toFixed(3)}`);
    }
    results['packed'] = packed;
    await closeSetup(s);
    s = undefined;

    results['macvtap'] = await benchMacvtap(ns, bin, seconds, results);
    results['inProcess'] = await benchInProcess(seconds, opts.quick ? 1 : IO_ROUNDS);

    results['ping'] = await benchPing(ns, bin, pingPlan);
    results['mrg'] = await benchMrg(ns, bin, seconds, opts.mrgRounds, opts.quick);
    // Both paths in rounds: skipped in smoke-sized runs (under a second per measurement).
    if (seconds >= 1) results['io'] = await benchIo(ns, bin, seconds);
  } finally {
    if (s) await closeSetup(s);
    ns.destroy();
  }
  return results;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const results = await benchDevice();
  const outDir = join(ROOT, 'bench/results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'device.json'), JSON.stringify(results, null, 2) + '\n');
  console.log(`wrote ${join(outDir, 'device.json')}`);
}
