/**
 * The harness front-end's channel: the socket to a vhost-user back-end, the framing of its messages
 * (12-byte header, payload, fds as SCM_RIGHTS), and the wait for a reply with a timeout. It knows which
 * requests have a reply of their own and answers NEED_REPLY with a REPLY_ACK check; it knows nothing
 * of what a request means (vhost-user-requests.ts) or of a driver (vhost-user-frontend.ts).
 *
 *   sendRequest ─▶ header + payload + fds ─▶ back-end
 *   back-end ─▶ onReadable: bytes and fds into the inbox ─▶ whole messages ─▶ readMessage() / request()
 *
 * Spec: QEMU docs/interop/vhost-user.rst, "Message Specification" (header, flags), "Communication"
 * (fds as ancillary data), VHOST_USER_PROTOCOL_F_REPLY_ACK (NEED_REPLY), the front-end's side.
 */
import { LgnetError } from '../errors/index.ts';
import * as native from '../native/index.ts';
import { decodeHeader, decodeU64, encodeMessage, FLAGS, HEADER_SIZE, PROTOCOL_F, REQ, requestName } from '../sandbox/vhost-user/messages.ts';

/** A message read from the back-end. */
export interface ReceivedMessage {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

/** Stable codes of FrontendError: what the back-end under test did. */
export const FRONTEND_ERROR = {
  /** A REPLY_ACK with a non-zero status: the back-end refused the request. */
  NACK: 'FRONTEND_NACK',
  /** The back-end closed the connection. */
  CLOSED: 'FRONTEND_CLOSED',
  /** No reply in time. */
  TIMEOUT: 'FRONTEND_TIMEOUT',
  /** A reply the protocol does not allow (wrong request, flags or size). */
  BAD_REPLY: 'FRONTEND_BAD_REPLY',
  /** Features asked for that the back-end does not offer. */
  NOT_OFFERED: 'FRONTEND_NOT_OFFERED',
} as const;

/** One of the codes in {@link FRONTEND_ERROR}. */
export type FrontendErrorCode = (typeof FRONTEND_ERROR)[keyof typeof FRONTEND_ERROR];

/** The back-end answered in a way the protocol does not allow, failed a REPLY_ACK, or went away. */
export class FrontendError extends LgnetError {
  declare readonly code: FrontendErrorCode;
  constructor(code: FrontendErrorCode, message: string) {
    super(code, message);
  }
}

/** Requests that always have a reply. */
export const REPLYING = new Set<number>([
  REQ.GET_FEATURES, REQ.GET_PROTOCOL_FEATURES, REQ.GET_VRING_BASE, REQ.GET_QUEUE_NUM, REQ.GET_CONFIG,
  REQ.GET_INFLIGHT_FD, REQ.GET_MAX_MEM_SLOTS, REQ.GET_STATUS, REQ.POSTCOPY_ADVISE,
]);

/** The socket and its framing; VhostUserFrontend builds on it. */
export class FrontendChannel {
  readonly fd: number;
  /** Protocol features negotiated (0 until negotiate()). */
  protocolFeatures = 0n;
  /** Default timeout of a reply. */
  timeoutMs: number;
  private poller: native.FdPoller | null;
  private inbox: Uint8Array = new Uint8Array(0);
  private inboxFds: number[] = [];
  private messages: ReceivedMessage[] = [];
  private waiters: Array<() => void> = [];
  private eof = false;
  private readonly rbuf = new Uint8Array(4096);

  protected constructor(fd: number, timeoutMs: number) {
    this.fd = fd;
    this.timeoutMs = timeoutMs;
    native.setNonblocking(fd, true);
    this.poller = new native.FdPoller(fd, () => this.onReadable());
    this.poller.start(native.POLL.READABLE);
  }

  // ---- raw I/O

  /** Writes bytes (and fds) as they are: for hostile tests. Returns bytes written (-1: would block). */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = []): number {
    // Once closed, the fd's number may already be another socket's (a HarnessIommu answering late).
    if (this.closedFd) throw new FrontendError(FRONTEND_ERROR.CLOSED, 'this front-end was closed');
    return native.sendMsg(this.fd, bytes, fds);
  }

  /** Sends one request; flags default to version 1 (+ NEED_REPLY when asked). */
  sendRequest(request: number, payload: Uint8Array = new Uint8Array(0), opts: { fds?: readonly number[]; needReply?: boolean; flags?: number } = {}): void {
    const flags = opts.flags ?? (FLAGS.VERSION | (opts.needReply ? FLAGS.NEED_REPLY : 0));
    const bytes = encodeMessage(request, flags, payload);
    const n = this.sendRaw(bytes, opts.fds ?? []);
    if (n !== bytes.length) throw new FrontendError(FRONTEND_ERROR.CLOSED, `${requestName(request)}: wrote ${n} of ${bytes.length} bytes`);
  }

