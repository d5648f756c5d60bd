/**
 * `lgnet serve`: the process around the vhost-user server. Startup order (DESIGN.md, STYLE.md §13):
 *
 *   1. parse flags (cli.ts)                        nothing opened yet; bad flags exit 2
 *   2. open resources: tap (create or attach), NetDevice, vhost-user socket (listen, or connect loop),
 *      the metrics socket (--metrics-socket), the Prometheus endpoint (--metrics-listen) with the
 *      /proc files its process metrics re-read, the control socket (--api-socket)
 *   3. the jail (unless --no-sandbox, which warns loudly): chroot, uid drop, rlimits, no_new_privs,
 *      seccomp on every thread, then each queue worker's narrower filter
 *   4. once SIGINT/SIGTERM are handled, print exactly one line on stdout: `lgnet ready socket=… tap=…
 *      queues=… mode=…` (and ` metrics=ADDR` with --metrics-listen, the port the kernel picked for
 *      PORT 0, and ` api=PATH` with --api-socket), and tell a service manager READY=1 (notify.ts; its socket was connected in step 2)
 *   5. serve until SIGINT/SIGTERM: STOPPING=1, drop the connection (workers stop and flush their used
 *      rings), close the device and the tap, remove the socket file (jailed: the socket reaper does),
 *      exit 0
 *
 * Logs are JSON lines on stderr (log.ts). A start-up failure logs the reason and exits 1.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { mask } from '../device/features.ts';
import { NetDevice } from '../device/net.ts';
import { formatMac, parseMac } from '../device/config.ts';
import { TapBackend } from '../device/tap-backend.ts';
import { NET_ERROR } from '../device/errors.ts';
import { buildCli, packageVersion, type RateLimitOptions, type ServeOptions } from './cli.ts';
import { openApiListener, type ApiListener } from './api.ts';
import { runRateLimit } from './rate-limit-cmd.ts';
import { compilePolicy, enterJail, formatPolicy } from './jail.ts';
import { createLogger, type Logger } from './log.ts';
import { startSocketReaper } from './socket-reaper.ts';
import { openMetricsEndpoint, type MetricsEndpoint } from './metrics-endpoint.ts';
import { formatListenAddress, openMetricsListener, type MetricsListener } from './metrics-listen.ts';
import { ProcessSampler } from './metrics-process.ts';
import { TapCounters } from './metrics-tap.ts';
import { PrometheusExporter } from './prometheus.ts';
import { runStats, type StatsOptions } from './stats.ts';
import { netDeviceHooks, VhostUserServer } from './vhost-user/server.ts';
import { closePcap, openPcap } from '../device/capture.ts';
import { backendDescription, CAPABILITIES } from './describe.ts';
import { ServiceNotifier } from './notify.ts';
import { FDSTORE_CODE, storedTapFds, tapFdName, takeStoredTaps, type StoredFd } from './fd-store.ts';
import * as native from '../native/index.ts';

/**
 * Device features offered over vhost-user. QEMU keeps the control queue (and with it the RX filter,
 * VLANs, announce and MQ steering) on its side and passes only ring, offload, MRG_RXBUF and MTU bits to
 * the back-end (hw/net/vhost_net.c, user_feature_bits), so none of the CTRL_* family is offered.
 * IN_ORDER is for DPDK's virtio-user, which asks for it by default (`in_order=1`) and then takes its
 * in-order RX and TX paths; lgnet uses every ring in order (QEMU 7.2 does not pass the bit on).
 */
export const VHOST_USER_NET_FEATURES: bigint = mask(
  'CSUM', 'GUEST_CSUM', 'MAC', 'MTU', 'STATUS',
  'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO', 'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'HOST_UFO',
  'MRG_RXBUF', 'MQ', 'NOTIFY_ON_EMPTY', 'ANY_LAYOUT', 'RING_INDIRECT_DESC', 'RING_EVENT_IDX', 'VERSION_1', 'RING_PACKED',
  'IN_ORDER',
);

