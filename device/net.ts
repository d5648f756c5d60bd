/**
 * NetDevice: the virtio-net device and its embedding API, what a VMM calls directly and what the
 * vhost-user server translates its messages into.
 *
 *   create ─▶ setFeatures ─▶ setMemory ─▶ setupQueue(i) … ─▶ startQueue(i) / start ─▶ … ─▶ stop / reset
 *
 * Queue numbering follows the spec (§5.1.2): receiveq_n = 2n, transmitq_n = 2n+1, controlq = 2·max_pairs.
 * Each started data queue gets its own worker thread (worker.ts, steered through worker-host.ts with
 * the messages of worker-protocol.ts), which runs the data path on its own; the control queue is served
 * here, on the main thread, woken through the event loop. Memory changes quiesce the workers first, then
 * swap the mappings, so no worker ever reads a region that is being replaced.
 */
import { constants as osConstants } from 'node:os';
import { EventEmitter } from 'node:events';
import * as native from '../native/index.ts';
import { DirtyLog, GuestMemory, LOG_PAGE_SIZE, dirtyLogSize, isQueueSize, type Iotlb } from '../vring/index.ts';
import { rarpFrame } from './announce.ts';
import type { Backend } from './backend.ts';
import { CFG, formatMac, NetConfig, parseMac, STATUS } from './config.ts';
import type { CtrlTarget } from './ctrl.ts';
import { CtrlLoop } from './ctrl-loop.ts';
import { IotlbWait, type IotlbMissSink } from './iotlb-asks.ts';
import { GuestMemoryFaultError, NET_ERROR, NetConfigError, NetStateError, WorkerError } from './errors.ts';
import { decode, DEFAULT_OFFERED, GUEST_OFFLOAD_FEATURES, has, mask, names, OFFLOAD_FEATURES, type NegotiatedFeatures } from './features.ts';
import { createCounters, M, snapshot } from './metrics.ts';
import { macEquals, RxFilter } from './rx-filter.ts';
import { WorkerHost } from './worker-host.ts';
import { filterState, memoryFromMappings, type QueueConfig, type WorkerLog, type WorkerRegion } from './worker-protocol.ts';
import { DEFAULT_SNAPLEN } from './capture.ts';
import { checkRateLimit, type RateLimit } from './rate-limit.ts';
import { LogLimiter } from './log-limit.ts';
import { checkDeviceCoalesce, DEFAULT_COALESCE, queueCoalesce, type DeviceCoalesce } from './coalesce.ts';

import type { DeviceMetrics, DirtyLogSpec, MemoryRegionSpec, NetDeviceOptions, QueueSetup, QueueInspection } from './net-api.ts';

export type { NetDeviceOptions, MemoryRegionSpec, QueueSetup, DeviceMetrics, DirtyLogSpec, QueueInspection } from './net-api.ts';

interface Slot {
  index: number;
  setup?: QueueSetup;
  counters: Float64Array;
  /** The queue's worker thread (data queues), started once and reused; idle while the queue is stopped. */
  host: WorkerHost;
  /** A queue is configured on the worker. */
  running: boolean;
  broken: string | null;
  /** Behind an IOMMU: what the queue's worker waits for (iotlbChanged wakes it once that is mapped). */
  iotlbWait: IotlbWait;
}

function randomMac(): Uint8Array {
  const mac = new Uint8Array(6);
  crypto.getRandomValues(mac);
  mac[0] = (mac[0]! & 0xfe) | 0x02; // unicast, locally administered
  return mac;
}

/** A copy of `r` with its limits checked; throws NET_BAD_RATE_LIMIT. */
function checkedRateLimit(r: { rx?: RateLimit; tx?: RateLimit }): { rx?: RateLimit; tx?: RateLimit } {
  try {
    if (r.rx) checkRateLimit(r.rx);
    if (r.tx) checkRateLimit(r.tx);
  } catch (e) {
    throw new NetConfigError(NET_ERROR.BAD_RATE_LIMIT, `rateLimit: ${(e as Error).message}`);
  }
  return { ...(r.rx ? { rx: { ...r.rx } } : {}), ...(r.tx ? { tx: { ...r.tx } } : {}) };
}

/** NetDeviceOptions.cpus, checked against the CPUs this thread may run on (its affinity, as taskset set it). */
function checkCpus(cpus: readonly number[]): number[] {
  const allowed = native.threadAffinity();
  if (!Array.isArray(cpus) || cpus.length === 0) {
    throw new NetConfigError(NET_ERROR.BAD_CPUS, `cpus must list at least one CPU; this process may use ${allowed.join(',')}`);
  }
  for (const c of cpus) {
    if (!Number.isInteger(c) || !allowed.includes(c)) {
      throw new NetConfigError(NET_ERROR.BAD_CPUS, `cpus: ${String(c)} is not a CPU this process may use (${allowed.join(',')}); name one of those, or leave cpus out`);
    }
  }
  return [...cpus];
}

/**
 * Chains per burst unless NetDeviceOptions.burst says otherwise: vhost-net's TX batch, and what one
 * io_uring_enter takes on a tap ring (native URING_ENTRIES). 64 moved 64-byte TX frames ~16 % faster
 * than 32 on io_uring (docs/PERFORMANCE.md, "Session 10").
 */
export const DEFAULT_BURST = 64;

/** How often a backend whose interface vanished is tried again (Backend.reattach). */
const REATTACH_MS = 1000;

/** The `configChange` event: the device changed its config space (virtio 1.2 §2.5.1). */
export interface ConfigChange {
  /** The config generation after the change: what the transport shows as config_generation. */
  generation: number;
  /** config.status now (VIRTIO_NET_S_LINK_UP 1, VIRTIO_NET_S_ANNOUNCE 2). */
  status: number;
}

/** The `macChange` event: the driver set its MAC address (VIRTIO_NET_CTRL_MAC_ADDR_SET, or a legacy config write). */
export interface MacChange {
  /** The address now, aa:bb:cc:dd:ee:ff. */
  mac: string;
  /** The address before. */
  previous: string;
}

/**
 * A virtio-net device. Events: `broken` ({queue, code, message}) when a guest breaks a ring,
 * `log` ({level, msg, ...}) for things an operator should see, behind an IOMMU (setIotlb)
 * `iotlbMiss` ({queue, iova, access}) when a queue needs a mapping it does not have, and
 * `configChange` ({@link ConfigChange}) when the device changed its config space (setLinkUp,
 * guestAnnounce): the VMM then sends the driver a configuration change notification, if it is
 * running (PCI: the config vector, or ISR bit 1; MMIO: InterruptStatus bit 1); and `macChange`
 * ({@link MacChange}) when the driver set its own address (the receive filter follows it; a VMM that
 * trusts its guest's address changes gives them to a macvtap: TapBackend.setMacvtapAddress).
 */
