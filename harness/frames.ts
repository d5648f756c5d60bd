/**
 * Frame builders and parsers for the harness's tiny guest stack: Ethernet, ARP, IPv4, UDP, ICMP echo.
 * Enough to talk to a Linux network namespace through a device, nothing more.
 */

export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;

/** Parses "aa:bb:cc:dd:ee:ff". */
export function mac(text: string): Uint8Array {
  return new Uint8Array(text.split(':').map((h) => parseInt(h, 16)));
}

/** Parses "10.0.0.1". */
export function ip4(text: string): Uint8Array {
  return new Uint8Array(text.split('.').map((d) => parseInt(d, 10)));
}

export const BROADCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** The Internet checksum of `b[off, off+len)`, with `init` folded in. */
export function inetChecksum(b: Uint8Array, off: number, len: number, init = 0): number {
  let sum = init;
  for (let i = 0; i + 1 < len; i += 2) sum += (b[off + i]! << 8) | b[off + i + 1]!;
  if (len & 1) sum += b[off + len - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

function finish(sum: number): number {
  const c = ~sum & 0xffff;
  return c === 0 ? 0xffff : c;
}

/** An Ethernet frame. */
export function ethernet(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + payload.length);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  f.set(payload, 14);
  return f;
}

/** An IPv4 header + payload, header checksum filled. */
export function ipv4(src: Uint8Array, dst: Uint8Array, proto: number, payload: Uint8Array, id = 0): Uint8Array {
  const p = new Uint8Array(20 + payload.length);
  const dv = new DataView(p.buffer);
  p[0] = 0x45;
  dv.setUint16(2, p.length);
  dv.setUint16(4, id);
  dv.setUint16(6, 0x4000); // DF
  p[8] = 64;
  p[9] = proto;
  p.set(src, 12);
  p.set(dst, 16);
  dv.setUint16(10, finish(inetChecksum(p, 0, 20)));
  p.set(payload, 20);
  return p;
}

/** UDP pseudo-header sum for IPv4. */
function pseudoSum(src: Uint8Array, dst: Uint8Array, proto: number, len: number): number {
  const ph = new Uint8Array(12);
  ph.set(src, 0);
  ph.set(dst, 4);
  ph[9] = proto;
  ph[10] = len >> 8;
  ph[11] = len & 0xff;
  return inetChecksum(ph, 0, 12);
}

export interface UdpOptions {
  srcMac: Uint8Array; dstMac: Uint8Array; srcIp: Uint8Array; dstIp: Uint8Array;
  srcPort: number; dstPort: number; payload: Uint8Array;
  /**
   * Leave the UDP checksum as the pseudo-header partial sum, for VIRTIO_NET_HDR_F_NEEDS_CSUM
   * (the device or host completes it). Default false: a full checksum.
   */
  partialCsum?: boolean;
}

/** An Ethernet/IPv4/UDP frame. Offsets: UDP header at 34, checksum at 40. */
export function udpFrame(o: UdpOptions): Uint8Array {
  const u = new Uint8Array(8 + o.payload.length);
  const dv = new DataView(u.buffer);
  dv.setUint16(0, o.srcPort);
  dv.setUint16(2, o.dstPort);
  dv.setUint16(4, u.length);
  u.set(o.payload, 8);
  const pseudo = pseudoSum(o.srcIp, o.dstIp, 17, u.length);
  dv.setUint16(6, o.partialCsum ? pseudo : finish(inetChecksum(u, 0, u.length, pseudo)));
  return ethernet(o.dstMac, o.srcMac, ETH_P_IP, ipv4(o.srcIp, o.dstIp, 17, u));
}

/** Byte offset of the UDP header in a frame made by udpFrame (for csum_start). */
export const UDP_OFFSET = 34;

/** An ICMP echo request (ping) from `srcIp` to `dstIp`: identifier `id`, sequence `seq`, 56 bytes of data. */
export function icmpEchoRequest(o: { srcMac: Uint8Array; dstMac: Uint8Array; srcIp: Uint8Array; dstIp: Uint8Array; id?: number; seq?: number }): Uint8Array {
  const icmp = new Uint8Array(64);
  const dv = new DataView(icmp.buffer);
  icmp[0] = 8;
  dv.setUint16(4, o.id ?? 0x4c47);
  dv.setUint16(6, o.seq ?? 1);
  for (let i = 8; i < icmp.length; i++) icmp[i] = i;
  dv.setUint16(2, finish(inetChecksum(icmp, 0, icmp.length)));
  return ethernet(o.dstMac, o.srcMac, ETH_P_IP, ipv4(o.srcIp, o.dstIp, 1, icmp));
}

/** Whether `frame` is an ICMP echo reply over IPv4 (20-byte header, as the host's stack sends it). */
export function isIcmpEchoReply(frame: Uint8Array): boolean {
  return frame.length >= 42 && frame[12] === ETH_P_IP >> 8 && frame[13] === (ETH_P_IP & 0xff) && frame[23] === 1 && frame[34] === 0;
}

/** An ARP reply frame. */
export function arpReply(srcMac: Uint8Array, srcIp: Uint8Array, dstMac: Uint8Array, dstIp: Uint8Array): Uint8Array {
  const a = new Uint8Array(28);
  const dv = new DataView(a.buffer);
  dv.setUint16(0, 1); // Ethernet
  dv.setUint16(2, ETH_P_IP);
  a[4] = 6;
  a[5] = 4;
  dv.setUint16(6, 2); // reply
  a.set(srcMac, 8);
  a.set(srcIp, 14);
  a.set(dstMac, 18);
  a.set(dstIp, 24);
  return ethernet(dstMac, srcMac, ETH_P_ARP, a);
}

function eq(a: Uint8Array, ao: number, b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (a[ao + i] !== b[i]) return false;
  return true;
}

/**
 * The harness's guest stack: answers ARP requests for `ip` and ICMP echo requests to it. Returns the
 * reply frame, or null if `frame` needs none.
 */
export function answer(frame: Uint8Array, self: { mac: Uint8Array; ip: Uint8Array }): Uint8Array | null {
  if (frame.length < 42) return null;
  const type = (frame[12]! << 8) | frame[13]!;
  if (type === ETH_P_ARP) {
    const op = (frame[20]! << 8) | frame[21]!;
    if (op === 1 && eq(frame, 38, self.ip)) {
      return arpReply(self.mac, self.ip, frame.slice(22, 28), frame.slice(28, 32));
    }
    return null;
  }
  if (type !== ETH_P_IP || frame[23] !== 1 || !eq(frame, 30, self.ip)) return null;
  const ihl = (frame[14]! & 0x0f) * 4;
  const icmpAt = 14 + ihl;
  const total = (frame[16]! << 8) | frame[17]!;
  if (frame[icmpAt] !== 8) return null; // echo request
  const icmp = frame.slice(icmpAt, 14 + total);
  icmp[0] = 0; // echo reply
  icmp[2] = icmp[3] = 0;
  const c = finish(inetChecksum(icmp, 0, icmp.length));
  icmp[2] = c >> 8;
  icmp[3] = c & 0xff;
  return ethernet(frame.slice(6, 12), self.mac, ETH_P_IP, ipv4(self.ip, frame.slice(26, 30), 1, icmp));
}
