/**
 * Feature bits of virtio-net and of the virtio transport, and the negotiation rule.
 *
 * Where it sits: consulted once when the driver (or the vhost-user frontend) sets features; the data
 * path only looks at the booleans in {@link NegotiatedFeatures}, never at the 64-bit word.
 * Spec: virtio 1.2 §5.1.3 (net feature bits), §6 (reserved/transport bits).
 */

/** Bit numbers (not masks). Features are a 64-bit word, so masks are bigint. */
export const F = {
  CSUM: 0, // device handles packets with partial checksum (guest TX csum offload)
  GUEST_CSUM: 1, // driver handles packets with partial checksum (guest RX)
  CTRL_GUEST_OFFLOADS: 2, // control queue may change the guest offloads
  MTU: 3, // config.mtu is valid
  MAC: 5, // config.mac is valid
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15, // a received frame may span several RX chains (num_buffers)
  STATUS: 16, // config.status is valid
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  CTRL_RX_EXTRA: 20,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
  NOTIFY_ON_EMPTY: 24,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** Not a device feature: vhost-user's marker that GET/SET_PROTOCOL_FEATURES exist. */
  VHOST_USER_PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
} as const;

export type FeatureName = keyof typeof F;

/** The mask of one bit. */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** The mask of a list of named bits. */
export function mask(...names: FeatureName[]): bigint {
  let m = 0n;
  for (const n of names) m |= bit(F[n]);
  return m;
}

/** True when the named bit is set in `features`. */
export function has(features: bigint, name: FeatureName): boolean {
  return (features & bit(F[name])) !== 0n;
}

/**
 * What lgnet offers by default: split and packed rings with indirect descriptors and EVENT_IDX, mergeable RX
 * buffers, checksum and TSO/UFO offload both ways (trimmed later to what the backend supports), the
 * config fields, and the control queue features that the embedded mode serves.
 */
export const DEFAULT_OFFERED: bigint = mask(
  'CSUM', 'GUEST_CSUM', 'CTRL_GUEST_OFFLOADS', 'MAC', 'MTU', 'STATUS',
  'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO',
  'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'HOST_UFO',
  'MRG_RXBUF', 'CTRL_VQ', 'CTRL_RX', 'CTRL_VLAN', 'CTRL_RX_EXTRA', 'GUEST_ANNOUNCE', 'MQ', 'CTRL_MAC_ADDR',
  'NOTIFY_ON_EMPTY', 'ANY_LAYOUT', 'RING_INDIRECT_DESC', 'RING_EVENT_IDX', 'VERSION_1', 'RING_PACKED',
);

/** Offload bits that depend on the backend being able to pass virtio_net_hdr through. */
export const OFFLOAD_FEATURES: bigint = mask(
  'CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO',
  'HOST_TSO4', 'HOST_TSO6', 'HOST_ECN', 'HOST_UFO', 'CTRL_GUEST_OFFLOADS',
);

/** Guest-side receive offloads: what the control queue's GUEST_OFFLOADS command may toggle. */
export const GUEST_OFFLOAD_FEATURES: bigint = mask('GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO');

/**
 * The decoded result of negotiation, read by the data path. Plain booleans so that the per-frame
 * code never touches bigint.
 */
export interface NegotiatedFeatures {
  readonly bits: bigint;
  readonly version1: boolean;
  readonly mrgRxbuf: boolean;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** VIRTIO_F_RING_PACKED: the rings are packed virtqueues (virtio 1.2 §2.8). */
  readonly packed: boolean;
  /** VIRTIO_F_IN_ORDER: buffers are used in the order they were made available (virtio 1.2 §2.7.9, §2.8.13). */
  readonly inOrder: boolean;
  /** Guest TX may carry NEEDS_CSUM (VIRTIO_NET_F_CSUM). */
  readonly hostCsum: boolean;
  readonly hostTso4: boolean;
  readonly hostTso6: boolean;
  readonly hostEcn: boolean;
  readonly hostUfo: boolean;
  /** Guest RX accepts NEEDS_CSUM / GSO frames. */
  readonly guestCsum: boolean;
  readonly guestTso4: boolean;
  readonly guestTso6: boolean;
  readonly guestEcn: boolean;
  readonly guestUfo: boolean;
  readonly ctrlVq: boolean;
  readonly mq: boolean;
  /** virtio_net_hdr length in bytes: 12 with VERSION_1 or MRG_RXBUF, else 10. */
  readonly hdrLen: number;
}

/** Decodes an accepted feature word. */
export function decode(bits: bigint): NegotiatedFeatures {
  const version1 = has(bits, 'VERSION_1');
  const mrgRxbuf = has(bits, 'MRG_RXBUF');
  return {
    bits,
    version1,
    mrgRxbuf,
    eventIdx: has(bits, 'RING_EVENT_IDX'),
    indirect: has(bits, 'RING_INDIRECT_DESC'),
    packed: has(bits, 'RING_PACKED'),
    inOrder: has(bits, 'IN_ORDER'),
    hostCsum: has(bits, 'CSUM'),
    hostTso4: has(bits, 'HOST_TSO4'),
    hostTso6: has(bits, 'HOST_TSO6'),
    hostEcn: has(bits, 'HOST_ECN'),
    hostUfo: has(bits, 'HOST_UFO'),
    guestCsum: has(bits, 'GUEST_CSUM'),
    guestTso4: has(bits, 'GUEST_TSO4'),
    guestTso6: has(bits, 'GUEST_TSO6'),
    guestEcn: has(bits, 'GUEST_ECN'),
    guestUfo: has(bits, 'GUEST_UFO'),
    ctrlVq: has(bits, 'CTRL_VQ'),
    mq: has(bits, 'MQ'),
    hdrLen: hdrLenFor(bits),
  };
}

/** §5.1.6: the 2-byte num_buffers is present with VERSION_1 or MRG_RXBUF. */
export function hdrLenFor(bits: bigint): number {
  return has(bits, 'VERSION_1') || has(bits, 'MRG_RXBUF') ? 12 : 10;
}

/** Lists the names of the bits set in `bits` (for logs and errors); unknown bits as `bit<n>`. */
export function names(bits: bigint): string[] {
  const out: string[] = [];
  const known = new Map<number, string>(Object.entries(F).map(([k, v]) => [v, k]));
  for (let i = 0; i < 64; i++) if (bits & bit(i)) out.push(known.get(i) ?? `bit${i}`);
  return out;
}
