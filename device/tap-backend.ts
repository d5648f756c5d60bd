/**
 * The tap backend: frames between guest memory and a Linux tap fd, with virtio_net_hdr passed through
 * (IFF_VNET_HDR), so that checksum and segmentation offloads cross without the device touching frame
 * bytes. One fd per queue pair (IFF_MULTI_QUEUE when there are several).
 *
 * The tap's header size is set to the device's (10 or 12, TUNSETVNETHDRSZ): the kernel then reads the
 * guest's header as written and, on RX, writes the first 10 bytes and skips the rest, so the device only
 * has to fill num_buffers. Receive offloads (TUNSETOFFLOAD) follow what the guest accepted: a guest
 * without GUEST_CSUM gets frames with checksums completed by the kernel.
 * Main thread: TapBackend opens the fds and applies what the guest accepted. Worker: openPorts
 * (registered in backends.ts) turns a TapPortSpec into ports that hand whole bursts to the kernel.
 *
 * Two I/O paths, chosen once, when the backend is made (TapOptions.io, else $LGNET_IO, else 'auto'):
 *
 *   uring    a restricted io_uring per queue (native/uring.ts), made here, before any jail: one
 *            io_uring_enter per TX burst (a WRITEV per frame) and per RX round (a READV per buffer)
 *   syscall  writevBatch/readvBatch: one writev/readv per frame, one native call per burst
 *
 * 'auto' is the default: where system calls are dear (page-table isolation, a paravirtualised kernel)
 * one io_uring_enter per burst moved 64-byte frames 2–3.5× faster than a writev/readv per frame, and
 * where they are cheap it measured the same (docs/PERFORMANCE.md, "io_uring"). 'syscall' opts out.
 * 'auto' takes io_uring where the kernel allows a restricted ring and falls back to syscalls where
 * it does not (no io_uring, kernel.io_uring_disabled, a seccomp filter, a kernel before 5.10); `io`
 * and `ioReason` say which and why, and each queue's `ioUring` metric says it again. MRG_RXBUF and
 * filtered RX take uringReadvMerged on io_uring (each READV gets room for the largest frame, a frame
 * that takes less is copied down behind the previous one, and the RX filter is applied natively) and
 * readvMerged, a readv per frame, on syscalls.
 *
 * A macvtap (an interface on a host NIC, as libvirt's "direct" attachment) is served the same way: its
 * queues are opens of its character device, /dev/tap<ifindex>, taken for `name` when TUNSETIFF says
 * the name is not a tun interface, or handed over as `fds`. A deleted macvtap cannot be attached
 * again, and its writes succeed and go nowhere, so the backend watches it (TUNGETIFF every
 * MACVTAP_WATCH_MS) and from then on the TX ports refuse every frame with ENOLINK: counted as the
 * backend's drops and reported, as a deleted tap's EBADFD is.
 */
import * as native from '../native/index.ts';
import { NativeError } from '../native/errors.ts';
import { IovecTable } from '../native/iovec.ts';
import type { Backend, PortContext, PortSpec, Ports, RxPort, TxPort } from './backend.ts';
import { formatMac } from './config.ts';
import { NET_ERROR, NetConfigError } from './errors.ts';
import { mask, type NegotiatedFeatures } from './features.ts';
import { macEquals } from './rx-filter.ts';
import { M } from './metrics.ts';

/** The PortSpec kind of tap ports (backends.ts registers openPorts under it). */
export const TAP_KIND = 'tap';

/** A worker's way to its queue pair's tap fd. */
export interface TapPortSpec extends PortSpec {
  readonly kind: typeof TAP_KIND;
  /** The queue pair's nonblocking tap fd. */
  readonly fd: number;
  /** The tap's virtio_net_hdr size, as the driver negotiated it (10 or 12). */
  readonly vnetHdrLen: number;
  /** The io_uring ring (native registry id) of the pair's TX queue; absent: writev per frame. */
  readonly txRing?: number;
  /** The io_uring ring of the pair's RX queue; absent: readv per frame. */
  readonly rxRing?: number;
  /** A macvtap's: element 0 turns non-zero once the macvtap is deleted (shared with the main thread). */
  readonly gone?: Int32Array;
}