export class NetDevice extends EventEmitter {
  readonly config: NetConfig;
  readonly backend: Backend;
  readonly maxQueuePairs: number;
  /** What the device offers (after trimming to the backend). */
  readonly offered: bigint;
  /** What the driver accepted; 0 until setFeatures. */
  accepted = 0n;
  private negotiated: NegotiatedFeatures = decode(0n);
  /** Device status byte as the driver wrote it (§2.1). */
  status = 0;
  private readonly burst: number;
  private readonly busyPoll: number;
  private readonly coalesce: DeviceCoalesce;
  private readonly capture: NetDeviceOptions['capture'];
  private rateLimit: { rx?: RateLimit; tx?: RateLimit };
  private readonly maxQueueSize: number;
  private readonly filter = new RxFilter();
  private readonly slots: Slot[] = [];
  private regions: WorkerRegion[] = [];
  /** What each region's mapping was made from (setMemory's `keep` matches on it). */
  private readonly sources = new Map<number, { fd: number; offset: number }>();
  /** The regions' addresses (GuestMemory.addressMap): all this thread needs unless it serves a queue. */
  private map: GuestMemory | null = null;
  /** The regions' bytes on this thread, wrapped when first needed (the control queue, `memory`). */
  private mem: GuestMemory | null = null;
  private activePairs = 1;
  /** The control queue's loop while it runs (main thread). */
  private ctrl: CtrlLoop | null = null;
  private readonly ctrlStats = { commands: 0, errors: 0 };
  /** The dirty log's mapping and the main thread's view of it, or null. */
  private dirty: { mappingId: number; offset: number; size: number; view: DirtyLog } | null = null;
  /** Dirty logging is on (VHOST_F_LOG_ALL, or startDirtyLog). */
  private logging = false;
  /** SIGBUS faults in the device's mappings, looked at from the main thread (native/guard.cc). */
  private readonly faults = new native.FaultWatch();
  /** Behind an IOMMU: the IOTLB descriptor addresses go through (setIotlb), or null. */
  private iotlb: Iotlb | null = null;
  /** Behind an IOMMU: where the data queues write their misses themselves (setIotlbMissSink), or null. */
  private missSink: IotlbMissSink | null = null;

  constructor(opts: NetDeviceOptions) {
    super();
    this.backend = opts.backend;
    this.maxQueuePairs = opts.queuePairs ?? opts.backend.queuePairs;
    if (!(this.maxQueuePairs >= 1 && this.maxQueuePairs <= opts.backend.queuePairs && this.maxQueuePairs <= 0x8000)) {
      throw new NetConfigError(NET_ERROR.BAD_QUEUE_PAIRS, `queuePairs ${this.maxQueuePairs} must be between 1 and the backend's ${opts.backend.queuePairs}`);
    }
    const mtu = opts.mtu ?? 1500;
    if (!(Number.isInteger(mtu) && mtu >= 68 && mtu <= 65535)) {
      throw new NetConfigError(NET_ERROR.BAD_MTU, `MTU ${mtu} must be an integer in [68, 65535]`);
    }
    const mac = opts.mac === undefined ? (opts.backend.guestAddress ?? randomMac()) : typeof opts.mac === 'string' ? parseMac(opts.mac) : opts.mac;
    this.config = new NetConfig({ mac, mtu, maxQueuePairs: this.maxQueuePairs });
    let offered = opts.features ?? DEFAULT_OFFERED;
    offered &= ~OFFLOAD_FEATURES | opts.backend.supportedOffloads();
    if (this.maxQueuePairs === 1) offered &= ~mask('MQ');
    this.offered = offered;
    this.burst = opts.burst ?? DEFAULT_BURST;
    this.busyPoll = opts.busyPoll ?? 0;
    try {
      this.coalesce = checkDeviceCoalesce({ ...DEFAULT_COALESCE, ...opts.coalesce });
    } catch (e) {
      throw new NetConfigError(NET_ERROR.BAD_COALESCE, `coalesce: ${(e as Error).message}`);
    }
    this.capture = opts.capture;
    this.rateLimit = checkedRateLimit(opts.rateLimit ?? {});
    this.maxQueueSize = opts.maxQueueSize ?? 1024;
    const cpus = opts.cpus === undefined ? undefined : checkCpus(opts.cpus);
    for (let i = 0; i < this.queueCount; i++) {
      const counters = createCounters();
      const s: Slot = {
        index: i, counters, running: false, broken: null, iotlbWait: new IotlbWait(),
        host: new WorkerHost({
          index: i,
          counters,
          ...(cpus ? { cpu: cpus[(i >> 1) % cpus.length]! } : {}),
          onEvent: (e) => {
            if (e.ev === 'broken') this.markBroken(s, e.code, e.message);
            else if (e.ev === 'iotlbMiss') this.emit('iotlbMiss', { queue: s.index, iova: e.iova, access: e.access });
            else if (e.ev === 'backend') this.backendEdge(s, e.ok, e.errno);
            else if (e.ev === 'resumed') {
              this.emit('log', { level: 'warn', msg: 'queue resumed where its ring shows, not at the front-end\'s base', queue: s.index, lastAvail: e.lastAvail, why: e.message });
            }
          },
          onGone: () => { s.running = false; },
        }),
      };
      this.slots.push(s);
    }
    this.filter.reset(mac, false);
    // No driver yet: only pair 0 takes the host's frames (and a backend's pairs beyond the device's never).
    for (let p = 1; p < opts.backend.queuePairs; p++) this.steer(p, false);
  }

  /** Whether the backend sends the host's frames to pair p (index p; pair 0 always). */
  private readonly pairActive: boolean[] = [true];
  /** setPairActive() was called: the caller, not the features and the control queue, says which pairs are used. */
  private pairsByCaller = false;

