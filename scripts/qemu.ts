/**
 * Boot lgnet's test guest under QEMU and read what it reports.
 *
 *   import { bootGuest } from '../scripts/qemu.ts';
 *   const g = bootGuest({
 *     netdev: { type: 'tap', ifname: 'lgtap0' },          // or { type: 'vhost-user', socket: '/run/x.sock' }
 *     netns: 'lgnet-1234',                                 // QEMU runs in `ip netns exec lgnet-1234 ...`
 *     guest: { ip: '10.0.2.2/24', peer: '10.0.2.1', jobs: ['ping', 'iperf3-client-tx'] },
 *     timeoutMs: 120_000,
 *   });
 *   try {
 *     await g.ready;                       // LGNET-READY: driver loaded, link up, address set
 *     const out = await g.done;            // QEMU exited (guest powered off, or killed at timeout)
 *     out.ok; out.results; out.bootMs;
 *   } finally {
 *     await g.kill();                      // always safe; kills by pid only
 *   }
 *
 * The guest image (kernel + initramfs) is built by scripts/guest-image.sh into .cache/guest/;
 * ensureGuestImage() runs that script when the image is missing. The guest's /init is
 * scripts/guest/init: it reads lgnet.* parameters from the kernel command line, runs the jobs and
 * prints LGNET-* lines on ttyS0, which is QEMU's stdio here.
 *
 * Accelerator: KVM with `-cpu host` when /proc/cpuinfo has vmx or svm and /dev/kvm opens, else TCG
 * with `-cpu max`. Under TCG the device always gets `vectors=0` (QEMU 7.2 under TCG crashes with
 * vhost-user when MSI-X is on; the tap baseline uses the same setting so that both match). Guest memory
 * is always a shared memfd (`memory-backend-memfd,share=on` + `-numa node,memdev=mem`), which
 * vhost-user needs and tap accepts. A live-migration destination is the same command line plus
 * `incoming` (and `qmpSocket` to drive it); scripts/migrate.ts does that.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, createWriteStream, existsSync, readFileSync, rmSync, statSync, type WriteStream } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const GUEST_CACHE = process.env.LGNET_GUEST_CACHE ?? join(REPO_ROOT, '.cache', 'guest');

// ---------------------------------------------------------------------------------------------------
// Types

/** QEMU opens an existing tap by name (it must live in the netns QEMU runs in). */
export interface TapNetdev {
  type: 'tap';
  ifname: string;
  /** Queue pairs; > 1 needs a tap made with `multi_queue` and turns on `mq=on`. Default 1. */
  queues?: number;
}

/** QEMU talks vhost-user to a backend (lgnet) over a unix socket. */
export interface VhostUserNetdev {
  type: 'vhost-user';
  socket: string;
  /** QEMU is the socket client (default): seconds between reconnect attempts; 0/undefined = none. */
  reconnect?: number;
  /** QEMU listens on the socket and the backend connects (QEMU waits for it before booting). */
  server?: boolean;
  /** Queue pairs; > 1 turns on `mq=on`. Default 1. */
  queues?: number;
}

export type GuestJob =
  | 'none'
  | 'ping'
  | 'ping-live' // ping with each reply line on the console as it happens (onLine sees it live)
  | 'iperf3-client-tx' // guest sends to an iperf3 server at `peer` (guest→host)
  | 'iperf3-client-rx' // same with -R: the host side sends (host→guest)
  | 'iperf3-server' // guest runs `iperf3 -s -1`; prints LGNET-LISTENING when it accepts
  | 'integrity' // GET http://peer:xferPort/blob into /tmp, sha256sum it, send it back with nc to xferPort + 1
  | 'cmd' // `sh -c <cmd>`
  | 'console' // keep running and take commands on the console (load, report, mark, quit; see scripts/guest/init)
  | 'shell'; // interactive shell on the serial console (write() to it)

