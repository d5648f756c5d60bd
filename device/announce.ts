/**
 * The announce after a live migration: a RARP frame that makes every L2 switch on the segment learn
 * the guest's MAC on its new port at once (vhost-user SEND_RARP, which QEMU sends when the guest did
 * not negotiate GUEST_ANNOUNCE and so cannot announce itself). The frame is QEMU's own self-announce:
 * a broadcast reverse request (RFC 903) naming the MAC as sender and target, with no addresses.
 */

/** EtherType of RARP. */
export const ETH_P_RARP = 0x8035;
/** Ethernet's minimum frame without FCS: the frame is padded to it. */
const MIN_FRAME = 60;

/** The RARP announce for `mac`: 60 bytes, destination broadcast. */
export function rarpFrame(mac: Uint8Array): Uint8Array {
  if (mac.length !== 6) throw new RangeError(`a MAC has 6 bytes, not ${mac.length}`);
  const f = new Uint8Array(MIN_FRAME);
  const dv = new DataView(f.buffer);
  f.fill(0xff, 0, 6); // destination: broadcast
  f.set(mac, 6);
  dv.setUint16(12, ETH_P_RARP);
  dv.setUint16(14, 1); // hardware: Ethernet
  dv.setUint16(16, 0x0800); // protocol: IPv4
  f[18] = 6; // hardware address length
  f[19] = 4; // protocol address length
  dv.setUint16(20, 3); // op: reverse request
  f.set(mac, 22); // sender hardware address; sender IP 0.0.0.0
  f.set(mac, 32); // target hardware address; target IP 0.0.0.0
  return f;
}
