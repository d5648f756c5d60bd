/**
 * lgnet/harness: the driver side of virtio-net, for tests that drive a device without a VM (the way
 * QEMU's libqos does). It plays the guest and, where needed, the VMM:
 *
 *   GuestRam            guest RAM as a shared memfd, with a bump allocator for rings and buffers
 *   VirtioNetDriver     the guest's virtio-net driver: rings, RX buffers, TX frames, interrupts
 *   VhostUserFrontend   the VMM's side of vhost-user (what QEMU does), to drive any vhost-user net
 *                       back-end: `lgnet serve`, DPDK's net_vhost, libvhost-user's bridge
 *   rings               builders for hostile split and packed rings: raw descriptors, indirect tables,
 *                       loops, bad indices, wrap bits, event areas
 *   frames              Ethernet/IPv4/UDP/ARP frame builders and a tiny responder
 *   netns               throw-away network namespaces with taps inside (root), cleaned up at exit
 *   DirtyLog, DirtyLogAudit   migration's dirty log as the VMM holds it, and an auditor of a back-end's
 *                       marks: every page it wrote must be logged
 *   HarnessIommu        a vIOMMU (VIRTIO_F_ACCESS_PLATFORM) in front of the RAM: serves a back-end's
 *                       IOTLB misses, denies or restricts ranges, invalidates
 *
 * It uses vring/ (the driver half of the rings) and native/ (memfd, eventfd, sockets). docs/HARNESS.md
 * has a walk-through.
 */
export { GuestRam } from './guest-ram.ts';
export { VirtioNetDriver, DriverRing, waitReadable, type NetDriverOptions, type RxFrame, type TxHeader } from './virtio-net.ts';
export {
  VhostUserFrontend, FrontendListener, FrontendError, FRONTEND_ERROR, FRONTEND_PROTOCOL_FEATURES, type FrontendErrorCode,
  type FrontendRegion, type ReceivedMessage, type NegotiateOptions, type Negotiated,
} from './vhost-user-frontend.ts';
export {
  HarnessIommu, IOMMU_PERM, DEFAULT_IOVA_OFFSET, type HarnessIommuOptions, type IommuMiss, type MissAnswer, type IommuFrontend,
} from './iommu.ts';
export * as frames from './frames.ts';
export {
  DirtyLog, DirtyLogAudit, DIRTY_PAGE_SIZE, usedNotTaken,
  type DirtyLogOptions, type AuditRange, type UnloggedPage, type DirtyLogReport, type DriverLayout, type PendingUsed,
} from './dirty-log.ts';
export {
  SplitRingBuilder, PackedRingBuilder, Arena, writeDescriptor, readDescriptor, wrappingAddr, hugeAddr, packedAvailFlags, packedUsedFlags,
  type GuestAllocator, type RawAddr, type RawDesc, type DescFields, type ChainBuffer, type IndirectTable, type OfferOptions, type RingPlacement,
  type RawPackedDesc, type PackedListDesc, type PackedOfferOptions, type PackedRingPlacement,
} from './rings.ts';
export {
  createNetns, openTapIn, openPacketIn, destroyAllNetns, netnsPrerequisites,
  type Netns, type TapInNs, type OpenTapOptions,
} from './netns.ts';
