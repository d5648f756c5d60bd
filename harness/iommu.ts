/**
 * The harness's vIOMMU: what QEMU's intel-iommu with device-iotlb=on does for a vhost-user device
 * that negotiated VIRTIO_F_ACCESS_PLATFORM. The driver then writes I/O virtual addresses (IOVAs) into
 * its rings; the back-end translates them through its IOTLB and asks for what it lacks with an IOTLB
 * MISS on the back-end channel; the front-end answers with an IOTLB UPDATE on the main channel and
 * takes mappings back with INVALIDATE.
 *
 *   back-end ──MISS (iova, perm)──▶ back-end channel ──▶ HarnessIommu: rules, page ──▶ fe.iotlbUpdate ──▶ main channel
 *                                                     ◀── u64 status, when NEED_REPLY ◀┘
 *
 * The IOVA space is the GuestRam shifted by `offset` (iova = gpa + offset), mapped page by page as a
 * guest kernel's DMA API would. Tests shape it: deny(), readOnly(), writeOnly(), serve = false; and
 * see what the back-end asked for in `misses`.
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "IOMMU support", VHOST_USER_IOTLB_MSG,
 * VHOST_USER_SET_BACKEND_REQ_FD, VHOST_USER_BACKEND_IOTLB_MSG; QEMU hw/virtio/vhost.c
 * (vhost_device_iotlb_miss) for how a miss is served.
 */
import * as native from '../native/index.ts';
import {
  BACKEND_REQ, decodeIotlb, encodeMessage, encodeU64, FLAGS, IOTLB_MSG_SIZE, IOTLB_TYPE, PROTOCOL_F,
} from '../sandbox/vhost-user/messages.ts';
import type { GuestRam } from './guest-ram.ts';
import { FrontendError, FRONTEND_ERROR, readAvailable, splitMessages } from './vhost-user-channel.ts';
import type { FrontendRequests } from './vhost-user-requests.ts';

/**
 * What the IOMMU needs of its front-end (a VhostUserFrontend): the negotiated protocol features and the
 * three requests it sends. Named by shape, so that the front-end, which takes an IOMMU, is not imported.
 */
export type IommuFrontend = Pick<FrontendRequests, 'protocolFeatures' | 'setBackendReqFd' | 'iotlbUpdate' | 'iotlbInvalidate'>;

/** Permission of a mapping (vhost's VHOST_ACCESS_*): read only, write only, read/write. */
export const IOMMU_PERM = { RO: 1, WO: 2, RW: 3 } as const;

/** Default IOVA offset: 64 GiB, so that an IOVA is never mistaken for a guest physical address. */
export const DEFAULT_IOVA_OFFSET = 0x10_0000_0000;

const LIMIT = 2 ** 53;
/** Larger payloads are not a back-end request any front-end reads (QEMU: VHOST_USER_PAYLOAD_SIZE). */
const MAX_BACKEND_PAYLOAD = 4096;

export interface HarnessIommuOptions {
  /** iova = gpa + offset: a multiple of pageSize, with every IOVA of the RAM below 2^53. Default DEFAULT_IOVA_OFFSET. */
  offset?: number;
  /** Granule of a served miss: a power of 2, at least 4096. Default 4096. */
  pageSize?: number;
  /** Permission of what is served outside readOnly()/writeOnly() ranges. Default IOMMU_PERM.RW. */
  perm?: number;
  /** Answer misses (default true). Off: misses are only recorded. */
  serve?: boolean;
  /** Push each used ring's translation when attachDriver starts the rings, as QEMU does (default true). */
  pushUsed?: boolean;
}

/** How a miss was answered. */
export type MissAnswer = 'update' | 'outside' | 'denied' | 'off';

/** One IOTLB miss the back-end sent. */
export interface IommuMiss {
  /** The I/O virtual address it asked for (a value of 2^53 or more is rounded; it is outside the RAM anyway). */
  iova: number;
  /** The access it asked for: IOMMU_PERM.RO, WO or RW. */
  perm: number;
  /** What the IOMMU did: an UPDATE, or nothing because the IOVA is outside the RAM, denied, or serving is off. */
  answer: MissAnswer;
}

type RuleKind = 'deny' | 'ro' | 'wo' | 'default';
interface Rule {
  start: number;
  end: number;
  kind: RuleKind;
}