  /**
   * Whether the driver uses queue pair `pair`. A backend that spreads the host's frames over its
   * queues (a multi-queue tap) stops sending to a pair not in use, where no worker would read them: a
   * guest with fewer vCPUs than pairs uses fewer pairs, and `ethtool -L` changes how many.
   *
   * By default the device decides from what the driver negotiated (pairsInUse): pair 0 alone, or up
   * to what VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET asked. A VMM that keeps the control queue itself calls
   * this instead, and from its first call on decides alone: the vhost-user server does, as QEMU
   * enables and disables each pair's RX ring. Pair 0 is always in use.
   */
  setPairActive(pair: number, active: boolean): void {
    if (!Number.isInteger(pair) || pair < 0 || pair >= this.maxQueuePairs) {
      throw new RangeError(`queue pair ${pair} must be an integer in [0, ${this.maxQueuePairs - 1}]`);
    }
    this.pairsByCaller = true;
    if (pair > 0) this.steer(pair, active);
  }

  /**
   * Pairs the driver uses, from what it negotiated (virtio 1.2 §5.1.6.5.5): without MQ one; with MQ
   * and a control queue, pair 0 until VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, then what it set; with MQ and
   * no control queue (no way to ask, outside the spec) every pair.
   */
  private pairsInUse(): number {
    const f = this.negotiated.bits;
    if ((f & mask('MQ')) === 0n) return 1;
    return (f & mask('CTRL_VQ')) !== 0n ? this.activePairs : this.maxQueuePairs;
  }

  /** Steers the backend to pairsInUse(), unless a caller took that over (setPairActive). */
  private steerToDriver(): void {
    if (this.pairsByCaller) return;
    const n = this.pairsInUse();
    for (let p = 1; p < this.maxQueuePairs; p++) this.steer(p, p < n);
  }

  private steer(pair: number, active: boolean): void {
    if ((this.pairActive[pair] ?? true) === active) return;
    this.pairActive[pair] = active;
    try {
      const dropped = this.backend.setPairActive?.(pair, active) ?? 0;
      // The RX queue's worker never writes this counter: the main thread is its only writer.
      const rx = this.slots[2 * pair];
      if (dropped > 0 && rx) rx.counters[M.rxDropDetached]! += dropped;
    } catch (e) {
      // Frames for that pair may then wait where nobody reads them, or not reach it: said, not fatal.
      this.emit('log', { level: 'warn', msg: `backend could not ${active ? 'take frames for' : 'stop frames for'} queue pair ${pair}`, pair, err: (e as Error).message });
    }
  }

  /** Data queues plus the control queue if offered. */
  get queueCount(): number {
    return 2 * this.maxQueuePairs + ((this.offered & mask('CTRL_VQ')) !== 0n ? 1 : 0);
  }

  /** The control queue's index (2·max_pairs), or -1 when not offered. */
  get ctrlIndex(): number {
    return (this.offered & mask('CTRL_VQ')) !== 0n ? 2 * this.maxQueuePairs : -1;
  }

  /** The negotiated features, decoded. */
  get features(): NegotiatedFeatures {
    return this.negotiated;
  }

  /**
   * Accepts the driver's features. They must be a subset of what was offered; the backend is then
   * told the header length and the receive offloads.
   */
  setFeatures(bits: bigint): void {
    const extra = bits & ~this.offered;
    if (extra !== 0n) {
      throw new NetConfigError(NET_ERROR.FEATURES_NOT_OFFERED, `driver accepted features that were not offered: ${names(extra).join(', ')}`);
    }
    if (this.slots.some((s) => s.running) || this.ctrl) {
      throw new NetStateError(NET_ERROR.FEATURES_WHILE_RUNNING, 'features cannot change while queues run; stop or reset the device first');
    }
    this.accepted = bits;
    this.negotiated = decode(bits);
    this.backend.configure(this.negotiated);
    if ((this.backend as { gone?: boolean }).gone === true) this.startReattach();
    this.filter.reset(this.config.mac, this.negotiated.bits & mask('CTRL_VLAN') ? true : false);
    this.steerToDriver();
  }

  /**
   * Replaces guest memory. Every region is mapped MAP_SHARED from its fd (the caller may close the fd
   * afterwards). Running workers are paused first and resumed over the new mappings; the old mappings
   * are released only after that.
   */
  async setMemory(specs: MemoryRegionSpec[]): Promise<void> {
    const regions: WorkerRegion[] = [];
    const made: number[] = [];
    let map: GuestMemory;
    try {
      for (const s of specs) {
        const offset = s.mmapOffset ?? 0;
        const kept = s.keep === true ? this.regions.find((r) => {
          const from = this.sources.get(r.mappingId);
          return r.gpa === s.gpa && r.size === s.size && r.uaddr === s.uaddr && from?.fd === s.fd && from.offset === offset;
        }) : undefined;
        const mappingId = kept ? kept.mappingId : native.mmap(s.fd, offset, s.size);
        if (!kept) {
          made.push(mappingId);
          this.sources.set(mappingId, { fd: s.fd, offset });
        }
        regions.push({ gpa: s.gpa, size: s.size, mappingId, mappingOffset: 0, ...(s.uaddr !== undefined ? { uaddr: s.uaddr } : {}) });
      }
      // Validates overlaps and sizes, without wrapping the bytes: this thread wraps them only if it
      // serves a queue (the control queue), since each wrap of a large mapping costs V8 a collection.
      map = GuestMemory.addressMap(regions);
    } catch (e) {
      for (const id of made) {
        native.munmap(id);
        this.sources.delete(id);
      }
      throw e;
    }
    // The workers wrap the new mappings now, each on its own thread, before a queue needs them.
    this.tellWorkersMemory(regions);
    const old = this.regions;
    this.regions = regions;
    this.map = map;
    this.mem = null;
    const running = this.slots.filter((s) => s.running);
    await Promise.all(running.map((s) => s.host.command({ cmd: 'pause' }, ['paused'])));
    for (const s of running) s.host.send({ cmd: 'resume', regions });
    if (this.ctrl) this.ctrl.queue.attach(this.bytes());
    for (const r of old) {
      if (regions.some((n) => n.mappingId === r.mappingId)) continue;
      native.munmap(r.mappingId);
      this.sources.delete(r.mappingId);
    }
  }

  /** Every started worker wraps these regions' mappings now and forgets any other (no answer). */
  private tellWorkersMemory(regions: WorkerRegion[]): void {
    const ids = regions.map((r) => r.mappingId);
    for (const s of this.slots) if (s.host.started) s.host.send({ cmd: 'memory', ids });
  }

  /**
   * Forgets guest memory (a VMM went away). Every queue must be stopped first; the mappings are
   * released at once.
   */
  async releaseMemory(): Promise<void> {
    if (this.slots.some((s) => s.running) || this.ctrl) {
      throw new NetStateError(NET_ERROR.QUEUE_RUNNING, 'stop every queue before releasing guest memory');
    }
    this.tellWorkersMemory([]);
    for (const r of this.regions) native.munmap(r.mappingId);
    this.sources.clear();
    this.regions = [];
    this.map = null;
    this.mem = null;
    this.dropDirtyLog();
  }

