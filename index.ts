/**
 * lgnet's public surface.
 *
 * - The device, for a VMM that embeds it: NetDevice and its backends (tap, pair).
 * - The vhost-user backend, for a VMM that talks to a separate device process.
 * - The rings, both sides (vring), for anyone building devices or drivers.
 * - The jail that `lgnet serve` enters.
 *
 * The harness (the driver side, for tests) is its own entry point, `lgnet/harness`; the rings are also
 * `lgnet/vring`.
 */

// The device (embedding API).
export { NetDevice, type NetDeviceOptions, type MemoryRegionSpec, type QueueSetup, type DeviceMetrics, type DirtyLogSpec, type QueueInspection, type ConfigChange, type MacChange } from './device/net.ts';
export { DirtyLog, dirtyLogSize } from './vring/dirty-log.ts';
export { rarpFrame } from './device/announce.ts';
export { TapBackend, type TapOptions, type TapIo } from './device/tap-backend.ts';
export { PairBackend, VERDICT, type PairOptions, type FrameFilter, type FilterRef } from './device/pair-backend.ts';
export { SwitchBackend, type SwitchOptions } from './device/switch-backend.ts';
export type { Backend, PortSpec, TxPort, RxPort } from './device/backend.ts';
export { F as FEATURES, DEFAULT_OFFERED, mask as featureMask, has as hasFeature, names as featureNames, decode as decodeFeatures, type NegotiatedFeatures } from './device/features.ts';
export { NetConfig, CFG, STATUS, parseMac, formatMac } from './device/config.ts';
export { HDR, HDR_F, GSO, MAX_FRAME_LEN } from './device/header.ts';
export { M as METRIC, type QueueMetrics, type MetricName } from './device/metrics.ts';
export { CTRL, ACK } from './device/ctrl.ts';
export { LgnetError, isLgnetError, type ErrorOptions } from './errors/index.ts';
export { NET_ERROR, NetError, NetConfigError, NetStateError, WorkerError, type NetErrorCode } from './device/errors.ts';
export { openPcap, closePcap, pcapFileHeader, DEFAULT_SNAPLEN } from './device/capture.ts';
export { TokenBucket, RateLimiter, parseBucket, type RateLimit, type BucketSpec } from './device/rate-limit.ts';
export { Coalescer, DEFAULT_COALESCE, type CoalesceOptions, type DeviceCoalesce } from './device/coalesce.ts';
export type { IotlbMissSink } from './device/iotlb-asks.ts';
export type { WorkerInspection, SleepReason } from './device/worker-protocol.ts';

// The vhost-user backend and the process around it.
export { VhostUserServer, netDeviceHooks, type VhostUserServerOptions, type DeviceHooks } from './sandbox/vhost-user/server.ts';
export { VhostUserError, VU } from './sandbox/vhost-user/errors.ts';
export { enterJail, enterWorkerJail, compilePolicy, formatPolicy, JailError, JAIL_ERROR, type JailOptions, type JailReport } from './sandbox/jail.ts';
export { BpfAssemblyError, BPF_ERROR } from './sandbox/seccomp-bpf.ts';

// Rings.
export * as vring from './vring/index.ts';

// Syscalls (the addon), for embedders that need eventfds or memfds of their own.
export { NativeError } from './native/errors.ts';
export * as native from './native/index.ts';
