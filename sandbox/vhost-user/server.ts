/**
 * The vhost-user back-end: a unix socket on which one front-end (QEMU, cloud-hypervisor, DPDK
 * virtio-user, the harness) at a time describes guest memory and virtqueues, and the device turns
 * them into running queues. This file is the server's lifetime and its public API; the rest sits in:
 *
 *   server.ts       listen (or connect, in client mode), one connection at a time, close
 *   connection.ts   one front-end's session: read and check each message, NEED_REPLY, the broken state
 *   handlers.ts     the dispatch table: one small handler per request
 *   hooks.ts        DeviceHooks, the device seam (netDeviceHooks adapts a NetDevice)
 *   mem-table.ts    SET_MEM_TABLE, ADD/REM_MEM_REG → the device's guest memory
 *   vrings.ts       SET_VRING_* → the ring state machine → device queues
 *   inflight.ts     GET/SET_INFLIGHT_FD: the shared inflight buffer
 *   messages.ts     wire codecs and request names; errors.ts: VhostUserError codes; fds.ts: closing
 *
 * A refused message drops only its connection: rings stopped, fds closed, device reset, guest memory
 * released; the server goes on (accepts the next connection, or reconnects in client mode).
 * Everything runs on the main thread's event loop; nothing blocks it (the sockets are nonblocking, the
 * device's start/stop are promises). Workers are the device's business.
 * Spec: QEMU docs/interop/vhost-user.rst, "Introduction" (the back-end as socket server or client),
 * "Communication". Design: DESIGN.md "Untrusted input", STYLE.md §4/§12.
 */
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import * as native from '../../native/index.ts';
import { LogLimiter } from '../../device/log-limit.ts';
import { silentLogger, type Logger } from '../log.ts';
import { Connection, createServerMetrics, type ServerMetrics } from './connection.ts';
import { VU, VhostUserError } from './errors.ts';
import type { DeviceHooks } from './hooks.ts';
import { protocolMask } from './messages.ts';

// The public surface of the back-end stays importable from here (sandbox/main.ts, index.ts, tests).
export { Connection, createServerMetrics, type ConnectionOwner, type ServerMetrics } from './connection.ts';
export { netDeviceHooks, type DeviceHooks } from './hooks.ts';

/**
 * Protocol features lgnet offers by default. CONFIG is not among them: QEMU's virtio-net keeps the
 * config space on its side (it reads a back-end's only for vhost-vdpa), refuses CONFIG for a net
 * back-end and warns about it at every connection. Front-ends that do read a net back-end's config
 * (cloud-hypervisor's vhost-user-net, UML's virtio_uml) get it with `config: true`.
 */
export const OFFERED_PROTOCOL_FEATURES: bigint = protocolMask('MQ', 'REPLY_ACK', 'NET_MTU', 'CONFIGURE_MEM_SLOTS', 'STATUS', 'INFLIGHT_SHMFD', 'RARP', 'LOG_SHMFD');

const CONFIG_BIT = protocolMask('CONFIG');
/** Offered with a device that offers VIRTIO_F_ACCESS_PLATFORM: the back-end channel, for IOTLB misses. */
const BACKEND_CHANNEL_BITS = protocolMask('SLAVE_REQ', 'REPLY_ACK');
const ACCESS_PLATFORM_BIT = 1n << 33n;
/** Offered only with a userfaultfd device (VhostUserServerOptions.userfaultfd). */
const PAGEFAULT_BIT = protocolMask('PAGEFAULT');

/** Memory slots offered through GET_MAX_MEM_SLOTS (ADD_MEM_REG). */
export const DEFAULT_MAX_MEM_SLOTS = 32;

export interface VhostUserServerOptions {
  device: DeviceHooks;
  /** The socket path. With `listenFd`, only the socket's name in logs (default: the path it is bound to). */
  path?: string;
  /**
   * A listening AF_UNIX stream socket another process made and handed over (systemd socket
   * activation, a manager that sets the socket's owner and mode): served instead of binding `path`.
   * Checked at start() (VU_BAD_LISTEN_FD, and it is left open); from then on the server owns it
   * (nonblocking, close-on-exec, closed by close()) and never unlinks its file, which is the
   * maker's. Server mode only.
   */
  listenFd?: number;
  /** Connect to `path` (the VMM listens) instead of listening on it. */
  client?: boolean;
  /** Client mode: delay between connection attempts. Default 1000 ms. */
  reconnectMs?: number;
  maxMemSlots?: number;
  /** The protocol features to offer. Default OFFERED_PROTOCOL_FEATURES. */
  protocolFeatures?: bigint;
  /**
   * Also offer PROTOCOL_F_CONFIG (GET/SET_CONFIG), or (false) take it out of `protocolFeatures`.
   * Default: as `protocolFeatures` says, so off with the default set.
   */
  config?: boolean;
  /**
   * close() removes the socket file. Default true. False when another process removes it: a jailed
   * `lgnet serve` may not unlink, and its socket reaper does it once the process is gone.
   */
  removeSocketOnClose?: boolean;
  logger?: Logger;
  /** How long the rest of a message may take to arrive after its header. Default 2000 ms. */
  payloadTimeoutMs?: number;
  /**
   * An open /dev/userfaultfd (native.userfaultfdDevice(), opened before any jail): offer postcopy
   * migration (PROTOCOL_F_PAGEFAULT), each POSTCOPY_ADVISE making a userfaultfd from it. The server
   * does not close it. Default: postcopy is not offered.
   */
  userfaultfd?: number;
}

