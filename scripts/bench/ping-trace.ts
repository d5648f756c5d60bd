/**
 * Where a guest's ping round trip goes: `npx tsx scripts/bench/ping-trace.ts [--pings 30] [--rounds 2]`.
 *
 * Boots the test guest on lgnet (vhost-user) and on QEMU's own virtio-net (tap, vhost=off), alternating,
 * and has it ping the host every 0.2 s. While the pings run, ftrace records the scheduler (sched_switch,
 * sched_wakeup) and the read/write system calls of lgnet's and QEMU's threads. Each round trip is then
 * cut into hops, from the vCPU's kick to the vCPU's wake-up for the reply:
 *
 *   lgnet:  kick (vCPU write to the ioeventfd) → TX worker runs → tap write → RX worker runs
 *           → tap read → call eventfd written → QEMU's main loop runs → vCPU woken
 *           (a tap write or read is writev/readv, or io_uring_enter on the io_uring path)
 *   QEMU:   kick → main loop runs → writev to the tap → main loop reads the reply → vCPU woken
 *
 * LGNET_PING_TRACE_QEMU_CPU=N pins every QEMU thread to CPU N once the pings run; with
 * LGNET_BENCH_SERVE_ARGS='--worker-cpus M' lgnet's workers run on another CPU than the vCPU.
 *
 * Prints, per hop, the median and spread in µs, and the guest's own ping figures; writes
 * bench/results/ping-trace.json. Needs root (tracefs); leaves tracing off and empty afterwards.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, ensureGuestImage } from '../qemu.ts';
import { createTapNamespace } from '../netns.ts';
import { startLgnet } from './lgnet-process.ts';
import { writeResult, type Stat } from './common.ts';
import { isTapWrite, next, parse, prev, put, summarise, switchTo, traceOff, traceSetup, tracefs, wakeOf, workerHops, type Ev, type Hops } from './ftrace.ts';

const HOST = '10.0.2.1';
const GUEST = '10.0.2.2';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

/** QEMU names no threads without -name debug-threads=on: the TCG vCPU is the thread with the most CPU time. */
function busiestThread(pid: number): number {
  let best = -1;
  let most = -1;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    const f = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const cpu = Number(f[11]) + Number(f[12]);
    if (cpu > most) {
      most = cpu;
      best = Number(t);
    }
  }
  return best;
}
const vcpuUp = (tid: number) => (e: Ev) => wakeOf(tid)(e) || switchTo((_c, pid) => pid === tid)(e);

/** lgnet's hops, one set per TX writev of a ping (request) answered by an RX readv. */
function lgnetHops(evs: Ev[], qemuPid: number, vcpuTid: number): Hops[] {
  const isVcpu = (e: Ev) => e.tid === vcpuTid;
  const out: Hops[] = [];
  evs.forEach((e, i) => {
    if (!isTapWrite(e)) return;
    const w = workerHops(evs, i, isVcpu);
    const main = w ? next(evs, w.call, switchTo((_c, pid) => pid === qemuPid)) : -1;
    const vcpu = main >= 0 ? next(evs, main, vcpuUp(vcpuTid)) : -1;
    if (!w || vcpu < 0) return;
    const { kick, run, rxRun, readv, call } = w;
    const t = (k: number) => evs[k]!.ts;
    out.push({
      'kick → TX worker runs': t(run) - t(kick),
      'TX worker → tap write': e.ts - t(run),
      'tap write → RX worker runs (host stack, reply)': t(rxRun) - e.ts,
      'RX worker → tap read': t(readv) - t(rxRun),
      'tap read → call eventfd': t(call) - t(readv),
      'call eventfd → QEMU main loop runs': t(main) - t(call),
      'main loop → vCPU woken': t(vcpu) - t(main),
      'kick → vCPU woken (total)': t(vcpu) - t(kick),
    });
  });
  return out;
}