/** How often a macvtap is checked for deletion; frames written between its deletion and the check go
 *  nowhere without being counted (the kernel counts nothing for a deleted interface). */
export const MACVTAP_WATCH_MS = 100;
const ENOLINK = 67;

/** How a TapBackend moves frames: io_uring, per-frame syscalls, or io_uring where it can. */
export type TapIo = 'auto' | 'uring' | 'syscall';
const TAP_IO: readonly TapIo[] = ['auto', 'uring', 'syscall'];

/** The I/O path asked for: the option, else LGNET_IO in `env`, else 'auto'. */
export function requestedIo(opt?: TapIo, env: Readonly<Record<string, string | undefined>> = process.env): TapIo {
  const fromEnv = env['LGNET_IO'];
  const v = opt ?? (fromEnv === undefined || fromEnv === '' ? 'auto' : fromEnv);
  if (!(TAP_IO as readonly string[]).includes(v)) {
    throw new NetConfigError(NET_ERROR.BAD_IO, `tap I/O ${JSON.stringify(v)}${opt === undefined ? ' (from LGNET_IO)' : ''} is not one of ${TAP_IO.join(', ')}`);
  }
  return v as TapIo;
}

/** Options of {@link TapBackend}. */
export interface TapOptions {
  /** Interface name; an existing tap is attached to, otherwise one is created. Empty: the kernel picks. */
  name?: string;
  /** Queue pairs: one fd each (IFF_MULTI_QUEUE when > 1). */
  queuePairs?: number;
  /**
   * Tap I/O: 'uring' (io_uring, or throw NET_IO_URING_UNAVAILABLE), 'syscall' (readv/writev per
   * frame), 'auto' (io_uring where available). Default: $LGNET_IO, else 'auto'. The rings are made
   * here, so a jailed process (where io_uring_setup is denied) must make its TapBackend before the jail.
   */
  io?: TapIo;
  /**
   * Tap fds already open, one per queue pair, instead of opening /dev/net/tun: handed down by a manager
   * that made the tap (as libvirt gives QEMU `-netdev tap,fds=`), so that lgnet needs no privilege
   * (CAP_NET_ADMIN) at all. Each must be attached to a tap (IFF_TAP, IFF_NO_PI) with IFF_VNET_HDR, all to
   * the same one, which has IFF_MULTI_QUEUE when there is more than one (a macvtap's fds are each an
   * open of its device, /dev/tap<ifindex>, and need no such flag); `name`, if given, must be
   * its name, and `queuePairs`, if given, their count. Refused with NET_BAD_TAP_FD; the fds are then
   * left open, as on any failure to make the backend. Once the backend is made it owns them: made
   * nonblocking (which the caller's copies share) and close-on-exec, a detached queue attached, closed
   * by close(). Two fds of one queue (dup) are the caller's mistake.
   */
  fds?: readonly number[];
  /**
   * For a macvtap: the address to give it (SIOCSIFHWADDR on its fd, as libvirt gives a direct
   * attachment the guest's MAC), which then is `guestAddress`: the lower device hands a macvtap only
   * the frames sent to its own address. It stays the macvtap's after close(). Refused with
   * NET_MACVTAP_ADDRESS (another macvlan of the same device has it; not a unicast address). Ignored
   * for a tap, whose own address is the host's end, never the guest's.
   */
  macvtapAddress?: Uint8Array;
}

/**
 * A queue of a multi-queue tap handed over detached (TUNSETQUEUE) takes no frames: attach it. EINVAL:
 * it already is.
 */
function attachQueue(fd: number, name: string): void {
  try {
    native.tapSetQueue(fd, true);
  } catch (e) {
    if (!(e instanceof NativeError)) throw e;
    if (e.code === 'EINVAL') return;
    throw new NetConfigError(NET_ERROR.BAD_TAP_FD, `tap fd ${fd}: a detached queue of ${name} that this process may not attach (${e.code}); attach it before handing it over, or make the tap this user's (ip tuntap add ${name} mode tap vnet_hdr multi_queue user U)`, { cause: e });
  }
}