// ---- the server ------------------------------------------------------------------------------------

/**
 * Serves one front-end at a time on a unix socket. Events: `connection` (Connection), `disconnect`
 * ({connection, error?}), `refused` (VhostUserError), `listening`.
 */
export class VhostUserServer extends EventEmitter {
  readonly path: string;
  readonly client: boolean;
  readonly log: Logger;
  readonly maxMemSlots: number;
  readonly protocolOffered: bigint;
  readonly payloadTimeoutMs: number;
  /** VhostUserServerOptions.userfaultfd, or -1 (postcopy not offered). */
  readonly userfaultfd: number;
  /**
   * close() removes the socket file (see VhostUserServerOptions). Settable until close(): `lgnet serve`
   * clears it once it is jailed.
   */
  removeSocketOnClose: boolean;
  readonly metrics: ServerMetrics = createServerMetrics();
  private readonly device: DeviceHooks;
  private readonly reconnectMs: number;
  private listenFd = -1;
  /** VhostUserServerOptions.listenFd, until start() takes it. */
  private handedFd: number;
  private listenPoller: native.FdPoller | null = null;
  private conn: Connection | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private unsubscribeBroken: (() => void) | null = null;

  constructor(opts: VhostUserServerOptions) {
    super();
    this.device = opts.device;
    this.client = opts.client === true;
    if (opts.listenFd !== undefined && this.client) throw new RangeError('listenFd is a listening socket: server mode only');
    if (opts.listenFd === undefined && !opts.path) throw new RangeError('a socket path, or listenFd, is needed');
    this.handedFd = opts.listenFd ?? -1;
    this.path = opts.path ?? (opts.listenFd !== undefined ? listenName(opts.listenFd) : '');
    this.reconnectMs = opts.reconnectMs ?? 1000;
    this.maxMemSlots = opts.maxMemSlots ?? DEFAULT_MAX_MEM_SLOTS;
    const protocol = opts.protocolFeatures ?? OFFERED_PROTOCOL_FEATURES;
    const offered = opts.config === true ? protocol | CONFIG_BIT : opts.config === false ? protocol & ~CONFIG_BIT : protocol;
    this.userfaultfd = opts.userfaultfd ?? -1;
    const withPagefault = this.userfaultfd >= 0 ? offered | PAGEFAULT_BIT : offered & ~PAGEFAULT_BIT;
    // A device behind an IOMMU asks for translations on the back-end channel, and QEMU insists on
    // REPLY_ACK with it: both come with ACCESS_PLATFORM, and the channel only with it.
    this.protocolOffered = (opts.device.offered & ACCESS_PLATFORM_BIT) !== 0n ? withPagefault | BACKEND_CHANNEL_BITS : withPagefault & ~protocolMask('SLAVE_REQ');
    this.removeSocketOnClose = opts.listenFd === undefined && (opts.removeSocketOnClose ?? true);
    this.payloadTimeoutMs = opts.payloadTimeoutMs ?? 2000;
    this.log = (opts.logger ?? silentLogger).child({ component: 'vhost-user', socket: this.path });
  }

  /** The current connection, if a front-end is attached. */
  get connection(): Connection | null {
    return this.conn;
  }

  /**
   * Server mode: listens on the path (replacing a stale socket file, refusing a live one). Client mode:
   * starts connecting, retrying every reconnectMs until the VMM listens.
   */
  start(): void {
    this.unsubscribeBroken = this.device.onBroken((queue, code, message) => {
      // A guest can break a queue again after every reset: the lines are bounded (device/log-limit.ts).
      this.brokenLog.log(`queue ${queue}`, { level: 'warn', msg: 'device queue broken', queue, code, err: message }, (held) => ({
        level: 'warn', msg: `device queue broken: ${held} times not logged one by one, the last:`, queue, code, err: message, held,
      }));
      this.conn?.vrings.signalError(queue);
    });
    if (this.client) {
      this.tryConnect();
      return;
    }
    if (this.handedFd >= 0) {
      checkListenFd(this.handedFd);
      native.setNonblocking(this.handedFd, true);
      native.setCloexec(this.handedFd, true);
      this.listenFd = this.handedFd;
      this.handedFd = -1;
    } else {
      removeStaleSocket(this.path);
      this.listenFd = native.unixListen(this.path);
    }
    this.listenPoller = new native.FdPoller(this.listenFd, () => this.onAcceptable());
    this.listenPoller.start(native.POLL.READABLE);
    this.log.info({}, 'listening');
    this.emit('listening');
  }