  /**
   * Whether guest memory (a region or the dirty log) shrank under the device since it was mapped: the
   * error that says which, or null. Cheap while nothing faulted anywhere in the process. Workers look
   * after every burst and break their queue; this is the main thread's look (control queue, vhost-user).
   */
  memoryFault(): GuestMemoryFaultError | null {
    const ids = this.regions.map((r) => r.mappingId);
    if (this.dirty) ids.push(this.dirty.mappingId);
    const id = this.faults.check(ids);
    if (id < 0) return null;
    const r = this.regions.find((x) => x.mappingId === id);
    return new GuestMemoryFaultError(id, r ? `guest memory region 0x${r.gpa.toString(16)}+0x${r.size.toString(16)}` : 'the dirty log');
  }

  /** The guest memory as the main thread sees it, bytes and all (null before setMemory). */
  get memory(): GuestMemory | null {
    return this.map === null ? null : this.bytes();
  }

  /**
   * Where guest memory is, without wrapping its bytes on this thread (null before setMemory): enough to
   * translate ring addresses and check a ring's placement (GuestMemory.addressMap).
   */
  get memoryMap(): GuestMemory | null {
    return this.map;
  }

  /** This thread's GuestMemory over the regions' bytes, wrapped on first use. Needs setMemory first. */
  private bytes(): GuestMemory {
    this.mem ??= memoryFromMappings(this.regions, native.mappingBuffer);
    this.mem.setIotlb(this.iotlb); // translate() only: read() and write() stay guest physical
    return this.mem;
  }

  /**
   * Behind an IOMMU (VIRTIO_F_ACCESS_PLATFORM under a virtual IOMMU): the addresses in descriptors are
   * I/O virtual addresses, translated through `iotlb` (vring/iotlb.ts), which the caller fills and
   * empties (vhost-user IOTLB_MSG); null: they are guest physical again. Ring addresses given to
   * setupQueue stay guest physical: translating them is the caller's (the vhost-user server does it
   * through the same table). Takes effect at each queue's next start; the server sets it when
   * features are negotiated, with every queue stopped. A queue that finds no mapping for a chain
   * leaves it in the ring, emits `iotlbMiss` and waits for iotlbChanged().
   */
  setIotlb(iotlb: Iotlb | null): void {
    this.iotlb = iotlb;
    this.mem?.setIotlb(iotlb);
  }

  /**
   * The IOTLB changed (mappings added or taken back): a queue waiting for mappings looks again now
   * (its control eventfd is written) once every page of the buffer it waits for is mapped, or once the
   * table lost mappings since it asked (it asks again); the control queue once its mapping came.
   */
  iotlbChanged(): void {
    const it = this.iotlb;
    if (it) for (const s of this.slots) if (s.running && s.host.started && s.iotlbWait.ready(it)) s.host.wake();
    const t = this.mem?.iotlb;
    if (this.ctrl && t && t.missGeneration >= 0 && !t.stalled) {
      t.clearMiss();
      this.ctrl.serve(false);
    }
  }

  /**
   * Behind an IOMMU: the data queues write their misses on `sink.fd` themselves, one `sink.message` per
   * page with its IOVA and access filled in, rather than emitting `iotlbMiss` (which the control queue
   * still does, and a queue falls back to if a write fails). The owner keeps the fd open until a later
   * call (null: emit again) has resolved: every running queue has then let go of the old one. A queue
   * that does not answer is stopped, as for setCallFd.
   */
  async setIotlbMissSink(sink: IotlbMissSink | null): Promise<void> {
    if (sink !== null) {
      const { fd, message, iovaAt, accessAt } = sink;
      const at = (x: number, n: number): boolean => Number.isInteger(x) && x >= 0 && x + n <= message.length;
      if (!Number.isInteger(fd) || fd < 0 || !(message instanceof Uint8Array) || !at(iovaAt, 8) || !at(accessAt, 1)) {
        throw new NetConfigError(NET_ERROR.BAD_IOTLB_SINK, 'setIotlbMissSink: fd must be an open fd, and message must hold the IOVA (8 bytes at iovaAt) and the access (1 byte at accessAt)');
      }
    }
    this.missSink = sink;
    for (const s of this.slots) {
      if (!s.running || s.index === this.ctrlIndex) continue;
      try {
        await s.host.command({ cmd: 'missSink', sink }, ['missSink']);
      } catch (e) {
        await s.host.kill(); // it must not write the old fd after its owner closes it; replaced next start
        s.running = false;
        throw e;
      }
    }
  }

  /** Records where queue `index` lives. Takes effect at startQueue. */
  setupQueue(index: number, setup: QueueSetup): void {
    const s = this.slot(index);
    if (s.running || (index === this.ctrlIndex && this.ctrl)) {
      throw new NetStateError(NET_ERROR.QUEUE_RUNNING, `queue ${index} is running; stop it before changing its setup`);
    }
    const size = setup.size;
    if (!(isQueueSize(size) && size <= this.maxQueueSize)) {
      throw new NetConfigError(NET_ERROR.BAD_QUEUE_SIZE, `queue ${index}: size ${size} must be a power of 2 in [1, ${this.maxQueueSize}]`);
    }
    if (setup.discard && (index & 1) === 0) {
      throw new NetConfigError(NET_ERROR.BAD_QUEUE_SETUP, `queue ${index} is an RX queue; only TX queues can run in discard mode`);
    }
    s.setup = { ...setup };
  }

  /**
   * Starts a worker thread for every data queue, idle until its queue starts. startQueue does this on
   * demand; call it up front when no code may be loaded later (before entering a jail).
   */
  async startWorkers(): Promise<void> {
    await Promise.all(this.slots.filter((s) => s.index !== this.ctrlIndex).map((s) => this.ensureWorker(s)));
  }

  /**
   * Installs a seccomp program on every worker thread, stacked on whatever the process has (the
   * sandbox's per-role filter). Workers must be started (startWorkers) and idle or running.
   */
  async restrictWorkers(program: Uint8Array): Promise<void> {
    const workers = this.slots.filter((s) => s.host.started);
    const answers = await Promise.all(workers.map((s) => s.host.command({ cmd: 'seccomp', program: program.slice() }, ['sealed'])));
    for (const [i, a] of answers.entries()) {
      if (a.ev === 'sealed' && a.error) {
        throw new WorkerError(NET_ERROR.WORKER_SECCOMP, `queue ${workers[i]!.index}'s worker could not install its seccomp filter (${a.error.code}): ${a.error.message}`);
      }
    }
  }