/** The interface of `fds` (TapOptions.fds) and whether it is multi-queue; throws NET_BAD_TAP_FD. */
function checkTapFds(fds: readonly number[], opts: TapOptions): { name: string; multiQueue: boolean } {
  const bad = (why: string, cause?: unknown): never => {
    throw new NetConfigError(NET_ERROR.BAD_TAP_FD, `tap fds ${fds.join(',')}: ${why}`, cause === undefined ? undefined : { cause });
  };
  if (fds.length === 0) bad('none given; give one open tap fd per queue pair');
  if (opts.queuePairs !== undefined && opts.queuePairs !== fds.length) bad(`${fds.length} fds for ${opts.queuePairs} queue pairs; give one fd per pair`);
  if (new Set(fds).size !== fds.length) bad('an fd is given twice; give one fd per queue pair');
  let name = '';
  let flags = 0;
  for (const fd of fds) {
    if (!Number.isInteger(fd) || fd < 0) bad(`${fd} is not an fd number`);
    let info: { name: string; flags: number };
    try {
      info = native.tapInfo(fd);
    } catch (e) {
      if (!(e instanceof NativeError)) throw e;
      bad(e.code === 'EBADFD'
        ? `fd ${fd} is a tun fd attached to no interface; attach it (TUNSETIFF) before handing it over`
        : `fd ${fd} is not a tun fd (${e.code}); hand over an fd of /dev/net/tun attached to a tap`, e);
    }
    if (name !== '' && info!.name !== name) bad(`fd ${fd} is on ${info!.name}, the others on ${name}; all fds must be queues of one tap`);
    name = info!.name;
    flags = info!.flags;
  }
  const need = [['TAP', native.IFF.TAP], ['NO_PI', native.IFF.NO_PI], ['VNET_HDR', native.IFF.VNET_HDR]] as const;
  const missing = need.filter(([, f]) => (flags & f) === 0).map(([k]) => `IFF_${k}`);
  if (missing.length) bad(`${name} lacks ${missing.join(', ')}; make it a tap with a vnet header (ip tuntap add ${name} mode tap vnet_hdr${fds.length > 1 ? ' multi_queue' : ''}, or TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)`);
  if (opts.name && opts.name !== name) bad(`they are queues of ${name}, not of ${opts.name}`);
  return { name, multiQueue: (flags & native.IFF.MULTI_QUEUE) !== 0 };
}

/**
 * The first queue of the macvtap `name`, which TUNSETIFF refused as not a tun interface (`tunError`).
 * Throws NET_BAD_TAP, saying both why it is not a tap and why its macvtap device would not open.
 */
function openMacvtapInstead(name: string, tunError: NativeError): number {
  try {
    return native.macvtapOpen(name, { nonblocking: true }).fd;
  } catch (e) {
    if (!(e instanceof NativeError)) throw e;
    const hint = e.code === 'ENOENT'
      ? `; if ${name} is a macvtap, make that device node (mknod PATH c MAJOR MINOR, the numbers in /sys/class/net/${name}/macvtap/tap*/dev) or hand lgnet its fds (--tap-fd)`
      : '';
    throw new NetConfigError(NET_ERROR.BAD_TAP, `${name} is not a tap (${tunError.message}), nor a macvtap lgnet can open (${e.message})${hint}`, { cause: e });
  }
}

/** Gives the macvtap of `fd` the address `mac`; throws NET_MACVTAP_ADDRESS, saying what to do. */
function giveMacvtapAddress(fd: number, name: string, mac: Uint8Array): void {
  try {
    native.tapSetHwAddr(fd, mac);
  } catch (e) {
    if (!(e instanceof NativeError)) throw e;
    const why = e.code === 'EADDRINUSE' ? 'another macvtap or macvlan of the same device has it: give each guest an address of its own'
      : e.code === 'EADDRNOTAVAIL' ? 'it is not a unicast address (the first byte must be even)'
      : 'the kernel refused it';
    throw new NetConfigError(NET_ERROR.MACVTAP_ADDRESS, `macvtap ${name} cannot take the guest's address ${formatMac(mac)}: ${why} (${e.message})`, { cause: e });
  }
}

