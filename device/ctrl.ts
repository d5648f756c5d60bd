/**
 * The control queue (embedded mode): rx mode, MAC table and address, VLAN filter, announce ack,
 * multiqueue pairs and guest offloads. Served on the main thread: it is rare and it changes state
 * the workers then receive (the RX filter, the receive offloads).
 *
 *   readable: | class u8 | cmd u8 | command-specific data … |      writable: | ack u8 |
 *
 * Spec: virtio 1.2 §5.1.6.5. Every size is checked exactly; a bad or unsupported command answers
 * VIRTIO_NET_ERR and changes nothing. The command is copied out of guest memory once, so the guest
 * cannot change it while it is checked (the MAC table is bounded, so the copy is small).
 */
import type { DescriptorChain } from '../vring/index.ts';
import { GUEST_OFFLOAD_FEATURES, type NegotiatedFeatures } from './features.ts';
import { MAX_MAC_ENTRIES, type RxFilter } from './rx-filter.ts';

/** Command classes and commands. */
export const CTRL = {
  RX: 0, RX_PROMISC: 0, RX_ALLMULTI: 1, RX_ALLUNI: 2, RX_NOMULTI: 3, RX_NOUNI: 4, RX_NOBCAST: 5,
  MAC: 1, MAC_TABLE_SET: 0, MAC_ADDR_SET: 1,
  VLAN: 2, VLAN_ADD: 0, VLAN_DEL: 1,
  ANNOUNCE: 3, ANNOUNCE_ACK: 0,
  MQ: 4, MQ_VQ_PAIRS_SET: 0,
  GUEST_OFFLOADS: 5, GUEST_OFFLOADS_SET: 0,
} as const;

/** The ack byte. */
export const ACK = { OK: 0, ERR: 1 } as const;

/** Largest command lgnet accepts: a MAC table with 64 unicast and 64 multicast entries. */
export const MAX_CTRL_LEN = 2 + 4 + 6 * MAX_MAC_ENTRIES + 4 + 6 * MAX_MAC_ENTRIES;

/** What a control command may change; the device applies it. */
export interface CtrlTarget {
  readonly features: NegotiatedFeatures;
  readonly filter: RxFilter;
  readonly maxQueuePairs: number;
  /** The filter changed: push it to the RX workers. */
  filterChanged(): void;
  /** MAC_ADDR_SET: the device's address changed. */
  setMac(mac: Uint8Array): void;
  /** ANNOUNCE_ACK: clear config status ANNOUNCE. */
  announceAcked(): void;
  /** MQ_VQ_PAIRS_SET. */
  setQueuePairs(n: number): void;
  /** GUEST_OFFLOADS_SET: a subset of the negotiated guest offloads. */
  setGuestOffloads(bits: bigint): void;
}

/** Why a command failed, for the log; null when it succeeded. */
export type CtrlResult = { ack: number; error?: string };

/**
 * Runs one control command read from `chain`, writes the ack, and returns the result. The caller
 * completes the chain with addUsed(head, 1) (or 0 when there is no room for the ack).
 */
export function processCtrl(chain: DescriptorChain, t: CtrlTarget, buf: Uint8Array): CtrlResult {
  const r = run(chain, t, buf);
  chain.setU8(0, r.ack);
  return r;
}

function err(error: string): CtrlResult {
  return { ack: ACK.ERR, error };
}

