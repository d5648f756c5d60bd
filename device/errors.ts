/**
 * Typed errors of the device layer: the embedding VMM (or the vhost-user server for it) asked for
 * something the device does not offer, or in a state where it cannot. Each has a stable code from
 * NET_ERROR and a message that says what happened and what to do. Guest-caused per-frame problems are
 * not thrown: they are counted drops (metrics.ts); a broken ring is a VringError.
 */
import { LgnetError } from '../errors/index.ts';

export { LgnetError } from '../errors/index.ts';

/** Every stable code of the device layer. */
export const NET_ERROR = {
  /** A MAC address that is not six hex pairs, or a multicast one. */
  BAD_MAC: 'NET_BAD_MAC',
  /** MTU outside [68, 65535] (NetDevice option, or a config write). */
  BAD_MTU: 'NET_BAD_MTU',
  /** The MTU field is read only once the MTU feature is negotiated. */
  MTU: 'NET_MTU',
  /** A config write touches a read-only field. */
  CONFIG_READONLY: 'NET_CONFIG_READONLY',
  /** A config access outside virtio_net_config. */
  CONFIG_RANGE: 'NET_CONFIG_RANGE',
  /** queuePairs outside [1, the backend's pairs]. */
  BAD_QUEUE_PAIRS: 'NET_BAD_QUEUE_PAIRS',
  /** A port spec whose kind no backend module is registered under (device/backends.ts). */
  UNKNOWN_BACKEND: 'NET_UNKNOWN_BACKEND',
  /** A rate-limit option that does not parse. */
  BAD_RATE_LIMIT: 'NET_BAD_RATE_LIMIT',
  /** NetDeviceOptions.coalesce out of range. */
  BAD_COALESCE: 'NET_BAD_COALESCE',
  /** The driver accepted feature bits the device did not offer. */
  FEATURES_NOT_OFFERED: 'NET_FEATURES_NOT_OFFERED',
  /** Features changed while queues run. */
  FEATURES_WHILE_RUNNING: 'NET_FEATURES_WHILE_RUNNING',
  /** A queue's setup or the memory changed while it runs. */
  QUEUE_RUNNING: 'NET_QUEUE_RUNNING',
  /** A queue size that is not a power of 2 within the maximum. */
  BAD_QUEUE_SIZE: 'NET_BAD_QUEUE_SIZE',
  /** A setup the queue's role cannot take (discard mode on RX). */
  BAD_QUEUE_SETUP: 'NET_BAD_QUEUE_SETUP',
  /** A queue index beyond the device's queues. */
  BAD_QUEUE_INDEX: 'NET_BAD_QUEUE_INDEX',
  /** A queue started before setupQueue. */
  QUEUE_NOT_SET_UP: 'NET_QUEUE_NOT_SET_UP',
  /** A queue started before setMemory. */
  NO_MEMORY: 'NET_NO_MEMORY',
  /** A dirty log that does not cover guest memory, or whose range overflows or lies outside its fd. */
  BAD_DIRTY_LOG: 'NET_BAD_DIRTY_LOG',
  /** NetDeviceOptions.cpus names no CPU, or one this process may not run on. */
  BAD_CPUS: 'NET_BAD_CPUS',
  /** setIotlbMissSink: an fd that is not one, or a message too short for the IOVA and access offsets. */
  BAD_IOTLB_SINK: 'NET_BAD_IOTLB_SINK',
  /** A queue worker could not install its seccomp filter. */
  WORKER_SECCOMP: 'NET_WORKER_SECCOMP',
  /** A queue worker could not start. */
  WORKER_START: 'NET_WORKER_START',
  /** A queue worker did not answer a command in time. */
  WORKER_TIMEOUT: 'NET_WORKER_TIMEOUT',
  /** A queue worker thread died (an uncaught exception in it: a bug). */
  WORKER_CRASH: 'NET_WORKER_CRASH',
  /** A queue worker stopped on an error that carries no code of its own (a bug). */
  WORKER_ERROR: 'NET_WORKER_ERROR',
  /**
   * Guest memory vanished under the device: the file behind a region (or the dirty log) shrank after
   * it was mapped, and native/guard.cc replaced it with zero pages. The device needs a reset and
   * memory that cannot shrink.
   */
  GUEST_MEMORY_FAULT: 'NET_GUEST_MEMORY_FAULT',
  /** A tap I/O path that is not 'auto', 'uring' or 'syscall' (TapOptions.io, LGNET_IO). */
  BAD_IO: 'NET_BAD_IO',
  /** io_uring was asked for (io 'uring', LGNET_IO=uring) but the kernel or a sandbox refuses it. */
  IO_URING_UNAVAILABLE: 'NET_IO_URING_UNAVAILABLE',
  /** A tap fd handed to TapOptions.fds (`lgnet serve --tap-fd`) that is not a usable tap queue. */
  BAD_TAP_FD: 'NET_BAD_TAP_FD',
  /** TapOptions.name names an interface that is neither a tap nor a macvtap whose device opens. */
  BAD_TAP: 'NET_BAD_TAP',
  /** TapOptions.macvtapAddress (`lgnet serve --mac` on a macvtap) that the macvtap would not take. */
  MACVTAP_ADDRESS: 'NET_MACVTAP_ADDRESS',
} as const;

/** One of the codes in {@link NET_ERROR}. */
export type NetErrorCode = (typeof NET_ERROR)[keyof typeof NET_ERROR];

/** Base of the device layer's errors. */
export class NetError extends LgnetError {
  declare readonly code: NetErrorCode;
  constructor(code: NetErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** The driver or the VMM asked for something the device does not offer or cannot do. */
export class NetConfigError extends NetError {}

/** The device was used in the wrong state (e.g. starting a queue with no memory). */
export class NetStateError extends NetError {}

/** A worker thread failed or did not answer in time. */
export class WorkerError extends NetError {}

/**
 * The guest memory a queue serves shrank under it (a truncated memfd, tmpfs or hugetlbfs file). The
 * queue stops and the device sets NEEDS_RESET; over vhost-user the connection is dropped.
 */
export class GuestMemoryFaultError extends NetError {
  /** The native mapping that took the fault. */
  readonly mappingId: number;

  constructor(mappingId: number, what: string) {
    super(
      NET_ERROR.GUEST_MEMORY_FAULT,
      `${what} shrank after the device mapped it (its file was truncated), so the device now reads zeros there and stops; ` +
        'reset the device and give it memory that cannot shrink: a memfd sealed with F_SEAL_SHRINK (QEMU: memory-backend-memfd, which seals by default)',
    );
    this.mappingId = mappingId;
  }
}