/** The interface's MAC, or undefined where the kernel will not say (it always does for taps). */
function addressOf(fd: number): Uint8Array | undefined {
  try {
    return native.tapHwAddr(fd);
  } catch {
    return undefined;
  }
}

/** A tap device opened with IFF_VNET_HDR, one fd per queue pair. */
/** What a tap's fd returns once its interface was deleted. */
const EBADFD = 77;
/** TUNSETIFF errors that mean "not now": try again later. */
const REATTACH_LATER = new Set(['EPERM', 'EACCES', 'ENOENT', 'EBUSY', 'EINVAL', 'ENODEV']);

export class TapBackend implements Backend {
  readonly kind = TAP_KIND;
  readonly queuePairs: number;
  /** The interface name the kernel chose or attached to. */
  readonly name: string;
  /** One nonblocking fd per queue pair. */
  readonly fds: number[] = [];
  /** The I/O path in use: 'uring' (a restricted io_uring per queue) or 'syscall' (readv/writev). */
  readonly io: 'uring' | 'syscall';
  /** Why: 'asked', 'available', or why io_uring could not be used (for the start-up log). */
  readonly ioReason: string;
  /** A macvtap's fds: the interface is a macvtap, not a tun tap. */
  readonly macvtap: boolean;
  /** A macvtap's MAC address: the lower device delivers it the frames sent to that address only. */
  guestAddress: Uint8Array | undefined;
  /** The macvtap's address before it was given TapOptions.macvtapAddress; undefined if it already had it. */
  readonly replacedAddress: Uint8Array | undefined;
  /** A macvtap's deletion flag, shared with the workers' TX ports (TapPortSpec.gone). */
  private readonly goneFlag: Int32Array | undefined;
  private watchTimer: ReturnType<typeof setInterval> | null = null;
  /** Per queue pair, the rings of its RX and TX queues (io 'uring'). */
  private readonly rings: Array<{ rx: native.UringRing; tx: native.UringRing }> = [];
  private vnetHdrLen = 12;

  constructor(opts: TapOptions = {}) {
    const given = opts.fds ? checkTapFds(opts.fds, opts) : null;
    this.queuePairs = opts.fds?.length ?? opts.queuePairs ?? 1;
    const want = requestedIo(opts.io);
    const multiQueue = given ? given.multiQueue : this.queuePairs > 1;
    this.multiQueue = multiQueue;
    let name = given?.name ?? opts.name ?? '';
    try {
      if (given) {
        for (const fd of opts.fds!) {
          this.fds.push(fd);
          native.setNonblocking(fd, true);
          native.setCloexec(fd, true);
          native.tapSetVnetHdrSize(fd, this.vnetHdrLen);
          if (multiQueue) attachQueue(fd, name);
        }
      }
      let macvtap = given !== null && native.isMacvtapFd(this.fds[0]!);
      for (let i = this.fds.length; i < this.queuePairs; i++) {
        let fd: number;
        if (macvtap) {
          fd = native.macvtapOpen(name, { nonblocking: true }).fd;
        } else {
          try {
            const t = native.tapOpen({ name, vnetHdr: true, multiQueue, nonblocking: true });
            name = t.name;
            fd = t.fd;
          } catch (e) {
            // TUNSETIFF refuses, with EINVAL, a name that is some other kind of interface: a macvtap?
            if (!(e instanceof NativeError && e.code === 'EINVAL' && name !== '' && i === 0)) throw e;
            fd = openMacvtapInstead(name, e);
            macvtap = true;
          }
        }
        this.fds.push(fd);
        native.tapSetVnetHdrSize(fd, this.vnetHdrLen);
      }
      this.name = name;
      this.macvtap = macvtap;
      let replaced: Uint8Array | undefined;
      if (macvtap && opts.macvtapAddress) {
        const own = addressOf(this.fds[0]!);
        if (!own || !macEquals(own, 0, opts.macvtapAddress, 0)) {
          giveMacvtapAddress(this.fds[0]!, name, opts.macvtapAddress);
          replaced = own;
        }
      }
      this.replacedAddress = replaced;
      this.guestAddress = macvtap ? addressOf(this.fds[0]!) : undefined;
      if (macvtap) {
        this.goneFlag = new Int32Array(new SharedArrayBuffer(4));
        this.watchTimer = setInterval(() => this.watch(), MACVTAP_WATCH_MS);
        this.watchTimer.unref();
      }
      const chosen = want === 'syscall' ? { io: 'syscall' as const, reason: 'asked' } : this.openRings(want);
      this.io = chosen.io;
      this.ioReason = chosen.reason;
    } catch (e) {
      if (given) this.fds.splice(0, opts.fds!.length); // not made: the caller keeps its fds
      this.close();
      throw e;
    }
  }

