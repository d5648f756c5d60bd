/**
 * The harness front-end's typed requests: one method per vhost-user request that a front-end sends,
 * each encoding its payload (sandbox/vhost-user/messages.ts), sending it over the channel and decoding
 * the reply. Nothing here chooses an order; vhost-user-frontend.ts does (negotiate, attachDriver).
 *
 *   FrontendChannel (socket, framing) ◀── FrontendRequests (this file) ◀── VhostUserFrontend (driver setup)
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "Front-end message types" (each method names its request),
 * "Memory access", "Ring states", "Inflight I/O tracking", "IOMMU support".
 */
import {
  decodeConfig, decodeInflight, decodeMemTable, decodeU64, decodeVringState, encodeConfig, encodeInflight, encodeIotlb, encodeLog, encodeMemTable,
  encodeSingleMemRegion, encodeU64, encodeVringAddr, encodeVringFile, encodeVringState, FLAGS, IOTLB_TYPE, PROTOCOL_F, REQ, requestName,
} from '../sandbox/vhost-user/messages.ts';
import * as native from '../native/index.ts';
import { FrontendChannel, FrontendError, FRONTEND_ERROR } from './vhost-user-channel.ts';

/** A region as the front-end describes it, with the fd to share. */
export interface FrontendRegion {
  gpa: number;
  size: number;
  uaddr: number;
  mmapOffset?: number;
  fd: number;
}

/** One method per request; VhostUserFrontend builds on it. */
export class FrontendRequests extends FrontendChannel {
  /** What the last SET_FEATURES sent (bit 30 included when negotiated). */
  features = 0n;
  /** What the last GET_FEATURES answered (0 before the first). */
  offeredFeatures = 0n;

