// vring/index.ts — the public surface of vring/: split virtqueues over guest memory.
//
// Where it sits: device/ and sandbox/ import from here only. Device side: GuestMemory + SplitQueue +
// DescriptorChain; driver side (harness, vhost-user frontend): DriverQueue. Spec: virtio 1.2 §2.6/§2.7.

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
  type RangeLocation,
} from './memory.ts';
export { DescriptorChain, LOCATE_MAX } from './chain.ts';
export {
  SplitQueue,
  mapRing,
  ringUaddrToGpa,
  needEvent,
  DEFAULT_MAX_PIECES,
  type SplitQueueOptions,
  type AvailIdxLocation,
  type RingLocations,
  type RingAddresses,
} from './queue.ts';
export { DirtyLog, dirtyLogSize, LOG_PAGE_SHIFT, LOG_PAGE_SIZE } from './dirty-log.ts';
export { InflightLog, INFLIGHT, inflightQueueRegionSize, type InflightRecovery } from './inflight.ts';
export { DriverQueue, type DriverQueueOptions, type GuestBuffer, type UsedElement } from './driver.ts';