  /**
   * Gives the macvtap a new address (SIOCSIFHWADDR on its device), e.g. the one its guest set
   * (NetDevice `macChange`), as libvirt does with trustGuestRxFilters: only for a guest trusted with
   * it, since the lower device then hands it the frames of that address. Outside lgnet's jail, whose
   * seccomp policy does not allow it. Throws NET_MACVTAP_ADDRESS (taken by another macvtap of the
   * device, not unicast, the macvtap deleted) or, for a tap, NET_BAD_TAP.
   */
  setMacvtapAddress(mac: Uint8Array): void {
    if (!this.macvtap) throw new NetConfigError(NET_ERROR.BAD_TAP, `${this.name} is a tap, not a macvtap: its own address is the host's end, not the guest's`);
    giveMacvtapAddress(this.fds[0]!, this.name, mac);
    this.guestAddress = mac.slice();
  }

  /** Whether the macvtap was found deleted (never true for a tap, whose deletion is `gone`). */
  get deleted(): boolean {
    return this.goneFlag !== undefined && Atomics.load(this.goneFlag, 0) !== 0;
  }

  /**
   * A macvtap deleted under lgnet: TUNGETIFF fails with ENOLINK. The flag then makes every TX port
   * refuse its frames (counted, reported by the workers); the watch ends, since nothing brings a
   * deleted macvtap's queues back.
   */
  private watch(): void {
    try {
      native.tapInfo(this.fds[0]!);
    } catch (e) {
      if (!(e instanceof NativeError && e.errno === ENOLINK)) return; // closed meanwhile, or not now
      Atomics.store(this.goneFlag!, 0, 1);
      if (this.watchTimer) clearInterval(this.watchTimer);
      this.watchTimer = null;
    }
  }

  /** The fds of this backend's rings: what a jail must let io_uring_enter name (empty on 'syscall'). */
  get ringFds(): number[] {
    return this.rings.flatMap((r) => [r.rx.fd, r.tx.fd]);
  }

  /** One ring per queue (two per pair: each is one worker's), each with its pair's tap as file 0. */
  private openRings(want: 'auto' | 'uring'): { io: 'uring' | 'syscall'; reason: string } {
    try {
      for (const fd of this.fds) {
        const rx = native.uringCreate([fd]);
        try {
          this.rings.push({ rx, tx: native.uringCreate([fd]) });
        } catch (e) {
          native.uringClose(rx.id);
          throw e;
        }
      }
      return { io: 'uring', reason: want === 'uring' ? 'asked' : 'available' };
    } catch (e) {
      this.closeRings();
      if (!(e instanceof NativeError)) throw e;
      if (want === 'uring') {
        throw new NetConfigError(NET_ERROR.IO_URING_UNAVAILABLE,
          `tap ${this.name}: io_uring was asked for but ${e.message}; use io 'syscall' or 'auto' (LGNET_IO), or allow io_uring (sysctl kernel.io_uring_disabled=0)`,
          { cause: e });
      }
      return { io: 'syscall', reason: `io_uring unavailable: ${e.message}` };
    }
  }