/** A running `lgnet serve`, for embedding and tests. */
export interface Serving {
  server: VhostUserServer;
  device: NetDevice;
  tap: string;
  /** The tap's queue fds, pair 0 first. */
  tapFds: readonly number[];
  /** The Prometheus endpoint (--metrics-listen), with the port it got. */
  metricsListener?: MetricsListener | undefined;
  /** The control socket (--api-socket). */
  apiListener?: ApiListener | undefined;
  /** Stops serving and releases everything (idempotent). */
  stop(): Promise<void>;
}

/** Steps 2–3: opens the tap, the device and the socket; enters the jail when asked. */
export async function startServing(opts: ServeOptions, log: Logger): Promise<Serving> {
  // On a macvtap, --mac is given to the macvtap itself (as libvirt does for a direct attachment): its
  // lower device hands it only the frames sent to its own address.
  const backend = new TapBackend({ name: opts.tap, queuePairs: opts.queues, ...(opts.tapFds ? { fds: opts.tapFds } : {}), ...(opts.io ? { io: opts.io } : {}), ...(opts.mac ? { macvtapAddress: parseMac(opts.mac) } : {}) });
  log.info({ io: backend.io, why: backend.ioReason }, 'tap I/O');
  if (backend.macvtap) {
    const own = backend.guestAddress && formatMac(backend.guestAddress);
    const replaced = backend.replacedAddress && formatMac(backend.replacedAddress);
    log.info({ macvtap: backend.name, mac: own, ...(replaced ? { replaced } : {}) }, replaced
      ? `serving a macvtap, given the address ${own} (--mac) in place of ${replaced}: the guest receives only the frames sent to it`
      : 'serving a macvtap: the guest receives only the frames sent to its address');
  }
  let device: NetDevice;
  let pcapFd = -1;
  try {
    // --pcap: the file is created now; the jail forbids opening it later. Workers append to it.
    if (opts.pcap) pcapFd = openPcap(opts.pcap);
    device = new NetDevice({
      backend, mtu: opts.mtu, queuePairs: opts.queues, busyPoll: opts.busyPoll, coalesce: opts.coalesce,
      features: VHOST_USER_NET_FEATURES | (opts.guestAnnounce ? mask('GUEST_ANNOUNCE') : 0n) | (opts.iommu ? mask('ACCESS_PLATFORM') : 0n),
      ...(opts.mac ? { mac: opts.mac } : {}), ...(pcapFd >= 0 ? { capture: { fd: pcapFd } } : {}),
      ...(opts.rateLimit ? { rateLimit: opts.rateLimit } : {}),
      ...(opts.workerCpus ? { cpus: opts.workerCpus } : {}),
    });
  } catch (e) {
    backend.close();
    if (pcapFd >= 0) closePcap(pcapFd);
    throw e;
  }
  if (opts.workerCpus) log.info({ cpus: opts.workerCpus }, 'queue workers pinned, one CPU per queue pair in turn');
  const closeDevice = async (): Promise<void> => {
    await device.close();
    if (pcapFd >= 0) closePcap(pcapFd);
    pcapFd = -1;
  };
  device.on('log', (e: { level?: string; msg?: string }) => {
    // level and msg are pino's own keys: passed in the object as well, they would appear twice in the
    // line, and a reader keeps the last, the level as a string where pino writes a number.
    const { level: named, msg, ...fields } = e;
    const level = named === 'error' || named === 'warn' || named === 'debug' ? named : 'info';
    log[level]({ ...fields, component: 'device' }, msg ?? 'device');
  });
  // --postcopy: /dev/userfaultfd is opened now; after the jail (chroot, no open) it could not be.
  let userfaultfd = -1;
  if (opts.postcopy) {
    try {
      userfaultfd = native.userfaultfdDevice();
      log.info({}, 'postcopy migration offered (PAGEFAULT): /dev/userfaultfd is open');
    } catch (e) {
      log.error({ err: (e as Error).message }, '--postcopy needs /dev/userfaultfd: Linux 6.1 or later, readable and writable by the user lgnet starts as; serve without --postcopy otherwise');
      await closeDevice();
      throw e;
    }
  }
  const server = new VhostUserServer({
    device: netDeviceHooks(device), client: opts.client, reconnectMs: opts.reconnectMs, logger: log,
    ...(opts.socketFd !== undefined ? { listenFd: opts.socketFd } : { path: opts.socket }),
    ...(opts.offerConfig ? { config: true } : {}),
    ...(userfaultfd >= 0 ? { userfaultfd } : {}),
  });
  try {
    // Queue workers start now and idle until a front-end starts their rings: after the jail no code
    // can be loaded.
    await device.startWorkers();
    server.start();
  } catch (e) {
    await closeDevice();
    throw e;
  }
  // Read-only metrics socket (--metrics-socket) and the Prometheus endpoint (--metrics-listen): bound
  // before the jail, like the vhost-user socket. The process sampler opens /proc/self/status now too.
  let metrics: MetricsEndpoint | undefined;
  let listener: MetricsListener | undefined;
  let sampler: ProcessSampler | undefined;
  let tapCounters: TapCounters | undefined;
  let api: ApiListener | undefined;
  const closeMetrics = async (): Promise<void> => {
    await api?.close();
    await metrics?.close();
    await listener?.close();
    sampler?.close();
    tapCounters?.close();
  };
  try {
    if (opts.metricsSocket) metrics = await openMetricsEndpoint(opts.metricsSocket, () => device.metrics());
    if (opts.metricsListen) {
      sampler = new ProcessSampler();
      tapCounters = new TapCounters(backend.name, backend.fds[0], { macvtap: backend.macvtap });
      if (tapCounters.unavailable) log.warn({ code: 'LGNET_TAP_COUNTERS_UNAVAILABLE', tap: backend.name, why: tapCounters.unavailable }, "the tap's kernel counters are not served (lgnet_tap_*): read them with `ip -s link show` in the tap's namespace");
      const exporter = new PrometheusExporter({ device: () => device.metrics(), server, process: sampler, tap: tapCounters, version: packageVersion(), rateLimits: () => device.rateLimits(), ...(opts.api ? { api: () => api?.counts } : {}) });
      listener = await openMetricsListener(opts.metricsListen, exporter, () => device.inspect());
    }
    // The control socket: the same plumbing, writable by whoever may write its file.
    if (opts.api) {
      api = await openApiListener(opts.api, device, {
        changed: (before, after) => log.info({ code: 'LGNET_API_RATE_LIMIT_SET', before, after }, 'rate limits changed through the control socket'),
        refused: (status, code, message) => log.warn({ code, status, why: message }, 'control socket request refused'),
      });
    }
  } catch (e) {
    await closeMetrics();
    await server.close();
    await closeDevice();
    throw e;
  }

  // ── THE JAIL ──────────────────────────────────────────────────────────────────────────────────────
  // Everything is open here: tap fds, the sockets, the device and its workers. sandbox/jail.ts applies
  // the rest of the order (chroot → uid/gid → rlimits → no_new_privs → seccomp on every thread), then
  // each queue worker stacks the narrower worker filter on itself. A jailed process may not unlink, so
  // a helper process started first removes the socket file when lgnet exits (socket-reaper.ts).
  try {
    const reapers = [
      // A socket handed over (--socket-fd) is its maker's to remove.
      ...(opts.client || opts.socketFd !== undefined ? [] : [startSocketReaper(opts.socket)]),
      ...(opts.metricsSocket ? [startSocketReaper(opts.metricsSocket)] : []),
      ...(opts.metricsListen?.kind === 'unix' ? [startSocketReaper(opts.metricsListen.path)] : []),
      ...(opts.api?.kind === 'unix' ? [startSocketReaper(opts.api.path)] : []),
    ];
    const report = enterJail({
      keepChildren: reapers.map((r) => r.pid).filter((pid): pid is number => pid !== undefined),
      noSandbox: !opts.jail,
      ...(opts.chroot ? { chroot: opts.chroot } : {}),
      ...(opts.user ? { user: opts.user } : {}),
      ...(opts.group ? { group: opts.group } : {}),
      unixConnect: opts.client,
      uringFds: backend.ringFds,
      postcopy: userfaultfd >= 0,
      onWarning: (message, code) => log.warn({ code }, message),
    });
    if (report.sandboxed) {
      await device.restrictWorkers(compilePolicy('worker', { uringFds: backend.ringFds }).program);
      sampler?.jailed(report.rlimits.nofile);
      // Jailed, unlink fails with EPERM: the reaper removes the socket file once lgnet is gone.
      server.removeSocketOnClose = false;
    }
    log.info({ jail: report }, report.sandboxed ? 'jailed' : 'not jailed (--no-sandbox)');
  } catch (e) {
    await closeMetrics();
    await server.close();
    await closeDevice();
    throw e;
  }
  // ─────────────────────────────────────────────────────────────────────────────────────────────────

  let stopping: Promise<void> | null = null;
  return {
    server,
    device,
    tap: backend.name,
    tapFds: backend.fds,
    metricsListener: listener,
    apiListener: api,
    stop() {
      stopping ??= (async () => {
        await closeMetrics();
        await server.close(); // drops the connection: rings stop, used rings flushed, fds closed
        await closeDevice(); // workers gone, memory unmapped, tap closed
      })();
      return stopping;
    },
  };
}

