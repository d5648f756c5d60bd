// vring/index.ts — the public surface of vring/: split and packed virtqueues over guest memory.
//
// Where it sits: device/ and sandbox/ import from here only. Device side: GuestMemory + SplitQueue or
// PackedQueue (both a DeviceQueue) + DescriptorChain; driver side (harness, vhost-user frontend):
// DriverQueue or PackedDriverQueue. Spec: virtio 1.2 §2.6/§2.7/§2.8.

export {
  VringError,
  MemoryError,
  RingLayoutError,
  DescriptorError,
  RingStateError,
  VringErrorCode,
  type VringErrorCodeValue,
} from './errors.ts';
export * from './layout.ts';
export {
  GuestMemory,
  PieceList,
  REGION_CHUNK,
  ADDR_LIMIT,
  type Region,
  type RegionSpec,
  type AddressSpec,
  type RangeLocation,
} from './memory.ts';
export { DescriptorChain, LOCATE_MAX } from './chain.ts';
export { Iotlb, IotlbMiss, IOTLB_ACCESS, IOTLB_CAPACITY, iotlbBytes, type IotlbEntry } from './iotlb.ts';
export {
  SplitQueue,
  mapRing,
  ringUaddrToGpa,
  needEvent,
  DEFAULT_MAX_PIECES,
  type SplitQueueOptions,
  type AvailIdxLocation,
  type QueueWatch,
  type RingLocations,
  type RingAddresses,
} from './queue.ts';
export { DirtyLog, dirtyLogSize, LOG_PAGE_SHIFT, LOG_PAGE_SIZE } from './dirty-log.ts';
export { InflightLog, INFLIGHT, inflightQueueRegionSize, type InflightRecovery } from './inflight.ts';
export { DriverQueue, type DriverQueueOptions, type GuestBuffer, type UsedElement } from './driver.ts';
export {
  PackedQueue,
  mapPackedRing,
  packedRingUaddrToGpa,
  packedNeedEvent,
  type PackedQueueOptions,
  type PackedRingLocations,
  type PackedRingAddresses,
} from './packed.ts';
export * from './packed-layout.ts';
export { resumePackedBase, type PackedResume } from './packed-resume.ts';
export { PackedDriverQueue, type PackedDriverQueueOptions } from './packed-driver.ts';
export type { DeviceQueue } from './device-queue.ts';
export type { RingInspection } from './ring-inspection.ts';
export { createDriverQueue, driverRingLayout, driverRingSpan, type DriverVirtqueue, type DriverVirtqueueOptions, type DriverRingAddresses, type RingFormat, type RingArea, type PendingCompletion } from './driver-queue.ts';
