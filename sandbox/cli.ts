/**
 * Command-line parsing of `lgnet` (commander). It only parses and validates: what a command does lives
 * in main.ts. Every flag is checked here, before anything is opened, so that a typo fails fast with a
 * message and exit status 2 (the vhost-user back-end conventions: fail early, exit non-zero).
 *
 *   lgnet serve (--socket PATH [--client] | --socket-fd FD | neither, under socket activation: LISTEN_FDS)
 *               (also --socket-path PATH, --fd FD: the vhost-user conventions' names) [--tap NAME] [--tap-fd FD[,FD...]] [--queues N] [--mac MAC] [--mtu N]
 *               [--log-level LEVEL] [--reconnect-ms MS] [--metrics-listen ADDR] [--metrics-socket PATH]
 *               [--pcap FILE] [--{tx,rx}-rate-{bytes,ops} SIZE/MS] [--api-socket PATH] [--busy-poll US] [--io PATH] [--offer-config]
 *               [--worker-cpus LIST]
 *               [--coalesce-rx-usecs US] [--coalesce-tx-usecs US] [--coalesce-buffers N]
 *               [--guest-announce] [--postcopy] [--iommu]
 *               [--no-sandbox | [--chroot DIR] [--user U] [--group G]]
 *   lgnet serve --print-capabilities                            (the vhost-user conventions; other options ignored)
 *   lgnet stats ADDR [--once] [--json] [--interval MS] [--queues]
 *   lgnet rate-limit SOCKET [--{tx,rx}-rate-{bytes,ops} SIZE/MS|off] [--json]   (through --api-socket)
 *   lgnet describe                                              (the vhost-user back-end JSON file for QEMU's schema)
 *   lgnet --version
 */
import type { TapIo } from '../device/tap-backend.ts';
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { LOG_LEVELS, type LogLevel } from './log.ts';
import { parseBucket, type BucketSpec, type RateLimit } from '../device/rate-limit.ts';
import { DEFAULT_COALESCE, MAX_COALESCE_BUFFERS, MAX_COALESCE_USECS, type DeviceCoalesce } from '../device/coalesce.ts';
import { parseListenAddress, type ListenAddress, type MetricsBind } from './metrics-listen.ts';
import { MAX_CPUS } from '../native/checks.ts';
import type { StatsOptions } from './stats.ts';
import { API_FD_NAME, chooseListenFd, METRICS_FD_NAME, namedListenFd, takeListenFds, type ListenFds } from './listen-fds.ts';
import { parseApiSocket, type ApiBind } from './api.ts';
import { splitHandOver } from './fd-store.ts';