  /**
   * Starts serving queue `index`: its worker for a data queue, the event loop for control. A ring that
   * does not fit guest memory breaks the queue (event `broken`, NEEDS_RESET) rather than throwing.
   */
  async startQueue(index: number): Promise<void> {
    const s = this.slot(index);
    if (!s.setup) throw new NetStateError(NET_ERROR.QUEUE_NOT_SET_UP, `queue ${index} has no setup; call setupQueue first`);
    if (!this.map) throw new NetStateError(NET_ERROR.NO_MEMORY, `queue ${index} cannot start before setMemory`);
    if (index === this.ctrlIndex) return this.startCtrl(s);
    if (s.running) return;
    await this.ensureWorker(s);
    s.broken = null;
    const config: QueueConfig = {
      ring: { size: s.setup.size, desc: s.setup.desc, avail: s.setup.avail, used: s.setup.used, lastAvail: s.setup.lastAvail ?? 0 },
      discard: s.setup.discard === true,
      inflight: s.setup.inflight ?? null,
      rateLimit: (s.index & 1 ? this.rateLimit.tx : this.rateLimit.rx) ?? null,
      capture: this.capture && (this.capture.queues?.includes(s.index) ?? true) ? { fd: this.capture.fd, snaplen: this.capture.snaplen ?? DEFAULT_SNAPLEN } : null,
      features: this.accepted,
      regions: this.regions,
      kickFd: s.setup.kickFd,
      callFd: s.setup.callFd,
      port: this.backend.port(index >>> 1),
      burst: this.burst,
      busyPoll: this.busyPoll,
      coalesce: queueCoalesce(this.coalesce, s.index & 1 ? 'tx' : 'rx'),
      mtu: this.config.mtu,
      filter: filterState(this.filter),
      log: this.workerLog(s),
      iotlb: this.iotlb?.buffer ?? null,
      iotlbWait: this.iotlb ? s.iotlbWait.buffer : null,
      missSink: this.iotlb ? this.missSink : null,
    };
    s.running = true;
    await s.host.command({ cmd: 'configure', config }, ['running', 'broken']);
  }

  /** The data queues' rate limits now, per direction (absent: unlimited); a copy. */
  rateLimits(): { rx?: RateLimit; tx?: RateLimit } {
    return checkedRateLimit(this.rateLimit);
  }

  /**
   * Changes the data queues' rate limits while they run, as Firecracker's update of an interface's
   * rate limiters does: a direction given (`rx`, `tx`) takes that limit, its buckets full; `null`
   * takes the limit off; a direction left out keeps its own. Queues started later take it too.
   * Resolves once every running queue has it (between two of its bursts). Throws NET_BAD_RATE_LIMIT,
   * changing nothing, for a limit that is not one.
   */
  async setRateLimit(limit: { rx?: RateLimit | null; tx?: RateLimit | null }): Promise<void> {
    const given = checkedRateLimit({ ...(limit.rx ? { rx: limit.rx } : {}), ...(limit.tx ? { tx: limit.tx } : {}) });
    const next = { ...this.rateLimit };
    for (const dir of ['rx', 'tx'] as const) {
      if (limit[dir] === null) delete next[dir];
      else if (given[dir]) next[dir] = given[dir];
    }
    this.rateLimit = next;
    const running = this.slots.filter((s) => s.index !== this.ctrlIndex && s.running);
    await Promise.all(running.map((s) => s.host.command({ cmd: 'rate', limit: (s.index & 1 ? next.tx : next.rx) ?? null }, ['rated'])));
  }

  /**
   * Changes where queue `index` signals the driver (its call eventfd; −1 for none, a driver that polls)
   * without stopping it: a running queue takes the new fd between two bursts, and this resolves once
   * the old one is no longer used, so the caller may close it then. vhost-user's SET_VRING_CALL, which
   * QEMU sends right after each ring starts and again whenever it masks or unmasks the interrupt.
   */
  async setCallFd(index: number, fd: number): Promise<void> {
    const s = this.slot(index);
    if (!s.setup) throw new NetStateError(NET_ERROR.QUEUE_NOT_SET_UP, `queue ${index} has no setup; call setupQueue first`);
    s.setup.callFd = fd;
    if (index === this.ctrlIndex) {
      this.ctrl?.setCallFd(fd);
      return;
    }
    if (!s.running) return;
    try {
      await s.host.command({ cmd: 'call', fd }, ['call']);
    } catch (e) {
      // It did not answer: it must not write the old fd after its owner closes it. Replaced next start.
      await s.host.kill();
      s.running = false;
      throw e;
    }
  }

  /** Stops queue `index` and returns the next avail index it would have processed. */
  async stopQueue(index: number): Promise<number> {
    const s = this.slot(index);
    if (index === this.ctrlIndex) return this.stopCtrl();
    if (!s.running) return s.setup?.lastAvail ?? 0;
    let lastAvail = s.setup?.lastAvail ?? 0;
    try {
      const e = await s.host.command({ cmd: 'stop' }, ['stopped']);
      if (e.ev === 'stopped') lastAvail = e.lastAvail;
    } catch (e) {
      await s.host.kill(); // it did not answer: replace it next time
      throw e;
    } finally {
      s.running = false;
    }
    if (s.setup) s.setup.lastAvail = lastAvail;
    return lastAvail;
  }

  /** Starts every queue that has a setup. */
  async start(): Promise<void> {
    for (const s of this.slots) if (s.setup && !s.running) await this.startQueue(s.index);
  }

  /** Stops every queue. */
  async stop(): Promise<void> {
    await Promise.all(this.slots.map((s) => this.stopQueue(s.index)));
  }

  /** Back to the state after creation: queues stopped and forgotten, features and filter cleared. */
  async reset(): Promise<void> {
    await this.stop();
    for (const s of this.slots) {
      delete s.setup;
      s.broken = null;
    }
    this.accepted = 0n;
    this.negotiated = decode(0n);
    this.logging = false;
    this.status = 0;
    this.activePairs = 1;
    // Nobody serves any pair now: pair 0 alone takes the host's frames until a driver comes.
    for (let p = 1; p < this.maxQueuePairs; p++) this.steer(p, false);
    // A reset drops a pending announce, but not the link state the VMM set (setLinkUp).
    this.config.status &= STATUS.LINK_UP;
    this.filter.reset(this.config.mac, false);
  }

