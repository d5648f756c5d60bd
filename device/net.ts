/**
 * NetDevice: the virtio-net device and its embedding API, what a VMM calls directly and what the
 * vhost-user server translates its messages into.
 *
 *   create ─▶ setFeatures ─▶ setMemory ─▶ setupQueue(i) … ─▶ startQueue(i) / start ─▶ … ─▶ stop / reset
 *
 * Queue numbering follows the spec (§5.1.2): receiveq_n = 2n, transmitq_n = 2n+1, controlq = 2·max_pairs.
 * Each started data queue gets its own worker thread (worker.ts); the control queue is served here,
 * on the main thread, woken through the event loop. Memory changes quiesce the workers first, then
 * swap the mappings, so no worker ever reads a region that is being replaced.
 */
import { EventEmitter } from 'node:events';
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import * as native from '../native/index.ts';
import { SplitQueue, type DescriptorChain, type GuestMemory } from '../vring/index.ts';
import type { Backend } from './backend.ts';
import { CFG, NetConfig, parseMac, STATUS } from './config.ts';
import { MAX_CTRL_LEN, processCtrl, type CtrlTarget } from './ctrl.ts';
import { LgnetError } from '../errors/index.ts';
import { NET_ERROR, NetConfigError, NetStateError, WorkerError } from './errors.ts';
import { decode, DEFAULT_OFFERED, GUEST_OFFLOAD_FEATURES, mask, names, OFFLOAD_FEATURES, type NegotiatedFeatures } from './features.ts';
import { PendingUsed } from './interrupt.ts';
import { createCounters, M, snapshot, type QueueMetrics } from './metrics.ts';
import { RxFilter } from './rx-filter.ts';
import { siblingModule, startWorker } from './thread.ts';
import { memoryFromMappings, type FilterState, type QueueConfig, type WorkerBoot, type WorkerCommand, type WorkerEvent, type WorkerRegion } from './worker.ts';
import { DEFAULT_SNAPLEN } from './capture.ts';
import { checkRateLimit, type RateLimit } from './rate-limit.ts';

/** Options of {@link NetDevice}. */
export interface NetDeviceOptions {
  /** The backend frames go to and come from. The device closes it in close(). */
  backend: Backend;
  /** MAC address, "52:54:00:12:34:56" or 6 bytes. Default: a random locally administered one. */
  mac?: string | Uint8Array;
  /** MTU reported in config (VIRTIO_NET_F_MTU). Default 1500. */
  mtu?: number;
  /** Queue pairs (≤ the backend's). Default: the backend's. */
  queuePairs?: number;
  /** Features to offer; trimmed to what the backend supports. Default DEFAULT_OFFERED. */
  features?: bigint;
  /** Chains per burst. Default 32. */
  burst?: number;
  /**
   * Microseconds a worker keeps re-checking its ring (and backend) before it signals and sleeps; work
   * that arrives meanwhile joins the same burst and interrupt. 0 turns busy polling off. Default 0.
   */
  busyPoll?: number;
  /** Largest queue size the device accepts. Default 1024. */
  maxQueueSize?: number;
  /**
   * pcap capture (device/capture.ts): the fd of a file openPcap() prepared, and which data queues
   * to capture (default all). The embedder closes the fd after close().
   */
  capture?: { fd: number; snaplen?: number; queues?: readonly number[] };
  /**
   * Rate limits (device/rate-limit.ts): token buckets for bytes and frames, each RX and each TX
   * queue with buckets of its own. Default none.
   */
  rateLimit?: { rx?: RateLimit; tx?: RateLimit };
}

/** A guest memory region handed to the device as an fd (memfd, or what the VMM sent). */
export interface MemoryRegionSpec {
  /** Guest physical address. */
  gpa: number;
  size: number;
  /** The fd to map (MAP_SHARED); the caller keeps ownership. */
  fd: number;
  /** Offset into the fd. Default 0. */
  mmapOffset?: number;
  /** The VMM's virtual address of the region (vhost-user ring addresses use it). */
  uaddr?: number;
}