/** What `lgnet serve` was asked to do. */
export interface ServeOptions {
  /** The vhost-user socket path ('' with --socket-fd and no --socket). */
  socket: string;
  /** --socket-fd: a listening vhost-user socket inherited from the caller, served instead of binding `socket`. */
  socketFd?: number | undefined;
  /**
   * The sockets a service manager handed over (LISTEN_FDS, listen-fds.ts), taken out of the environment.
   * With neither --socket nor --socket-fd, socketFd is chosen from them.
   */
  listenFds?: ListenFds | undefined;
  /**
   * Tap queue fds a service manager kept in its fd store and handed back with the sockets (named
   * `tap/NAME/PAIR`, fd-store.ts): served instead of making the tap when they are all of its pairs.
   */
  storedTapFds?: ListenFds | undefined;
  /** Connect to the socket (the VMM listens) instead of listening on it. */
  client: boolean;
  /** Client mode: delay between connection attempts. */
  reconnectMs: number;
  /** Tap to create or attach to; '' lets the kernel pick a name. */
  tap: string;
  /** --tap-fd: tap fds inherited from the caller, one per queue pair, instead of opening the tap. */
  tapFds?: number[] | undefined;
  /** Queue pairs. */
  queues: number;
  mac: string | undefined;
  mtu: number;
  /** Busy-poll window of the queue workers, in microseconds. */
  busyPoll: number;
  /** --worker-cpus: queue pair p's workers run on cpus[p % cpus.length] (NetDeviceOptions.cpus). */
  workerCpus?: number[] | undefined;
  /** Interrupt coalescing of the data queues (device/coalesce.ts); usecs 0: off for that direction. */
  coalesce: DeviceCoalesce;
  /** Tap I/O path: 'auto' (io_uring where the kernel allows it, the default), 'uring' or 'syscall' (device/tap-backend.ts). */
  io: TapIo | undefined;
  logLevel: LogLevel;
  /** Unix socket that answers each connection with the device metrics as JSON (metrics-endpoint.ts). */
  metricsSocket: string | undefined;
  /** --metrics-listen: the Prometheus endpoint (metrics-listen.ts). */
  metricsListen?: MetricsBind | undefined;
  /** pcap file every data queue's frames are captured to (device/capture.ts). */
  pcap?: string | undefined;
  /** Rate limits per queue (device/rate-limit.ts). */
  rateLimit?: { rx?: RateLimit; tx?: RateLimit };
  /** --api-socket: the control socket (api.ts), a path to bind or a socket handed over named `api`. */
  api?: ApiBind | undefined;
  /** --offer-config: offer the vhost-user CONFIG protocol feature (GET/SET_CONFIG). */
  offerConfig?: boolean;
  /** --guest-announce: offer VIRTIO_NET_F_GUEST_ANNOUNCE, so that the guest announces itself after a migration. */
  guestAnnounce?: boolean;
  /**
   * --fd-store: keep the tap in the service manager's fd store even where the manager does not say the
   * store's size (FDSTORE; systemd before 254 sets none).
   */
  fdStore?: boolean;
  /** --postcopy: offer postcopy live migration (PROTOCOL_F_PAGEFAULT) through /dev/userfaultfd. */
  postcopy?: boolean;
  /** --iommu: offer VIRTIO_F_ACCESS_PLATFORM, so a guest behind a virtual IOMMU (or a confidential one) can use the device. */
  iommu?: boolean;
  /** Enter the jail (sandbox/jail.ts) once everything is open; on unless --no-sandbox. */
  jail: boolean;
  /** --print-policy: print the seccomp policy and exit. */
  printPolicy: boolean;
  chroot: string | undefined;
  user: string | undefined;
  group: string | undefined;
}

/** A patch of the limits, as PATCH /rate-limit takes it (api.ts): null takes a bucket off. */
export type RateLimitPatch = { [d in 'rx' | 'tx']?: { bytes?: BucketSpec | null; ops?: BucketSpec | null } };

/** What `lgnet rate-limit` was asked to do. */
export interface RateLimitOptions {
  /** The --api-socket path. */
  socket: string;
  /** The change to make; null shows the limits. */
  patch: RateLimitPatch | null;
  json: boolean;
}

function int(name: string, lo: number, hi: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < lo || n > hi) {
      throw new InvalidArgumentError(`${name} must be an integer in [${lo}, ${hi}]`);
    }
    return n;
  };
}

function macAddress(v: string): string {
  if (!/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(v)) throw new InvalidArgumentError('expected six hex bytes like 52:54:00:12:34:56');
  if (parseInt(v.slice(0, 2), 16) & 1) throw new InvalidArgumentError('a multicast MAC cannot be a device address');
  return v.toLowerCase();
}

function bucket(name: string): (v: string) => BucketSpec {
  return (v) => {
    try {
      return parseBucket(v);
    } catch (e) {
      throw new InvalidArgumentError(`${name}: ${(e as Error).message}`);
    }
  };
}

function cpus(name: string): (v: string) => number[] {
  return (v) => {
    try {
      return parseCpuList(v);
    } catch (e) {
      throw new InvalidArgumentError(`${name}: ${(e as Error).message}`);
    }
  };
}

function apiSocket(v: string): string {
  try {
    return parseApiSocket(v);
  } catch (e) {
    throw new InvalidArgumentError(`--api-socket: ${(e as Error).message}`);
  }
}