  /**
   * Sends a request and, when it has a reply (or needReply is set), waits for it. With needReply on a
   * request without a reply of its own, a non-zero REPLY_ACK throws FrontendError(FRONTEND_NACK).
   */
  async request(request: number, payload: Uint8Array = new Uint8Array(0), opts: { fds?: readonly number[]; needReply?: boolean } = {}): Promise<ReceivedMessage | undefined> {
    const needReply = opts.needReply ?? this.replyAck;
    this.sendRequest(request, payload, { ...(opts.fds ? { fds: opts.fds } : {}), needReply });
    if (!REPLYING.has(request) && !needReply) return undefined;
    const m = await this.replyInTurn(() => this.readMessage());
    if (m.request !== request || !(m.flags & FLAGS.REPLY)) {
      for (const fd of m.fds) native.close(fd);
      throw new FrontendError(FRONTEND_ERROR.BAD_REPLY, `expected a ${requestName(request)} reply, got ${requestName(m.request)} flags 0x${m.flags.toString(16)}`);
    }
    if (!REPLYING.has(request)) {
      const v = m.payload.length === 8 ? decodeU64(m.payload) : -1n;
      if (v !== 0n) throw new FrontendError(FRONTEND_ERROR.NACK, `${requestName(request)} was refused (REPLY_ACK ${v})`);
    }
    return m;
  }

  private replyTurn: Promise<void> = Promise.resolve();

  /**
   * Runs `read` (which takes a reply) once every request sent earlier has taken its own. A back-end
   * answers in the order it was asked, and a HarnessIommu answers IOTLB misses on this channel while
   * another request may be waiting for its reply: each reply must go to the request it belongs to.
   */
  protected async replyInTurn<T>(read: () => Promise<T>): Promise<T> {
    const before = this.replyTurn;
    let done!: () => void;
    this.replyTurn = new Promise((r) => (done = r));
    try {
      await before;
      return await read();
    } finally {
      done();
    }
  }

  /** The next message from the back-end. */
  async readMessage(timeoutMs = this.timeoutMs): Promise<ReceivedMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.messages.shift();
      if (m) return m;
      if (this.eof) throw new FrontendError(FRONTEND_ERROR.CLOSED, 'the back-end closed the connection');
      const left = deadline - Date.now();
      if (left <= 0) throw new FrontendError(FRONTEND_ERROR.TIMEOUT, `no message from the back-end within ${timeoutMs} ms`);
      await this.wait(left);
    }
  }

  /** True once the back-end closed the connection (waits up to timeoutMs for it). */
  async waitClosed(timeoutMs = this.timeoutMs): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.eof) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await this.wait(left);
    }
    return true;
  }

  get isClosed(): boolean {
    return this.eof;
  }

  /** Closes the socket (and any fds received but not collected). */
  close(): void {
    this.poller?.close();
    this.poller = null;
    for (const m of this.messages.splice(0)) for (const fd of m.fds) native.closeQuietly(fd);
    for (const fd of this.inboxFds.splice(0)) native.closeQuietly(fd);
    if (!this.closedFd) {
      this.closedFd = true;
      native.closeQuietly(this.fd);
    }
    this.eof = true;
    this.wake();
  }

  private closedFd = false;

  private wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const waiter = () => done();
      this.waiters.push(waiter);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private onReadable(): void {
    const got = readAvailable(this.fd, this.rbuf, this.inbox);
    this.inboxFds.push(...got.fds);
    if (got.eof) this.eof = true;
    const { messages, rest } = splitMessages(got.inbox);
    this.inbox = rest;
    for (const m of messages) this.messages.push({ ...m, fds: this.inboxFds.splice(0) });
    if (this.eof) this.poller?.close();
    this.wake();
  }

  /** Whether REPLY_ACK was negotiated: then request() asks for an ack by default. */
  get replyAck(): boolean {
    return (this.protocolFeatures & (1n << BigInt(PROTOCOL_F.REPLY_ACK))) !== 0n;
  }
}

/**
 * Reads everything a nonblocking socket holds now onto the end of `inbox`: the bytes, the fds that came
 * with them, and whether the peer is gone (end of file, or an error). The channel's and the IOMMU's reader.
 */
export function readAvailable(fd: number, rbuf: Uint8Array, inbox: Uint8Array): { inbox: Uint8Array; fds: number[]; eof: boolean } {
  const fds: number[] = [];
  for (;;) {
    let r: native.RecvResult;
    try {
      r = native.recvMsg(fd, rbuf, 8);
    } catch {
      return { inbox, fds, eof: true };
    }
    fds.push(...r.fds);
    if (r.bytes < 0) return { inbox, fds, eof: false };
    if (r.bytes === 0) return { inbox, fds, eof: true };
    const merged = new Uint8Array(inbox.length + r.bytes);
    merged.set(inbox, 0);
    merged.set(rbuf.subarray(0, r.bytes), inbox.length);
    inbox = merged;
  }
}

/**
 * Splits the whole vhost-user messages off the front of `inbox`. A header announcing more than
 * `maxPayload` bytes loses the framing: `lost` is set and nothing after it is read.
 */
export function splitMessages(inbox: Uint8Array, maxPayload = Infinity): { messages: Array<{ request: number; flags: number; payload: Uint8Array }>; rest: Uint8Array; lost: boolean } {
  const messages: Array<{ request: number; flags: number; payload: Uint8Array }> = [];
  while (inbox.length >= HEADER_SIZE) {
    const h = decodeHeader(inbox.subarray(0, HEADER_SIZE));
    if (h.size > maxPayload) return { messages, rest: new Uint8Array(0), lost: true };
    if (inbox.length < HEADER_SIZE + h.size) break;
    messages.push({ request: h.request, flags: h.flags, payload: inbox.slice(HEADER_SIZE, HEADER_SIZE + h.size) });
    inbox = inbox.slice(HEADER_SIZE + h.size);
  }
  return { messages, rest: inbox, lost: false };
}

/** Resolves after ms milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