/** `lgnet serve`: steps 2–5. */
export async function serve(opts: ServeOptions): Promise<void> {
  if (opts.printPolicy) {
    process.stdout.write(formatPolicy() + '\n');
    return;
  }
  const log = createLogger({ level: opts.logLevel });
  if (opts.listenFds) {
    keepFromChildren(opts.listenFds.fds); // not open: said below when it is the one served
    const metricsFd = opts.metricsListen?.kind === 'fd' ? opts.metricsListen.fd : undefined;
    const apiFd = opts.api?.kind === 'fd' ? opts.api.fd : undefined;
    log.info({ fds: opts.listenFds.fds, names: opts.listenFds.names, serving: opts.socketFd, ...(metricsFd !== undefined ? { metrics: metricsFd } : {}), ...(apiFd !== undefined ? { api: apiFd } : {}) }, 'sockets handed over by a service manager (LISTEN_FDS)');
  }
  // A service manager's socket (systemd Type=notify) is connected now: the jail forbids it later.
  const notifier = ServiceNotifier.fromEnv(log);
  let reused = reuseStoredTap(opts, notifier, log);
  let s: Serving;
  try {
    try {
      s = await startServing(reused ? { ...opts, ...reused } : opts, log);
    } catch (e) {
      // Stored fds whose tap is gone (deleted while no lgnet held it) or changed: give them up and
      // make the tap anew, rather than fail each restart on them.
      if (!reused || (e as { code?: string }).code !== NET_ERROR.BAD_TAP_FD) throw e;
      giveUpStored(reused.tapFds.map((fd, pair) => ({ fd, name: tapFdName(reused!.tap, pair) })), (e as Error).message, notifier, log);
      reused = undefined;
      s = await startServing(opts, log);
    }
  } catch (e) {
    const err = e as { message: string; code?: string; errno?: number };
    log.error({ err: err.message, code: err.code }, 'lgnet serve could not start');
    notifier?.failed(`could not start: ${err.message}`, err.errno);
    process.exit(1);
  }
  let signalled = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) {
      log.warn({ signal: sig }, 'second signal: exiting at once');
      process.exit(1);
    }
    signalled = true;
    log.info({ signal: sig }, 'stopping');
    notifier?.stopping(`stopping on ${sig}`);
    s.stop().then(
      () => {
        notifier?.close();
        log.info({}, 'stopped');
        process.exit(0);
      },
      (e: unknown) => {
        log.error({ err: (e as Error).message }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // SIGUSR1: drop the front-end's connection, as if it had broken. A VMM that reconnects (QEMU
  // reconnect=N, or lgnet --client retrying) comes back and sets the device up anew: a way to make it
  // renegotiate, and to exercise reconnects (npm run soak).
  process.on('SIGUSR1', () => {
    const c = s.server.connection;
    log.info({ signal: 'SIGUSR1', connected: c !== null }, 'dropping the front-end connection on request');
    c?.drop('SIGUSR1: dropped on request');
  });
  // SIGUSR2: log where every queue stands in its ring (NetDevice.inspect; `lgnet stats --queues` shows
  // the same over --metrics-listen), for an operator who has only the log. (SIGUSR1 is taken above.)
  process.on('SIGUSR2', () => {
    s.device.inspect().then(
      (queues) => log.info({ signal: 'SIGUSR2', queues }, 'queues'),
      (e: unknown) => log.warn({ signal: 'SIGUSR2', err: (e as Error).message }, 'queues could not be read'),
    );
  });
  // A tap lgnet made goes into the manager's fd store before READY=1, so that a crash from then on
  // leaves it to the next lgnet; one handed to lgnet is its maker's, and a reused one is there already.
  if (notifier && (notifier.fdStoreMax > 0 || opts.fdStore) && !opts.tapFds && !reused) storeTap(s, notifier, notifier.fdStoreMax || Infinity, log);
  else if (opts.fdStore && !notifier) log.warn({ code: FDSTORE_CODE.NO_MANAGER }, '--fd-store without a service manager (NOTIFY_SOCKET): nothing keeps the tap, and it goes when lgnet does');
  // Ready only once the signals are handled: a manager may send SIGTERM the moment it hears.
  const metricsAt = s.metricsListener ? formatListenAddress(s.metricsListener.address) : undefined;
  const apiAt = s.apiListener?.path;
  process.stdout.write(`lgnet ready socket=${s.server.path} tap=${s.tap} queues=${opts.queues} mode=${opts.client ? 'client' : 'server'}${metricsAt ? ` metrics=${metricsAt}` : ''}${apiAt ? ` api=${apiAt}` : ''}\n`);
  log.info({ socket: s.server.path, tap: s.tap, queues: opts.queues, client: opts.client, ...(metricsAt ? { metrics: metricsAt } : {}), ...(apiAt ? { api: apiAt } : {}), ...(notifier ? { notify: notifier.address, watchdogUsec: notifier.watchdogUsec } : {}) }, 'ready');
  if (notifier) {
    // What `systemctl status` shows; a front-end may have connected already, during the jail's setup.
    const pairs = `tap ${s.tap}, ${opts.queues} queue pair${opts.queues > 1 ? 's' : ''}`;
    const now = (): string => (s.server.connection ? `${pairs}: serving a front-end on ${s.server.path}` : `${pairs}: ${opts.client ? 'connecting to' : 'waiting for a front-end on'} ${s.server.path}`);
    notifier.ready(now());
    s.server.on('connection', () => notifier.status(now()));
    s.server.on('disconnect', () => notifier.status(now()));
  }
}

/**
 * Marks fds a service manager handed over close-on-exec, as sd_listen_fds does, so that no child of
 * lgnet (the socket reaper) inherits them. One not open is left for its user to report.
 */
function keepFromChildren(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native.setCloexec(fd, true);
    } catch { /* not open */ }
  }
}