/** SIZE/MS, or `off` (the bucket is taken off), for `lgnet rate-limit`. ('off' stays a string: commander stores a parser's null as ''.) */
function bucketOrOff(name: string): (v: string) => BucketSpec | 'off' {
  const parse = bucket(name);
  return (v) => (v === 'off' ? 'off' : parse(v));
}

function listenAddress(name: string): (v: string) => ListenAddress {
  return (v) => {
    try {
      return parseListenAddress(v);
    } catch (e) {
      throw new InvalidArgumentError(`${name}: ${(e as Error).message}`);
    }
  };
}

/** A CPU list as taskset -c writes one: "1", "0,2", "2-3,6"; kept in the order given. */
export function parseCpuList(v: string): number[] {
  const out: number[] = [];
  for (const part of v.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new RangeError(`'${part}' is not a CPU number or range (like 1, 0,2 or 2-3)`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo || hi >= MAX_CPUS) throw new RangeError(`'${part}': CPUs are 0 to ${MAX_CPUS - 1}, a range low-high`);
    for (let c = lo; c <= hi; c++) if (!out.includes(c)) out.push(c);
  }
  return out;
}

/** An fd number above stderr (stdin, stdout and stderr are never a tap or a socket to serve). */
function fdOf(name: string, v: string): number {
  const x = v.trim();
  if (!/^\d{1,7}$/.test(x) || Number(x) < 3) throw new InvalidArgumentError(`${name}: '${x}' is not an fd number above 2 (stdin, stdout and stderr are not served)`);
  return Number(x);
}

/** --socket-fd: one fd. */
function fdNumber(name: string): (v: string) => number {
  return (v) => fdOf(name, v);
}

/** --tap-fd: "3" or "3,4": fds above stderr, each once. */
function fdList(v: string): number[] {
  const out: number[] = [];
  for (const x of v.split(',')) {
    const fd = fdOf('--tap-fd', x);
    if (out.includes(fd)) throw new InvalidArgumentError(`--tap-fd: fd ${fd} is given twice; give one fd per queue pair`);
    out.push(fd);
  }
  return out;
}

function tapName(v: string): string {
  if (Buffer.byteLength(v) > 15 || /[\s/:]/.test(v)) throw new InvalidArgumentError('an interface name is at most 15 bytes, without spaces, "/" or ":"');
  return v;
}

function rateLimitOf(o: Record<string, unknown>): { rx?: RateLimit; tx?: RateLimit } | undefined {
  const one = (bytes: unknown, ops: unknown): RateLimit | undefined =>
    bytes || ops ? { ...(bytes ? { bytes: bytes as BucketSpec } : {}), ...(ops ? { ops: ops as BucketSpec } : {}) } : undefined;
  const rx = one(o['rxRateBytes'], o['rxRateOps']);
  const tx = one(o['txRateBytes'], o['txRateOps']);
  return rx || tx ? { ...(rx ? { rx } : {}), ...(tx ? { tx } : {}) } : undefined;
}

/**
 * The version in lgnet's package.json. The file sits at the package root, one level above sandbox/ in
 * a clone and two above dist/sandbox/ in what ships; read once, before any jail.
 */
export function packageVersion(): string {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'lgnet' && pkg.version) return pkg.version;
    } catch { /* not at this level */ }
  }
  return 'unknown';
}

/**
 * Builds the program. `serve` is called with validated options; the caller runs `parseAsync`.
 * Errors in arguments exit with status 2 (commander's exitOverride is left to the caller).
 */