  private async u64(request: number): Promise<bigint> {
    const m = (await this.request(request))!;
    if (m.payload.length !== 8) throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `${requestName(request)} reply has ${m.payload.length} bytes, not 8`);
    return decodeU64(m.payload);
  }

  async getFeatures(): Promise<bigint> {
    this.offeredFeatures = await this.u64(REQ.GET_FEATURES);
    return this.offeredFeatures;
  }

  async setFeatures(bits: bigint): Promise<void> {
    await this.request(REQ.SET_FEATURES, encodeU64(bits));
    this.features = bits;
  }

  getProtocolFeatures(): Promise<bigint> {
    return this.u64(REQ.GET_PROTOCOL_FEATURES);
  }

  async setProtocolFeatures(bits: bigint): Promise<void> {
    // REPLY_ACK is not in force until the back-end has this message: never ask for an ack here.
    await this.request(REQ.SET_PROTOCOL_FEATURES, encodeU64(bits), { needReply: false });
    this.protocolFeatures = bits;
  }

  async setOwner(): Promise<void> {
    await this.request(REQ.SET_OWNER);
  }

  async resetOwner(): Promise<void> {
    await this.request(REQ.RESET_OWNER);
  }

  async getQueueNum(): Promise<number> {
    return Number(await this.u64(REQ.GET_QUEUE_NUM));
  }

  async getMaxMemSlots(): Promise<number> {
    return Number(await this.u64(REQ.GET_MAX_MEM_SLOTS));
  }

  async setMemTable(regions: readonly FrontendRegion[]): Promise<void> {
    await this.request(REQ.SET_MEM_TABLE, encodeMemTable(regions), { fds: regions.map((r) => r.fd) });
  }

  async addMemReg(r: FrontendRegion): Promise<void> {
    await this.request(REQ.ADD_MEM_REG, encodeSingleMemRegion(r), { fds: [r.fd] });
  }

  async remMemReg(r: Omit<FrontendRegion, 'fd'>): Promise<void> {
    await this.request(REQ.REM_MEM_REG, encodeSingleMemRegion(r));
  }

  async setVringNum(index: number, num: number): Promise<void> {
    await this.request(REQ.SET_VRING_NUM, encodeVringState({ index, num }));
  }

  async setVringBase(index: number, num: number): Promise<void> {
    await this.request(REQ.SET_VRING_BASE, encodeVringState({ index, num }));
  }

  /** GET_VRING_BASE: stops the ring; returns the next avail index the back-end would process. */
  async getVringBase(index: number): Promise<number> {
    const m = (await this.request(REQ.GET_VRING_BASE, encodeVringState({ index, num: 0 })))!;
    const s = decodeVringState(m.payload);
    if (s.index !== index) throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `GET_VRING_BASE for ${index} answered for ${s.index}`);
    return s.num;
  }

  async setVringAddr(index: number, a: { desc: number; used: number; avail: number; log?: number; flags?: number }): Promise<void> {
    await this.request(REQ.SET_VRING_ADDR, encodeVringAddr({ index, ...a }));
  }

  /** fd null sends the NOFD flag (polling). */
  async setVringKick(index: number, fd: number | null): Promise<void> {
    await this.request(REQ.SET_VRING_KICK, encodeVringFile(index, fd === null), { fds: fd === null ? [] : [fd] });
  }

  async setVringCall(index: number, fd: number | null): Promise<void> {
    await this.request(REQ.SET_VRING_CALL, encodeVringFile(index, fd === null), { fds: fd === null ? [] : [fd] });
  }

  async setVringErr(index: number, fd: number | null): Promise<void> {
    await this.request(REQ.SET_VRING_ERR, encodeVringFile(index, fd === null), { fds: fd === null ? [] : [fd] });
  }

  async setVringEnable(index: number, enable: boolean): Promise<void> {
    await this.request(REQ.SET_VRING_ENABLE, encodeVringState({ index, num: enable ? 1 : 0 }));
  }

  /** GET_CONFIG (valid once PROTOCOL_F_CONFIG is negotiated); an empty reply payload (the spec's error signal) throws. */
  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const m = (await this.request(REQ.GET_CONFIG, encodeConfig({ offset, size })))!;
    if (m.payload.length === 0) throw new FrontendError(FRONTEND_ERROR.NACK, `GET_CONFIG ${offset}+${size} was refused`);
    return decodeConfig(m.payload).data;
  }

  async setConfig(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    await this.request(REQ.SET_CONFIG, encodeConfig({ offset, flags, data }));
  }

  async getStatus(): Promise<number> {
    return Number(await this.u64(REQ.GET_STATUS));
  }

  async setStatus(status: number): Promise<void> {
    await this.request(REQ.SET_STATUS, encodeU64(status));
  }

  async netSetMtu(mtu: number): Promise<void> {
    await this.request(REQ.NET_SET_MTU, encodeU64(mtu));
  }

  async sendRarp(mac: Uint8Array): Promise<void> {
    const p = new Uint8Array(8);
    p.set(mac.subarray(0, 6));
    await this.request(REQ.SEND_RARP, p);
  }

  /** GET_INFLIGHT_FD: the shared buffer's fd (the caller closes it) and its description. */
  async getInflightFd(numQueues: number, queueSize: number): Promise<{ fd: number; mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }> {
    const m = (await this.request(REQ.GET_INFLIGHT_FD, encodeInflight({ mmapSize: 0, mmapOffset: 0, numQueues, queueSize })))!;
    const p = decodeInflight(m.payload);
    if (m.fds.length !== 1) {
      for (const fd of m.fds) native.closeQuietly(fd);
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `GET_INFLIGHT_FD reply carried ${m.fds.length} fds, not 1`);
    }
    return { fd: m.fds[0]!, mmapSize: Number(p.mmapSize), mmapOffset: Number(p.mmapOffset), numQueues: p.numQueues, queueSize: p.queueSize };
  }

  async setInflightFd(fd: number, p: { mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number }): Promise<void> {
    await this.request(REQ.SET_INFLIGHT_FD, encodeInflight(p), { fds: [fd] });
  }

  /**
   * SET_LOG_BASE: the dirty log is [offset, offset+size) of the memfd `fd` (a DirtyLog's fd, size and
   * offset). With LOG_SHMFD negotiated the back-end always answers (QEMU's vhost_user_set_log_base
   * waits for that reply, and libvhost-user sends a u64 0), and this waits for it. A back-end that
   * refuses the log answers non-zero (FrontendError FRONTEND_NACK) or just drops the connection
   * (FRONTEND_CLOSED). Never asks for a REPLY_ACK: the reply of its own is the acknowledgement.
   */
  async setLogBase(fd: number, size: number | bigint, offset: number | bigint = 0): Promise<void> {
    this.sendRequest(REQ.SET_LOG_BASE, encodeLog({ mmapSize: size, mmapOffset: offset }), { fds: [fd], needReply: false });
    if (!(this.protocolFeatures & (1n << BigInt(PROTOCOL_F.LOG_SHMFD)))) return;
    const m = await this.replyInTurn(() => this.readMessage());
    for (const f of m.fds) native.closeQuietly(f);
    if (m.request !== REQ.SET_LOG_BASE || !(m.flags & FLAGS.REPLY)) {
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `expected a SET_LOG_BASE reply, got ${requestName(m.request)} flags 0x${m.flags.toString(16)}`);
    }
    // QEMU reads the reply without looking at it; a non-zero u64 can only mean a refusal.
    if (m.payload.length === 8 && decodeU64(m.payload) !== 0n) {
      throw new FrontendError(FRONTEND_ERROR.NACK, `SET_LOG_BASE was refused (reply ${decodeU64(m.payload)})`);
    }
  }

  // ---- postcopy migration (PROTOCOL_F_PAGEFAULT), the destination's side as QEMU drives it

  /**
   * POSTCOPY_ADVISE: the back-end's userfaultfd (the caller closes it). Faults of the back-end's threads
   * in its registered mappings are read from it (native.userfaultRead) and, once the page is in the
   * shared memory, woken (native.userfaultWake) at the back-end's address.
   */
  async postcopyAdvise(): Promise<number> {
    const m = (await this.request(REQ.POSTCOPY_ADVISE, new Uint8Array(0), { needReply: false }))!;
    if (m.fds.length !== 1 || m.payload.length !== 0) {
      for (const fd of m.fds) native.closeQuietly(fd);
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `POSTCOPY_ADVISE reply carried ${m.fds.length} fds and ${m.payload.length} bytes, not one fd and none`);
    }
    return m.fds[0]!;
  }

  /** POSTCOPY_LISTEN (always acknowledged, as QEMU asks). */
  async postcopyListen(): Promise<void> {
    await this.request(REQ.POSTCOPY_LISTEN, new Uint8Array(0), { needReply: true });
  }

  /** POSTCOPY_END (always acknowledged, as QEMU asks). */
  async postcopyEnd(): Promise<void> {
    await this.request(REQ.POSTCOPY_END, new Uint8Array(0), { needReply: true });
  }

  /**
   * SET_MEM_TABLE while postcopy listens: the back-end answers with the table, each region's user
   * address replaced by where the back-end mapped it, and waits for an acknowledgement (the same
   * request with a u64 0) before it touches the memory. Returns those bases, in the regions' order.
   */
  async setMemTablePostcopy(regions: readonly FrontendRegion[]): Promise<number[]> {
    this.sendRequest(REQ.SET_MEM_TABLE, encodeMemTable(regions), { fds: regions.map((r) => r.fd) });
    const m = await this.replyInTurn(() => this.readMessage());
    for (const f of m.fds) native.closeQuietly(f);
    if (m.request !== REQ.SET_MEM_TABLE || !(m.flags & FLAGS.REPLY)) {
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `expected the postcopy SET_MEM_TABLE reply, got ${requestName(m.request)} flags 0x${m.flags.toString(16)}`);
    }
    const answered = decodeMemTable(m.payload);
    if (answered.length !== regions.length || answered.some((r, i) => Number(r.gpa) !== regions[i]!.gpa)) {
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, 'the postcopy SET_MEM_TABLE reply does not list the regions sent');
    }
    this.sendRequest(REQ.SET_MEM_TABLE, encodeU64(0));
    return answered.map((r) => Number(r.uaddr));
  }

  // ---- IOMMU (VIRTIO_F_ACCESS_PLATFORM): the vIOMMU's side, as QEMU's vhost code plays it

  /**
   * SET_SLAVE_REQ_FD (needs PROTOCOL_F_SLAVE_REQ): hands the back-end its end of the back-end channel,
   * on which it sends IOTLB misses. The fd is duplicated into the back-end; the caller still closes its
   * copy.
   */
  async setBackendReqFd(fd: number): Promise<void> {
    await this.request(REQ.SET_SLAVE_REQ_FD, new Uint8Array(0), { fds: [fd] });
  }

  /**
   * IOTLB_MSG UPDATE: I/O virtual addresses [iova, iova + size) map to front-end virtual addresses from
   * uaddr, with perm 1 (read only), 2 (write only) or 3 (read/write). Acknowledged when REPLY_ACK is
   * negotiated (as QEMU asks), so the back-end holds the mapping when this resolves.
   */
  async iotlbUpdate(iova: number | bigint, size: number | bigint, uaddr: number | bigint, perm: number): Promise<void> {
    await this.request(REQ.IOTLB_MSG, encodeIotlb({ iova, size, uaddr, perm, type: IOTLB_TYPE.UPDATE }));
  }

  /** IOTLB_MSG INVALIDATE: the back-end must drop every mapping of [iova, iova + size). Acknowledged like iotlbUpdate. */
  async iotlbInvalidate(iova: number | bigint, size: number | bigint): Promise<void> {
    await this.request(REQ.IOTLB_MSG, encodeIotlb({ iova, size, perm: 0, type: IOTLB_TYPE.INVALIDATE }));
  }

  /** A cheap round trip: every earlier message has been handled when it returns (QEMU's trick without REPLY_ACK). */
  async barrier(): Promise<void> {
    await this.getFeatures();
  }
}