/** Where a virtqueue lives and how it signals. */
export interface QueueSetup {
  size: number;
  /** Guest physical addresses of the three ring areas. */
  desc: number;
  avail: number;
  used: number;
  /** Eventfd the driver writes to kick; -1 for none (the worker then polls on a timeout). */
  kickFd: number;
  /** Eventfd the device writes to interrupt; -1 for none. */
  callFd: number;
  /** Next avail index to process (vhost-user SET_VRING_BASE). Default 0. */
  lastAvail?: number;
  /**
   * A TX ring that is started but disabled (vhost-user "Ring states"): its chains are consumed and
   * discarded, counted as txDropDisabled, never sent. Not allowed on an RX queue (a disabled RX ring
   * supplies nothing, so it is simply not started).
   */
  discard?: boolean;
  /**
   * vhost-user inflight tracking: this queue's region of the shared inflight buffer, in a native
   * mapping (inflightQueueRegionSize(size) bytes at `offset`). Pops and completions are recorded
   * there, and chains a previous back-end left in flight are taken up first when the queue starts.
   */
  inflight?: { mappingId: number; offset: number };
}

/** Per-queue and device metrics. */
export interface DeviceMetrics {
  queues: Array<{ index: number; role: 'rx' | 'tx' | 'ctrl'; running: boolean; broken: string | null } & QueueMetrics>;
  ctrl: { commands: number; errors: number };
}

interface Slot {
  index: number;
  setup?: QueueSetup;
  counters: Float64Array;
  /** The queue's worker thread, started once and reused; idle while the queue is stopped. */
  worker?: Worker;
  spawning?: Promise<void>;
  control?: MessagePort;
  ctlFd: number;
  ctlFlag: Int32Array;
  /** A queue is configured on the worker. */
  running: boolean;
  waiters: Array<{ evs: ReadonlyArray<WorkerEvent['ev']>; resolve: (e: WorkerEvent) => void }>;
  broken: string | null;
}

const WORKER_URL = siblingModule('worker', import.meta.url);
/** How long the device waits for a worker to answer a command. */
const WORKER_TIMEOUT_MS = 5000;

function randomMac(): Uint8Array {
  const mac = new Uint8Array(6);
  crypto.getRandomValues(mac);
  mac[0] = (mac[0]! & 0xfe) | 0x02; // unicast, locally administered
  return mac;
}

