/**
 * One guest run on lgnet, set up and torn down completely: a namespace with a tap, `lgnet serve` on it
 * (inside the namespace, with a metrics socket), optional host-side servers (iperf3, the integrity
 * blob server), QEMU booting the test guest on lgnet's socket. Whatever happens, QEMU, lgnet and the
 * servers are killed by pid and the tap and the namespace removed before runOnLgnet returns or throws.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMetrics, type MetricsDocument } from '../../../sandbox/metrics-endpoint.ts';
import { createMacvtapNamespace, createTapNamespace, type TapNamespace } from '../../../scripts/netns.ts';
import { bootGuest, ensureGuestImage, type BootOptions, type GuestArgs, type GuestHandle, type GuestOutcome } from '../../../scripts/qemu.ts';
import { blobSha256, startBlobServer, type BlobEvent } from './blob.ts';
import { startLgnet, stopLgnet, type Lgnet } from './lgnet.ts';
import * as native from '../../../native/index.ts';
import { NO_CAPS } from '../../helpers/caps.ts';

export const HOST = '10.0.2.1';
export const GUEST = '10.0.2.2';
export const XFER_PORT = 8080;
/** The guest NIC's MAC (a macvtap run has lgnet give the macvtap this address: --mac). */
export const GUEST_MAC = '52:54:00:12:34:56';

export interface RunOptions {
  /** Queue pairs of lgnet, the tap (multi_queue) and QEMU. Default 1. */
  queues?: number;
  /** lgnet --mtu and QEMU host_mtu (the guest sets it too unless guest.mtu says otherwise). */
  mtu?: number;
  /** MTU of the tap in the namespace (default: mtu). */
  tapMtu?: number;
  vcpus?: number;
  memMiB?: number;
  deviceFlags?: BootOptions['deviceFlags'];
  /** A virtual IOMMU in front of the NIC (scripts/qemu.ts BootOptions.iommu); lgnet serves with --iommu. */
  iommu?: BootOptions['iommu'];
  /** Guest arguments; ip and peer default to GUEST/24 and HOST. */
  guest: GuestArgs;
  /** Start the integrity blob server (job 'integrity'). */
  blob?: { seed: string; size: number };
  /** Start an iperf3 server on HOST (jobs iperf3-client-*). */
  iperf?: boolean;
  timeoutMs?: number;
  /** More `lgnet serve` flags (e.g. --pcap FILE). */
  serveArgs?: string[];
  /**
   * Hand lgnet the tap as fds opened here (`--tap-fd`, one per pair), and run it with no capability
   * (setpriv --bounding-set -all), as under a manager that made the tap.
   */
  tapFds?: boolean;
  /**
   * Serve a macvtap instead of a tap (`--tap lgmvt0 --mac GUEST_MAC`): the guest sits on a veth end as
   * on a host NIC, the host on the other end (scripts/netns.ts createMacvtapNamespace). The macvtap is
   * made with the kernel's random address, and lgnet gives it the guest's. One queue pair.
   */
  macvtap?: boolean;
  /** Runs once the guest is ready (link up), while it does its jobs. */
  during?: (ctx: RunContext) => Promise<void>;
  onLine?: (line: string) => void;
}

export interface RunContext {
  net: TapNamespace;
  guest: GuestHandle;
  lgnet: Lgnet;
  metricsSocket: string;
}

export interface RunResult {
  outcome: GuestOutcome;
  /** lgnet's JSON log lines (stderr). */
  lgnetLog: string;
  /** lgnet's exit code after SIGTERM (0 = clean stop). */
  lgnetExit: number | null;
  /** lgnet's metrics after the guest powered off. */
  metrics?: MetricsDocument;
  blobEvents: BlobEvent[];
  /** sha256 of the blob (computed here from the seed). */
  blobSha256?: string;
  wallMs: number;
}

