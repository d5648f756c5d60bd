/**
 * The harness's vhost-user front-end: it plays QEMU towards any vhost-user net back-end (lgnet, or
 * another one). It connects to a back-end's socket (or listens, for back-ends in client mode),
 * negotiates features and protocol features, shares a GuestRam memfd with SET_MEM_TABLE, and sets up
 * the vrings a VirtioNetDriver laid out (NUM, BASE, ADDR, KICK, CALL, ENABLE), so that the driver's
 * rings are served by the back-end. sendRaw() writes arbitrary bytes and fds, for hostile tests.
 *
 *   const fe = await VhostUserFrontend.connect(path);
 *   await fe.attachDriver(drv, ram);          // negotiate, memory, rings; REPLY_ACK makes each step synchronous
 *   drv.fillRx(); drv.send(frame); ...
 *   const bases = await fe.stopDriver(drv);   // GET_VRING_BASE per queue
 *   fe.close();
 *
 * Addresses: the driver's ring addresses are guest physical; SET_VRING_ADDR takes front-end virtual
 * ones, here ram.uaddr + (gpa - ram.gpa), consistent with the region's user address in the table.
 * Behind a vIOMMU (`iommu`, VIRTIO_F_ACCESS_PLATFORM) it takes I/O virtual addresses instead, gpa +
 * iommu.offset, and so does the dirty log's used-ring address (QEMU's used_phys is then an IOVA too).
 *
 *   vhost-user-channel.ts    the socket, framing, fds, reply timeouts, FrontendError
 *   vhost-user-requests.ts   one typed method per request
 *   vhost-user-frontend.ts   (this file) connect/listen, negotiate, attachDriver, startRing, stopDriver,
 *                            startDirtyLog/stopDirtyLog (migration's dirty log; dirty-log.ts checks it)
 *   iommu.ts                 HarnessIommu, the vIOMMU: serves the back-end's IOTLB misses
 *
 * Spec: QEMU docs/interop/vhost-user.rst, the front-end's side of "Front-end message types", "Ring
 * states" (rings start disabled with VHOST_USER_F_PROTOCOL_FEATURES), "Protocol features",
 * "Migration" (dirty logging), "IOMMU support".
 */
import { existsSync, unlinkSync } from 'node:fs';
import * as native from '../native/index.ts';
import type { GuestRam } from './guest-ram.ts';
import type { VirtioNetDriver } from './virtio-net.ts';
import { F_LOG_ALL, F_PROTOCOL_FEATURES, PROTOCOL_F, protocolMask, VRING_F_LOG } from '../sandbox/vhost-user/messages.ts';
import { mask } from '../device/features.ts';
import { DirtyLog } from './dirty-log.ts';
import type { HarnessIommu } from './iommu.ts';
import { FrontendError, FRONTEND_ERROR, sleep } from './vhost-user-channel.ts';
import { FrontendRequests, type FrontendRegion } from './vhost-user-requests.ts';

// Its parts stay importable from here (harness/index.ts, tests, scripts).
export { FrontendError, FRONTEND_ERROR, type FrontendErrorCode, type ReceivedMessage } from './vhost-user-channel.ts';
export type { FrontendRegion } from './vhost-user-requests.ts';

const PROTOCOL_BIT = 1n << BigInt(F_PROTOCOL_FEATURES);
const LOG_ALL_BIT = 1n << BigInt(F_LOG_ALL);
const LOG_SHMFD_BIT = 1n << BigInt(PROTOCOL_F.LOG_SHMFD);
/** VIRTIO_F_ACCESS_PLATFORM: the device reaches memory through the platform's IOMMU. */
const ACCESS_PLATFORM_BIT = 1n << 33n;
/** What QEMU requires of a back-end behind a vIOMMU: a channel for misses, and acknowledged updates. */
const IOMMU_PROTOCOL: bigint = protocolMask('SLAVE_REQ', 'REPLY_ACK');