  /** Stops everything, ends the workers, releases memory and the backend. */
  async close(): Promise<void> {
    if (this.reattachTimer) clearInterval(this.reattachTimer);
    this.reattachTimer = null;
    await this.stop();
    await Promise.all(this.slots.map((s) => s.host.kill()));
    this.logLimit.close(); // what it still holds is logged now
    for (const r of this.regions) native.munmap(r.mappingId);
    this.sources.clear();
    this.regions = [];
    this.map = null;
    this.mem = null;
    this.dropDirtyLog();
    this.backend.close();
  }

  // ---- dirty logging (live migration)

  /**
   * Installs, replaces or (null) drops the dirty log's memory (vhost-user SET_LOG_BASE). The log must
   * cover guest memory. Running queues switch to the new log before the old mapping is released, so
   * no write goes unlogged and none lands in a released log. Marks are made only while logging is on
   * (setLogging). Returns the main thread's view of the log (DirtyLog.collect() takes the dirty pages).
   */
  async setDirtyLog(spec: DirtyLogSpec | null): Promise<DirtyLog | null> {
    let next: NetDevice['dirty'] = null;
    if (spec) {
      const offset = spec.offset ?? 0;
      const size = spec.size;
      if (!(Number.isSafeInteger(offset) && offset >= 0 && Number.isSafeInteger(size) && size > 0 && Number.isSafeInteger(offset + size))) {
        throw new NetConfigError(NET_ERROR.BAD_DIRTY_LOG, `dirty log of ${size} bytes at offset ${offset}: both must be non-negative integers whose sum fits 2^53`);
      }
      const need = this.dirtyLogBytes();
      if (size < need) {
        throw new NetConfigError(NET_ERROR.BAD_DIRTY_LOG, `a dirty log of ${size} bytes covers ${size * 8} pages; guest memory needs ${need} bytes (one bit per 4 KiB page up to its highest address)`);
      }
      const inner = offset % LOG_PAGE_SIZE; // mmap takes a page-aligned offset
      let mappingId: number;
      try {
        mappingId = native.mmap(spec.fd, offset - inner, inner + size);
      } catch (e) {
        throw new NetConfigError(NET_ERROR.BAD_DIRTY_LOG, `the dirty log (${size} bytes at offset ${offset}) cannot be mapped: ${(e as Error).message}`, { cause: e });
      }
      next = { mappingId, offset: inner, size, view: new DirtyLog(native.mappingBuffer(mappingId), inner, size) };
    }
    const old = this.dirty;
    this.dirty = next;
    try {
      if (this.logging) await this.pushLog(); // while off, no queue holds a log
    } finally {
      if (old) native.munmap(old.mappingId);
    }
    return next?.view ?? null;
  }

  /**
   * Turns dirty logging on or off (vhost-user: VHOST_F_LOG_ALL in SET_FEATURES), for every queue at
   * once, between bursts, without stopping them. Resolves when every running queue has switched.
   */
  async setLogging(on: boolean): Promise<void> {
    if (this.logging === on) return;
    this.logging = on;
    await this.pushLog();
  }

  /** Whether writes into guest memory are being logged now. */
  get dirtyLogging(): boolean {
    return this.logging && this.dirty !== null;
  }

  /** Where queue `index` logs its used ring (QueueSetup.logUsed); applied at once to a running queue. */
  async setUsedLog(index: number, gpa: number | null): Promise<void> {
    const s = this.slot(index);
    if (!s.setup) throw new NetStateError(NET_ERROR.QUEUE_NOT_SET_UP, `queue ${index} has no setup; call setupQueue first`);
    s.setup.logUsed = gpa;
    await this.pushLog(s);
  }

  /**
   * Live migration for an embedding VMM: a log the device owns, sized for guest memory, with logging
   * on. The VMM takes the pages written since the last call with collect() on the result, in every
   * round of its RAM copy and once more after stop(). Ends with stopDirtyLog().
   */
  async startDirtyLog(): Promise<DirtyLog> {
    if (!this.map) throw new NetStateError(NET_ERROR.NO_MEMORY, 'dirty logging needs guest memory; call setMemory first');
    const size = dirtyLogSize(this.memoryEnd());
    const fd = native.memfdCreate('lgnet-dirty-log', size);
    let view: DirtyLog | null;
    try {
      view = await this.setDirtyLog({ fd, size });
    } finally {
      native.close(fd);
    }
    await this.setLogging(true);
    return view!;
  }

  /** Ends startDirtyLog(): logging off, the log released. */
  async stopDirtyLog(): Promise<void> {
    await this.setLogging(false);
    await this.setDirtyLog(null);
  }

  /** The first guest physical address above every region (0 without memory). */
  private memoryEnd(): number {
    return this.regions.reduce((m, r) => Math.max(m, r.gpa + r.size), 0);
  }

  /** Bytes a log needs to hold one bit per page of guest memory (not rounded to words). */
  private dirtyLogBytes(): number {
    return Math.ceil(Math.ceil(this.memoryEnd() / LOG_PAGE_SIZE) / 8);
  }

  /** Queue `s`'s logging as its worker takes it: null while off. */
  private workerLog(s: Slot): WorkerLog | null {
    const d = this.dirty;
    if (!this.logging || d === null || !s.setup) return null;
    const u = s.setup.logUsed;
    return { mappingId: d.mappingId, offset: d.offset, size: d.size, usedGpa: u === undefined ? s.setup.used : u };
  }

  /** Sends the logging state to running queues (all, or `only`) and waits until each has switched. */
  private async pushLog(only?: Slot): Promise<void> {
    const targets = (only ? [only] : this.slots).filter((s) => s.running);
    await Promise.all(targets.map((s) => s.host.command({ cmd: 'log', log: this.workerLog(s) }, ['logging'])));
    const c = this.slots[this.ctrlIndex];
    if (this.ctrl && c && (!only || only === c)) {
      const w = this.workerLog(c);
      this.ctrl.queue.setDirtyLog(w ? this.dirty!.view : null, w?.usedGpa ?? null);
    }
  }

  /** Forgets the log (queues stopped): a front-end that went away, or close(). */
  private dropDirtyLog(): void {
    if (this.dirty) native.munmap(this.dirty.mappingId);
    this.dirty = null;
    this.logging = false;
  }

