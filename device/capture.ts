/**
 * pcap capture of a queue's frames: the classic libpcap file format (microsecond stamps,
 * LINKTYPE_ETHERNET), which tcpdump, tshark and Wireshark read.
 *
 *   file:   [24-byte file header][record][record]...       written by openPcap() / the workers
 *   record: [ts_sec u32][ts_usec u32][incl_len u32][orig_len u32][incl_len frame bytes]
 *
 * On the data path a PcapWriter is a frame observer (service.ts) plugged into a queue's service loop:
 * it sees TX frames after the header checks (what the guest sent), RX frames once they are in the
 * guest's buffers and before the used ring is published (so the guest cannot have rewritten them yet).
 * The frame bytes are not copied: the record headers live in a small mapping of the writer's own, and
 * one writev per burst (endBurst) takes headers and guest-memory pieces together. The file is opened
 * O_APPEND, so the bursts of several queues' workers never interleave inside a record. The
 * virtio_net_hdr is not captured. Capture costs a write per burst and is off unless asked for.
 */
import { closeSync, openSync, writeFileSync } from 'node:fs';

import * as native from '../native/index.ts';
import { NativeError } from '../native/errors.ts';
import { IOVEC_WORDS, IovecTable } from '../native/iovec.ts';
import type { DescriptorChain, GuestMemory } from '../vring/index.ts';
import { M } from './metrics.ts';
import type { FrameObserver, FrameView } from './service.ts';

/** pcap magic for microsecond timestamps, written little-endian. */
export const PCAP_MAGIC = 0xa1b2c3d4;
/** Ethernet link type. */
export const LINKTYPE_ETHERNET = 1;
/** Default snapshot length: a whole GSO frame is cut here. */
export const DEFAULT_SNAPLEN = 65535;
/** Bytes of a record header. */
export const PCAP_RECORD_HEADER = 16;
/** iovecs per writev (Linux UIO_MAXIOV). */
const MAX_IOV = 1024;

/** The 24-byte pcap file header. */
export function pcapFileHeader(snaplen: number = DEFAULT_SNAPLEN): Uint8Array {
  const b = new Uint8Array(24);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, PCAP_MAGIC, true);
  dv.setUint16(4, 2, true); // version 2.4
  dv.setUint16(6, 4, true);
  dv.setUint32(16, snaplen, true);
  dv.setUint32(20, LINKTYPE_ETHERNET, true);
  return b;
}

/**
 * Creates (or truncates) `path`, writes the file header, and returns an fd open for appending, for
 * NetDevice's `capture` option. Call it before a jail: opening files is what the jail forbids.
 */
export function openPcap(path: string, snaplen: number = DEFAULT_SNAPLEN): number {
  checkSnaplen(snaplen);
  writeFileSync(path, pcapFileHeader(snaplen), { mode: 0o600 });
  return openSync(path, 'a');
}

/** Closes an fd from openPcap() (after the device closed). */
export function closePcap(fd: number): void {
  closeSync(fd);
}

function checkSnaplen(snaplen: number): void {
  if (!(Number.isInteger(snaplen) && snaplen >= 64 && snaplen <= 262144)) {
    throw new RangeError(`pcap snaplen ${snaplen} must be an integer in [64, 262144]`);
  }
}

/** Where a queue's worker writes its captures. */
export interface CaptureSpec {
  /** An fd open for appending, the file header already written (openPcap). */
  fd: number;
  snaplen: number;
}

/**
 * One queue's capture: records are opened, filled from chains and closed, then written per burst. It
 * reads guest memory and counts through the queue's service context (`ctx`), so a memory change
 * reaches it without a word.
 */
export class PcapWriter implements FrameObserver {
  private readonly fd: number;
  private readonly snaplen: number;
  private readonly ctx: { readonly mem: GuestMemory; readonly c: Float64Array };
  private readonly table = new IovecTable(MAX_IOV, 1);
  /** Record headers: a mapping of the writer's own, so that writev can take them with the frames. */
  private readonly hdrMapping: number;
  private readonly hdr: Uint32Array;
  private readonly maxRecords: number;
  private records = 0;
  /** A record is open (its header entry is in the table). */
  private open = false;
  private want = 0;
  private got = 0;
  private sec = 0;
  private usec = 0;