/**
 * The tap queue fds the manager's fd store handed back, when they are all of this tap's pairs (then
 * served as --tap-fd is, on the interface they hold); otherwise they are given up and the tap is made
 * anew. undefined when none are served.
 */
function reuseStoredTap(opts: ServeOptions, notifier: ServiceNotifier | null, log: Logger): { tap: string; tapFds: number[] } | undefined {
  const h = opts.storedTapFds;
  if (!h) return undefined;
  keepFromChildren(h.fds); // not open: TapBackend says so if it is served
  const t = opts.tapFds
    ? { stale: storedTapFds(h), why: '--tap-fd names the tap to serve' }
    : takeStoredTaps(h, opts.tap, opts.queues);
  if (t.fds && t.tap !== undefined) {
    log.info({ code: FDSTORE_CODE.KEPT, tap: t.tap, fds: t.fds }, "tap kept across the restart: its queue fds came back from the service manager's fd store");
    return { tap: t.tap, tapFds: t.fds };
  }
  giveUpStored(t.stale, t.why ?? 'not this tap', notifier, log);
  return undefined;
}

/** Closes stored tap fds lgnet will not serve and takes them out of the manager's store. */
function giveUpStored(stale: readonly StoredFd[], why: string, notifier: ServiceNotifier | null, log: Logger): void {
  for (const x of stale) {
    notifier?.removeStoredFds(x.name);
    try {
      native.close(x.fd);
    } catch { /* not open */ }
  }
  log.warn({ code: FDSTORE_CODE.STALE, names: stale.map((x) => x.name), why }, "tap fds from the service manager's fd store not served: closed and taken out of the store; the tap is made anew");
}