/**
 * A virtio-net device. Events: `broken` ({queue, code, message}) when a guest breaks a ring,
 * `log` ({level, msg, ...}) for things an operator should see.
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
  private readonly capture: NetDeviceOptions['capture'];
  private readonly rateLimit: NetDeviceOptions['rateLimit'];
  private readonly maxQueueSize: number;
  private readonly filter = new RxFilter();
  private readonly slots: Slot[] = [];
  private regions: WorkerRegion[] = [];
  private mem: GuestMemory | null = null;
  private activePairs = 1;
  private ctrl: { queue: SplitQueue; poller: native.FdPoller; pending: PendingUsed; chains: DescriptorChain[]; buf: Uint8Array } | null = null;
  private ctrlStats = { commands: 0, errors: 0 };

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
    const mac = opts.mac === undefined ? randomMac() : typeof opts.mac === 'string' ? parseMac(opts.mac) : opts.mac;
    this.config = new NetConfig({ mac, mtu, maxQueuePairs: this.maxQueuePairs });
    let offered = opts.features ?? DEFAULT_OFFERED;
    offered &= ~OFFLOAD_FEATURES | opts.backend.supportedOffloads();
    if (this.maxQueuePairs === 1) offered &= ~mask('MQ');
    this.offered = offered;
    this.burst = opts.burst ?? 32;
    this.busyPoll = opts.busyPoll ?? 0;
    this.capture = opts.capture;
    try {
      if (opts.rateLimit?.rx) checkRateLimit(opts.rateLimit.rx);
      if (opts.rateLimit?.tx) checkRateLimit(opts.rateLimit.tx);
    } catch (e) {
      throw new NetConfigError(NET_ERROR.BAD_RATE_LIMIT, `rateLimit: ${(e as Error).message}`);
    }
    this.rateLimit = opts.rateLimit;
    this.maxQueueSize = opts.maxQueueSize ?? 1024;
    for (let i = 0; i < this.queueCount; i++) {
      this.slots.push({ index: i, counters: createCounters(), ctlFd: -1, ctlFlag: new Int32Array(new SharedArrayBuffer(4)), running: false, waiters: [], broken: null });
    }
    this.filter.reset(mac, false);
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
    this.filter.reset(this.config.mac, this.negotiated.bits & mask('CTRL_VLAN') ? true : false);
  }

  /**
   * Replaces guest memory. Every region is mapped MAP_SHARED from its fd (the caller may close the fd
   * afterwards). Running workers are paused first and resumed over the new mappings; the old mappings
   * are released only after that.
   */
  async setMemory(specs: MemoryRegionSpec[]): Promise<void> {
    const regions: WorkerRegion[] = [];
    try {
      for (const s of specs) {
        const mappingId = native.mmap(s.fd, s.mmapOffset ?? 0, s.size);
        regions.push({ gpa: s.gpa, size: s.size, mappingId, mappingOffset: 0, ...(s.uaddr !== undefined ? { uaddr: s.uaddr } : {}) });
      }
      this.mem = memoryFromMappings(regions); // validates overlaps and sizes
    } catch (e) {
      for (const r of regions) native.munmap(r.mappingId);
      throw e;
    }
    const old = this.regions;
    this.regions = regions;
    const running = this.slots.filter((s) => s.running);
    await Promise.all(running.map((s) => this.command(s, { cmd: 'pause' }, ['paused'])));
    for (const s of running) this.send(s, { cmd: 'resume', regions });
    if (this.ctrl) this.ctrl.queue.attach(this.mem);
    for (const r of old) native.munmap(r.mappingId);
  }

  /**
   * Forgets guest memory (a VMM went away). Every queue must be stopped first; the mappings are
   * released at once.
   */
  async releaseMemory(): Promise<void> {
    if (this.slots.some((s) => s.running) || this.ctrl) {
      throw new NetStateError(NET_ERROR.QUEUE_RUNNING, 'stop every queue before releasing guest memory');
    }
    for (const r of this.regions) native.munmap(r.mappingId);
    this.regions = [];
    this.mem = null;
  }

  /** The guest memory as the main thread sees it (null before setMemory). */
  get memory(): GuestMemory | null {
    return this.mem;
  }

  /** Records where queue `index` lives. Takes effect at startQueue. */
  setupQueue(index: number, setup: QueueSetup): void {
    const s = this.slot(index);
    if (s.running || (index === this.ctrlIndex && this.ctrl)) {
      throw new NetStateError(NET_ERROR.QUEUE_RUNNING, `queue ${index} is running; stop it before changing its setup`);
    }
    const size = setup.size;
    if (!(Number.isInteger(size) && size > 0 && (size & (size - 1)) === 0 && size <= this.maxQueueSize)) {
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
    const workers = this.slots.filter((s) => s.worker);
    const answers = await Promise.all(workers.map((s) => this.command(s, { cmd: 'seccomp', program: program.slice() }, ['sealed'])));
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
    if (!this.mem) throw new NetStateError(NET_ERROR.NO_MEMORY, `queue ${index} cannot start before setMemory`);
    if (index === this.ctrlIndex) return this.startCtrl(s);
    if (s.running) return;
    await this.ensureWorker(s);
    s.broken = null;
    const config: QueueConfig = {
      ring: { size: s.setup.size, desc: s.setup.desc, avail: s.setup.avail, used: s.setup.used, lastAvail: s.setup.lastAvail ?? 0 },
      discard: s.setup.discard === true,
      inflight: s.setup.inflight ?? null,
      rateLimit: (s.index & 1 ? this.rateLimit?.tx : this.rateLimit?.rx) ?? null,
      capture: this.capture && (this.capture.queues?.includes(s.index) ?? true) ? { fd: this.capture.fd, snaplen: this.capture.snaplen ?? DEFAULT_SNAPLEN } : null,
      features: this.accepted,
      regions: this.regions,
      kickFd: s.setup.kickFd,
      callFd: s.setup.callFd,
      port: this.backend.port(index >>> 1),
      burst: this.burst,
      busyPoll: this.busyPoll,
      mtu: this.config.mtu,
      filter: this.filterState(),
    };
    s.running = true;
    await this.command(s, { cmd: 'configure', config }, ['running', 'broken']);
  }

  /** Stops queue `index` and returns the next avail index it would have processed. */
  async stopQueue(index: number): Promise<number> {
    const s = this.slot(index);
    if (index === this.ctrlIndex) return this.stopCtrl();
    if (!s.running) return s.setup?.lastAvail ?? 0;
    let lastAvail = s.setup?.lastAvail ?? 0;
    try {
      const e = await this.command(s, { cmd: 'stop' }, ['stopped']);
      if (e.ev === 'stopped') lastAvail = e.lastAvail;
    } catch (e) {
      await this.killWorker(s); // it did not answer: replace it next time
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
    this.status = 0;
    this.activePairs = 1;
    this.config.status = STATUS.LINK_UP;
    this.filter.reset(this.config.mac, false);
  }

  /** Stops everything, ends the workers, releases memory and the backend. */
  async close(): Promise<void> {
    await this.stop();
    await Promise.all(this.slots.map((s) => this.killWorker(s)));
    for (const r of this.regions) native.munmap(r.mappingId);
    this.regions = [];
    this.mem = null;
    this.backend.close();
  }

  /** Reads the config space. */
  readConfig(offset: number, size: number): Uint8Array {
    return this.config.read(offset, size);
  }

  /** Writes the config space (only the MAC is writable). */
  writeConfig(offset: number, data: Uint8Array): void {
    this.config.write(offset, data);
    if (offset < CFG.MAC + 6) {
      this.filter.mac.set(this.config.mac);
      this.pushFilter();
    }
  }

  /** Sets the link state reported in config.status. */
  setLinkUp(up: boolean): void {
    this.config.linkUp = up;
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

  // ---- workers

  private slot(index: number): Slot {
    const s = this.slots[index];
    if (!Number.isInteger(index) || !s) {
      throw new NetConfigError(NET_ERROR.BAD_QUEUE_INDEX, `queue index ${index} is out of range; this device has ${this.slots.length} queues`);
    }
    return s;
  }

  private ensureWorker(s: Slot): Promise<void> {
    if (s.worker) return Promise.resolve();
    if (s.spawning) return s.spawning;
    const { port1, port2 } = new MessageChannel();
    s.ctlFd = native.eventfdCreate({ nonblocking: true });
    s.control = port1;
    const ref = this.backend.frameFilter?.();
    const boot: WorkerBoot = {
      lgnetQueueWorker: true,
      role: s.index & 1 ? 'tx' : 'rx',
      queueIndex: s.index,
      ctlFd: s.ctlFd,
      ctlFlag: s.ctlFlag,
      counters: s.counters,
      control: port2,
      ...(ref && s.index & 1 ? { frameFilter: ref } : {}),
    };
    const idle = this.waitFor(s, ['idle', 'broken']);
    const w = startWorker(WORKER_URL, { workerData: boot, transferList: [port2], name: `lgnet-q${s.index}` });
    s.worker = w;
    port1.on('message', (e: WorkerEvent) => this.onWorkerEvent(s, e));
    port1.unref();
    w.on('error', (e) => this.onWorkerEvent(s, { ev: 'broken', code: NET_ERROR.WORKER_CRASH, message: e.message }));
    w.on('exit', () => {
      if (s.worker === w) this.forgetWorker(s);
    });
    w.unref();
    s.spawning = idle.then(
      (e) => {
        delete s.spawning;
        if (e.ev === 'broken') throw new WorkerError(NET_ERROR.WORKER_START, `queue ${s.index}'s worker could not start: ${e.message}`);
      },
      async (e) => {
        delete s.spawning;
        await this.killWorker(s);
        throw e;
      },
    );
    return s.spawning;
  }

  private send(s: Slot, m: WorkerCommand): void {
    s.control!.postMessage(m);
    Atomics.store(s.ctlFlag, 0, 1); // seen by a busy worker
    native.eventfdWrite(s.ctlFd, 1); // wakes a sleeping one
  }

  private command(s: Slot, m: WorkerCommand, evs: ReadonlyArray<WorkerEvent['ev']>): Promise<WorkerEvent> {
    const p = this.waitFor(s, evs);
    this.send(s, m);
    return p;
  }

  private waitFor(s: Slot, evs: ReadonlyArray<WorkerEvent['ev']>): Promise<WorkerEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        s.waiters = s.waiters.filter((w) => w !== waiter);
        reject(new WorkerError(NET_ERROR.WORKER_TIMEOUT, `queue ${s.index}'s worker did not report "${evs.join('" or "')}" within ${WORKER_TIMEOUT_MS} ms`));
      }, WORKER_TIMEOUT_MS);
      const waiter = { evs, resolve: (e: WorkerEvent) => { clearTimeout(timer); resolve(e); } };
      s.waiters.push(waiter);
    });
  }

  private onWorkerEvent(s: Slot, e: WorkerEvent): void {
    if (e.ev === 'broken') this.markBroken(s, e.code, e.message);
    const ready = s.waiters.filter((w) => w.evs.includes(e.ev));
    s.waiters = s.waiters.filter((w) => !w.evs.includes(e.ev));
    for (const w of ready) w.resolve(e);
  }

  private forgetWorker(s: Slot): void {
    delete s.worker;
    s.running = false;
    s.control?.close();
    delete s.control;
    if (s.ctlFd >= 0) native.close(s.ctlFd);
    s.ctlFd = -1;
  }

  private async killWorker(s: Slot): Promise<void> {
    const w = s.worker;
    if (!w) return;
    const exited = new Promise((r) => w.once('exit', r));
    try {
      this.send(s, { cmd: 'exit' });
    } catch { /* the port or fd is already gone */ }
    await Promise.race([exited, new Promise((r) => setTimeout(r, WORKER_TIMEOUT_MS))]);
    if (s.worker === w) {
      await w.terminate();
      this.forgetWorker(s);
    }
  }

  // ---- control queue (main thread)

  private filterState(): FilterState {
    const f = this.filter;
    return {
      promisc: f.promisc, allmulti: f.allmulti, alluni: f.alluni, nomulti: f.nomulti, nouni: f.nouni, nobcast: f.nobcast,
      vlanFiltering: f.vlanFiltering, mac: f.mac.slice(), uni: f.uni.slice(), multi: f.multi.slice(), vlans: f.vlans.slice(),
    };
  }

  private pushFilter(): void {
    const filter = this.filterState();
    for (let i = 0; i < 2 * this.maxQueuePairs; i += 2) {
      const s = this.slots[i]!;
      if (s.running) this.send(s, { cmd: 'filter', filter });
    }
  }

  private startCtrl(s: Slot): void {
    if (this.ctrl) return;
    const setup = s.setup!;
    const queue = new SplitQueue({ size: setup.size, desc: setup.desc, avail: setup.avail, used: setup.used, eventIdx: this.negotiated.eventIdx, indirect: this.negotiated.indirect });
    queue.attach(this.mem!);
    queue.setBase(setup.lastAvail ?? 0);
    const pending = new PendingUsed(queue, setup.callFd, s.counters);
    const poller = new native.FdPoller(setup.kickFd, () => this.serveCtrl());
    this.ctrl = { queue, poller, pending, chains: [], buf: new Uint8Array(MAX_CTRL_LEN) };
    poller.start(native.POLL.READABLE);
    this.serveCtrl(); // commands queued before the start
  }

  private stopCtrl(): number {
    const c = this.ctrl;
    if (!c) return this.slots[this.ctrlIndex]?.setup?.lastAvail ?? 0;
    c.poller.close();
    this.ctrl = null;
    const last = c.queue.lastAvail;
    const setup = this.slots[this.ctrlIndex]!.setup;
    if (setup) setup.lastAvail = last;
    return last;
  }

  private serveCtrl(): void {
    const c = this.ctrl;
    if (!c) return;
    const s = this.slots[this.ctrlIndex]!;
    if (s.broken) return;
    try {
      native.eventfdRead(s.setup!.kickFd);
    } catch { /* a blocking kick fd with nothing to read: fine */ }
    const target: CtrlTarget = {
      features: this.negotiated,
      filter: this.filter,
      maxQueuePairs: this.maxQueuePairs,
      filterChanged: () => this.pushFilter(),
      setMac: (mac) => { this.config.mac = mac; },
      announceAcked: () => { this.config.status &= ~STATUS.ANNOUNCE; },
      setQueuePairs: (n) => { this.activePairs = n; },
      setGuestOffloads: (bits) => {
        const base = this.accepted & ~GUEST_OFFLOAD_FEATURES;
        this.backend.configure(decode(base | bits));
      },
    };
    try {
      for (;;) {
        const n = c.queue.popBurst(this.burst, c.chains);
        if (n === 0) break;
        for (let i = 0; i < n; i++) {
          const ch = c.chains[i]!;
          const r = processCtrl(ch, target, c.buf);
          this.ctrlStats.commands++;
          if (r.error) {
            this.ctrlStats.errors++;
            this.emit('log', { level: 'warn', msg: 'control command refused', err: r.error });
          }
          c.queue.addUsed(ch.head, ch.writableLen >= 1 ? 1 : 0);
        }
        c.queue.flush();
        c.pending.pending += n;
      }
      c.pending.signal();
    } catch (e) {
      // As a data queue's worker does: a typed error keeps its code, anything else is a bug.
      s.counters[M.queueBroken]! += 1;
      this.markBroken(s, e instanceof LgnetError ? e.code : NET_ERROR.WORKER_ERROR, e instanceof Error ? e.message : String(e));
    }
  }

  /** A queue is broken: DEVICE_NEEDS_RESET (§2.1.1), logged once and reported. */
  private markBroken(s: Slot, code: string, message: string): void {
    if (s.broken !== null) return;
    s.broken = `${code}: ${message}`;
    this.status |= 0x40;
    this.emit('log', { level: 'error', msg: 'queue broken', queue: s.index, code, err: message });
    this.emit('broken', { queue: s.index, code, message });
  }
}