/** Protocol features the harness understands and asks for by default. */
export const FRONTEND_PROTOCOL_FEATURES: bigint = protocolMask('MQ', 'REPLY_ACK', 'CONFIG', 'NET_MTU', 'CONFIGURE_MEM_SLOTS', 'STATUS', 'INFLIGHT_SHMFD', 'RARP', 'LOG_SHMFD');

export interface NegotiateOptions {
  /**
   * Device features to accept, chosen from the offer (VHOST_USER_F_PROTOCOL_FEATURES is handled here).
   * Default: all offered but VIRTIO_F_IN_ORDER, which VirtioNetDriver does not implement (it reads
   * one used entry per buffer); ask for it only from a back-end that writes one (lgnet does).
   */
  features?: bigint | ((offered: bigint) => bigint);
  /** Protocol features wanted; intersected with the offer. Default FRONTEND_PROTOCOL_FEATURES. */
  protocolFeatures?: bigint;
  /**
   * Put the device behind this vIOMMU, as QEMU does for iommu_platform=on: ACCESS_PLATFORM is added to
   * the features, SLAVE_REQ and REPLY_ACK to the protocol features (FrontendError NOT_OFFERED unless the
   * back-end offers all three), and SET_SLAVE_REQ_FD follows SET_PROTOCOL_FEATURES. From then on ring
   * addresses are sent as IOVAs.
   */
  iommu?: HarnessIommu;
}

export interface Negotiated {
  /** GET_FEATURES as offered (bit 30 included). */
  offered: bigint;
  /** What SET_FEATURES sent (bit 30 included when offered). */
  features: bigint;
  protocolOffered: bigint;
  protocolFeatures: bigint;
  /** GET_QUEUE_NUM, when MQ was negotiated. */
  queueNum: number | undefined;
  /** GET_MAX_MEM_SLOTS, when CONFIGURE_MEM_SLOTS was negotiated. */
  maxMemSlots: number | undefined;
}

/** A vhost-user front-end playing the VMM: every request of FrontendRequests, and a driver's setup. */
export class VhostUserFrontend extends FrontendRequests {
  /**
   * The vIOMMU the device sits behind (set by negotiate / attachDriver with `iommu`): while set, every
   * ring address (SET_VRING_ADDR, the dirty log's) is sent as an IOVA.
   */
  iommu: HarnessIommu | null = null;

  private constructor(fd: number, timeoutMs: number) {
    super(fd, timeoutMs);
  }

  /** Connects to a back-end listening on path, retrying until it listens or timeoutMs passes. */
  static async connect(path: string, opts: { timeoutMs?: number; retryMs?: number } = {}): Promise<VhostUserFrontend> {
    const deadline = Date.now() + (opts.timeoutMs ?? 5000);
    for (;;) {
      try {
        return new VhostUserFrontend(native.unixConnect(path), opts.timeoutMs ?? 5000);
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await sleep(opts.retryMs ?? 50);
      }
    }
  }

  /** Wraps an already connected socket fd (e.g. one end of a socketpair). */
  static fromFd(fd: number, opts: { timeoutMs?: number } = {}): VhostUserFrontend {
    return new VhostUserFrontend(fd, opts.timeoutMs ?? 5000);
  }

  /** Listens on path for back-ends in client mode; accept() gives the next one that connects. */
  static listen(path: string): FrontendListener {
    return new FrontendListener(path);
  }

  // ---- driver setup