/** QEMU's own virtio-net: the main loop does both directions. */
function qemuHops(evs: Ev[], qemuPid: number, vcpuTid: number): Hops[] {
  const isVcpu = (e: Ev) => e.tid === vcpuTid;
  const out: Hops[] = [];
  evs.forEach((e, i) => {
    if (!(e.tid === qemuPid && e.name === 'sys_writev')) return;
    const run = prev(evs, i, switchTo((_c, pid) => pid === qemuPid));
    const kick = run >= 0 ? prev(evs, run, (x) => isVcpu(x) && x.name === 'sys_write') : -1;
    // The reply is the main loop's next read of the fd it wrote (the tap). The host answers inside the
    // writev, so the main loop often reads it without sleeping in between: then `back` is the writev.
    const fd = /^fd: (\w+)/.exec(e.args)?.[1];
    const onTap = (x: Ev) => x.tid === qemuPid && (x.name === 'sys_read' || x.name === 'sys_readv') && /^fd: (\w+)/.exec(x.args)?.[1] === fd;
    const read = fd !== undefined ? next(evs, i + 1, onTap) : -1;
    const slept = read >= 0 ? prev(evs, read, switchTo((_c, pid) => pid === qemuPid)) : -1;
    const back = slept > i ? slept : i;
    const vcpu = read >= 0 ? next(evs, read, vcpuUp(vcpuTid)) : -1;
    if ([run, kick, read, vcpu].some((x) => x < 0)) return;
    const t = (k: number) => evs[k]!.ts;
    out.push({
      'kick → main loop runs': t(run) - t(kick),
      'main loop → writev': e.ts - t(run),
      'writev → main loop runs again (host stack, reply)': t(back) - e.ts,
      'main loop → read': t(read) - t(back),
      'read → vCPU woken': t(vcpu) - t(read),
      'kick → vCPU woken (total)': t(vcpu) - t(kick),
    });
  });
  return out;
}

async function runOne(kind: 'lgnet' | 'qemu', pings: number): Promise<{ hops: Record<string, Stat>; n: number; ping: string }> {
  const net = createTapNamespace({ hostCidr: `${HOST}/24` });
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-ptrace-'));
  const socket = join(dir, 'lgnet.sock');
  const lg = kind === 'lgnet' ? await startLgnet({ ns: net.ns, socket, tap: net.tap, metricsPath: join(dir, 'm') }) : undefined;
  let tracing = false;
  let count = 0;
  let vcpu = -1;
  try {
    const guest = bootGuest({
      netns: net.ns,
      netdev: kind === 'lgnet' ? { type: 'vhost-user', socket, reconnect: 1 } : { type: 'tap', ifname: net.tap },
      guest: { ip: `${GUEST}/24`, peer: HOST, jobs: ['ping-live'], pingCount: pings + 5, pingInterval: 0.2 },
      timeoutMs: 120_000,
      onLine: (l) => {
        if (!/bytes from/.test(l)) return;
        count++;
        // The first five replies warm up; trace the rest.
        if (count === 5) {
          vcpu = busiestThread(guest.pid);
          // LGNET_PING_TRACE_QEMU_CPU: every QEMU thread on that CPU (with lgnet's --worker-cpus
          // through LGNET_BENCH_SERVE_ARGS, to keep the workers off the vCPU's CPU).
          const qcpu = process.env['LGNET_PING_TRACE_QEMU_CPU'];
          if (qcpu && spawnSync('taskset', ['-a', '-p', '-c', qcpu, String(guest.pid)], { stdio: 'ignore' }).status !== 0) {
            console.warn(`ping-trace: taskset could not pin QEMU to CPU ${qcpu}; tracing it unpinned`);
          }
          traceSetup([guest.pid, ...(lg ? [lg.pid] : [])]);
          put('tracing_on', '1');
          tracing = true;
        }
      },
    });
    const out = await guest.done;
    const text = tracing ? traceOff() : '';
    if (process.env['LGNET_PING_TRACE_RAW']) writeFileSync(`${process.env['LGNET_PING_TRACE_RAW']}-${kind}.txt`, text);
    const evs = parse(text);
    const hops = kind === 'lgnet' ? lgnetHops(evs, guest.pid, vcpu) : qemuHops(evs, guest.pid, vcpu);
    const ping = /round-trip min\/avg\/max = [^\n]*/.exec(out.serial)?.[0] ?? '';
    return { hops: summarise(hops), n: hops.length, ping };
  } finally {
    if (tracing) traceOff();
    await lg?.stop();
    await net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  tracefs();
  ensureGuestImage();
  const pings = arg('pings', 30);
  const rounds = arg('rounds', 2);
  const results: Array<{ kind: string; round: number; n: number; ping: string; hops: Record<string, Stat> }> = [];
  for (let r = 1; r <= rounds; r++) {
    for (const kind of ['lgnet', 'qemu'] as const) {
      const x = await runOne(kind, pings);
      results.push({ kind, round: r, ...x });
      console.log(`\n${kind} round ${r}: ${x.n} round trips traced; guest ${x.ping}`);
      for (const [k, s] of Object.entries(x.hops)) console.log(`  ${k.padEnd(48)} median ${s.median.toFixed(0).padStart(5)} µs  (${s.min.toFixed(0)}–${s.max.toFixed(0)})`);
    }
  }
  console.log(`\nwrote ${writeResult('ping-trace', { pings, rounds, results })}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