  /**
   * Announces the guest's MAC on the backend after a migration (vhost-user SEND_RARP): one RARP
   * broadcast, so that switches learn the new port at once. Returns false when the backend has no
   * way to send it or could not take it now; the caller logs that.
   */
  announce(mac: Uint8Array = this.config.mac): boolean {
    const frame = rarpFrame(mac);
    return this.backend.inject?.(frame) ?? false;
  }

  /** Reads the config space. */
  readConfig(offset: number, size: number): Uint8Array {
    return this.config.read(offset, size);
  }

  /** Writes the config space (only the MAC is writable: a legacy driver sets its address so). */
  writeConfig(offset: number, data: Uint8Array): void {
    const before = this.config.mac.slice();
    this.config.write(offset, data);
    if (offset < CFG.MAC + 6) {
      this.filter.mac.set(this.config.mac);
      this.pushFilter();
      this.macChanged(before);
    }
  }

  /** Emits `macChange` when the driver's address is not `before` any more. */
  private macChanged(before: Uint8Array): void {
    const now = this.config.mac;
    if (macEquals(now, 0, before, 0)) return;
    const e: MacChange = { mac: formatMac(now), previous: formatMac(before) };
    this.emit('macChange', e);
  }

  /**
   * Sets the link state reported in config.status (VIRTIO_NET_S_LINK_UP, read by a driver that
   * negotiated STATUS), as QEMU's `set_link` does; it lasts across resets. A change emits
   * `configChange`.
   */
  setLinkUp(up: boolean): void {
    if (this.config.linkUp === up) return;
    this.config.linkUp = up;
    this.configChanged();
  }

  /**
   * Asks the guest to announce itself (VIRTIO_NET_S_ANNOUNCE, virtio 1.2 §5.1.6.5.4), as a VMM does
   * after a live migration so that switches learn where the guest went: the driver sends gratuitous
   * ARPs (and IPv6 neighbour advertisements) for every address it has, then acknowledges with
   * VIRTIO_NET_CTRL_ANNOUNCE_ACK, which clears the bit. Emits `configChange`. False, with nothing
   * changed, when the driver did not negotiate GUEST_ANNOUNCE and CTRL_VQ: send announce() (a RARP
   * for the MAC) instead, as QEMU does.
   */
  guestAnnounce(): boolean {
    const f = this.negotiated.bits;
    if (!has(f, 'GUEST_ANNOUNCE') || !has(f, 'CTRL_VQ')) return false;
    this.config.status |= STATUS.ANNOUNCE;
    this.configChanged();
    return true;
  }

  /** The config generation: it changes whenever the device changes its config space (ConfigChange). */
  get configGeneration(): number {
    return this.configGen;
  }

  private configGen = 0;

  private configChanged(): void {
    this.configGen = (this.configGen + 1) >>> 0;
    const e: ConfigChange = { generation: this.configGen, status: this.config.status };
    this.emit('configChange', e);
  }

  /** Queue pairs the driver asked for with MQ_VQ_PAIRS_SET. */
  get queuePairsActive(): number {
    return this.activePairs;
  }

  /** Live counters of every queue. */
  metrics(): DeviceMetrics {
    return {
      queues: this.slots.map((s) => ({
        index: s.index,
        role: s.index === this.ctrlIndex ? 'ctrl' as const : s.index & 1 ? 'tx' as const : 'rx' as const,
        running: s.index === this.ctrlIndex ? this.ctrl !== null : s.running,
        broken: s.broken,
        ...snapshot(s.counters),
      })),
      ctrl: { ...this.ctrlStats },
    };
  }

  /**
   * Where every queue and its ring stand now: each running queue's worker reads its ring between two
   * passes and answers, the control queue is read here. For an operator or a test looking at a queue
   * that stalls (what QEMU's x-query-virtio-queue-status shows). A worker that does not answer within
   * `timeoutMs` is reported 'unanswered' and left running. Never throws for a queue's state.
   */
  async inspect(timeoutMs = 1000): Promise<QueueInspection[]> {
    const none = { ring: null, lastSleep: null, interruptHeld: false };
    return Promise.all(this.slots.map(async (s): Promise<QueueInspection> => {
      const role = s.index === this.ctrlIndex ? 'ctrl' as const : s.index & 1 ? 'tx' as const : 'rx' as const;
      if (role === 'ctrl') {
        const q = this.ctrl?.queue;
        if (!q) return { index: s.index, role, state: 'stopped', ...none };
        try {
          return { index: s.index, role, state: q.broken ? 'broken' : 'running', ...none, ring: q.inspect() };
        } catch (e) {
          return { index: s.index, role, state: 'broken', ...none, error: (e as Error).message };
        }
      }
      if (!s.running) return { index: s.index, role, state: 'stopped', ...none };
      try {
        const e = await s.host.command({ cmd: 'inspect' }, ['inspect'], timeoutMs);
        if (e.ev === 'inspect') return { index: s.index, role, ...e.inspection };
      } catch { /* reported as unanswered */ }
      return { index: s.index, role, state: 'unanswered', ...none };
    }));
  }

  // ---- workers

  private slot(index: number): Slot {
    const s = this.slots[index];
    if (!Number.isInteger(index) || !s) {
      throw new NetConfigError(NET_ERROR.BAD_QUEUE_INDEX, `queue index ${index} is out of range; this device has ${this.slots.length} queues`);
    }
    return s;
  }

  /** Starts the queue's worker thread if need be (a TX worker loads the pair backend's filter hook). */
  private ensureWorker(s: Slot): Promise<void> {
    return s.host.start(this.backend.frameFilter?.());
  }

  // ---- control queue (main thread)

  private pushFilter(): void {
    const filter = filterState(this.filter);
    for (let i = 0; i < 2 * this.maxQueuePairs; i += 2) {
      const s = this.slots[i]!;
      if (s.running) s.host.send({ cmd: 'filter', filter });
    }
  }

