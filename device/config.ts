/**
 * virtio_net_config: the device-specific configuration space, as the driver reads it.
 *
 *   0        6        8                     10     12      16      17
 *   +--------+--------+---------------------+------+-------+-------+
 *   | mac[6] | status | max_virtqueue_pairs | mtu  | speed |duplex |
 *   +--------+--------+---------------------+------+-------+-------+
 *
 * Spec: virtio 1.2 §5.1.4. The RSS fields that follow duplex are not offered, so the space ends at 24
 * bytes with them zeroed (drivers that do not negotiate RSS never read them).
 */
import { NET_ERROR, NetConfigError } from './errors.ts';

/** Offsets inside virtio_net_config. */
export const CFG = {
  MAC: 0,
  STATUS: 6,
  MAX_VQ_PAIRS: 8,
  MTU: 10,
  SPEED: 12,
  DUPLEX: 16,
  /** Size of the space lgnet exposes. */
  SIZE: 24,
} as const;

/** config.status bits. */
export const STATUS = {
  LINK_UP: 1,
  ANNOUNCE: 2,
} as const;

/** Speed unknown (§5.1.4: 0xffffffff) and duplex unknown (0xff). */
const SPEED_UNKNOWN = 0xffffffff;
const DUPLEX_UNKNOWN = 0xff;

/** Parses "52:54:00:12:34:56" into 6 bytes; throws NetConfigError on anything else. */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(':');
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) {
    throw new NetConfigError(NET_ERROR.BAD_MAC, `MAC address "${text}" is not six hex pairs separated by colons (e.g. 52:54:00:12:34:56)`);
  }
  const mac = new Uint8Array(parts.map((p) => parseInt(p, 16)));
  if (mac[0]! & 1) throw new NetConfigError(NET_ERROR.BAD_MAC, `MAC address "${text}" is a multicast address; a NIC needs a unicast one (clear the lowest bit of the first byte)`);
  return mac;
}

/** Formats 6 bytes as "52:54:00:12:34:56". */
export function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** The live configuration space of one device. */
export class NetConfig {
  /** The raw bytes, as the driver sees them. */
  readonly bytes = new Uint8Array(CFG.SIZE);
  private readonly dv = new DataView(this.bytes.buffer);

  constructor(opts: { mac: Uint8Array; mtu: number; maxQueuePairs: number; linkUp?: boolean }) {
    this.bytes.set(opts.mac, CFG.MAC);
    this.dv.setUint16(CFG.STATUS, opts.linkUp === false ? 0 : STATUS.LINK_UP, true);
    this.dv.setUint16(CFG.MAX_VQ_PAIRS, opts.maxQueuePairs, true);
    this.dv.setUint16(CFG.MTU, opts.mtu, true);
    this.dv.setUint32(CFG.SPEED, SPEED_UNKNOWN, true);
    this.dv.setUint8(CFG.DUPLEX, DUPLEX_UNKNOWN);
  }

  get mac(): Uint8Array { return this.bytes.slice(CFG.MAC, CFG.MAC + 6); }
  set mac(mac: Uint8Array) { this.bytes.set(mac.subarray(0, 6), CFG.MAC); }
  get status(): number { return this.dv.getUint16(CFG.STATUS, true); }
  set status(v: number) { this.dv.setUint16(CFG.STATUS, v, true); }
  get linkUp(): boolean { return (this.status & STATUS.LINK_UP) !== 0; }
  set linkUp(up: boolean) { this.status = up ? this.status | STATUS.LINK_UP : this.status & ~STATUS.LINK_UP; }
  get mtu(): number { return this.dv.getUint16(CFG.MTU, true); }
  get maxQueuePairs(): number { return this.dv.getUint16(CFG.MAX_VQ_PAIRS, true); }

  /** Reads `size` bytes at `offset`; the range must lie inside the space. */
  read(offset: number, size: number): Uint8Array {
    checkRange(offset, size);
    return this.bytes.slice(offset, offset + size);
  }

  /**
   * Writes from the driver. Only the MAC is writable (legacy drivers set it this way); a write that
   * touches anything else is refused, since every other field is the device's to report.
   */
  write(offset: number, data: Uint8Array): void {
    checkRange(offset, data.length);
    if (offset < CFG.MAC || offset + data.length > CFG.MAC + 6) {
      throw new NetConfigError(NET_ERROR.CONFIG_READONLY, `config write at ${offset}+${data.length} touches read-only fields; only mac (bytes 0-5) is writable`);
    }
    this.bytes.set(data, offset);
  }
}

function checkRange(offset: number, size: number): void {
  if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 0 || offset + size > CFG.SIZE) {
    throw new NetConfigError(NET_ERROR.CONFIG_RANGE, `config access at ${offset}+${size} is outside the ${CFG.SIZE}-byte virtio_net_config`);
  }
}