export async function runOnLgnet(o: RunOptions): Promise<RunResult> {
  const t0 = performance.now();
  ensureGuestImage();
  const queues = o.queues ?? 1;
  const tapMtu = o.tapMtu ?? o.mtu;
  const net = o.macvtap
    ? createMacvtapNamespace({ hostCidr: `${HOST}/24` })
    : createTapNamespace({ hostCidr: `${HOST}/24`, multiQueue: queues > 1, ...(tapMtu ? { mtu: tapMtu } : {}) });
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-e2e-'));
  const socket = join(dir, 'lgnet.sock');
  const metricsSocket = join(dir, 'lgnet.metrics');
  const log: string[] = [];
  let lgnet: Lgnet | undefined;
  let guest: GuestHandle | undefined;
  try {
    const blobSha = o.blob ? blobSha256(o.blob.seed, o.blob.size) : undefined;
    const blob = o.blob ? await startBlobServer(net, { host: HOST, port: XFER_PORT, ...o.blob }) : undefined;
    if (o.iperf) await net.startIperf3Server();
    const fds = o.tapFds
      ? native.withNetns(`/run/netns/${net.ns}`, () => Array.from({ length: queues }, () => native.tapOpen({ name: net.tap, vnetHdr: true, multiQueue: queues > 1 }).fd))
      : [];
    try {
      lgnet = await startLgnet(net.ns, socket, net.tap, log, [
        '--metrics-socket', metricsSocket,
        ...(fds.length ? ['--tap-fd', fds.map((_, i) => 3 + i).join(',')] : queues > 1 ? ['--queues', String(queues)] : []),
        ...(o.mtu ? ['--mtu', String(o.mtu)] : []),
        ...(o.iommu ? ['--iommu'] : []),
        ...(o.macvtap ? ['--mac', GUEST_MAC] : []),
        ...(o.serveArgs ?? []),
      ], fds.length ? { fds, wrap: NO_CAPS } : {});
    } finally {
      for (const fd of fds) native.close(fd); // lgnet has its own copies
    }
    guest = bootGuest({
      netns: net.ns,
      netdev: { type: 'vhost-user', socket, reconnect: 1, queues },
      mac: GUEST_MAC,
      ...(o.vcpus ? { vcpus: o.vcpus } : {}),
      ...(o.memMiB ? { memMiB: o.memMiB } : {}),
      ...(o.mtu ? { mtu: o.mtu } : {}),
      ...(o.deviceFlags ? { deviceFlags: o.deviceFlags } : {}),
      ...(o.iommu ? { iommu: o.iommu } : {}),
      guest: { ip: `${GUEST}/24`, peer: HOST, xferPort: XFER_PORT, ...(o.mtu ? { mtu: o.mtu } : {}), ...o.guest },
      timeoutMs: o.timeoutMs ?? 120_000,
      ...(o.onLine ? { onLine: o.onLine } : {}),
    });
    if (o.during) {
      await guest.ready;
      await o.during({ net, guest, lgnet, metricsSocket });
    }
    const outcome = await guest.done;
    let metrics: MetricsDocument | undefined;
    try {
      metrics = await readMetrics(metricsSocket);
    } catch (e) {
      log.push(`(test) metrics not readable: ${(e as Error).message}\n`);
    }
    const lgnetExit = await stopLgnet(lgnet.child);
    const r: RunResult = {
      outcome,
      lgnetLog: log.join(''),
      lgnetExit,
      ...(metrics ? { metrics } : {}),
      blobEvents: blob?.events ?? [],
      ...(blobSha ? { blobSha256: blobSha } : {}),
      wallMs: 0,
    };
    if (!outcome.ok) {
      console.error(
        `guest failed: ${JSON.stringify({ ...outcome, serial: undefined, stderr: undefined })}\n${outcome.serial.slice(-6000)}\n${outcome.stderr}\n` +
          `--- lgnet ---\n${r.lgnetLog.slice(-10_000)}`,
      );
    }
    r.wallMs = performance.now() - t0;
    return r;
  } finally {
    await guest?.kill();
    await stopLgnet(lgnet?.child);
    await net.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The guest's result of one job (first of that name). */
export function jobResult(out: GuestOutcome, job: string) {
  return out.results.find((r) => r.job === job);
}

/** Runs argv and collects its output without blocking the event loop (serial lines keep flowing). */
export function run(argv: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const t = setTimeout(() => c.pid !== undefined && process.kill(c.pid, 'SIGKILL'), timeoutMs);
    c.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    });
  });
}

/**
 * A guest shell command that waits until the guest has answered `count` ICMP echo requests
 * (/proc/net/snmp InEchos), at most `seconds`, then runs `then`.
 */
export function guestAwaitEchos(count: number, seconds: number, then: string): string {
  const inEchos = `awk '/^Icmp:/ { n++; if (n == 1) { for (k = 1; k <= NF; k++) if ($k == "InEchos") c = k } else print $c }' /proc/net/snmp`;
  return `i=0; while [ "$(${inEchos})" -lt ${count} ] && [ $i -lt ${Math.round(seconds * 10)} ]; do i=$((i + 1)); sleep 0.1; done; ${then}`;
}