  private closeRings(): void {
    for (const r of this.rings.splice(0)) {
      native.uringClose(r.rx.id);
      native.uringClose(r.tx.id);
    }
  }

  supportedOffloads(): bigint {
    // A vnet-header tap accepts every TX offload, and the kernel can produce every RX one.
    return mask('CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO',
      'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'HOST_UFO', 'CTRL_GUEST_OFFLOADS');
  }

  configure(f: NegotiatedFeatures): void {
    this.vnetHdrLen = f.hdrLen;
    this.offloads = tunOffloadFlags(f);
    try {
      this.apply();
    } catch (e) {
      // A deleted tap (EBADFD) is not the guest's fault: its frames are dropped and counted until the
      // tap is back (reattach), and the settings are applied then. A deleted macvtap (ENOLINK) does
      // not come back: its frames are refused from now on.
      if (!(e instanceof native.NativeError && (e.errno === EBADFD || (this.macvtap && e.errno === ENOLINK)))) throw e;
      if (e.errno === ENOLINK) Atomics.store(this.goneFlag!, 0, 1);
      else this.gone = true;
    }
  }

  /** Whether the interface was found deleted and not yet attached again. */
  gone = false;
  /** Why the last reattach() could not attach yet (an errno code), or null. */
  reattachError: string | null = null;
  private offloads = -1;
  private readonly multiQueue: boolean;

  private apply(): void {
    for (const fd of this.fds) {
      native.tapSetVnetHdrSize(fd, this.vnetHdrLen);
      if (this.offloads >= 0) native.tapSetOffload(fd, this.offloads);
    }
  }

  /**
   * TUNSETIFF again on the same fds (native.tapAttach), then the header size and offloads. False while
   * no interface of the name exists and the process may not create one (EPERM, ENOENT), or one exists
   * that does not fit (EBUSY, EINVAL); other errors throw.
   */
  reattach(): boolean {
    // A macvtap's queues are opens of a device that went with it; TUNSETIFF on them attaches nothing.
    if (this.macvtap) {
      this.reattachError = 'ENOLINK';
      return false;
    }
    try {
      for (const fd of this.fds) native.tapAttach(fd, this.name, { vnetHdr: true, multiQueue: this.multiQueue });
      this.apply();
      // TUNSETIFF attached every queue: the pairs not in use leave again.
      for (const pair of this.inactive) native.tapSetQueue(this.fds[pair]!, false);
    } catch (e) {
      if (e instanceof native.NativeError && REATTACH_LATER.has(e.code)) {
        this.reattachError = e.code;
        return false;
      }
      throw e;
    }
    this.gone = false;
    this.reattachError = null;
    return true;
  }

  /** Pairs whose tap queue is detached (setPairActive). */
  private readonly inactive = new Set<number>();
  /** drain()'s buffer, made the first time a queue is detached. */
  private drainBuf: Uint8Array | undefined;

  /**
   * Backend.setPairActive: a multi-queue tap detaches the queue of a pair the driver does not use
   * (TUNSETQUEUE), so that the kernel steers the host's frames to the queues lgnet reads; a flow hashed
   * to a queue no worker serves would otherwise wait there for good (a guest with fewer vCPUs than
   * queue pairs, a VMM that sets up fewer pairs than `--queues`). Detaching would discard what the
   * queue holds without a trace, so it is read out first and the frames are returned as dropped; only
   * those that land between that read and the detach go uncounted. While the tap is gone the state is
   * kept and applied by reattach().
   */
  setPairActive(pair: number, active: boolean): number {
    if (!Number.isInteger(pair) || pair < 1 || pair >= this.fds.length) throw new RangeError(`tap ${this.name}: no queue pair ${pair} to steer (1 to ${this.fds.length - 1})`);
    if (active !== this.inactive.has(pair)) return 0;
    let dropped = 0;
    if (!this.gone) {
      if (!active) dropped = this.drain(this.fds[pair]!);
      native.tapSetQueue(this.fds[pair]!, active);
    }
    if (active) this.inactive.delete(pair);
    else this.inactive.add(pair);
    return dropped;
  }

  /** Reads a queue's waiting frames (the fd is nonblocking) and returns how many; bounded by the queue's length. */
  private drain(fd: number): number {
    // A GSO frame is up to 64 KiB plus its header; the kernel truncates nothing we count either way.
    const buf = (this.drainBuf ??= new Uint8Array(65_536 + this.vnetHdrLen));
    let n = 0;
    // txqueuelen bounds what a queue holds (1000 by default); the cap only guards against a writer
    // that keeps the queue full while it is read.
    while (n < 1 << 16) {
      let r: number;
      try {
        r = native.fdRead(fd, buf);
      } catch (e) {
        if (!(e instanceof native.NativeError)) throw e;
        break; // the interface went away meanwhile: what it held went with it
      }
      if (r <= 0) break;
      n++;
    }
    return n;
  }

  port(pair: number): TapPortSpec {
    const fd = this.fds[pair];
    if (fd === undefined) throw new RangeError(`tap ${this.name} has ${this.fds.length} queue pairs; no pair ${pair}`);
    const r = this.rings[pair];
    return { kind: TAP_KIND, fd, vnetHdrLen: this.vnetHdrLen, ...(r ? { txRing: r.tx.id, rxRing: r.rx.id } : {}), ...(this.goneFlag ? { gone: this.goneFlag } : {}) };
  }

  inject(frame: Uint8Array): boolean {
    const fd = this.fds[0];
    if (fd === undefined || this.gone || this.deleted) return false;
    const bytes = new Uint8Array(this.vnetHdrLen + frame.length); // a zero header: no offload asked
    bytes.set(frame, this.vnetHdrLen);
    return native.fdWrite(fd, bytes) === bytes.length;
  }

  close(): void {
    if (this.watchTimer) clearInterval(this.watchTimer);
    this.watchTimer = null;
    this.closeRings(); // first: a ring holds its tap open
    for (const fd of this.fds.splice(0)) {
      try { native.close(fd); } catch { /* already closed */ }
    }
  }
}

/** TUNSETOFFLOAD flags for what the guest accepts on receive (§5.1.3.1: TSO needs GUEST_CSUM). */
export function tunOffloadFlags(f: { guestCsum: boolean; guestTso4: boolean; guestTso6: boolean; guestEcn: boolean; guestUfo: boolean }): number {
  if (!f.guestCsum) return 0;
  let flags = native.TUN_F.CSUM;
  if (f.guestTso4) flags |= native.TUN_F.TSO4;
  if (f.guestTso6) flags |= native.TUN_F.TSO6;
  if ((f.guestTso4 || f.guestTso6) && f.guestEcn) flags |= native.TUN_F.TSO_ECN;
  if (f.guestUfo) flags |= native.TUN_F.UFO;
  return flags;
}

/** A deleted macvtap's TX: its writes would succeed and go nowhere, so each frame is refused. */
function refuseGone(gone: Int32Array | null, first: number): void {
  if (gone !== null && Atomics.load(gone, 0) !== 0) {
    throw new NativeError(ENOLINK, 'writev', `frame ${first} of a burst: the macvtap was deleted`);
  }
}

class TapTxPort implements TxPort {
  private readonly fd: number;
  private readonly gone: Int32Array | null;
  private rest: IovecTable | null = null;
  constructor(fd: number, gone: Int32Array | null) { this.fd = fd; this.gone = gone; }
  send(table: IovecTable, first: number): number {
    refuseGone(this.gone, first);
    if (first === 0) return native.writevBatch(this.fd, table);
    // Resuming after a frame the kernel refused (rare): send the remaining frames from a copy.
    const rest = (this.rest ??= new IovecTable(table.maxEntries, table.maxFrames));
    rest.copyFramesFrom(table, first);
    return native.writevBatch(this.fd, rest);
  }
}

class TapRxPort implements RxPort {
  readonly fd: number;
  readonly vnetHdrLen: number;
  /** readvBatch and uringReadvBatch both report what went into each slot (table.written). */
  readonly reportsWritten = true;
  constructor(fd: number, vnetHdrLen: number) { this.fd = fd; this.vnetHdrLen = vnetHdrLen; }
  recv(table: IovecTable, frames: number): number {
    return native.readvBatch(this.fd, table, frames);
  }
  recvMerged(table: IovecTable, first: number, buffers: number, frames: number, need: number, maxLen: number, peek: native.PeekList | null): number {
    return native.readvMerged(this.fd, table, first, buffers, frames, need, maxLen, peek);
  }
}

/**
 * TX through the queue's ring: the whole burst goes in one io_uring_enter, and every frame's result
 * comes back at once. The TX service asks frame by frame past a refused one (send(table, k)), so the
 * results of the burst are kept and answered from, never sent twice.
 */
class TapUringTxPort implements TxPort {
  private readonly ring: number;
  private readonly gone: Int32Array | null;
  private rest: IovecTable | null = null;
  /** The table the last submission came from, the frame it started at, and how many it covered. */
  private last: IovecTable | null = null;
  private base = 0;
  private covered = 0;
  constructor(ring: number, gone: Int32Array | null) { this.ring = ring; this.gone = gone; }

