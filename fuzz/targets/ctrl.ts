/**
 * The control queue's parser (device/ctrl.ts, virtio 1.2 §5.1.6.5) on a split ring, and the receive
 * filter it programs (device/rx-filter.ts). Commands (class, command, data) come from the input, with
 * the negotiated control features, split over 1–3 readable pieces, with or without room for the ack.
 * Properties:
 *   - every command is answered: the ack byte is OK or ERR and matches the result, when there is room;
 *   - a refused command changes nothing (filter, MAC, queue pairs, offloads);
 *   - an accepted one leaves a well-formed state: MAC tables of whole entries within their limit,
 *     queue pairs within [1, max], offloads a subset of the negotiated ones;
 *   - the filter then decides frames without throwing.
 */
import { ACK, processCtrl, type CtrlTarget } from '../../device/ctrl.ts';
import { F, GUEST_OFFLOAD_FEATURES, decode } from '../../device/features.ts';
import { MAX_MAC_ENTRIES, RxFilter } from '../../device/rx-filter.ts';
import { DriverQueue, GuestMemory, SplitQueue, splitRingLayout } from '../../vring/index.ts';
import { Input, type FuzzTarget } from '../target.ts';

const SIZE = 16;
const RAM = 0x10000;
const DATA = 0x1000;
const MAX_PAIRS = 4;
const buf = new ArrayBuffer(RAM);
const bytes = new Uint8Array(buf);
const mem = new GuestMemory([{ gpa: 0, size: RAM, buffer: buf, bufferOffset: 0, mappingId: 0, mappingOffset: 0 }]);
const L = splitRingLayout(SIZE, 0, 4);
const scratch = new Uint8Array(2 + 4 + 6 * MAX_MAC_ENTRIES + 4 + 6 * MAX_MAC_ENTRIES);
const FEATURE_BITS = [F.CTRL_RX, F.CTRL_VLAN, F.CTRL_RX_EXTRA, F.GUEST_ANNOUNCE, F.MQ, F.CTRL_MAC_ADDR, F.CTRL_GUEST_OFFLOADS, F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_UFO];
/** Class and command bytes that exist, so that most inputs reach the payload checks. */
const COMMANDS = [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0], [4, 0], [5, 0]];

interface State { filter: string; mac: string; pairs: number; offloads: bigint; announced: number }