/** What the guest's /init does; becomes lgnet.* kernel parameters. */
export interface GuestArgs {
  /** Address with prefix for the guest interface, e.g. '10.0.2.2/24'. */
  ip?: string;
  /** Host side of the link, target of ping and the iperf3 clients, e.g. '10.0.2.1'. */
  peer?: string;
  /** Guest interface name (default: the first that is not lo, normally eth0). */
  ifname?: string;
  /** MTU the guest sets on its interface (see also BootOptions.mtu, the device's host_mtu). */
  mtu?: number;
  /** Jobs, run in order. Default: none (boot, bring the link up, power off). */
  jobs?: GuestJob[];
  pingCount?: number; // default 10
  pingInterval?: number; // seconds, default 0.2
  pingSize?: number; // default 56
  iperfTime?: number; // seconds, default 3
  iperfPort?: number; // default 5201
  /** Port of the peer's HTTP server for job 'integrity' (default 8080). */
  xferPort?: number;
  /** Extra iperf3 client arguments, e.g. ['-u', '-b', '0', '-l', '64']. No spaces inside one. */
  iperfArgs?: string[];
  /** Command string for job 'cmd'. */
  cmd?: string;
  /** Do not power off at the end: leave a shell on the console. */
  keep?: boolean;
}

export interface BootOptions {
  netdev: TapNetdev | VhostUserNetdev;
  /** Run QEMU inside this network namespace (`ip netns exec <netns> qemu-system-x86_64 ...`). */
  netns?: string;
  /** Guest MAC; default 52:54:00:12:34:56. */
  mac?: string;
  /** Device MTU offered to the guest (virtio-net-pci host_mtu=, VIRTIO_NET_F_MTU). */
  mtu?: number;
  /**
   * Extra virtio-net-pci properties, e.g. { mrg_rxbuf: 'off', event_idx: 'off', indirect_desc: 'off',
   * csum: 'off', guest_csum: 'off', rx_queue_size: '1024' }. They override the runner's defaults
   * (vectors, mq).
   */
  deviceFlags?: Record<string, string>;
  vcpus?: number; // default 1
  memMiB?: number; // default 256
  /**
   * Guest RAM in KiB, overriding memMiB, for a size that is not whole MiB (a multiple of 8 KiB, which
   * QEMU rounds -m to). scripts/migrate.ts uses it: see there why, under TCG, RAM must not be a
   * multiple of 256 KiB when migrating.
   */
  memKiB?: number;
  guest?: GuestArgs;
  /** Extra kernel command-line words. */
  extraCmdline?: string;
  /** 'auto' (default, or env LGNET_QEMU_ACCEL): KVM if the CPU has vmx/svm and /dev/kvm opens. */
  accel?: 'auto' | 'kvm' | 'tcg';
  /** Kill QEMU after this long (default 120 s). `done` then resolves with timedOut: true. */
  timeoutMs?: number;
  /** Also write the serial log (and QEMU's stderr) to this file. */
  logPath?: string;
  /** Called for every serial line (without the line ending). */
  onLine?: (line: string) => void;
  /** Echo serial lines to this process's stderr (default: env LGNET_QEMU_VERBOSE=1). */
  verbose?: boolean;
  /** QMP socket path (server, nowait), e.g. to set_link later. */
  qmpSocket?: string;
  /**
   * `-incoming` URI: this QEMU is a live-migration destination (e.g. 'defer', then QMP
   * migrate-incoming). It does not boot: the guest arrives with the migration stream, so `ready` never
   * resolves; its serial lines (onLine) are the guest's once it runs here. See scripts/migrate.ts.
   */
  incoming?: string;
  /** Kernel and initrd; default: the manifest written by scripts/guest-image.sh. */
  image?: { kernel: string; initrd: string };
  qemuBinary?: string; // default qemu-system-x86_64
  /**
   * A virtual IOMMU in front of the NIC: 'intel' boots a q35 machine with an intel-iommu (device IOTLB
   * on, interrupt remapping off, which TCG cannot do) and gives virtio-net-pci iommu_platform=on and
   * ats=on, so the device reaches guest memory through I/O virtual addresses (VIRTIO_F_ACCESS_PLATFORM).
   * 'platform-only' gives the device iommu_platform=on with no IOMMU, as a confidential guest has it.
   */
  iommu?: 'intel' | 'platform-only';
  extraArgs?: string[];
}

