/**
 * A connection's side of a virtual IOMMU (VIRTIO_F_ACCESS_PLATFORM negotiated with a front-end that
 * has one, QEMU's `intel-iommu,device-iotlb=on` with `iommu_platform=on,ats=on`): the IOTLB, the
 * back-end channel the misses go out on, and the ring translation the vrings use.
 *
 *   worker: no mapping for a chain ──BACKEND_IOTLB_MSG MISS (the worker writes it: sink())──▶ front-end
 *   control queue (or a worker whose write failed) ──iotlbMiss──▶ BackendIommu.miss ──MISS──▶ front-end
 *   front-end ──IOTLB_MSG UPDATE──▶ handlers.ts ──▶ Iotlb.update ──▶ device.iotlbChanged (queues retry),
 *                                                                 vrings.iotlbChanged (rings start)
 *   front-end ──IOTLB_MSG INVALIDATE──▶ Iotlb.invalidate
 *
 * The back-end channel is the front-end's socket: lgnet only writes MISS messages to it, nonblocking,
 * never waits for an answer on it, and drops a message the socket cannot take (the queue asks again
 * after IOTLB_RETRY_MS), so a front-end that never reads cannot stall the main thread or a worker.
 * The data queues' workers write on the same fd (NetDevice.setIotlbMissSink), so the fd is closed only
 * after the device has taken the sink back (the connection awaits that first), never on a failed write.
 * Spec: vhost-user.rst, "IOMMU support", VHOST_USER_SET_BACKEND_REQ_FD, VHOST_USER_BACKEND_IOTLB_MSG.
 */
import * as native from '../../native/index.ts';
import { Iotlb } from '../../vring/index.ts';
import type { Logger } from '../log.ts';
import type { IotlbMissSink } from '../../device/iotlb-asks.ts';
import { BACKEND_REQ, encodeIotlb, encodeMessage, HEADER_SIZE, IOTLB_IOVA_AT, IOTLB_PERM_AT, IOTLB_TYPE } from './messages.ts';
import type { RingIommu } from './vrings.ts';

/** vhost-user header flags: version 1, no reply wanted. */
const VERSION = 0x1;

export class BackendIommu {
  readonly iotlb = new Iotlb();
  /** The back-end channel (SET_SLAVE_REQ_FD), or -1. */
  private fd = -1;
  /** A write on it failed: nothing more is written, and it stays open until replaced or closed. */
  private failed = false;
  /** A line was logged about a miss that could not go out: one per connection is enough. */
  private warned = false;
  private readonly log: Logger;

  constructor(log: Logger) {
    this.log = log;
  }

  /** SET_SLAVE_REQ_FD: the channel from now on (owned; a previous one is closed: take its sink back first). */
  setChannel(fd: number): void {
    native.closeQuietly(this.fd);
    native.setNonblocking(fd, true);
    this.fd = fd;
    this.failed = false;
  }

  /** Where the data queues write their misses themselves (NetDevice.setIotlbMissSink), or null without a channel. */
  sink(): IotlbMissSink | null {
    if (this.fd < 0) return null;
    const message = encodeMessage(BACKEND_REQ.IOTLB_MSG, VERSION, encodeIotlb({ iova: 0, perm: 0, type: IOTLB_TYPE.MISS }));
    return { fd: this.fd, message, iovaAt: HEADER_SIZE + IOTLB_IOVA_AT, accessAt: HEADER_SIZE + IOTLB_PERM_AT };
  }

  /** Asks the front-end for the mapping of `iova` (access: IOTLB_ACCESS, which is VHOST_ACCESS_*). */
  miss(iova: number, access: number): void {
    if (this.fd < 0) {
      this.warnOnce({ iova: `0x${iova.toString(16)}` }, 'IOTLB miss with no back-end channel (SET_SLAVE_REQ_FD): the queue waits, asking again every 200 ms');
      return;
    }
    if (this.failed) return;
    // A socket that cannot take it now (full) drops it: the queue asks again after IOTLB_RETRY_MS.
    try {
      native.sendMsg(this.fd, encodeMessage(BACKEND_REQ.IOTLB_MSG, VERSION, encodeIotlb({ iova, perm: access, type: IOTLB_TYPE.MISS })));
    } catch (e) {
      // Not closed here: the workers may hold the fd (sink()); closed with the connection, or replaced.
      this.warnOnce({ err: (e as Error).message }, 'IOTLB miss: the back-end channel failed; no more misses are sent on it');
      this.failed = true;
    }
  }

  private warnOnce(fields: Record<string, unknown>, msg: string): void {
    if (this.warned) return;
    this.warned = true;
    this.log.warn(fields, msg);
  }

  /** The vrings' translation of ring addresses through the IOTLB. */
  readonly rings: RingIommu = {
    toUaddr: (iova, len, access) => this.iotlb.toUaddr(iova, len, access),
    miss: (iova, access) => this.miss(iova, access),
  };

  /** Closes the channel and empties the table (the connection ended): take the sink back from the device first. */
  close(): void {
    native.closeQuietly(this.fd);
    this.fd = -1;
    this.failed = false;
    this.iotlb.clear();
  }
}