/** Hands a duplicate of each of the tap's queue fds to the manager's fd store (FDSTORE=1). */
function storeTap(s: Serving, notifier: ServiceNotifier, max: number, log: Logger): void {
  const names = s.tapFds.map((_, pair) => tapFdName(s.tap, pair));
  if (max < s.tapFds.length) {
    log.warn({ code: FDSTORE_CODE.TOO_SMALL, fdStoreMax: max, needs: s.tapFds.length }, `the service manager keeps ${max} fd(s) for lgnet, fewer than the tap's ${s.tapFds.length} queues: none are stored, and the tap goes when lgnet does (FileDescriptorStoreMax=${s.tapFds.length} or more keeps it)`);
    return;
  }
  let stored = 0;
  s.tapFds.forEach((fd, pair) => void (notifier.storeFds(names[pair]!, [fd]) && stored++));
  if (stored === names.length) log.info({ tap: s.tap, names }, "tap queue fds kept in the service manager's fd store: a restart of lgnet serves the same tap");
}

/** `lgnet stats`: reads a running lgnet's endpoint until Ctrl-C (or once). Exit 1 when it cannot. */
export async function stats(opts: StatsOptions): Promise<void> {
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    await runStats(opts, process.stdout, stop.signal);
  } catch (e) {
    process.stderr.write(`lgnet stats: ${(e as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** `lgnet rate-limit`: shows or changes a running lgnet's rate limits. Exit 1 when it cannot. */
export async function rateLimit(opts: RateLimitOptions): Promise<void> {
  try {
    await runRateLimit(opts, process.stdout);
  } catch (e) {
    const err = e as { message: string; code?: string };
    process.stderr.write(`lgnet rate-limit: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
    process.exitCode = 1;
  }
}

/** `lgnet describe`: the vhost-user back-end JSON file naming this installation's lgnet-vhost-user. */
export function describe(): void {
  process.stdout.write(JSON.stringify(backendDescription(), null, 2) + '\n');
}

/** Runs the CLI on argv (node, script, ...args). */
export async function main(argv: string[] = process.argv): Promise<void> {
  // The vhost-user conventions: --print-capabilities answers and exits 0 whatever else the command
  // line holds, so it is looked for before any option is parsed (and a bad one refused).
  if (argv[2] === 'serve' && argv.slice(3).includes('--print-capabilities')) {
    process.stdout.write(JSON.stringify(CAPABILITIES) + '\n');
    return;
  }
  await buildCli({ serve, stats, rateLimit, describe }).parseAsync(argv);
}

function isEntry(): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  try {
    return realpathSync(arg) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntry()) {
  main().catch((e: unknown) => {
    process.stderr.write(`lgnet: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