export interface ReadyInfo {
  ifname: string;
  mac: string;
  ip: string;
  mtu: number;
  carrier: number;
  uptime_s: number;
}

export interface IperfSummary {
  /** Bits per second measured by the receiving side (the figure to compare). */
  bitsPerSecond: number;
  senderBitsPerSecond: number;
  receiverBitsPerSecond: number;
  bytes: number;
  seconds: number;
  retransmits?: number;
  /** UDP only: loss seen by the receiver, and packets that arrived. */
  lostPercent?: number;
  packets?: number;
}

export interface GuestResult {
  job: string;
  rc: number;
  /** Everything else the guest put in LGNET-RESULT (e.g. ping's loss_pct, rtt_avg_ms). */
  [key: string]: unknown;
  /** Raw output of the job (between LGNET-OUTPUT-BEGIN/END). */
  output?: string;
  /** Parsed iperf3 -J output, for iperf3 jobs. */
  iperf?: IperfSummary;
  iperfJson?: unknown;
}

export interface GuestOutcome {
  /** The guest printed LGNET-DONE with failed=0, QEMU exited by itself and did not time out. */
  ok: boolean;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** ms from spawn to LGNET-BOOT (kernel up, /init started) and to LGNET-READY (link up). */
  bootMs?: number;
  readyMs?: number;
  /** ms from spawn to QEMU's exit. */
  totalMs: number;
  ready?: ReadyInfo;
  results: GuestResult[];
  errors: string[];
  done?: { failed: number; uptime_s: number };
  serial: string;
  stderr: string;
}

export interface GuestHandle {
  pid: number;
  /** Full argv QEMU was started with (after `ip netns exec <ns>` when netns is set). */
  argv: string[];
  accel: 'kvm' | 'tcg';
  /** Resolves at LGNET-READY; rejects if QEMU exits first. */
  ready: Promise<ReadyInfo>;
  /** Resolves when QEMU has exited (never rejects). */
  done: Promise<GuestOutcome>;
  /** Serial output so far. */
  serial(): string;
  /** Resolves with the first serial line (past or future) matching; rejects at exit or timeout. */
  waitForLine(match: string | RegExp, timeoutMs?: number): Promise<string>;
  /** Type into the serial console (job 'shell'). */
  write(data: string): void;
  /** SIGTERM, then SIGKILL after graceMs (default 2000); resolves once QEMU is gone. Idempotent. */
  kill(graceMs?: number): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// Image and environment

export interface GuestImage {
  kernel: string;
  initrd: string;
  kernelVersion?: string;
  modules?: string;
}

/** The image manifest, or undefined when the image has not been built. */
export function guestImage(): GuestImage | undefined {
  const manifest = join(GUEST_CACHE, 'image.json');
  if (!existsSync(manifest)) return undefined;
  const m = JSON.parse(readFileSync(manifest, 'utf8')) as GuestImage;
  if (!existsSync(m.kernel) || !existsSync(m.initrd)) return undefined;
  return m;
}

/**
 * Returns the guest image, building it with scripts/guest-image.sh when missing (or always when
 * rebuild is true: the script itself is cached and idempotent). Throws with the script's output when
 * the image cannot be built.
 */
export function ensureGuestImage(opts: { rebuild?: boolean } = {}): GuestImage {
  const have = guestImage();
  if (have && !opts.rebuild && !imageOlderThanSources(have)) return have;
  const r = spawnSync('bash', [join(REPO_ROOT, 'scripts', 'guest-image.sh')], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    timeout: 600_000,
  });
  const img = guestImage();
  if (r.status !== 0 || !img) {
    throw new Error(
      `cannot build the guest image (scripts/guest-image.sh exit ${r.status}${r.error ? `, ${r.error.message}` : ''}):\n` +
        `${r.stdout ?? ''}${r.stderr ?? ''}\nRun scripts/install-deps.sh first (it installs qemu-system-x86, busybox-static, iperf3).`,
    );
  }
  return img;
}