/** A vIOMMU in front of a GuestRam, serving a vhost-user back-end's IOTLB misses over a front-end. */
export class HarnessIommu {
  readonly fe: IommuFrontend;
  readonly ram: GuestRam;
  /** iova = gpa + offset. */
  readonly offset: number;
  readonly pageSize: number;
  /** Permission of served mappings outside readOnly()/writeOnly() ranges. */
  perm: number;
  /** Whether misses are answered; when false they are only recorded. */
  serve: boolean;
  /** Whether attachDriver pushes the used rings' translations once the rings are started. */
  pushUsed: boolean;
  /** Every well-formed miss received, in order. */
  readonly misses: IommuMiss[] = [];
  /** UPDATEs sent and, with REPLY_ACK, acknowledged (served misses, pushes and map()). */
  updates = 0;
  /** INVALIDATEs sent and acknowledged. */
  invalidates = 0;
  /** Misses not answered with an UPDATE (outside the RAM, denied, or serve off). */
  unserved = 0;
  /** Back-end messages that are not a well-formed IOTLB MISS; ignored. */
  unexpected = 0;
  /** Failures while answering (an UPDATE refused or the connection gone), so a test can assert there were none. */
  readonly errors: Error[] = [];

  /** The front-end's end of the back-end channel. */
  readonly fd: number;
  private peer: number;
  private poller: native.FdPoller | null;
  private inbox: Uint8Array = new Uint8Array(0);
  private readonly rbuf = new Uint8Array(4096);
  private rules: Rule[] = [];
  private work: Promise<void> = Promise.resolve();
  private waiters: Array<{ n: number; resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout }> = [];
  private closed = false;
  private backendGone = false;