export default {
  about: 'control queue: command parser and the receive filter it programs',
  maxLen: 2048,
  run(data) {
    const inp = new Input(data);
    const bits = (1n << BigInt(F.VERSION_1)) | (1n << BigInt(F.CTRL_VQ)) | inp.features(FEATURE_BITS);
    const features = decode(bits);
    const filter = new RxFilter();
    filter.reset(Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56), (bits >> BigInt(F.CTRL_VLAN)) & 1n ? true : false);
    const st: { mac: Uint8Array; pairs: number; offloads: bigint; announced: number } = { mac: new Uint8Array(filter.mac), pairs: 1, offloads: bits & GUEST_OFFLOAD_FEATURES, announced: 0 };
    const target: CtrlTarget = {
      features,
      filter,
      maxQueuePairs: MAX_PAIRS,
      filterChanged: () => {},
      setMac: (m) => { st.mac = m; },
      announceAcked: () => { st.announced++; },
      setQueuePairs: (n) => { st.pairs = n; },
      setGuestOffloads: (b) => { st.offloads = b; },
    };
    const snapshot = (): State => ({
      filter: JSON.stringify([filter.promisc, filter.allmulti, filter.alluni, filter.nomulti, filter.nouni, filter.nobcast, [...filter.mac], [...filter.uni], [...filter.multi], [...filter.vlans]]),
      mac: [...st.mac].join(),
      pairs: st.pairs,
      offloads: st.offloads,
      announced: st.announced,
    });

    bytes.fill(0, 0, DATA);
    const drv = new DriverQueue(mem, { size: SIZE, desc: L.desc, avail: L.avail, used: L.used });
    drv.init();
    const q = new SplitQueue({ size: SIZE, desc: L.desc, avail: L.avail, used: L.used, eventIdx: false, indirect: false });
    q.attach(mem);

    const n = 1 + (inp.u8() % 8);
    for (let c = 0; c < n && inp.left > 0; c++) {
      const pick = inp.u8();
      const [cls, cmd] = pick < 0xf0 ? COMMANDS[pick % COMMANDS.length]! : [inp.u8(), inp.u8()];
      const len = inp.u8() < 0xf8 ? inp.u8() % 24 : inp.u16() % 900;
      const body = new Uint8Array(2 + len);
      body[0] = cls!;
      body[1] = cmd!;
      body.set(inp.bytes(len), 2);
      // MAC tables: entry counts that often agree with the length, so the tables do get installed.
      if (cls === 1 && cmd === 0 && len >= 4 && inp.u8() & 1) {
        const nUni = Math.min(MAX_MAC_ENTRIES, Math.floor((len - 8) / 6 / 2));
        const dv = new DataView(body.buffer);
        dv.setUint32(2, Math.max(0, nUni), true);
        const multiAt = 6 + Math.max(0, nUni) * 6;
        if (multiAt + 4 <= body.length) dv.setUint32(multiAt, Math.floor((body.length - multiAt - 4) / 6), true);
      }
      const shape = inp.u8();
      const cut = Math.min(body.length, (inp.u8() * body.length) >> 8);
      const readable = [];
      let at = DATA;
      for (const [from, to] of (shape & 1 ? [[0, cut], [cut, body.length]] : [[0, body.length]])) {
        if (to! > from!) {
          bytes.set(body.subarray(from, to), at);
          readable.push({ addr: at, len: to! - from! });
          at += to! - from! + 8;
        }
      }
      const ackAt = at;
      bytes[ackAt] = 0xee;
      const hasAck = (shape & 2) === 0;
      drv.add(readable, hasAck ? [{ addr: ackAt, len: 1 }] : []);
      drv.publish();
      const chain = q.pop();
      if (chain === null) throw new Error('a posted command was not popped');
      const before = snapshot();
      const r = processCtrl(chain, target, scratch);
      q.addUsed(chain.head, hasAck ? 1 : 0);
      q.flush();
      if (drv.popUsed() !== chain.head) throw new Error('the command did not come back');
      if (r.ack !== ACK.OK && r.ack !== ACK.ERR) throw new Error(`ack ${r.ack}`);
      if (hasAck && bytes[ackAt] !== r.ack) throw new Error(`ack byte ${bytes[ackAt]} but result ${r.ack}`);
      if (!hasAck && r.ack === ACK.OK) throw new Error('a command without room for its ack was accepted');
      const after = snapshot();
      if (r.ack === ACK.ERR) {
        for (const k of Object.keys(before) as (keyof State)[]) if (before[k] !== after[k]) throw new Error(`refused command (${r.error}) changed ${k}`);
      } else {
        if (filter.uni.length % 6 || filter.multi.length % 6) throw new Error('MAC table of partial entries');
        if (filter.uni.length / 6 > MAX_MAC_ENTRIES || filter.multi.length / 6 > MAX_MAC_ENTRIES) throw new Error('MAC table over its limit');
        if (st.pairs < 1 || st.pairs > MAX_PAIRS) throw new Error(`queue pairs ${st.pairs}`);
        if ((st.offloads & ~(bits & GUEST_OFFLOAD_FEATURES)) !== 0n) throw new Error('offloads beyond the negotiated ones');
      }
      // The filter decides on a frame from the input.
      const frame = inp.bytes(16);
      if (inp.u8() & 1) frame.set(filter.uni.subarray(0, 6));
      filter.accept(frame, 0, 14 + (frame[15]! & 0x3f));
    }
  },
} satisfies FuzzTarget;
