/**
 * The device seam of the vhost-user back-end: what the server asks of a device (libvhost-user's
 * VuDevIface, cut to what lgnet uses), and the adapter that lets a NetDevice answer. The server knows
 * nothing of networking beyond this interface; tests may supply hooks of their own.
 *
 *   handlers.ts / connection.ts ──DeviceHooks──▶ netDeviceHooks(dev) ──▶ NetDevice (device/net.ts)
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "Front-end message types" (what each hook answers: GET_FEATURES,
 * GET_QUEUE_NUM, GET/SET_CONFIG, SET_STATUS, RESET_DEVICE).
 */
import type { IotlbMissSink } from '../../device/iotlb-asks.ts';
import type { DirtyLogSpec, MemoryRegionSpec, NetDevice } from '../../device/net.ts';
import type { Iotlb } from '../../vring/index.ts';
import type { MemoryTarget } from './mem-table.ts';
import type { QueueTarget } from './vrings.ts';

/**
 * What the server needs from a device (libvhost-user's VuDevIface, cut to what lgnet uses). A
 * NetDevice provides it through {@link netDeviceHooks}; tests may supply their own.
 */
export interface DeviceHooks extends QueueTarget, MemoryTarget {
  /** Device feature bits offered (VHOST_USER_F_PROTOCOL_FEATURES is added by the server). */
  readonly offered: bigint;
  /** Answer to GET_QUEUE_NUM (for virtio-net: queue pairs, which is what QEMU compares against). */
  readonly queueNum: number;
  /** Bytes of device config space (GET/SET_CONFIG bounds). */
  readonly configSize: number;
  setFeatures(bits: bigint): void;
  readConfig(offset: number, size: number): Uint8Array;
  writeConfig(offset: number, data: Uint8Array): void;
  status: number;
  /** Back to the initial state: queues stopped and forgotten, features cleared. */
  reset(): Promise<void>;
  /** Drops the guest memory mappings of a front-end that went away. */
  releaseMemory(): Promise<void>;
  /** SET_LOG_BASE: installs (or replaces) the dirty log's memory; the device maps the fd. */
  setDirtyLog(spec: DirtyLogSpec): Promise<unknown>;
  /** VHOST_F_LOG_ALL turned on or off by SET_FEATURES, with the queues running. */
  setLogging(on: boolean): Promise<void>;
  /** SEND_RARP: announces `mac` on the backend; false when the backend cannot. */
  announce(mac: Uint8Array): boolean;
  /** Subscribes to "queue broken" reports; returns the unsubscribe function. */
  onBroken(cb: (queue: number, code: string, message: string) => void): () => void;
  /**
   * Behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM negotiated): descriptor addresses go through `iotlb`
   * (null: they are guest physical). Called at SET_FEATURES, with every queue stopped.
   */
  setIotlb?(iotlb: Iotlb | null): void;
  /** The IOTLB changed: queues waiting for mappings look again once theirs came or were taken back. */
  iotlbChanged?(): void;
  /**
   * The data queues write their misses on this sink themselves (null: they emit them again); resolves
   * once no queue uses the previous one, so that its fd may be closed.
   */
  setIotlbMissSink?(sink: IotlbMissSink | null): Promise<void>;
  /** Subscribes to the queues' IOTLB misses; returns the unsubscribe function. */
  onIotlbMiss?(cb: (queue: number, iova: number, access: number) => void): () => void;
}

/** Adapts a NetDevice. */
export function netDeviceHooks(dev: NetDevice): DeviceHooks {
  return {
    get offered() { return dev.offered; },
    get queueNum() { return dev.maxQueuePairs; },
    get queueCount() { return dev.queueCount; },
    get configSize() { return dev.config.bytes.length; },
    get memory() { return dev.memoryMap; }, // addresses only: the server never reads guest bytes
    get packed() { return dev.features.packed; },
    get status() { return dev.status; },
    set status(s: number) { dev.status = s; },
    setFeatures: (bits) => dev.setFeatures(bits),
    setMemory: (specs: MemoryRegionSpec[]) => dev.setMemory(specs),
    setupQueue: (i, s) => dev.setupQueue(i, s),
    startQueue: (i) => dev.startQueue(i),
    stopQueue: (i) => dev.stopQueue(i),
    setUsedLog: (i, gpa) => dev.setUsedLog(i, gpa),
    setCallFd: (i, fd) => dev.setCallFd(i, fd),
    setDirtyLog: (spec) => dev.setDirtyLog(spec),
    setLogging: (on) => dev.setLogging(on),
    announce: (mac) => dev.announce(mac),
    isTx: (i) => i < 2 * dev.maxQueuePairs && (i & 1) === 1,
    // A pair is in use while its RX ring is enabled: QEMU disables the pairs a guest does not use.
    setEnabled: (i, on) => {
      if (i < 2 * dev.maxQueuePairs && (i & 1) === 0) dev.setPairActive(i >> 1, on);
    },
    readConfig: (o, n) => dev.readConfig(o, n),
    writeConfig: (o, d) => dev.writeConfig(o, d),
    reset: () => dev.reset(),
    releaseMemory: () => dev.releaseMemory(),
    onBroken(cb) {
      const h = (e: { queue: number; code: string; message: string }) => cb(e.queue, e.code, e.message);
      dev.on('broken', h);
      return () => dev.off('broken', h);
    },
    setIotlb: (iotlb) => dev.setIotlb(iotlb),
    iotlbChanged: () => dev.iotlbChanged(),
    setIotlbMissSink: (sink) => dev.setIotlbMissSink(sink),
    onIotlbMiss(cb) {
      const h = (e: { queue: number; iova: number; access: number }) => cb(e.queue, e.iova, e.access);
      dev.on('iotlbMiss', h);
      return () => dev.off('iotlbMiss', h);
    },
  };
}