  /**
   * Makes the back-end channel (a socketpair) and starts reading its end. Nothing is sent before
   * attach() (or attachDriver / negotiate with `iommu`, which call it).
   */
  constructor(fe: IommuFrontend, ram: GuestRam, opts: HarnessIommuOptions = {}) {
    const pageSize = opts.pageSize ?? 4096;
    if (!Number.isSafeInteger(pageSize) || pageSize < 4096 || (pageSize & (pageSize - 1)) !== 0) {
      throw new RangeError(`pageSize ${pageSize}: not a power of 2 of at least 4096`);
    }
    const offset = opts.offset ?? DEFAULT_IOVA_OFFSET;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % pageSize !== 0 || ram.gpa + ram.size + offset > LIMIT) {
      throw new RangeError(`offset 0x${offset.toString(16)}: not a multiple of the page size keeping every IOVA of the RAM below 2^53`);
    }
    const perm = opts.perm ?? IOMMU_PERM.RW;
    checkPerm(perm);
    this.fe = fe;
    this.ram = ram;
    this.offset = offset;
    this.pageSize = pageSize;
    this.perm = perm;
    this.serve = opts.serve ?? true;
    this.pushUsed = opts.pushUsed ?? true;
    const [mine, theirs] = native.unixSocketpair();
    this.fd = mine;
    this.peer = theirs;
    native.setNonblocking(mine, true);
    this.poller = new native.FdPoller(mine, () => this.onReadable());
    this.poller.start(native.POLL.READABLE);
    // A passive listener: what keeps a test alive is its front-end and its waits, not this.
    this.poller.unref();
  }

  /** Whether attach() has handed the back-end its channel. */
  get attached(): boolean {
    return this.peer < 0 && !this.closed;
  }

  /**
   * SET_SLAVE_REQ_FD with the back-end's end of the channel (once). PROTOCOL_F_SLAVE_REQ must have been
   * negotiated (FrontendError NOT_OFFERED otherwise).
   */
  async attach(): Promise<void> {
    if (this.closed) throw new FrontendError(FRONTEND_ERROR.CLOSED, 'the IOMMU is closed');
    if (this.peer < 0) throw new RangeError('the IOMMU is already attached');
    if (!(this.fe.protocolFeatures & (1n << BigInt(PROTOCOL_F.SLAVE_REQ)))) {
      throw new FrontendError(FRONTEND_ERROR.NOT_OFFERED, 'SLAVE_REQ was not negotiated: the back-end has no channel for IOTLB misses');
    }
    const peer = this.peer;
    this.peer = -1;
    try {
      await this.fe.setBackendReqFd(peer);
    } finally {
      // The back-end holds its own copy now (SCM_RIGHTS duplicates it).
      native.closeQuietly(peer);
    }
  }

  // ---- address spaces

  /** The IOVA of a guest physical address. */
  toIova(gpa: number): number {
    const iova = gpa + this.offset;
    if (!Number.isSafeInteger(iova) || gpa < 0) throw new RangeError(`gpa ${gpa}: no IOVA below 2^53`);
    return iova;
  }

  /** The guest physical address of an IOVA. */
  toGpa(iova: number): number {
    const gpa = iova - this.offset;
    if (!Number.isSafeInteger(iova) || gpa < 0) throw new RangeError(`iova 0x${iova.toString(16)}: below the IOVA window`);
    return gpa;
  }

  // ---- rules (later rules win where they overlap)

  /** Misses in [gpaStart, gpaStart + len) are not served (like a page the guest never mapped for DMA). */
  deny(gpaStart: number, len: number): void {
    this.addRule(gpaStart, len, 'deny');
  }

  /** Misses in the range are served read only (perm 1): the device may not write there. */
  readOnly(gpaStart: number, len: number): void {
    this.addRule(gpaStart, len, 'ro');
  }

  /** Misses in the range are served write only (perm 2). */
  writeOnly(gpaStart: number, len: number): void {
    this.addRule(gpaStart, len, 'wo');
  }

  /** Misses in the range are served with the default `perm` again. */
  allow(gpaStart: number, len: number): void {
    this.addRule(gpaStart, len, 'default');
  }

  /** Forgets every rule. */
  clearRules(): void {
    this.rules = [];
  }

  private addRule(gpaStart: number, len: number, kind: RuleKind): void {
    if (!Number.isSafeInteger(gpaStart) || !Number.isSafeInteger(len) || gpaStart < 0 || len <= 0 || gpaStart + len > LIMIT) {
      throw new RangeError(`bad range ${gpaStart}+${len}`);
    }
    this.rules.push({ start: gpaStart, end: gpaStart + len, kind });
  }

  private kindAt(gpa: number): RuleKind {
    for (let i = this.rules.length - 1; i >= 0; i--) {
      const r = this.rules[i]!;
      if (gpa >= r.start && gpa < r.end) return r.kind;
    }
    return 'default';
  }

  /**
   * What the IOMMU maps around `gpa` in RAM: the page, clipped to the RAM and to the rules' edges, so a
   * mapping never covers bytes a rule treats otherwise. Null: outside the RAM, or denied.
   */
  private translation(gpa: number): { gpa: number; len: number; perm: number } | { denied: true } | null {
    const ram = this.ram;
    if (gpa < ram.gpa || gpa >= ram.gpa + ram.size) return null;
    const kind = this.kindAt(gpa);
    if (kind === 'deny') return { denied: true };
    const page = Math.floor((gpa + this.offset) / this.pageSize) * this.pageSize - this.offset;
    let start = Math.max(page, ram.gpa);
    let end = Math.min(page + this.pageSize, ram.gpa + ram.size);
    for (const r of this.rules) {
      for (const b of [r.start, r.end]) {
        if (b > gpa && b < end) end = b;
        else if (b <= gpa && b > start) start = b;
      }
    }
    const perm = kind === 'ro' ? IOMMU_PERM.RO : kind === 'wo' ? IOMMU_PERM.WO : this.perm;
    return { gpa: start, len: end - start, perm };
  }

  // ---- what the front-end pushes

  /** Sends an UPDATE for [gpa, gpa + len) of the RAM with `perm` (default the IOMMU's), whatever the rules say. */
  async map(gpa: number, len: number, perm: number = this.perm): Promise<void> {
    checkPerm(perm);
    const ram = this.ram;
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || len <= 0 || gpa < ram.gpa || gpa + len > ram.gpa + ram.size) {
      throw new RangeError(`map ${gpa}+${len}: not inside the RAM`);
    }
    await this.fe.iotlbUpdate(this.toIova(gpa), len, ram.uaddr + (gpa - ram.gpa), perm);
    this.updates++;
  }

  /**
   * Serves `gpa` as a miss there would be served (page, rules, `serve`), without recording a miss: how
   * QEMU pushes each used ring's translation when the device starts. Returns whether it sent an UPDATE.
   */
  async prefetch(gpa: number): Promise<boolean> {
    if (!this.serve) return false;
    const t = this.translation(gpa);
    if (t === null || 'denied' in t) return false;
    await this.map(t.gpa, t.len, t.perm);
    return true;
  }

  /** Sends an INVALIDATE of [gpa, gpa + len) (as IOVAs): the back-end must forget those mappings. */
  async invalidate(gpa: number, len: number): Promise<void> {
    if (!Number.isSafeInteger(len) || len <= 0) throw new RangeError(`invalidate: bad length ${len}`);
    await this.fe.iotlbInvalidate(this.toIova(gpa), len);
    this.invalidates++;
  }

  /** INVALIDATE of the whole RAM's IOVA window: everything this IOMMU can have mapped. */
  invalidateAll(): Promise<void> {
    return this.invalidate(this.ram.gpa, this.ram.size);
  }

  // ---- waiting

  /** Resolves (with the misses so far) once at least n misses were received; rejects with FRONTEND_TIMEOUT after timeoutMs. */
  waitMisses(n: number, timeoutMs = 5000): Promise<IommuMiss[]> {
    if (this.misses.length >= n) return Promise.resolve(this.misses.slice());
    if (this.closed) return Promise.reject(new FrontendError(FRONTEND_ERROR.CLOSED, 'the IOMMU is closed'));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.timer !== timer);
        reject(new FrontendError(FRONTEND_ERROR.TIMEOUT, `${this.misses.length} IOTLB misses within ${timeoutMs} ms, not the ${n} awaited`));
      }, timeoutMs);
      this.waiters.push({ n, resolve, reject, timer });
    }).then(() => this.misses.slice());
  }

  /** Resolves once every miss received so far has been answered (its UPDATE acknowledged, its reply sent). */
  idle(): Promise<void> {
    return this.work;
  }

  /** Stops reading and closes the channel's ends; pending waitMisses() reject with FRONTEND_CLOSED. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller?.close();
    this.poller = null;
    native.closeQuietly(this.fd);
    native.closeQuietly(this.peer);
    this.peer = -1;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new FrontendError(FRONTEND_ERROR.CLOSED, 'the IOMMU was closed'));
    }
  }

  /** Whether the back-end closed its end of the channel. */
  get backendClosed(): boolean {
    return this.backendGone;
  }

  // ---- the back-end channel

  private onReadable(): void {
    if (this.closed) return;
    const got = readAvailable(this.fd, this.rbuf, this.inbox);
    // No back-end message of interest here carries fds.
    for (const fd of got.fds) native.closeQuietly(fd);
    if (got.eof) this.backendGone = true;
    const { messages, rest, lost } = splitMessages(got.inbox, MAX_BACKEND_PAYLOAD);
    this.inbox = rest;
    for (const m of messages) this.onMessage(m.request, m.flags, m.payload);
    if (lost) {
      // The framing is lost: nothing after it can be read as messages.
      this.unexpected++;
      this.backendGone = true;
    }
    if (this.backendGone) {
      this.poller?.close();
      this.poller = null;
    }
  }

  private onMessage(request: number, flags: number, payload: Uint8Array): void {
    const needReply = (flags & FLAGS.NEED_REPLY) !== 0;
    const ok =
      request === BACKEND_REQ.IOTLB_MSG &&
      (flags & FLAGS.VERSION_MASK) === FLAGS.VERSION &&
      (flags & FLAGS.REPLY) === 0 &&
      payload.length === IOTLB_MSG_SIZE;
    const msg = ok ? decodeIotlb(payload) : null;
    if (!msg || msg.type !== IOTLB_TYPE.MISS || msg.perm < IOMMU_PERM.RO || msg.perm > IOMMU_PERM.RW) {
      this.unexpected++;
      // QEMU answers a request it cannot handle with a non-zero status.
      if (needReply) this.enqueue(async () => this.reply(request, 1));
      return;
    }
    // Decided now, with the rules as they stand when the miss arrives.
    const big = msg.iova >= BigInt(LIMIT);
    const iova = Number(msg.iova);
    const t = !this.serve || big ? null : this.translation(iova - this.offset);
    const answer: MissAnswer = !this.serve ? 'off' : t === null ? 'outside' : 'denied' in t ? 'denied' : 'update';
    this.misses.push({ iova, perm: msg.perm, answer });
    if (answer !== 'update') this.unserved++;
    for (const w of this.waiters.filter((w) => this.misses.length >= w.n)) {
      clearTimeout(w.timer);
      this.waiters.splice(this.waiters.indexOf(w), 1);
      w.resolve();
    }
    this.enqueue(async () => {
      let status = 1;
      if (t !== null && !('denied' in t)) {
        await this.map(t.gpa, t.len, t.perm);
        status = 0;
      }
      // Like QEMU: the reply comes after the UPDATE was acknowledged, so the mapping is in place.
      if (needReply) this.reply(request, status);
    });
  }

  /** Answers misses one at a time, in the order they came; a failure is recorded, not thrown. */
  private enqueue(job: () => Promise<void>): void {
    this.work = this.work.then(job).catch((e: unknown) => {
      this.errors.push(e instanceof Error ? e : new Error(String(e)));
    });
  }

  private reply(request: number, status: number): void {
    if (this.closed) return;
    const bytes = encodeMessage(request, FLAGS.VERSION | FLAGS.REPLY, encodeU64(status));
    const n = native.sendMsg(this.fd, bytes);
    if (n !== bytes.length) throw new FrontendError(FRONTEND_ERROR.CLOSED, `reply on the back-end channel: wrote ${n} of ${bytes.length} bytes`);
  }
}

function checkPerm(perm: number): void {
  if (perm !== IOMMU_PERM.RO && perm !== IOMMU_PERM.WO && perm !== IOMMU_PERM.RW) throw new RangeError(`perm ${perm}: not 1 (RO), 2 (WO) or 3 (RW)`);
}