/**
 * The image's manifest (rewritten by every run of guest-image.sh) predates an edit of the init script or
 * of the build script: the script then runs again and rebuilds the initramfs if its inputs changed.
 */
function imageOlderThanSources(_img: GuestImage): boolean {
  try {
    const built = statSync(join(GUEST_CACHE, 'image.json')).mtimeMs;
    return ['scripts/guest/init', 'scripts/guest-image.sh'].some((f) => statSync(join(REPO_ROOT, f)).mtimeMs > built);
  } catch {
    return true;
  }
}

/** 'kvm' when the CPU has vmx/svm and /dev/kvm can be opened, else 'tcg'. Env LGNET_QEMU_ACCEL overrides. */
export function detectAccel(): 'kvm' | 'tcg' {
  const env = process.env.LGNET_QEMU_ACCEL;
  if (env === 'kvm' || env === 'tcg') return env;
  try {
    const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
    if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo)) return 'tcg';
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return 'kvm';
  } catch {
    return 'tcg';
  }
}

// ---------------------------------------------------------------------------------------------------
// Command line

function guestCmdline(g: GuestArgs = {}): string[] {
  const words: string[] = [];
  const put = (k: string, v: string | number | undefined) => {
    if (v === undefined || v === '') return;
    const s = String(v);
    if (/\s|"/.test(s)) throw new Error(`guest arg ${k} must not contain spaces or quotes: ${s}`);
    words.push(`lgnet.${k}=${s}`);
  };
  put('ip', g.ip);
  put('peer', g.peer);
  put('ifname', g.ifname);
  put('mtu', g.mtu);
  if (g.jobs && g.jobs.length) put('job', g.jobs.join(','));
  put('ping_count', g.pingCount);
  put('ping_interval', g.pingInterval);
  put('ping_size', g.pingSize);
  put('iperf_time', g.iperfTime);
  put('iperf_port', g.iperfPort);
  put('xfer_port', g.xferPort);
  if (g.iperfArgs?.length) put('iperf_args64', Buffer.from(g.iperfArgs.join(' ')).toString('base64'));
  if (g.cmd !== undefined) put('cmd64', Buffer.from(g.cmd).toString('base64'));
  if (g.keep) put('keep', 1);
  // x86 keeps 2048 bytes of command line; the rest would be cut off silently.
  const len = words.join(' ').length;
  if (len > 1800) throw new Error(`guest arguments too long for the kernel command line (${len} bytes; keep cmd short)`);
  return words;
}

/** QEMU's argv (without the binary) for these options. Exported so tests can check it. */
export function qemuArgs(opts: BootOptions, accel: 'kvm' | 'tcg', image: { kernel: string; initrd: string }): string[] {
  if (opts.memKiB !== undefined && (!Number.isInteger(opts.memKiB) || opts.memKiB % 8 !== 0 || opts.memKiB <= 0)) {
    throw new Error(`memKiB must be a positive multiple of 8 (QEMU rounds -m to 8 KiB): ${opts.memKiB}`);
  }
  const mem = opts.memKiB !== undefined ? `${opts.memKiB}K` : `${opts.memMiB ?? 256}M`;
  const vcpus = opts.vcpus ?? 1;
  const nd = opts.netdev;
  const queues = nd.queues ?? 1;
  if (!Number.isInteger(queues) || queues < 1) throw new Error(`bad queues: ${queues}`);
  const args: string[] = [
    '-nodefaults',
    '-no-user-config',
    '-machine', opts.iommu === 'intel' ? 'q35' : 'pc',
    ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max']),
    '-smp', String(vcpus),
    '-m', mem,
    '-object', `memory-backend-memfd,id=mem,size=${mem},share=on`,
    '-numa', 'node,memdev=mem',
    '-kernel', image.kernel,
    '-initrd', image.initrd,
    '-append', ['console=ttyS0', 'panic=-1', 'quiet', ...guestCmdline(opts.guest), ...(opts.iommu === 'intel' ? ['intel_iommu=on'] : []), ...(opts.extraCmdline ? [opts.extraCmdline] : [])].join(' '),
    '-display', 'none',
    '-serial', 'stdio',
    '-monitor', 'none',
    '-no-reboot',
  ];
  if (nd.type === 'tap') {
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(nd.ifname)) throw new Error(`bad tap name: ${nd.ifname}`);
    args.push('-netdev', `tap,id=n0,ifname=${nd.ifname},script=no,downscript=no,vhost=off${queues > 1 ? `,queues=${queues}` : ''}`);
  } else {
    if (/[,\s]/.test(nd.socket)) throw new Error(`socket path must not contain commas or spaces: ${nd.socket}`);
    const chr = [`socket,id=chr0,path=${nd.socket}`];
    if (nd.server) chr.push('server=on', 'wait=on');
    else if (nd.reconnect) chr.push(`reconnect=${nd.reconnect}`);
    args.push('-chardev', chr.join(','));
    args.push('-netdev', `vhost-user,id=n0,chardev=chr0${queues > 1 ? `,queues=${queues}` : ''}`);
  }
  const dev: Record<string, string> = {
    netdev: 'n0',
    mac: opts.mac ?? '52:54:00:12:34:56',
  };
  if (accel === 'tcg') dev.vectors = '0';
  else if (queues > 1) dev.vectors = String(2 * queues + 2);
  if (queues > 1) dev.mq = 'on';
  if (opts.mtu !== undefined) dev.host_mtu = String(opts.mtu);
  if (opts.iommu !== undefined) {
    // A legacy or transitional virtio device cannot offer ACCESS_PLATFORM.
    dev['disable-legacy'] = 'on';
    dev.iommu_platform = 'on';
  }
  if (opts.iommu === 'intel') {
    dev.ats = 'on';
    // Before the NIC: a PCI device is put behind the IOMMU only if the IOMMU exists when it is created.
    args.push('-device', 'intel-iommu,intremap=off,device-iotlb=on');
    // Behind a PCIe root port: on the root bus the NIC is conventional PCI, has no ATS capability, and
    // the guest then sends no device-IOTLB invalidations, the only ones QEMU 7.2 passes to a vhost back-end.
    args.push('-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1');
    dev.bus = 'rp0';
  }
  Object.assign(dev, opts.deviceFlags ?? {});
  args.push('-device', ['virtio-net-pci', ...Object.entries(dev).map(([k, v]) => `${k}=${v}`)].join(','));
  if (opts.qmpSocket) {
    if (/[,\s]/.test(opts.qmpSocket)) throw new Error(`QMP socket path must not contain commas or spaces: ${opts.qmpSocket}`);
    args.push('-qmp', `unix:${opts.qmpSocket},server=on,wait=off`);
  }
  if (opts.incoming !== undefined) args.push('-incoming', opts.incoming);
  args.push(...(opts.extraArgs ?? []));
  return args;
}

