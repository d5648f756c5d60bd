/**
 * The service manager's notification protocol (systemd's sd_notify): with `Type=notify`, systemd hands
 * the service a datagram socket in NOTIFY_SOCKET and waits for `READY=1` before it counts the service
 * as started, so units ordered after lgnet (the VM) start only once the vhost-user socket accepts. With
 * `WatchdogSec=`, it also hands WATCHDOG_USEC and restarts a service that stops sending `WATCHDOG=1`.
 *
 * The socket is connected before the jail (the jail forbids socket and connect); afterwards every
 * message is one sendmsg on that fd, which the main thread's filter allows for vhost-user replies.
 * Sends never block: a message the manager's queue has no room for is counted as lost and logged.
 */
import * as native from '../native/index.ts';
import type { Logger } from './log.ts';

/** The manager's variables, read once and then removed, so that no child takes them for its own. */
const VARS = ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'FDSTORE'] as const;

/** Codes of the notifier's warnings. */
export const NOTIFY_WARN = {
  /** NOTIFY_SOCKET names what cannot be connected to (a vsock address, a missing socket). */
  UNREACHABLE: 'LGNET_NOTIFY_UNREACHABLE',
  /** A message was not sent (the manager's queue was full, or the socket went away). */
  LOST: 'LGNET_NOTIFY_LOST',
  /** WATCHDOG_USEC is not a positive integer. */
  BAD_WATCHDOG: 'LGNET_NOTIFY_BAD_WATCHDOG',
  /** FDSTORE is not a count of fds. */
  BAD_FDSTORE: 'LGNET_NOTIFY_BAD_FDSTORE',
} as const;

/** A connected notification socket; `null` from `fromEnv` when no manager asked for notifications. */
export class ServiceNotifier {
  /** The address NOTIFY_SOCKET gave ('@name' for an abstract socket). */
  readonly address: string;
  /** The watchdog interval the manager asked for, in microseconds (0: none). */
  readonly watchdogUsec: number;
  /**
   * How many fds the manager keeps for lgnet across restarts (FDSTORE, which systemd 254 and later set
   * from FileDescriptorStoreMax=); 0 when it keeps none.
   */
  readonly fdStoreMax: number;
  /** Messages not sent. */
  lost = 0;
  private fd: number;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;

  private constructor(address: string, fd: number, watchdogUsec: number, fdStoreMax: number, log: Logger) {
    this.address = address;
    this.fd = fd;
    this.watchdogUsec = watchdogUsec;
    this.fdStoreMax = fdStoreMax;
    this.log = log;
  }

  /**
   * Reads NOTIFY_SOCKET (and WATCHDOG_USEC, WATCHDOG_PID) from `env` and connects. Returns null when
   * there is no manager to tell, or its socket cannot be reached (logged: a `Type=notify` unit then
   * times out, and the log says why). The variables are removed from `env` in every case.
   */
  static fromEnv(log: Logger, env: NodeJS.ProcessEnv = process.env): ServiceNotifier | null {
    const address = env['NOTIFY_SOCKET'];
    const usec = env['WATCHDOG_USEC'];
    const pid = env['WATCHDOG_PID'];
    const store = env['FDSTORE'];
    for (const v of VARS) delete env[v];
    if (!address) return null;
    if (!address.startsWith('/') && !address.startsWith('@')) {
      log.warn({ code: NOTIFY_WARN.UNREACHABLE, address }, 'NOTIFY_SOCKET is not a unix socket path or @abstract name (vsock is not supported): the service manager will not hear that lgnet is ready');
      return null;
    }
    let watchdogUsec = 0;
    // WATCHDOG_PID names the process the watchdog is meant for; another pid's is not lgnet's to serve.
    if (usec !== undefined && (pid === undefined || Number(pid) === process.pid)) {
      if (/^\d{1,15}$/.test(usec) && Number(usec) > 0) watchdogUsec = Number(usec);
      else log.warn({ code: NOTIFY_WARN.BAD_WATCHDOG, value: usec }, 'WATCHDOG_USEC is not a positive number of microseconds: no watchdog messages are sent');
    }
    let fdStoreMax = 0;
    if (store !== undefined) {
      if (/^\d{1,9}$/.test(store)) fdStoreMax = Number(store);
      else log.warn({ code: NOTIFY_WARN.BAD_FDSTORE, value: store }, 'FDSTORE is not a count of fds: nothing is kept in the service manager\'s fd store');
    }
    let fd: number;
    try {
      fd = native.unixDgramConnect(address);
    } catch (e) {
      log.warn({ code: NOTIFY_WARN.UNREACHABLE, address, err: (e as Error).message }, 'cannot reach NOTIFY_SOCKET: the service manager will not hear that lgnet is ready');
      return null;
    }
    return new ServiceNotifier(address, fd, watchdogUsec, fdStoreMax, log);
  }

  /**
   * Sends `KEY=value` lines as one datagram, with `fds` beside them (SCM_RIGHTS). False when it was not
   * sent (counted and logged).
   */
  send(fields: Record<string, string | number>, fds: readonly number[] = []): boolean {
    if (this.fd < 0) return false;
    // A value cannot carry a newline: it would start a field of its own.
    const text = Object.entries(fields).map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`).join('\n') + '\n';
    let ok: boolean;
    let err: string | undefined;
    try {
      ok = native.sendMsg(this.fd, Buffer.from(text), fds) > 0;
    } catch (e) {
      ok = false;
      err = (e as Error).message;
    }
    if (!ok) {
      this.lost += 1;
      this.log.warn({ code: NOTIFY_WARN.LOST, address: this.address, fields: Object.keys(fields), lost: this.lost, ...(err ? { err } : {}) }, 'a message to the service manager was not sent');
    }
    return ok;
  }

  /** READY=1 with a status line; starts the watchdog messages if the manager asked for them. */
  ready(status: string): void {
    this.send({ READY: 1, STATUS: status, MAINPID: process.pid });
    if (this.watchdogUsec > 0 && !this.timer) {
      // Twice per interval, as sd_watchdog_enabled(3) advises; unref'd, so it never keeps lgnet alive.
      this.timer = setInterval(() => this.send({ WATCHDOG: 1 }), Math.max(1, Math.floor(this.watchdogUsec / 2000))).unref();
    }
  }

  /**
   * FDSTORE=1: the manager keeps a duplicate of `fds` under `name` (FDNAME) and hands it back in
   * LISTEN_FDS / LISTEN_FDNAMES when it starts lgnet again, so that what they hold outlives a crash.
   */
  storeFds(name: string, fds: readonly number[]): boolean {
    return this.send({ FDSTORE: 1, FDNAME: name }, fds);
  }

  /** FDSTOREREMOVE=1: the manager closes what it keeps under `name`. */
  removeStoredFds(name: string): boolean {
    return this.send({ FDSTOREREMOVE: 1, FDNAME: name });
  }

  /** STATUS= alone: what `systemctl status` shows. */
  status(status: string): void {
    this.send({ STATUS: status });
  }

  /** STOPPING=1: the service is shutting down; the watchdog messages end. */
  stopping(status: string): void {
    this.stopWatchdog();
    this.send({ STOPPING: 1, STATUS: status });
  }

  /** Why start-up failed, with the errno where a system call failed; the process exits next. */
  failed(status: string, errno?: number): void {
    this.send({ STATUS: status, ...(errno !== undefined && errno > 0 ? { ERRNO: errno } : {}) });
  }

  close(): void {
    this.stopWatchdog();
    if (this.fd >= 0) native.close(this.fd);
    this.fd = -1;
  }

  private stopWatchdog(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