export function buildCli(actions: { serve: (opts: ServeOptions) => Promise<void>; stats?: (opts: StatsOptions) => Promise<void>; rateLimit?: (opts: RateLimitOptions) => Promise<void>; describe?: () => void }): Command {
  const program = new Command('lgnet')
    .description('lgnet: a virtio-net device in TypeScript (vhost-user back-end)')
    .version(packageVersion(), '-V, --version', 'print the version and exit')
    .showHelpAfterError()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    // Help exits 0; usage errors exit 2. Set before the subcommands so that they inherit it.
    .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

  program
    .command('serve')
    .description('serve a tap to a VMM over a vhost-user socket')
    .option('--socket <path>', 'vhost-user unix socket path (required)')
    .addOption(new Option('--socket-fd <fd>', "serve the listening vhost-user socket this process inherited (a manager that made it) instead of binding --socket; lgnet never removes its file. Under systemd socket activation (LISTEN_FDS) it is not needed: with neither --socket nor --socket-fd lgnet serves the socket handed over, or among several the one named 'vhost-user'").argParser(fdNumber('--socket-fd')))
    // The names QEMU's vhost-user back-end conventions give the same two options (docs/interop/vhost-user.rst).
    .option('--socket-path <path>', '--socket, by the name of the vhost-user back-end conventions')
    .addOption(new Option('--fd <fd>', '--socket-fd, by the name of the vhost-user back-end conventions').argParser(fdNumber('--fd')))
    .option('--print-capabilities', 'print the back-end\'s capabilities as the vhost-user conventions define them ({"type": "net"}) and exit; every other option is ignored')
    .option('--client', 'connect to the socket (the VMM listens) instead of listening', false)
    .addOption(new Option('--reconnect-ms <ms>', 'client mode: delay between connection attempts').argParser(int('--reconnect-ms', 10, 60_000)).default(1000))
    .addOption(new Option('--tap <name>', 'tap interface to create or attach to, or a macvtap to serve (default: the kernel picks a new tap)').argParser(tapName).default(''))
    .addOption(new Option('--tap-fd <fds>', "serve the tap whose fds this process inherited, one per queue pair ('3', or '3,4' for two), instead of opening it: the caller made the tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, and IFF_MULTI_QUEUE for several), so lgnet needs no CAP_NET_ADMIN; --queues defaults to their count (docs/OPERATIONS.md)").argParser(fdList))
    .addOption(new Option('--queues <n>', 'queue pairs').argParser(int('--queues', 1, 64)).default(1))
    .addOption(new Option('--mac <mac>', "MAC address in the device config (default: random, locally administered; on a macvtap, the macvtap's own); on a macvtap lgnet also gives the macvtap this address, as libvirt does, since it receives only the frames sent to its address").argParser(macAddress))
    .addOption(new Option('--mtu <n>', 'MTU in the device config').argParser(int('--mtu', 68, 65535)).default(1500))
    .addOption(new Option('--busy-poll <us>', 'microseconds a queue worker re-checks its ring before it sleeps (fewer kicks and interrupts, more host CPU); 0 = off').argParser(int('--busy-poll', 0, 1_000_000)).default(0))
    .addOption(new Option('--worker-cpus <list>', "pin the queue workers, one CPU per queue pair in turn (like taskset -c: '1', '0,2', '2-3'): a pair's RX and TX workers share their CPU, so an echo's wake-up from TX to RX stays on it (docs/OPERATIONS.md); default: not pinned").argParser(cpus('--worker-cpus')))
    .addOption(new Option('--coalesce-rx-usecs <us>', 'interrupt coalescing: an RX queue that interrupted the guest less than this many microseconds ago holds its next interrupt until then (a queue quiet for longer signals at once); 0 = off').argParser(int('--coalesce-rx-usecs', 0, MAX_COALESCE_USECS)).default(DEFAULT_COALESCE.rxUsecs))
    .addOption(new Option('--coalesce-tx-usecs <us>', 'the same for TX queues (TX completions only free the guest\'s buffers); 0 = off').argParser(int('--coalesce-tx-usecs', 0, MAX_COALESCE_USECS)).default(DEFAULT_COALESCE.txUsecs))
    .addOption(new Option('--coalesce-buffers <n>', 'interrupt coalescing: used buffers pending that end a hold at once').argParser(int('--coalesce-buffers', 1, MAX_COALESCE_BUFFERS)).default(DEFAULT_COALESCE.buffers))
    .addOption(new Option('--io <path>', "tap I/O: 'auto' (io_uring where the kernel allows it, else readv/writev; the default), 'uring' (a restricted io_uring ring per queue, made before the jail, or fail) or 'syscall' (readv/writev per frame); also LGNET_IO").choices(['syscall', 'uring', 'auto']))
    .addOption(new Option('--log-level <level>', 'log level (JSON logs on stderr)').choices(LOG_LEVELS as string[]).default('info'))
    .addOption(new Option('--metrics-listen <addr>', "serve Prometheus metrics over HTTP (GET /metrics) on a unix socket path, 127.0.0.1:PORT or [::1]:PORT; bound before the jail; read it with `lgnet stats ADDR` (docs/OPERATIONS.md). Under socket activation, a socket named 'metrics' (FileDescriptorName=metrics) is served without this option").argParser(listenAddress('--metrics-listen')))
    .option('--metrics-socket <path>', 'unix socket that answers every connection with one JSON line of live per-queue counters (frames, bytes, interrupts, drops) and closes; read it with `socat - UNIX-CONNECT:PATH`')
    .option('--pcap <file>', 'capture every frame of every data queue to this pcap file (tcpdump -r FILE); created before the jail, appended to by the queue workers')
    .addOption(new Option('--tx-rate-bytes <size/ms>', 'limit each TX queue (guest to tap) to SIZE bytes per MS milliseconds, a token bucket (e.g. 125000000/1000 = 1 Gbit/s)').argParser(bucket('--tx-rate-bytes')))
    .addOption(new Option('--tx-rate-ops <size/ms>', 'limit each TX queue to SIZE frames per MS milliseconds').argParser(bucket('--tx-rate-ops')))
    .addOption(new Option('--rx-rate-bytes <size/ms>', 'limit each RX queue (tap to guest) to SIZE bytes per MS milliseconds').argParser(bucket('--rx-rate-bytes')))
    .addOption(new Option('--rx-rate-ops <size/ms>', 'limit each RX queue to SIZE frames per MS milliseconds').argParser(bucket('--rx-rate-ops')))
    .addOption(new Option('--api-socket <path>', "serve the control API over HTTP on this unix socket (created 0600, bound before the jail): GET and PATCH /rate-limit change the queues' rate limits while they run; use it with `lgnet rate-limit PATH` (docs/OPERATIONS.md). Under socket activation, a socket named 'api' (FileDescriptorName=api) is served without this option").argParser(apiSocket))
    .option('--fd-store', "keep the tap lgnet makes in the service manager's fd store (sd_notify FDSTORE=1), so that a restarted lgnet serves the same interface with its addresses and queued frames; systemd 254 and later say the store's size (FileDescriptorStoreMax=) and lgnet then stores without this flag; give it for older ones, with FileDescriptorStoreMax= of at least --queues (docs/OPERATIONS.md)")
    .option('--guest-announce', 'offer GUEST_ANNOUNCE: after a migration the front-end asks the guest to announce itself (gratuitous ARP through its TX queue) instead of sending SEND_RARP, which lgnet answers with a RARP broadcast')
    .option('--iommu', 'offer VIRTIO_F_ACCESS_PLATFORM (QEMU: iommu_platform=on), with the back-end channel for IOTLB misses: behind a virtual IOMMU (intel-iommu,device-iotlb=on with ats=on) descriptors hold I/O virtual addresses that lgnet asks the front-end to translate; without one, QEMU turns the feature off and nothing changes')
    .option('--postcopy', 'offer postcopy live migration (the PAGEFAULT protocol feature): /dev/userfaultfd (Linux 6.1+) is opened before the jail, and the jail allows the userfaultfd ioctls; a destination lgnet needs it for QEMU\'s postcopy-ram')
    .option('--offer-config', 'offer the vhost-user CONFIG protocol feature, for front-ends that read the device config (MAC, MTU, link) from the back-end (cloud-hypervisor, UML); QEMU does not read it and warns when it is offered')
    .option('--no-sandbox', 'do NOT enter the jail (chroot, uid drop, rlimits, no_new_privs, seccomp); for debugging only')
    .option('--chroot <dir>', 'jail: change root to this empty directory')
    .option('--user <user>', 'jail: drop to this user (name or uid)')
    .option('--group <group>', 'jail: drop to this group (name or gid)')
    .option('--print-policy', 'print the seccomp policy (every allowed syscall with its reason) and exit')
    .action(async (o: Record<string, unknown>, cmd: Command) => {
      const tapFds = o['tapFd'] as number[] | undefined;
      if (tapFds && cmd.getOptionValueSource('queues') !== 'default' && o['queues'] !== tapFds.length) {
        program.error(`error: --queues ${String(o['queues'])} with ${tapFds.length} --tap-fd fds; give one fd per queue pair, or drop --queues`, { exitCode: 2 });
      }
      if (o['socket'] !== undefined && o['socketPath'] !== undefined) program.error('error: --socket and --socket-path name the same thing: give one', { exitCode: 2 });
      if (o['socketFd'] !== undefined && o['fd'] !== undefined) program.error('error: --socket-fd and --fd name the same thing: give one', { exitCode: 2 });
      // Taken out of the environment even when a flag names the socket: no child of lgnet reads it as its own.
      let handed: ListenFds | undefined;
      try {
        handed = takeListenFds();
      } catch (e) {
        program.error(`error: ${(e as Error).message}`, { exitCode: 2 });
      }
      // The fd store hands a kept tap back beside the sockets: sort them apart by name.
      const { sockets: listenFds, taps: storedTapFds } = handed ? splitHandOver(handed) : {};
      const opts: ServeOptions = {
        socket: (o['socket'] as string | undefined) ?? (o['socketPath'] as string | undefined) ?? '',
        socketFd: (o['socketFd'] ?? o['fd']) as number | undefined,
        listenFds,
        storedTapFds,
        client: o['client'] === true,
        reconnectMs: o['reconnectMs'] as number,
        tap: o['tap'] as string,
        tapFds,
        queues: tapFds?.length ?? (o['queues'] as number),
        mac: o['mac'] as string | undefined,
        mtu: o['mtu'] as number,
        busyPoll: o['busyPoll'] as number,
        workerCpus: o['workerCpus'] as number[] | undefined,
        coalesce: { rxUsecs: o['coalesceRxUsecs'] as number, txUsecs: o['coalesceTxUsecs'] as number, buffers: o['coalesceBuffers'] as number },
        io: o['io'] as TapIo | undefined,
        logLevel: o['logLevel'] as LogLevel,
        metricsSocket: o['metricsSocket'] as string | undefined,
        metricsListen: o['metricsListen'] as ListenAddress | undefined,
        pcap: o['pcap'] as string | undefined,
        rateLimit: rateLimitOf(o),
        api: o['apiSocket'] !== undefined ? { kind: 'unix', path: o['apiSocket'] as string } : undefined,
        offerConfig: o['offerConfig'] === true,
        guestAnnounce: o['guestAnnounce'] === true,
        fdStore: o['fdStore'] === true,
        postcopy: o['postcopy'] === true,
        iommu: o['iommu'] === true,
        jail: o['sandbox'] !== false,
        printPolicy: o['printPolicy'] === true,
        chroot: o['chroot'] as string | undefined,
        user: o['user'] as string | undefined,
        group: o['group'] as string | undefined,
      };
      if (!opts.printPolicy && !opts.socket && opts.socketFd === undefined && listenFds && !opts.client) {
        const fd = chooseListenFd(listenFds);
        if (typeof fd === 'string') return program.error(`error: ${fd}`, { exitCode: 2 });
        opts.socketFd = fd;
      }
      if (!opts.printPolicy && !opts.metricsListen && listenFds) {
        const fd = namedListenFd(listenFds, METRICS_FD_NAME);
        if (typeof fd === 'string') return program.error(`error: ${fd}`, { exitCode: 2 });
        if (fd !== undefined) opts.metricsListen = { kind: 'fd', fd };
      }
      if (!opts.printPolicy && !opts.api && listenFds) {
        const fd = namedListenFd(listenFds, API_FD_NAME);
        if (typeof fd === 'string') return program.error(`error: ${fd}`, { exitCode: 2 });
        if (fd !== undefined) opts.api = { kind: 'fd', fd };
      }
      if (!opts.printPolicy && !opts.socket && opts.socketFd === undefined) program.error("error: required option '--socket <path>' (or '--socket-fd <fd>', or a socket handed over by socket activation: LISTEN_FDS) not specified", { exitCode: 2 });
      if (opts.socketFd !== undefined && (opts.socket || opts.client)) program.error('error: --socket-fd (--fd) is a listening socket already made: drop --socket (--socket-path) and --client', { exitCode: 2 });
      if (opts.socketFd !== undefined && opts.tapFds?.includes(opts.socketFd)) program.error(`error: fd ${opts.socketFd} is given as --socket-fd and as --tap-fd`, { exitCode: 2 });
      if (!opts.jail && (opts.chroot || opts.user || opts.group)) {
        program.error('--chroot, --user and --group belong to the jail; drop --no-sandbox to use them', { exitCode: 2 });
      }
      await actions.serve(opts);
    });

  const stats = actions.stats;
  if (stats) {
    program
      .command('stats')
      .description('live per-queue view of a running lgnet (frames/s, bytes/s, drops, interrupts and kicks per frame, time asleep), read from its --metrics-listen endpoint')
      .argument('<addr>', 'the --metrics-listen address of the lgnet serve to read: a unix socket path, 127.0.0.1:PORT or [::1]:PORT', listenAddress('ADDR'))
      .option('--once', 'print one interval and exit', false)
      .option('--json', 'print JSON (with --once, one document; live, one line per interval)', false)
      .option('--queues', "print once where every queue stands in its ring (positions, chains pending and in flight, interrupts owed or held, what each worker last slept on): for a queue that stalls", false)
      .addOption(new Option('--interval <ms>', 'time between snapshots').argParser(int('--interval', 100, 60_000)).default(1000))
      .action(async (address: ListenAddress, o: Record<string, unknown>) => {
        await stats({ address, once: o['once'] === true, json: o['json'] === true, queues: o['queues'] === true, intervalMs: o['interval'] as number });
      });
  }

  const rateLimit = actions.rateLimit;
  if (rateLimit) {
    const off = "SIZE/MS, or 'off' to take that bucket off";
    program
      .command('rate-limit')
      .description("show or change a running lgnet's rate limits through its --api-socket; a bucket given replaces that bucket (full), one left out is kept, and a direction left with no bucket is unlimited")
      .argument('<socket>', 'the --api-socket path of the lgnet serve to reach')
      .addOption(new Option('--tx-rate-bytes <size/ms>', `TX queues (guest to tap): bytes, ${off}`).argParser(bucketOrOff('--tx-rate-bytes')))
      .addOption(new Option('--tx-rate-ops <size/ms>', `TX queues: frames, ${off}`).argParser(bucketOrOff('--tx-rate-ops')))
      .addOption(new Option('--rx-rate-bytes <size/ms>', `RX queues (tap to guest): bytes, ${off}`).argParser(bucketOrOff('--rx-rate-bytes')))
      .addOption(new Option('--rx-rate-ops <size/ms>', `RX queues: frames, ${off}`).argParser(bucketOrOff('--rx-rate-ops')))
      .option('--json', 'print the limits as JSON (what GET /rate-limit answers)', false)
      .action(async (socket: string, o: Record<string, unknown>) => {
        const patch: RateLimitPatch = {};
        for (const d of ['rx', 'tx'] as const) {
          for (const [b, key] of [['bytes', `${d}RateBytes`], ['ops', `${d}RateOps`]] as const) {
            if (o[key] === undefined) continue;
            (patch[d] ??= {})[b] = o[key] === 'off' ? null : (o[key] as BucketSpec);
          }
        }
        await rateLimit({ socket, patch: Object.keys(patch).length ? patch : null, json: o['json'] === true });
      });
  }

  const describe = actions.describe;
  if (describe) {
    program
      .command('describe')
      .description("print the vhost-user back-end JSON file (QEMU's vhost-user.json schema) that lets management software find lgnet-vhost-user: save it as /etc/qemu/vhost-user/50-lgnet.json (docs/OPERATIONS.md)")
      .action(() => describe());
  }

  return program;
}