// ---------------------------------------------------------------------------------------------------
// Output parsing

/** Summarises `iperf3 -J` output (client or server side). */
export function iperfSummary(json: any): IperfSummary | undefined {
  const end = json?.end;
  if (!end) return undefined;
  const udp = end.streams?.[0]?.udp !== undefined || (end.sum !== undefined && end.sum_sent?.retransmits === undefined);
  if (udp) {
    // UDP: the receiver's view (sum_received, or sum with its loss) is the figure that counts.
    const rcv = end.sum_received ?? end.sum;
    const snt = end.sum_sent ?? end.sum;
    if (!rcv || !snt) return undefined;
    const lost = rcv.lost_percent ?? 0;
    const received = rcv.packets - (rcv.lost_packets ?? 0);
    return {
      bitsPerSecond: rcv.bits_per_second * (end.sum_received ? 1 : 1 - lost / 100),
      senderBitsPerSecond: snt.bits_per_second,
      receiverBitsPerSecond: rcv.bits_per_second * (end.sum_received ? 1 : 1 - lost / 100),
      bytes: rcv.bytes,
      seconds: rcv.seconds,
      lostPercent: lost,
      packets: received,
    };
  }
  if (end.sum_sent && end.sum_received) {
    // TCP. The receiver's figure is the one that counts.
    return {
      bitsPerSecond: end.sum_received.bits_per_second,
      senderBitsPerSecond: end.sum_sent.bits_per_second,
      receiverBitsPerSecond: end.sum_received.bits_per_second,
      bytes: end.sum_received.bytes,
      seconds: end.sum_received.seconds,
      retransmits: end.sum_sent.retransmits,
    };
  }
  return undefined;
}

