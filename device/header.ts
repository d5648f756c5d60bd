/**
 * virtio_net_hdr: the per-frame header in front of every frame on both queues, and the checks lgnet
 * applies to it on TX before a frame reaches the backend.
 *
 *   0      1        2        4         6          8            10           12
 *   +------+--------+--------+---------+----------+------------+------------+
 *   |flags |gso_type|hdr_len |gso_size |csum_start|csum_offset |num_buffers |
 *   +------+--------+--------+---------+----------+------------+------------+
 *                                              legacy ends here ^  VERSION_1 / MRG_RXBUF
 *
 * Spec: virtio 1.2 §5.1.6. The header may be split across descriptors (ANY_LAYOUT); callers read it
 * through DescriptorChain.locate(), never by offset into a descriptor.
 */
import type { NegotiatedFeatures } from './features.ts';

/** Field offsets inside virtio_net_hdr. */
export const HDR = {
  FLAGS: 0,
  GSO_TYPE: 1,
  HDR_LEN: 2,
  GSO_SIZE: 4,
  CSUM_START: 6,
  CSUM_OFFSET: 8,
  NUM_BUFFERS: 10,
  /** Legacy header without num_buffers. */
  LEN_LEGACY: 10,
  /** With VERSION_1 or MRG_RXBUF. */
  LEN_V1: 12,
} as const;

/** virtio_net_hdr.flags. */
export const HDR_F = {
  NEEDS_CSUM: 1,
  DATA_VALID: 2,
  RSC_INFO: 4,
} as const;

/** virtio_net_hdr.gso_type. */
export const GSO = {
  NONE: 0,
  TCPV4: 1,
  UDP: 3,
  TCPV6: 4,
  UDP_L4: 5,
  ECN: 0x80,
} as const;

/**
 * Largest frame (after the virtio_net_hdr) a driver may hand the device: a 64 KiB GSO frame plus
 * Ethernet and VLAN headers. Anything larger is malformed.
 */
export const MAX_FRAME_LEN = 65_562;

/** Ethernet header length; the shortest frame that can be delivered at all. */
export const ETH_HLEN = 14;

/** Why a TX header was refused; each is a drop reason in the metrics. */
export const TX_DROP = {
  OK: 0,
  SHORT: 1, // chain no longer than the header + an Ethernet header
  TOO_BIG: 2, // frame over MAX_FRAME_LEN
  GSO_NOT_NEGOTIATED: 3, // gso_type the driver did not negotiate (or unknown)
  CSUM_OUT_OF_RANGE: 4, // csum_start + csum_offset + 2 beyond the frame
  CSUM_NOT_NEGOTIATED: 5, // NEEDS_CSUM without VIRTIO_NET_F_CSUM
  WRITABLE: 6, // TX chain carries device-writable buffers
  GSO_WITHOUT_CSUM: 7, // gso_type set but NEEDS_CSUM clear: segments could not get checksums
  TOO_MANY_PIECES: 8, // the frame lies in more memory pieces than one writev of a TX burst takes
} as const;

/**
 * Checks a TX header already made contiguous in `dv` at `pos`, for a frame of `frameLen` bytes (the
 * chain's readable length minus the header). Returns a TX_DROP code; OK means the frame may go out.
 */
export function checkTxHeader(dv: DataView, pos: number, frameLen: number, f: NegotiatedFeatures): number {
  if (frameLen < ETH_HLEN) return TX_DROP.SHORT;
  if (frameLen > MAX_FRAME_LEN) return TX_DROP.TOO_BIG;
  const flags = dv.getUint8(pos + HDR.FLAGS);
  const gsoType = dv.getUint8(pos + HDR.GSO_TYPE);
  if (flags & HDR_F.NEEDS_CSUM) {
    if (!f.hostCsum) return TX_DROP.CSUM_NOT_NEGOTIATED;
    const start = dv.getUint16(pos + HDR.CSUM_START, true);
    const off = dv.getUint16(pos + HDR.CSUM_OFFSET, true);
    // §5.1.6.2: the checksum is stored at csum_start + csum_offset, 2 bytes, inside the frame.
    if (start + off + 2 > frameLen) return TX_DROP.CSUM_OUT_OF_RANGE;
  }
  if (gsoType !== GSO.NONE) {
    if ((gsoType & GSO.ECN) && !f.hostEcn) return TX_DROP.GSO_NOT_NEGOTIATED;
    switch (gsoType & ~GSO.ECN) {
      case GSO.TCPV4: if (!f.hostTso4) return TX_DROP.GSO_NOT_NEGOTIATED; break;
      case GSO.TCPV6: if (!f.hostTso6) return TX_DROP.GSO_NOT_NEGOTIATED; break;
      case GSO.UDP: if (!f.hostUfo) return TX_DROP.GSO_NOT_NEGOTIATED; break;
      default: return TX_DROP.GSO_NOT_NEGOTIATED;
    }
    // GSO needs a partial checksum to finish each segment (§5.1.6.2.1).
    if (!(flags & HDR_F.NEEDS_CSUM)) return TX_DROP.GSO_WITHOUT_CSUM;
  }
  return TX_DROP.OK;
}
