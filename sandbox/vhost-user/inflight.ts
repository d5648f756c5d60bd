/**
 * A connection's inflight buffer (GET/SET_INFLIGHT_FD): shared memory in which every ring records the
 * chains it popped and has not completed, so that chains survive a back-end restart or a reconnect
 * instead of being lost.
 *
 *   GET_INFLIGHT_FD ─▶ create(): memfd, zero-filled ─┐
 *   SET_INFLIGHT_FD ─▶ adopt(fd from the front-end) ─┴─▶ mmap ─▶ rings stop ─▶ rings restart, each recording
 *                                                        into region(index) = index × inflightQueueRegionSize(size)
 *
 * The layout inside a queue's region is vring's (InflightLog, used by the device's workers); this file
 * owns only the fd, the mapping and the shape the front-end asked for.
 * Spec: QEMU docs/interop/vhost-user.rst, "Inflight I/O tracking", GET_INFLIGHT_FD, SET_INFLIGHT_FD.
 */
import * as native from '../../native/index.ts';
import { inflightQueueRegionSize } from '../../vring/index.ts';
import { VhostUserError, VU } from './errors.ts';
import type { InflightPayload } from './messages.ts';

/** What the buffer needs from the rings: stopped while it changes, restarted (now recording) after. */
export interface InflightRings {
  stopAll(): Promise<void>;
  memoryChanged(): Promise<void>;
}

export class InflightBuffer {
  /** The shared buffer: its fd, its mapping and its shape; null until GET or SET_INFLIGHT_FD. */
  private current: { fd: number; mappingId: number; numQueues: number; queueSize: number } | null = null;
  private readonly dev: { readonly queueCount: number };
  private readonly rings: InflightRings;

  constructor(dev: { readonly queueCount: number }, rings: InflightRings) {
    this.dev = dev;
    this.rings = rings;
  }

  /** Fds held (0 or 1): for leak checks. */
  get fdCount(): number {
    return this.current ? 1 : 0;
  }

  /**
   * GET_INFLIGHT_FD: a new buffer for `numQueues` rings of `queueSize`, adopted at once. Its fd stays
   * owned here; the reply sends a copy of it.
   */
  async create(numQueues: number, queueSize: number): Promise<{ fd: number; size: number }> {
    this.checkShape(numQueues, queueSize);
    const size = inflightQueueRegionSize(queueSize) * numQueues;
    let fd: number;
    try {
      fd = native.memfdCreate('lgnet-inflight', size);
    } catch (e) {
      throw new VhostUserError(VU.BAD_INFLIGHT, `could not create the inflight buffer: ${(e as Error).message}`, { cause: e });
    }
    // Zero-filled by ftruncate: every queue's record starts empty (version 0) and is laid out when the
    // queue first starts.
    await this.adopt(fd, { mmapSize: BigInt(size), mmapOffset: 0n, numQueues, queueSize });
    return { fd, size };
  }

  /**
   * Takes the buffer `fd` (owned from now on, closed on failure): maps it, then restarts the rings that
   * run so that they record into it (and take up what it lists). Replaces an earlier one.
   */
  async adopt(fd: number, p: InflightPayload): Promise<void> {
    let mappingId: number;
    try {
      this.checkShape(p.numQueues, p.queueSize);
      const need = BigInt(inflightQueueRegionSize(p.queueSize) * p.numQueues);
      if (p.mmapSize < need || p.mmapOffset + p.mmapSize > 2n ** 53n) {
        throw new VhostUserError(VU.BAD_INFLIGHT, `inflight area of 0x${p.mmapSize.toString(16)} bytes at 0x${p.mmapOffset.toString(16)} cannot hold ${p.numQueues} queues of ${p.queueSize} (0x${need.toString(16)} bytes)`);
      }
      try {
        mappingId = native.mmap(fd, Number(p.mmapOffset), Number(p.mmapSize));
      } catch (e) {
        throw new VhostUserError(VU.BAD_INFLIGHT, `cannot map the inflight buffer: ${(e as Error).message}`, { cause: e });
      }
    } catch (e) {
      native.closeQuietly(fd);
      throw e;
    }
    await this.rings.stopAll();
    this.drop();
    this.current = { fd, mappingId, numQueues: p.numQueues, queueSize: p.queueSize };
    await this.rings.memoryChanged(); // restarts what was running, now recording
  }

  /** Unmaps and closes the buffer (teardown, or before a replacement). */
  drop(): void {
    if (!this.current) return;
    native.munmap(this.current.mappingId);
    native.closeQuietly(this.current.fd);
    this.current = null;
  }

  /** Ring `index` (of `num` entries) records into the buffer if the buffer covers it (Vrings' InflightLookup). */
  region(index: number, num: number): { mappingId: number; offset: number } | null {
    const f = this.current;
    if (!f || index >= f.numQueues) return null;
    if (num !== f.queueSize) {
      throw new VhostUserError(VU.BAD_INFLIGHT, `vring ${index} has ${num} entries; the inflight buffer was laid out for ${f.queueSize}`);
    }
    return { mappingId: f.mappingId, offset: index * inflightQueueRegionSize(f.queueSize) };
  }

  private checkShape(numQueues: number, queueSize: number): void {
    if (numQueues < 1 || numQueues > this.dev.queueCount) {
      throw new VhostUserError(VU.BAD_INFLIGHT, `inflight for ${numQueues} queues; this device has ${this.dev.queueCount}`);
    }
    if (!(queueSize > 0 && (queueSize & (queueSize - 1)) === 0)) {
      throw new VhostUserError(VU.BAD_INFLIGHT, `inflight queue size ${queueSize} must be a power of 2 in [1, 32768]`);
    }
  }
}