function parseJsonTail(line: string, marker: string): any {
  const rest = line.slice(marker.length).trim();
  try {
    return JSON.parse(rest);
  } catch {
    return { raw: rest };
  }
}

// ---------------------------------------------------------------------------------------------------
// Boot

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort: a test process that dies must not leave QEMU running.
  process.on('exit', () => {
    for (const c of live) {
      try {
        if (c.pid) process.kill(c.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

/**
 * Starts QEMU with the guest image. Returns at once; see GuestHandle. Throws only for bad options or a
 * missing image (call ensureGuestImage() first to build it).
 */
export function bootGuest(opts: BootOptions): GuestHandle {
  const image = opts.image ?? guestImage();
  if (!image) throw new Error(`guest image missing in ${GUEST_CACHE}: run scripts/guest-image.sh (or call ensureGuestImage())`);
  const accel = opts.accel && opts.accel !== 'auto' ? opts.accel : detectAccel();
  const qemu = opts.qemuBinary ?? 'qemu-system-x86_64';
  const qargs = qemuArgs(opts, accel, image);
  const argv = opts.netns ? ['ip', 'netns', 'exec', opts.netns, qemu, ...qargs] : [qemu, ...qargs];
  const verbose = opts.verbose ?? process.env.LGNET_QEMU_VERBOSE === '1';
  const timeoutMs = opts.timeoutMs ?? 120_000;

  const t0 = performance.now();
  // `ip netns exec` execs the command in place, so the pid is QEMU's own.
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
  installExitHook();
  live.add(child);
  const log: WriteStream | undefined = opts.logPath ? createWriteStream(opts.logPath) : undefined;
  log?.write(`# ${argv.join(' ')}\n`);

  let serial = '';
  let stderr = '';
  let partial = '';
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void; reject: (e: Error) => void }[] = [];
  const results: GuestResult[] = [];
  const errors: string[] = [];
  const outputs = new Map<string, string>();
  let capture: { job: string; lines: string[] } | undefined;
  let bootMs: number | undefined;
  let readyMs: number | undefined;
  let readyInfo: ReadyInfo | undefined;
  let doneInfo: { failed: number; uptime_s: number } | undefined;
  let timedOut = false;
  let exited = false;

  let resolveReady!: (r: ReadyInfo) => void;
  let rejectReady!: (e: Error) => void;
  const ready = new Promise<ReadyInfo>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  ready.catch(() => {}); // callers who never await ready must not see an unhandled rejection

  const onLine = (line: string) => {
    lines.push(line);
    if (verbose) process.stderr.write(`[guest ${child.pid}] ${line}\n`);
    opts.onLine?.(line);
    if (capture) {
      if (line === `LGNET-OUTPUT-END ${capture.job}`) {
        outputs.set(capture.job, capture.lines.join('\n'));
        capture = undefined;
      } else {
        capture.lines.push(line);
      }
    } else if (line.startsWith('LGNET-OUTPUT-BEGIN ')) {
      capture = { job: line.slice('LGNET-OUTPUT-BEGIN '.length).trim(), lines: [] };
    } else if (line.startsWith('LGNET-BOOT')) {
      bootMs = performance.now() - t0;
    } else if (line.startsWith('LGNET-READY')) {
      readyMs = performance.now() - t0;
      readyInfo = parseJsonTail(line, 'LGNET-READY') as ReadyInfo;
      resolveReady(readyInfo);
    } else if (line.startsWith('LGNET-RESULT')) {
      const r = parseJsonTail(line, 'LGNET-RESULT') as GuestResult;
      const out = outputs.get(r.job);
      if (out !== undefined) {
        r.output = out;
        outputs.delete(r.job);
        if (r.job.startsWith('iperf3')) {
          try {
            r.iperfJson = JSON.parse(out);
            r.iperf = iperfSummary(r.iperfJson);
          } catch {
            /* not JSON (iperf3 failed early): output keeps the text */
          }
        }
      }
      results.push(r);
    } else if (line.startsWith('LGNET-ERROR')) {
      errors.push(line.slice('LGNET-ERROR'.length).trim());
    } else if (line.startsWith('LGNET-DONE')) {
      doneInfo = parseJsonTail(line, 'LGNET-DONE');
    }
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i]!;
      if (w.re.test(line)) {
        waiters.splice(i, 1);
        w.resolve(line);
      }
    }
  };

  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    serial += chunk;
    log?.write(chunk);
    partial += chunk;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      onLine(partial.slice(0, nl).replace(/\r$/, ''));
      partial = partial.slice(nl + 1);
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    stderr += chunk;
    log?.write(`[qemu stderr] ${chunk}`);
    if (verbose) process.stderr.write(`[qemu ${child.pid} stderr] ${chunk}`);
  });
  child.stdin!.on('error', () => {}); // EPIPE after QEMU exits

  const timer = setTimeout(() => {
    timedOut = true;
    void kill(0);
  }, timeoutMs);

  const done = new Promise<GuestOutcome>((resolve) => {
    let spawnError: Error | undefined;
    child.on('error', (e) => {
      spawnError = e;
      stderr += `spawn error: ${e.message}\n`;
    });
    child.on('close', (code, signal) => {
      exited = true;
      // QEMU killed while waiting in server mode leaves its listening socket behind.
      if (opts.netdev.type === 'vhost-user' && opts.netdev.server) rmSync(opts.netdev.socket, { force: true });
      clearTimeout(timer);
      live.delete(child);
      if (partial) onLine(partial.replace(/\r$/, ''));
      partial = '';
      const why = timedOut
        ? `timed out after ${timeoutMs} ms`
        : `QEMU exited (code ${code}, signal ${signal})${spawnError ? `: ${spawnError.message}` : ''}`;
      if (!readyInfo) rejectReady(new Error(`guest never became ready: ${why}\n${tail(stderr, 2000)}${tail(serial, 3000)}`));
      for (const w of waiters.splice(0)) w.reject(new Error(`line ${w.re} not seen: ${why}`));
      log?.end();
      resolve({
        ok: !timedOut && code === 0 && doneInfo !== undefined && doneInfo.failed === 0 && errors.length === 0,
        exitCode: code,
        signal,
        timedOut,
        bootMs,
        readyMs,
        totalMs: performance.now() - t0,
        ready: readyInfo,
        results,
        errors,
        done: doneInfo,
        serial,
        stderr,
      });
    });
  });

  async function kill(graceMs = 2000): Promise<void> {
    if (!exited && child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      const t = setTimeout(() => {
        try {
          if (!exited && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, graceMs);
      await done;
      clearTimeout(t);
    }
    await done;
  }

  return {
    pid: child.pid ?? -1,
    argv,
    accel,
    ready,
    done,
    serial: () => serial,
    waitForLine(match, waitMs = timeoutMs) {
      const re = typeof match === 'string' ? new RegExp(`^${match.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`) : match;
      const seen = lines.find((l) => re.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
      if (exited) return Promise.reject(new Error(`line ${re} not seen: QEMU has exited`));
      return new Promise<string>((resolve, reject) => {
        const w = { re, resolve, reject };
        waiters.push(w);
        const t = setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) waiters.splice(i, 1);
          reject(new Error(`line ${re} not seen within ${waitMs} ms`));
        }, waitMs);
        w.resolve = (l) => {
          clearTimeout(t);
          resolve(l);
        };
        w.reject = (e) => {
          clearTimeout(t);
          reject(e);
        };
      });
    },
    write(data) {
      if (!exited) child.stdin!.write(data);
    },
    kill,
  };
}

function tail(s: string, n: number): string {
  if (!s) return '';
  return (s.length > n ? `...${s.slice(-n)}` : s) + (s.endsWith('\n') ? '' : '\n');
}