  /** The handshake QEMU does: features, protocol features, queue number, memory slots, owner. */
  async negotiate(opts: NegotiateOptions = {}): Promise<Negotiated> {
    const offered = await this.getFeatures();
    let protocolOffered = 0n;
    let protocolFeatures = 0n;
    let queueNum: number | undefined;
    let maxMemSlots: number | undefined;
    const iommu = opts.iommu;
    if (iommu) {
      if (!(offered & ACCESS_PLATFORM_BIT)) throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, 'the back-end does not offer VIRTIO_F_ACCESS_PLATFORM (bit 33)');
      if (!(offered & PROTOCOL_BIT)) throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, 'IOMMU support needs protocol features (SLAVE_REQ, REPLY_ACK)');
    }
    if (offered & PROTOCOL_BIT) {
      protocolOffered = await this.getProtocolFeatures();
      protocolFeatures = protocolOffered & ((opts.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES) | (iommu ? IOMMU_PROTOCOL : 0n));
      if (iommu && (protocolFeatures & IOMMU_PROTOCOL) !== IOMMU_PROTOCOL) {
        // QEMU refuses the device the same way: "IOMMU support requires reply-ack and slave-req protocol features".
        throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, 'IOMMU support requires the SLAVE_REQ and REPLY_ACK protocol features');
      }
      await this.setProtocolFeatures(protocolFeatures);
      if (protocolFeatures & (1n << BigInt(PROTOCOL_F.MQ))) queueNum = await this.getQueueNum();
      if (protocolFeatures & (1n << BigInt(PROTOCOL_F.CONFIGURE_MEM_SLOTS))) maxMemSlots = await this.getMaxMemSlots();
      // QEMU's order (vhost_user_backend_init): the back-end channel right after the protocol features.
      if (iommu) {
        await iommu.attach();
        this.iommu = iommu;
      }
    }
    await this.setOwner();
    const device = offered & ~PROTOCOL_BIT;
    // By default everything offered but IN_ORDER: VirtioNetDriver reads one used entry per buffer, and
    // a back-end may use one entry for a batch under IN_ORDER (DPDK's vhost does on packed rings).
    let wanted = typeof opts.features === 'function' ? opts.features(device) : (opts.features ?? device & ~mask('IN_ORDER'));
    if (iommu) wanted |= ACCESS_PLATFORM_BIT;
    const extra = wanted & ~offered;
    if (extra) throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, `features 0x${extra.toString(16)} are not offered by the back-end`);
    const features = wanted | (offered & PROTOCOL_BIT);
    await this.setFeatures(features);
    return { offered, features, protocolOffered, protocolFeatures, queueNum, maxMemSlots };
  }

  /** The front-end virtual address of a guest physical address in ram. */
  static uaddrOf(ram: GuestRam, gpa: number): number {
    return ram.uaddr + (gpa - ram.gpa);
  }

  /** The whole of ram as one region. */
  static regionOf(ram: GuestRam): FrontendRegion {
    const r = ram.region();
    return { gpa: r.gpa, size: r.size, uaddr: r.uaddr, mmapOffset: r.mmapOffset, fd: r.fd };
  }

  /**
   * Sets up a driver's queues on the back-end, as QEMU's vhost_dev_start does: negotiation (unless
   * already done), the memory table, for every queue NUM, BASE, ADDR, KICK, CALL, then ENABLE, and
   * SET_STATUS(DRIVER_OK) when STATUS was negotiated. BASE is `opts.base(index)` when given (e.g. what
   * stopDriver() returned from another back-end, passed through as is), else the queue's
   * setup.lastAvail: 0 for a fresh split ring, PACKED_RING_BASE_START (avail and used at slot 0, wrap
   * 1) for a fresh packed one — a packed ring's base is encodePackedRingBase's, as in QEMU and DPDK.
   * For packed rings ADDR carries the descriptor ring, the driver event area (avail) and the device
   * event area (used). Returns the negotiation. Afterwards post RX buffers with drv.fillRx().
   *
   * `iommu` puts the device behind that vIOMMU (see NegotiateOptions.iommu; with `negotiate: false`
   * SLAVE_REQ must already be negotiated, and SET_SLAVE_REQ_FD is sent here unless the IOMMU is
   * attached). The driver must write IOVAs (its dmaOffset equal to iommu.offset) and ram must be the
   * IOMMU's. Rings are then given as IOVAs and, once the driver is up, each used ring's translation is
   * pushed as QEMU's vhost_dev_start does (unless iommu.pushUsed is false).
   */
  async attachDriver(
    drv: VirtioNetDriver,
    ram: GuestRam,
    opts: { negotiate?: boolean; enable?: boolean; base?: (index: number) => number; protocolFeatures?: bigint; iommu?: HarnessIommu } = {},
  ): Promise<Negotiated | undefined> {
    const iommu = opts.iommu;
    if (iommu) {
      if (iommu.fe !== this || iommu.ram !== ram) throw new RangeError('attachDriver: the IOMMU belongs to another front-end or RAM');
      if (drv.dmaOffset !== iommu.offset) {
        throw new RangeError(`attachDriver: the driver writes gpa + 0x${drv.dmaOffset.toString(16)}, the IOMMU maps gpa + 0x${iommu.offset.toString(16)} (NetDriverOptions.dmaOffset)`);
      }
    }
    let neg: Negotiated | undefined;
    if (opts.negotiate !== false) {
      neg = await this.negotiate({
        features: drv.features,
        ...(opts.protocolFeatures !== undefined ? { protocolFeatures: opts.protocolFeatures } : {}),
        ...(iommu ? { iommu } : {}),
      });
    } else if (iommu) {
      if (!iommu.attached) await iommu.attach();
      this.iommu = iommu;
    }
    await this.setMemTable([VhostUserFrontend.regionOf(ram)]);
    for (const { index, setup } of drv.queueSetups()) await this.startRing(ram, index, setup, opts.base?.(index) ?? setup.lastAvail ?? 0, opts.enable !== false);
    // Like QEMU: the driver is up (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK). Some back-ends
    // (DPDK's vhost library) do not start forwarding before they see it.
    if (this.protocolFeatures & (1n << BigInt(PROTOCOL_F.STATUS))) await this.setStatus(1 | 2 | 8 | 4);
    // QEMU then pushes every used ring's translation ("vhost-kernel code requires for this").
    if (iommu?.pushUsed) for (const { setup } of drv.queueSetups()) await iommu.prefetch(setup.used);
    if (!this.replyAck) await this.barrier();
    return neg;
  }

  /** The address SET_VRING_ADDR carries for a ring area at `gpa`: its IOVA behind an IOMMU, else its front-end address. */
  ringAddress(ram: GuestRam, gpa: number): number {
    return this.iommu ? this.iommu.toIova(gpa) : VhostUserFrontend.uaddrOf(ram, gpa);
  }

  /**
   * One ring: NUM, BASE, ADDR, KICK, CALL, ENABLE (when protocol features are in use). `base` defaults
   * to setup.lastAvail, else 0; for a packed ring it is the packed encoding (encodePackedRingBase).
   * ADDR carries IOVAs while an IOMMU is set (ringAddress).
   */
  async startRing(
    ram: GuestRam,
    index: number,
    setup: { size: number; desc: number; avail: number; used: number; kickFd: number; callFd: number; lastAvail?: number },
    base = setup.lastAvail ?? 0,
    enable = true,
  ): Promise<void> {
    const u = (gpa: number) => this.ringAddress(ram, gpa);
    await this.setVringNum(index, setup.size);
    await this.setVringBase(index, base);
    await this.setVringAddr(index, { desc: u(setup.desc), used: u(setup.used), avail: u(setup.avail) });
    await this.setVringKick(index, setup.kickFd);
    await this.setVringCall(index, setup.callFd);
    // With VHOST_USER_F_PROTOCOL_FEATURES rings start disabled and must be enabled (spec, "Ring states").
    if (this.features & PROTOCOL_BIT) await this.setVringEnable(index, enable);
  }

  // ---- dirty logging (live migration)

  /** The driver and RAM whose rings startDirtyLog() switched to logging, for stopDirtyLog(). */
  private logging: { drv: VirtioNetDriver; ram: GuestRam } | null = null;

  /**
   * Starts dirty logging the way QEMU's vhost_migration_log does, on a driver already attached:
   * SET_LOG_BASE (the log, `opts.log` or a new DirtyLog covering ram), SET_FEATURES with
   * VHOST_F_LOG_ALL, then SET_VRING_ADDR with VHOST_VRING_F_LOG and log = the used ring's guest
   * physical address (its IOVA behind an IOMMU) for each of the driver's queues. Negotiates nothing: VHOST_F_LOG_ALL must be
   * offered and LOG_SHMFD negotiated (FrontendError NOT_OFFERED otherwise). `setBase: false` skips
   * SET_LOG_BASE, to switch logging on again over the log the back-end already holds.
   * Returns the log; the caller closes it (the back-end keeps its own mapping).
   */
  async startDirtyLog(drv: VirtioNetDriver, ram: GuestRam, opts: { log?: DirtyLog; setBase?: boolean } = {}): Promise<DirtyLog> {
    if (!(this.offeredFeatures & LOG_ALL_BIT)) {
      throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, `the back-end does not offer VHOST_F_LOG_ALL (bit ${F_LOG_ALL})`);
    }
    if (!(this.protocolFeatures & LOG_SHMFD_BIT)) {
      throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, 'LOG_SHMFD was not negotiated: the log cannot be shared');
    }
    const log = opts.log ?? new DirtyLog(ram);
    try {
      if (opts.setBase !== false) await this.setLogBase(log.fd, log.size, log.offset);
      await this.setFeatures(this.features | LOG_ALL_BIT);
      await this.setRingLogging(drv, ram, true);
    } catch (e) {
      if (!opts.log) log.close();
      throw e;
    }
    this.logging = { drv, ram };
    return log;
  }

  /**
   * Stops dirty logging (QEMU's order): SET_FEATURES without VHOST_F_LOG_ALL, then SET_VRING_ADDR
   * without VHOST_VRING_F_LOG for each queue startDirtyLog() switched on. A no-op when logging is off.
   */
  async stopDirtyLog(): Promise<void> {
    const l = this.logging;
    if (!l) return;
    await this.setFeatures(this.features & ~LOG_ALL_BIT);
    await this.setRingLogging(l.drv, l.ram, false);
    this.logging = null;
  }

  /** SET_VRING_ADDR for each of the driver's queues, with or without VHOST_VRING_F_LOG. */
  private async setRingLogging(drv: VirtioNetDriver, ram: GuestRam, on: boolean): Promise<void> {
    const u = (gpa: number) => this.ringAddress(ram, gpa);
    for (const { index, setup } of drv.queueSetups()) {
      // log_guest_addr is guest physical, unlike the three ring addresses (spec, "Migration"); behind an
      // IOMMU QEMU sends the driver's used-ring address, an IOVA, and the back-end translates it.
      const log = this.iommu ? this.iommu.toIova(setup.used) : setup.used;
      await this.setVringAddr(index, { desc: u(setup.desc), used: u(setup.used), avail: u(setup.avail), log, flags: on ? VRING_F_LOG : 0 });
    }
  }

  /**
   * GET_VRING_BASE for every queue of the driver: the rings stop; returns index → the back-end's ring
   * base as sent, to hand to attachDriver's `base` on the next back-end: the next avail index for a
   * split ring, the packed encoding (decodePackedRingBase: avail and used positions with their wrap
   * counters) for a packed one.
   */
  async stopDriver(drv: VirtioNetDriver): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    for (const { index } of drv.queueSetups()) out.set(index, await this.getVringBase(index));
    return out;
  }
}

/** A listening socket for back-ends in client mode. */
export class FrontendListener {
  readonly path: string;
  private readonly fd: number;
  private closed = false;

  constructor(path: string) {
    this.path = path;
    this.fd = native.unixListen(path);
    native.setNonblocking(this.fd, true);
  }

  /** Waits for the next back-end to connect. */
  async accept(timeoutMs = 5000, opts: { timeoutMs?: number } = {}): Promise<VhostUserFrontend> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const fd = native.unixAccept(this.fd);
      if (fd >= 0) return VhostUserFrontend.fromFd(fd, opts);
      if (Date.now() > deadline) throw new FrontendError(FRONTEND_ERROR.TIMEOUT, `no back-end connected to ${this.path} within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  /** Stops listening and removes the socket file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.closeQuietly(this.fd);
    if (existsSync(this.path)) {
      try {
        unlinkSync(this.path);
      } catch {
        /* gone */
      }
    }
  }
}