  send(table: IovecTable, first: number): number {
    refuseGone(this.gone, first);
    if (first === 0 || table !== this.last || first < this.base || first >= this.base + this.covered) {
      // A new burst, or frames never submitted (io_uring_enter failed part-way: rare).
      const src = first === 0 ? table : this.copyRest(table, first);
      this.covered = native.uringWritevBatch(this.ring, src);
      this.last = table;
      this.base = first;
    }
    const bytes = (this.base === 0 ? table : this.rest!).bytes;
    const end = this.base + this.covered;
    let k = first;
    while (k < end && bytes[k - this.base]! >= 0) k++;
    if (k > first) return k - first;
    const errno = -bytes[first - this.base]!;
    throw new NativeError(errno, 'writev', `the tap refused frame ${first} of a burst (io_uring WRITEV)`);
  }

  private copyRest(table: IovecTable, first: number): IovecTable {
    const rest = (this.rest ??= new IovecTable(table.maxEntries, table.maxFrames));
    rest.copyFramesFrom(table, first);
    return rest;
  }
}

/** RX through the queue's ring: plain (uringReadvBatch) and merged, MRG_RXBUF or filtered (uringReadvMerged). */
class TapUringRxPort extends TapRxPort {
  private readonly ring: number;
  readonly mergedReadsAhead = true;
  constructor(fd: number, vnetHdrLen: number, ring: number) {
    super(fd, vnetHdrLen);
    this.ring = ring;
  }
  override recv(table: IovecTable, frames: number): number {
    return native.uringReadvBatch(this.ring, table, frames);
  }
  override recvMerged(table: IovecTable, first: number, buffers: number, frames: number, need: number, maxLen: number, _peek: native.PeekList | null, filter: native.RxFilterSpec | null = null): number {
    return native.uringReadvMerged(this.ring, table, first, buffers, frames, need, maxLen, filter);
  }
  dropHeld(): number {
    return native.uringRxStash(this.ring, true);
  }
}

/** Worker side (OpenPorts, registered in backends.ts): the ports of a tap spec, through the pair's rings
 *  when it has them. The context only gets the queue's `ioUring` mark: the kernel moves the bytes. */
export function openPorts(spec: TapPortSpec, ctx: PortContext): Ports {
  const uring = spec.txRing !== undefined && spec.rxRing !== undefined;
  ctx.counters[M.ioUring] = uring ? 1 : 0;
  const gone = spec.gone ?? null;
  if (!uring) return { tx: new TapTxPort(spec.fd, gone), rx: new TapRxPort(spec.fd, spec.vnetHdrLen) };
  return { tx: new TapUringTxPort(spec.txRing!, gone), rx: new TapUringRxPort(spec.fd, spec.vnetHdrLen, spec.rxRing!) };
}
