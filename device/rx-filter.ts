/**
 * The receive filter that the control queue programs (virtio 1.2 §5.1.6.5.1-3): rx mode bits, the
 * unicast and multicast MAC tables, and the VLAN table. Applied in the device to frames coming from the
 * backend, before they reach the guest.
 *
 * The default is promiscuous with no VLAN filtering (what a device without a control queue does), and
 * then {@link RxFilter.passAll} lets the RX path skip the per-frame check and stay batched.
 */

/** Largest MAC table lgnet keeps per kind; the control queue refuses more (DESIGN: ≤ 64). */
export const MAX_MAC_ENTRIES = 64;

export class RxFilter {
  promisc = true;
  allmulti = false;
  alluni = false;
  nomulti = false;
  nouni = false;
  nobcast = false;
  /** VLAN filtering is on only when the driver negotiated CTRL_VLAN. */
  vlanFiltering = false;
  /** The device's own address. */
  readonly mac = new Uint8Array(6);
  /** Unicast and multicast tables, 6 bytes per entry. */
  uni: Uint8Array = new Uint8Array(0);
  multi: Uint8Array = new Uint8Array(0);
  /** One bit per VLAN id. */
  readonly vlans = new Uint32Array(4096 / 32);

  /** True when every frame passes, so the RX path may skip the check. */
  get passAll(): boolean {
    return this.promisc && !this.vlanFiltering;
  }

  /** Back to the state after reset. */
  reset(mac: Uint8Array, vlanFiltering: boolean): void {
    this.promisc = true;
    this.allmulti = this.alluni = this.nomulti = this.nouni = this.nobcast = false;
    this.mac.set(mac);
    this.uni = new Uint8Array(0);
    this.multi = new Uint8Array(0);
    this.vlans.fill(0);
    this.vlanFiltering = vlanFiltering;
  }

  /**
   * Decides whether a frame whose first 16 bytes (destination MAC, source MAC, EtherType or TPID,
   * TCI) are at `f[o..o+16)` may be delivered. `len` is the frame length.
   */
  accept(f: Uint8Array, o: number, len: number): boolean {
    if (len < 14) return false;
    if (this.vlanFiltering && len >= 16 && f[o + 12] === 0x81 && f[o + 13] === 0x00) {
      const vid = ((f[o + 14]! << 8) | f[o + 15]!) & 0x0fff;
      if (!(this.vlans[vid >>> 5]! & (1 << (vid & 31)))) return false;
    }
    if (this.promisc) return true;
    const first = f[o]!;
    if (first & 1) {
      if (isBroadcast(f, o)) return !this.nobcast;
      if (this.nomulti) return false;
      if (this.allmulti) return true;
      return inTable(this.multi, f, o);
    }
    if (this.nouni) return false;
    if (this.alluni) return true;
    if (macEquals(this.mac, 0, f, o)) return true;
    return inTable(this.uni, f, o);
  }
}

function isBroadcast(f: Uint8Array, o: number): boolean {
  return (f[o]! & f[o + 1]! & f[o + 2]! & f[o + 3]! & f[o + 4]! & f[o + 5]!) === 0xff;
}

/** Whether the 6 bytes at `ao` of `a` are those at `bo` of `b` (two MAC addresses). */
export function macEquals(a: Uint8Array, ao: number, b: Uint8Array, bo: number): boolean {
  for (let i = 0; i < 6; i++) if (a[ao + i] !== b[bo + i]) return false;
  return true;
}

function inTable(table: Uint8Array, f: Uint8Array, o: number): boolean {
  for (let e = 0; e < table.length; e += 6) if (macEquals(table, e, f, o)) return true;
  return false;
}