  private onAcceptable(): void {
    if (this.conn || this.stopped) {
      this.listenPoller?.stop();
      return;
    }
    let fd: number;
    try {
      fd = native.unixAccept(this.listenFd);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'accept failed');
      return;
    }
    if (fd < 0) return;
    this.listenPoller?.stop(); // one front-end at a time: the next waits in the backlog
    this.attach(fd);
  }

  private tryConnect(): void {
    this.retryTimer = null;
    if (this.stopped || this.conn) return;
    let fd: number;
    try {
      fd = native.unixConnect(this.path);
    } catch (e) {
      this.log.debug({ err: (e as Error).message }, 'connect failed; retrying');
      this.retryTimer = setTimeout(() => this.tryConnect(), this.reconnectMs);
      return;
    }
    this.attach(fd);
  }

  private attach(fd: number): void {
    native.setNonblocking(fd, true);
    const c = new Connection(this, this.device, fd);
    this.conn = c;
    if (this.metrics.connections > 0) this.metrics.reconnects++;
    this.metrics.connections++;
    c.log.info({}, this.client ? 'connected to the front-end' : 'front-end connected');
    this.emit('connection', c);
  }

  /** Called by a Connection when its teardown finished. */
  connectionClosed(c: Connection, error: VhostUserError | undefined): void {
    if (this.conn !== c) return;
    this.conn = null;
    this.emit('disconnect', { connection: c, error });
    if (this.stopped) return;
    if (this.client) this.retryTimer = setTimeout(() => this.tryConnect(), this.reconnectMs);
    else this.listenPoller?.start(native.POLL.READABLE);
  }

  /** Drops the connection (device reset, fds closed), stops listening, removes the socket file (unless told not to). */
  private readonly brokenLog = new LogLimiter(({ level, msg, ...fields }) => this.log[level](fields, msg));

  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.brokenLog.close();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const c = this.conn;
    if (c) {
      c.drop('server closing');
      await c.closed;
    }
    this.listenPoller?.close();
    this.listenPoller = null;
    if (this.listenFd >= 0) {
      native.closeQuietly(this.listenFd);
      this.listenFd = -1;
      if (this.removeSocketOnClose) {
        try {
          unlinkSync(this.path);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ err: (e as Error).message }, 'could not remove the socket file');
        }
      }
    }
    this.unsubscribeBroken?.();
    this.unsubscribeBroken = null;
  }
}

/** A handed-over socket's name for logs: the path it is bound to, else `fd:N`. */
function listenName(fd: number): string {
  try {
    return native.socketInfo(fd).path || `fd:${fd}`;
  } catch {
    return `fd:${fd}`; // start() says what is wrong with it
  }
}

/** Throws VU_BAD_LISTEN_FD unless fd is a listening AF_UNIX stream socket. */
function checkListenFd(fd: number): void {
  let info: ReturnType<typeof native.socketInfo>;
  try {
    info = native.socketInfo(fd);
  } catch (e) {
    if (!(e instanceof native.NativeError)) throw e;
    throw new VhostUserError(VU.BAD_LISTEN_FD, `fd ${fd} is not a socket (${e.code}); hand over a listening AF_UNIX stream socket (socket, bind, listen)`, { cause: e });
  }
  const what = info.domain !== native.SOCK.AF_UNIX ? `a socket of domain ${info.domain}, not AF_UNIX`
    : info.type !== native.SOCK.STREAM ? `an AF_UNIX socket of type ${info.type}, not SOCK_STREAM`
    : !info.listening ? `an AF_UNIX stream socket that does not listen${info.path ? ` (bound to ${info.path})` : ''}`
    : '';
  if (what) throw new VhostUserError(VU.BAD_LISTEN_FD, `fd ${fd} is ${what}; hand over a listening AF_UNIX stream socket (socket, bind, listen)`);
}

/** Unlinks a socket file nobody listens on; refuses to touch a live socket or a non-socket file. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  let fd = -1;
  try {
    fd = native.unixConnect(path);
  } catch {
    unlinkSync(path); // ECONNREFUSED: stale
    return;
  }
  native.closeQuietly(fd);
  throw new Error(`${path} is a live socket (another back-end serves it)`);
}