  private startCtrl(s: Slot): void {
    if (this.ctrl) return;
    const setup = s.setup!;
    const target: CtrlTarget = {
      features: this.negotiated,
      filter: this.filter,
      maxQueuePairs: this.maxQueuePairs,
      filterChanged: () => this.pushFilter(),
      setMac: (mac) => {
        const before = this.config.mac.slice();
        this.config.mac = mac;
        this.macChanged(before);
      },
      announceAcked: () => { this.config.status &= ~STATUS.ANNOUNCE; },
      setQueuePairs: (n) => {
        this.activePairs = n;
        this.steerToDriver();
      },
      setGuestOffloads: (bits) => {
        const base = this.accepted & ~GUEST_OFFLOAD_FEATURES;
        this.backend.configure(decode(base | bits));
      },
    };
    this.ctrl = new CtrlLoop({
      ring: { size: setup.size, desc: setup.desc, avail: setup.avail, used: setup.used, lastAvail: setup.lastAvail ?? 0 },
      kickFd: setup.kickFd,
      callFd: setup.callFd,
      mem: this.bytes(),
      features: this.negotiated,
      counters: s.counters,
      burst: this.burst,
      target,
      stats: this.ctrlStats,
      isBroken: () => s.broken !== null || this.ctrlMemoryFault(s),
      onRefused: (err) => this.logLimit.log('ctrl', { level: 'warn', msg: 'control command refused', err }, (held) => ({
        level: 'warn', msg: `control commands refused: ${held} not logged one by one, the last:`, err, held,
      })),
      onBroken: (code, message) => this.markBroken(s, code, message),
      onIotlbMiss: (iova, access) => this.emit('iotlbMiss', { queue: s.index, iova, access }),
    });
    const w = this.workerLog(s);
    if (w) this.ctrl.queue.setDirtyLog(this.dirty!.view, w.usedGpa);
    this.ctrl.start();
  }

  private stopCtrl(): number {
    const c = this.ctrl;
    if (!c) return this.slots[this.ctrlIndex]?.setup?.lastAvail ?? 0;
    this.ctrl = null;
    const last = c.stop();
    const setup = this.slots[this.ctrlIndex]!.setup;
    if (setup) setup.lastAvail = last;
    return last;
  }

  /** The control queue's memory shrank since its last wake-up: it breaks like a worker's queue. */
  private ctrlMemoryFault(s: Slot): boolean {
    const f = this.memoryFault();
    if (!f) return false;
    s.counters[M.queueBroken]! += 1;
    s.counters[M.memoryFaults]! += 1;
    this.markBroken(s, f.code, f.message);
    return true;
  }

  /**
   * A queue's backend started failing or works again: logged on each edge, with what the errno usually
   * means for a tap. Its frames meanwhile are counted (txDropBackend, rxDropBackend), never lost.
   */
  private backendEdge(s: Slot, ok: boolean, errno: number): void {
    const key = `backend ${s.index}`;
    if (ok) {
      this.logLimit.log(key, { level: 'info', msg: 'backend works again', queue: s.index }, (held) => ({
        level: 'info', msg: `backend works again, after ${held} changes of state not logged one by one`, queue: s.index, held,
      }));
      return;
    }
    // libuv has no name for EBADFD (77, what a tap's fd returns once its interface is deleted).
    const name = errno === 77 ? 'EBADFD' : Object.entries(osConstants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
    const why = name === 'EIO' ? 'the tap is down (ip link set up)'
      : name === 'EBADFD' ? 'the tap was deleted'
        : name === 'ENOLINK' ? 'the macvtap was deleted; lgnet cannot attach to another: restart it, or hand it the new macvtap\'s fds'
        : name === 'EINVAL' ? 'the kernel refused a frame, usually its virtio_net_hdr (a guest header the tap does not take)'
          : 'see the errno';
    this.logLimit.log(key, { level: 'warn', msg: 'backend failing: frames are dropped and counted', queue: s.index, errno, code: name, why }, (held) => ({
      level: 'warn', msg: `backend failing: frames are dropped and counted (${held} changes of state not logged one by one)`, queue: s.index, errno, code: name, why, held,
    }));
    if (name === 'EBADFD') this.startReattach();
  }

  /** Bounds the log lines the guest can cause (backend edges, refused control commands): log-limit.ts. */
  private readonly logLimit = new LogLimiter((e) => this.emit('log', e));

  private reattachTimer: ReturnType<typeof setInterval> | null = null;

  /**
   * The backend's interface is gone: try Backend.reattach every REATTACH_MS until it is back. Frames
   * meanwhile are dropped and counted; the queues and the vhost-user connection go on.
   */
  private startReattach(): void {
    const b = this.backend;
    if (this.reattachTimer !== null || !b.reattach) return;
    this.emit('log', { level: 'warn', msg: 'backend interface gone: lgnet attaches to it again as soon as one of that name exists (or can be created)', kind: b.kind });
    let warned = false;
    const stop = (): void => {
      if (this.reattachTimer) clearInterval(this.reattachTimer);
      this.reattachTimer = null;
    };
    const tick = (): void => {
      let ok: boolean;
      try {
        ok = b.reattach!();
      } catch (e) {
        stop();
        this.emit('log', { level: 'error', msg: 'backend cannot be attached again; restart lgnet once it is back', err: (e as Error).message });
        return;
      }
      if (!ok) {
        const code = (b as { reattachError?: string | null }).reattachError;
        if (code === 'EPERM' && !warned) {
          warned = true;
          this.emit('log', {
            level: 'warn', msg: 'backend cannot attach yet', code,
            why: 'not allowed to create the tap, or (jailed as root) to attach at all: run lgnet with --user and make the tap persistent for that user (ip tuntap add NAME mode tap user USER vnet_hdr), or restart lgnet',
          });
        }
        return;
      }
      stop();
      this.emit('log', { level: 'info', msg: 'backend attached again', kind: b.kind });
    };
    this.reattachTimer = setInterval(tick, REATTACH_MS);
    this.reattachTimer.unref();
  }

  /** A queue is broken: DEVICE_NEEDS_RESET (§2.1.1), logged once and reported. */
  private markBroken(s: Slot, code: string, message: string): void {
    if (s.broken !== null) return;
    if (code !== NET_ERROR.GUEST_MEMORY_FAULT) {
      // Zeros where memory vanished break ring rules: name the cause, not the symptom.
      const f = this.memoryFault();
      if (f) {
        ({ code, message } = f);
        // A worker counts its own (it is its counters' only writer); the control queue's are ours.
        if (s.index === this.ctrlIndex) s.counters[M.memoryFaults]! += 1;
      }
    }
    s.broken = `${code}: ${message}`;
    this.status |= 0x40;
    // A guest can break the queue again after every reset it asks the VMM for: bounded (log-limit.ts).
    this.logLimit.log(`broken ${s.index}`, { level: 'error', msg: 'queue broken', queue: s.index, code, err: message }, (held) => ({
      level: 'error', msg: `queue broken: ${held} times not logged one by one, the last:`, queue: s.index, code, err: message, held,
    }));
    this.emit('broken', { queue: s.index, code, message });
  }
}
