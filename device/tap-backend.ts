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
 * (registered in backends.ts) turns a TapPortSpec into ports that hand whole bursts to
 * writevBatch/readvBatch, and readvMerged for MRG_RXBUF.
 */
import * as native from '../native/index.ts';
import { IovecTable } from '../native/iovec.ts';
import type { Backend, PortSpec, Ports, RxPort, TxPort } from './backend.ts';
import { mask, type NegotiatedFeatures } from './features.ts';

/** The PortSpec kind of tap ports (backends.ts registers openPorts under it). */
export const TAP_KIND = 'tap';

/** A worker's way to its queue pair's tap fd. */
export interface TapPortSpec extends PortSpec {
  readonly kind: typeof TAP_KIND;
  /** The queue pair's nonblocking tap fd. */
  readonly fd: number;
  /** The tap's virtio_net_hdr size, as the driver negotiated it (10 or 12). */
  readonly vnetHdrLen: number;
}

/** Options of {@link TapBackend}. */
export interface TapOptions {
  /** Interface name; an existing tap is attached to, otherwise one is created. Empty: the kernel picks. */
  name?: string;
  /** Queue pairs: one fd each (IFF_MULTI_QUEUE when > 1). */
  queuePairs?: number;
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
  private vnetHdrLen = 12;

  constructor(opts: TapOptions = {}) {
    this.queuePairs = opts.queuePairs ?? 1;
    const multiQueue = this.queuePairs > 1;
    this.multiQueue = multiQueue;
    let name = opts.name ?? '';
    try {
      for (let i = 0; i < this.queuePairs; i++) {
        const t = native.tapOpen({ name, vnetHdr: true, multiQueue, nonblocking: true });
        name = t.name;
        this.fds.push(t.fd);
        native.tapSetVnetHdrSize(t.fd, this.vnetHdrLen);
      }
    } catch (e) {
      this.close();
      throw e;
    }
    this.name = name;
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
      // tap is back (reattach), and the settings are applied then.
      if (!(e instanceof native.NativeError && e.errno === EBADFD)) throw e;
      this.gone = true;
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
    try {
      for (const fd of this.fds) native.tapAttach(fd, this.name, { vnetHdr: true, multiQueue: this.multiQueue });
      this.apply();
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

  port(pair: number): TapPortSpec {
    const fd = this.fds[pair];
    if (fd === undefined) throw new RangeError(`tap ${this.name} has ${this.fds.length} queue pairs; no pair ${pair}`);
    return { kind: TAP_KIND, fd, vnetHdrLen: this.vnetHdrLen };
  }

  inject(frame: Uint8Array): boolean {
    const fd = this.fds[0];
    if (fd === undefined) return false;
    const bytes = new Uint8Array(this.vnetHdrLen + frame.length); // a zero header: no offload asked
    bytes.set(frame, this.vnetHdrLen);
    return native.fdWrite(fd, bytes) === bytes.length;
  }

  close(): void {
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

class TapTxPort implements TxPort {
  private readonly fd: number;
  private rest: IovecTable | null = null;
  constructor(fd: number) { this.fd = fd; }
  send(table: IovecTable, first: number): number {
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
  constructor(fd: number, vnetHdrLen: number) { this.fd = fd; this.vnetHdrLen = vnetHdrLen; }
  recv(table: IovecTable, frames: number): number {
    return native.readvBatch(this.fd, table, frames);
  }
  recvMerged(table: IovecTable, first: number, buffers: number, frames: number, need: number, maxLen: number, peek: native.PeekList | null): number {
    return native.readvMerged(this.fd, table, first, buffers, frames, need, maxLen, peek);
  }
}

/** Worker side (OpenPorts, registered in backends.ts): the ports of a tap spec. Tap ports take nothing
 *  from the context: the kernel moves the bytes. */
export function openPorts(spec: TapPortSpec): Ports {
  return { tx: new TapTxPort(spec.fd), rx: new TapRxPort(spec.fd, spec.vnetHdrLen) };
}