function run(chain: DescriptorChain, t: CtrlTarget, buf: Uint8Array): CtrlResult {
  if (chain.writableLen < 1) return err('no writable byte for the ack');
  const len = chain.readableLen;
  if (len < 2) return err(`command of ${len} bytes has no class and command`);
  if (len > MAX_CTRL_LEN || len > buf.length) return err(`command of ${len} bytes exceeds ${MAX_CTRL_LEN}`);
  chain.readBytes(0, buf, 0, len);
  const dv = new DataView(buf.buffer, buf.byteOffset, len);
  const cls = buf[0]!;
  const cmd = buf[1]!;
  const data = len - 2;
  const bits = t.features.bits;
  const has = (bit: number) => (bits & (1n << BigInt(bit))) !== 0n;
  switch (cls) {
    case CTRL.RX: {
      if (!has(18)) return err('RX class without CTRL_RX');
      if (cmd > CTRL.RX_NOBCAST) return err(`unknown RX command ${cmd}`);
      if (cmd > CTRL.RX_ALLMULTI && !has(20)) return err('RX command needs CTRL_RX_EXTRA');
      if (data !== 1) return err(`RX command carries ${data} bytes, expected 1`);
      const on = buf[2]! !== 0;
      const f = t.filter;
      if (cmd === CTRL.RX_PROMISC) f.promisc = on;
      else if (cmd === CTRL.RX_ALLMULTI) f.allmulti = on;
      else if (cmd === CTRL.RX_ALLUNI) f.alluni = on;
      else if (cmd === CTRL.RX_NOMULTI) f.nomulti = on;
      else if (cmd === CTRL.RX_NOUNI) f.nouni = on;
      else f.nobcast = on;
      t.filterChanged();
      return { ack: ACK.OK };
    }
    case CTRL.MAC: {
      if (cmd === CTRL.MAC_ADDR_SET) {
        if (!has(23)) return err('MAC_ADDR_SET without CTRL_MAC_ADDR');
        if (data !== 6) return err(`MAC_ADDR_SET carries ${data} bytes, expected 6`);
        const mac = buf.slice(2, 8);
        t.setMac(mac);
        t.filter.mac.set(mac);
        t.filterChanged();
        return { ack: ACK.OK };
      }
      if (cmd !== CTRL.MAC_TABLE_SET) return err(`unknown MAC command ${cmd}`);
      if (!has(18)) return err('MAC_TABLE_SET without CTRL_RX');
      // Two virtio_net_ctrl_mac: { le32 entries; u8 macs[entries][6]; } unicast, then multicast.
      if (data < 4) return err('MAC table too short for the unicast count');
      const nUni = dv.getUint32(2, true);
      if (nUni > MAX_MAC_ENTRIES) return err(`unicast table of ${nUni} entries exceeds ${MAX_MAC_ENTRIES}`);
      const multiAt = 2 + 4 + nUni * 6;
      if (multiAt + 4 > len) return err('MAC table too short for the multicast count');
      const nMulti = dv.getUint32(multiAt, true);
      if (nMulti > MAX_MAC_ENTRIES) return err(`multicast table of ${nMulti} entries exceeds ${MAX_MAC_ENTRIES}`);
      if (multiAt + 4 + nMulti * 6 !== len) return err(`MAC table of ${len} bytes does not match ${nUni} + ${nMulti} entries`);
      t.filter.uni = buf.slice(6, 6 + nUni * 6);
      t.filter.multi = buf.slice(multiAt + 4, multiAt + 4 + nMulti * 6);
      t.filterChanged();
      return { ack: ACK.OK };
    }
    case CTRL.VLAN: {
      if (!has(19)) return err('VLAN class without CTRL_VLAN');
      if (cmd !== CTRL.VLAN_ADD && cmd !== CTRL.VLAN_DEL) return err(`unknown VLAN command ${cmd}`);
      if (data !== 2) return err(`VLAN command carries ${data} bytes, expected 2`);
      const vid = dv.getUint16(2, true);
      if (vid >= 4096) return err(`VLAN id ${vid} is not below 4096`);
      const w = vid >>> 5;
      const m = 1 << (vid & 31);
      if (cmd === CTRL.VLAN_ADD) t.filter.vlans[w]! |= m;
      else t.filter.vlans[w]! &= ~m;
      t.filterChanged();
      return { ack: ACK.OK };
    }
    case CTRL.ANNOUNCE: {
      if (!has(21)) return err('ANNOUNCE without GUEST_ANNOUNCE');
      if (cmd !== CTRL.ANNOUNCE_ACK || data !== 0) return err('ANNOUNCE takes only ACK with no data');
      t.announceAcked();
      return { ack: ACK.OK };
    }
    case CTRL.MQ: {
      if (!has(22)) return err('MQ class without MQ');
      if (cmd !== CTRL.MQ_VQ_PAIRS_SET) return err(`unsupported MQ command ${cmd} (no RSS or hash reporting)`);
      if (data !== 2) return err(`VQ_PAIRS_SET carries ${data} bytes, expected 2`);
      const n = dv.getUint16(2, true);
      if (n < 1 || n > t.maxQueuePairs) return err(`${n} queue pairs is outside [1, ${t.maxQueuePairs}]`);
      t.setQueuePairs(n);
      return { ack: ACK.OK };
    }
    case CTRL.GUEST_OFFLOADS: {
      if (!has(2)) return err('GUEST_OFFLOADS without CTRL_GUEST_OFFLOADS');
      if (cmd !== CTRL.GUEST_OFFLOADS_SET) return err(`unknown GUEST_OFFLOADS command ${cmd}`);
      if (data !== 8) return err(`GUEST_OFFLOADS_SET carries ${data} bytes, expected 8`);
      const want = dv.getBigUint64(2, true);
      const allowed = bits & GUEST_OFFLOAD_FEATURES;
      if ((want & ~allowed) !== 0n) return err(`offloads 0x${want.toString(16)} are not a subset of the negotiated 0x${allowed.toString(16)}`);
      t.setGuestOffloads(want);
      return { ack: ACK.OK };
    }
    default:
      return err(`unknown class ${cls}`);
  }
}
