/**
 * The TX service (device/tx.ts) and its virtio_net_hdr checks (device/header.ts) on a split or a
 * packed ring:
 * chains of 1–4 readable pieces, sometimes a writable one, with header fields, frame lengths and
 * negotiated offloads from the input, and a backend that takes all, some or none of a burst, refuses a
 * frame, or takes some frames without sending them (counted by the port: TxPort.refused). Properties:
 *   - every chain comes back on the used ring, exactly once;
 *   - frames sent plus drops counted (by reason) equal the chains posted, and `frames` and `bytes`
 *     count exactly what the backend sent;
 *   - a chain is sent exactly when the spec (§5.1.6.2, checked here independently) allows it, and
 *     the backend gets its bytes unchanged, header included or skipped as configured.
 */
import { F, decode } from '../../device/features.ts';
import { GSO, HDR_F } from '../../device/header.ts';
import { PendingUsed } from '../../device/interrupt.ts';
import { M, TX_DROP_COUNTER } from '../../device/metrics.ts';
import { ServiceContext, createQueue } from '../../device/service.ts';
import { MAX_IOV_PER_FRAME, TxService } from '../../device/tx.ts';
import type { TxPort } from '../../device/backend.ts';
import { NativeError } from '../../native/errors.ts';
import type { IovecTable } from '../../native/iovec.ts';
import { GuestMemory, createDriverQueue, driverRingLayout } from '../../vring/index.ts';
import { Input, bytesEqual as equal, type FuzzTarget } from '../target.ts';

const SIZE = 64;
const RAM = 0x20000;
const DATA = 0x2000; // data area after the rings, in region 0 and across into region 1
const buf = new ArrayBuffer(RAM);
const bytes = new Uint8Array(buf);
// Two regions back to back in gpa, two mappings: a frame may straddle them.
const mem = new GuestMemory([
  { gpa: 0, size: 0x10000, buffer: buf, bufferOffset: 0, mappingId: 0, mappingOffset: 0 },
  { gpa: 0x10000, size: 0x10000, buffer: buf, bufferOffset: 0x10000, mappingId: 1, mappingOffset: 0 },
]);
/** The ring in either format, below DATA. */
const LAYOUT = { split: driverRingLayout('split', SIZE, 0), packed: driverRingLayout('packed', SIZE, 0) };
const FEATURE_BITS = [F.VERSION_1, F.CSUM, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN, F.HOST_UFO, F.MRG_RXBUF, F.RING_INDIRECT_DESC];

/** The spec's verdict on a TX header, derived here from §5.1.6.2 rather than from header.ts. */
function specAllows(h: Uint8Array, frameLen: number, bits: bigint): boolean {
  const has = (b: number) => (bits >> BigInt(b)) & 1n;
  if (frameLen < 14 || frameLen > 65_562) return false;
  const flags = h[0]!;
  const gso = h[1]!;
  const needsCsum = (flags & HDR_F.NEEDS_CSUM) !== 0;
  if (needsCsum) {
    if (!has(F.CSUM)) return false;
    const start = h[6]! | (h[7]! << 8);
    const off = h[8]! | (h[9]! << 8);
    if (start + off + 2 > frameLen) return false;
  }
  if (gso !== GSO.NONE) {
    if (gso & GSO.ECN && !has(F.HOST_ECN)) return false;
    const t = gso & ~GSO.ECN;
    const ok = (t === GSO.TCPV4 && has(F.HOST_TSO4)) || (t === GSO.TCPV6 && has(F.HOST_TSO6)) || (t === GSO.UDP && has(F.HOST_UFO));
    if (!ok || !needsCsum) return false;
  }
  return true;
}

interface Posted { head: number; data: Uint8Array; writable: boolean; pieces: number }