  constructor(spec: CaptureSpec, ctx: { readonly mem: GuestMemory; readonly c: Float64Array }, maxRecords: number) {
    checkSnaplen(spec.snaplen);
    this.fd = spec.fd;
    this.snaplen = spec.snaplen;
    this.ctx = ctx;
    this.maxRecords = Math.max(1, Math.min(maxRecords, MAX_IOV >> 1));
    this.hdrMapping = native.mmapAnonymous(this.maxRecords * PCAP_RECORD_HEADER);
    this.hdr = new Uint32Array(native.mappingBuffer(this.hdrMapping));
  }

  /** Starts a burst: one timestamp for its records. */
  beginBurst(): void {
    const now = performance.timeOrigin + performance.now();
    this.sec = Math.floor(now / 1000);
    this.usec = Math.floor((now % 1000) * 1000);
  }

  /** Records a frame: its header, then its bytes from each of its chains. */
  onFrame(frame: FrameView): void {
    this.openRecord(frame.len);
    this.add(frame.chains[0]!, frame.part, frame.hdrLen);
    for (let i = 1; i < frame.count; i++) this.add(frame.chains[i]!, frame.part, 0);
    this.closeRecord();
  }

  /** Ends a burst: its records go to the file. */
  endBurst(): void {
    this.flush();
  }

  /** Opens a record for a frame of `len` bytes; fill it with add(), end it with closeRecord(). */
  openRecord(len: number): void {
    // Keep room for a whole MRG_RXBUF frame in the table: write what is there first.
    if (this.records === this.maxRecords || this.table.count > MAX_IOV >> 1) this.flush();
    const h = this.records * 4;
    this.hdr[h] = this.sec;
    this.hdr[h + 1] = this.usec;
    this.hdr[h + 3] = len;
    this.table.push(this.hdrMapping, this.records * PCAP_RECORD_HEADER, PCAP_RECORD_HEADER);
    this.open = true;
    this.want = Math.min(len, this.snaplen);
    this.got = 0;
  }

  /** Adds the next bytes of the open record: `which` part of `ch`, from byte `skip` on. */
  add(ch: DescriptorChain, which: 'readable' | 'writable', skip: number): void {
    if (!this.open || this.got >= this.want) return;
    const t = this.table;
    const room = MAX_IOV - t.count;
    const pieces = which === 'readable' ? ch.readable.count : ch.writable.count;
    const before = t.count;
    const mem = this.ctx.mem;
    if (pieces <= room) {
      t.count = ch.appendIovecs(t.entries, t.count, which, skip, this.want - this.got, mem);
    } else if (room > 0) {
      // More pieces than one writev takes: the record is cut where the room ends (incl_len says so).
      const scratch = new Uint32Array(pieces * IOVEC_WORDS);
      const n = Math.min(ch.appendIovecs(scratch, 0, which, skip, this.want - this.got, mem), room);
      t.entries.set(scratch.subarray(0, n * IOVEC_WORDS), t.count * IOVEC_WORDS);
      t.count += n;
    }
    for (let e = before; e < t.count; e++) this.got += t.entryLength(e);
  }

  /** Ends the open record. */
  closeRecord(): void {
    if (!this.open) return;
    this.hdr[this.records * 4 + 2] = this.got;
    this.records++;
    this.open = false;
    this.ctx.c[M.captured]! += 1;
  }

  /** Writes the records closed so far with one writev. A failed write is counted, never thrown. */
  flush(): void {
    const t = this.table;
    if (this.records > 0) {
      t.endFrame();
      const total = t.frameLength(0);
      try {
        // A short write (a full disk) leaves a torn record behind: count the burst as failed.
        if (native.writevBatch(this.fd, t, 1) !== 1 || t.bytes[0] !== total) this.ctx.c[M.captureFailed]! += this.records;
      } catch (e) {
        // Never thrown at the queue: a capture that cannot write is counted, the frames still go.
        if (!(e instanceof NativeError)) throw e;
        this.ctx.c[M.captureFailed]! += this.records;
      }
    }
    t.reset();
    this.records = 0;
  }

  /** Releases the header mapping. */
  close(): void {
    native.munmap(this.hdrMapping);
  }
}