export default {
  about: 'TX service: virtio_net_hdr checks, chain walking and backend hand-off on a split or packed ring',
  maxLen: 2048,
  run(data) {
    const inp = new Input(data);
    let bits = inp.features(FEATURE_BITS);
    const mode = inp.u8();
    const skipHeader = (mode & 1) === 1; // a backend without vnet header: lgnet skips it
    const packed = (mode & 6) === 4; // a quarter of the inputs run on a packed ring
    if (packed) bits |= 1n << BigInt(F.RING_PACKED);
    const f = decode(bits);
    const hdrLen = f.hdrLen;
    const L = LAYOUT[packed ? 'packed' : 'split'];
    bytes.fill(0, 0, DATA);
    const drv = createDriverQueue(mem, { format: packed ? 'packed' : 'split', size: SIZE, desc: L.desc, avail: L.avail, used: L.used });
    drv.init();
    // Chains: header from the input, then a frame of a chosen length, in 1–4 pieces.
    const posted: Posted[] = [];
    let at = DATA;
    const chains = 1 + (inp.u8() % 12);
    for (let c = 0; c < chains && at < RAM - 0x1000; c++) {
      const shape = inp.u8();
      const frameLen = inp.u8() < 16 ? inp.u16() % 0x1000 : 14 + (inp.u8() % 120);
      const total = hdrLen + frameLen;
      const content = new Uint8Array(total);
      content.set(inp.bytes(Math.min(hdrLen, total)));
      for (let i = hdrLen; i < total; i++) content[i] = (i * 31 + c) & 0xff;
      const pieces = 1 + (shape & 3);
      const cut: number[] = [];
      for (let p = 1; p < pieces; p++) cut.push(Math.min(total, (inp.u8() * total) >> 8));
      cut.sort((a, b) => a - b);
      const readable = [];
      let from = 0;
      for (const end of [...cut, total]) {
        if (end > from) {
          readable.push({ addr: at, len: end - from });
          bytes.set(content.subarray(from, end), at);
          at += end - from;
        }
        from = end;
      }
      if (readable.length === 0) continue; // an empty chain cannot be posted
      const writable = (shape & 0x80) !== 0 && (shape & 0x40) !== 0;
      const w = writable ? [{ addr: at, len: 8 }] : [];
      at += writable ? 8 : 0;
      at = (at + 15) & ~15;
      const head = drv.add(readable, w);
      if (head < 0) break; // the ring's descriptors are all in use
      posted.push({ head, data: content, writable, pieces: readable.length });
    }
    drv.publish();

    const counters = new Float64Array(M.COUNT);
    const q = createQueue(f, { size: SIZE, desc: L.desc, avail: L.avail, used: L.used });
    q.attach(mem);
    const sent: Uint8Array[] = [];
    const behaviour = inp.u8();
    let refused = 0;
    // With bit 2 of `behaviour`, the port takes some frames without sending them and counts them itself
    // (as the pair backend's filter does): TxPort.refused marks them.
    const portRefuses = (behaviour & 4) !== 0;
    const marks = new Uint8Array(64);
    const port: TxPort = {
      refused: marks,
      send(t: IovecTable, first: number): number {
        if ((behaviour & 3) === 1 && refused < 2) {
          refused++;
          throw new NativeError(22, 'writev', 'the backend refused the frame');
        }
        const last = (behaviour & 3) === 2 ? Math.min(t.frames, first + 1) : (behaviour & 3) === 3 ? first : t.frames;
        for (let fr = first; fr < last; fr++) {
          marks[fr] = 0;
          if (portRefuses && (fr + (behaviour >> 3)) % 3 === 0) {
            marks[fr] = 1;
            counters[M.txDropFiltered]! += 1;
            continue;
          }
          const parts: Uint8Array[] = [];
          for (let e = t.frameStart(fr); e < t.frameEnd[fr]!; e++) {
            const id = t.entries[4 * e]!;
            const off = t.entries[4 * e + 1]! + t.entries[4 * e + 2]! * 0x1_0000_0000;
            const len = t.entries[4 * e + 3]!;
            parts.push(bytes.slice(id * 0x10000 + off, id * 0x10000 + off + len));
          }
          const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
          let o = 0;
          for (const p of parts) { out.set(p, o); o += p.length; }
          sent.push(out);
        }
        return last - first;
      },
    };
    const ctx = new ServiceContext<TxPort>({ queue: q, mem, f, counters, pending: new PendingUsed(q, -1, counters), port, burst: 8 });
    const tx = new TxService(ctx, { backendHdrLen: skipHeader ? 0 : hdrLen });
    for (let guard = 0; tx.processTx() > 0; guard++) if (guard > SIZE) throw new Error('processTx never ran dry');

    // Every chain back, once.
    const back = new Map<number, number>();
    for (let h = drv.popUsed(); h >= 0; h = drv.popUsed()) back.set(h, (back.get(h) ?? 0) + 1);
    for (const p of posted) if (back.get(p.head) !== 1) throw new Error(`chain ${p.head} came back ${back.get(p.head) ?? 0} times`);
    if (back.size !== posted.length) throw new Error(`${back.size} chains came back, ${posted.length} were posted`);
    // Sent + counted drops = posted, and frames and bytes count only what the backend sent.
    const portDropped = counters[M.txDropFiltered]!;
    const drops = TX_DROP_COUNTER.slice(1).reduce((a, k) => a + counters[k]!, 0) + counters[M.txDropBackend]! + portDropped;
    if (counters[M.frames]! + drops !== posted.length) throw new Error(`frames ${counters[M.frames]} + drops ${drops} != ${posted.length} chains`);
    if (counters[M.frames] !== sent.length) throw new Error(`frames ${counters[M.frames]}, ${sent.length} sent`);
    const sentBytes = sent.reduce((a, x) => a + x.length - (skipHeader ? 0 : hdrLen), 0);
    if (counters[M.bytes] !== sentBytes) throw new Error(`bytes ${counters[M.bytes]}, ${sentBytes} sent`);
    // What the spec allows is sent, in order, with its bytes; the rest is not.
    const allowed = posted.filter((p) => !p.writable && p.pieces <= MAX_IOV_PER_FRAME && specAllows(p.data.subarray(0, hdrLen), p.data.length - hdrLen, bits));
    const backendDropped = counters[M.txDropBackend]!;
    if (allowed.length !== sent.length + backendDropped + portDropped) throw new Error(`${allowed.length} chains allowed by the spec, ${sent.length} sent + ${backendDropped} refused by the backend + ${portDropped} by the port`);
    let k = 0;
    for (const s of sent) {
      // Frames the backend refused or could not take are skipped in order; the rest match.
      while (k < allowed.length && !equal(allowed[k]!.data.subarray(skipHeader ? hdrLen : 0), s)) k++;
      if (k === allowed.length) throw new Error('a frame reached the backend that the guest did not post, or out of order');
      k++;
    }
  },
} satisfies FuzzTarget;
