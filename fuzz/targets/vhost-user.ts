/**
 * The vhost-user back-end as a front-end drives it: message bytes and fds written to a real socket,
 * read by a Connection (framing, header and payload checks, fd counts), dispatched through every
 * handler to a real NetDevice (pair backend, workers started once), then EOF and teardown. Messages
 * come from the input: known and unknown requests, right and wrong sizes, flags, fds (a guest-RAM
 * memfd, eventfds), payloads with indices, ring sizes, ring addresses and memory tables that often
 * make sense, after a prefix that may negotiate, map memory and start both rings over RAM whose
 * bytes also come from the input. Properties:
 *   - the connection tears down by itself after EOF (no hang), and leaves no fd, mapping or running
 *     queue behind, and no object: torn-down connections are collected;
 *   - every refusal is a typed error: a message refused for an untyped exception (a bug) is a finding.
 */
import { existsSync, readdirSync } from 'node:fs';

import { mask } from '../../device/features.ts';
import { NetDevice } from '../../device/net.ts';
import { PairBackend } from '../../device/pair-backend.ts';
import { LgnetError } from '../../errors/index.ts';
import { FRONTEND_ERROR, FrontendError, REPLYING } from '../../harness/vhost-user-channel.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import * as native from '../../native/index.ts';
import { VHOST_USER_NET_FEATURES } from '../../sandbox/main.ts';
import { Connection, VhostUserServer, netDeviceHooks } from '../../sandbox/vhost-user/server.ts';
import { VU, type VhostUserError } from '../../sandbox/vhost-user/errors.ts';
import {
  FLAGS, PAYLOAD_SIZE, REQ, encodeMemTable, encodeMessage, encodeU64, encodeVringAddr, encodeVringFile, encodeVringState,
} from '../../sandbox/vhost-user/messages.ts';
import { Input, type FuzzTarget } from '../target.ts';

const RAM_SIZE = 1 << 20;
const RAM_UADDR = 0x7f00_0000_0000;
const pair = new PairBackend();
const dev = new NetDevice({ backend: pair.a, mac: '52:54:00:12:34:56', features: VHOST_USER_NET_FEATURES });
await dev.startWorkers();
const hooks = netDeviceHooks(dev);
// A payload that never comes is refused after payloadTimeoutMs; 20 ms instead of 2 s keeps such
// inputs from stalling the run (the path is the same).
// With /dev/userfaultfd the server offers postcopy (PAGEFAULT), and the prefix negotiates it: random
// POSTCOPY_* messages and memory tables answered with bases are reached too.
const uffdDevice = existsSync('/dev/userfaultfd') ? native.userfaultfdDevice() : -1;
const server = new VhostUserServer({ device: hooks, path: '/nonexistent/lgnet-fuzz.sock', config: true, payloadTimeoutMs: 20, ...(uffdDevice >= 0 ? { userfaultfd: uffdDevice } : {}) });
const ram = native.memfdCreate('lgnet-fuzz-ram', RAM_SIZE);
const ramMapping = native.mmap(ram, 0, RAM_SIZE);
const ramWords = new Uint32Array(native.mappingBuffer(ramMapping));
// Every page present from the start: a postcopy memory table over a hole would make a worker wait on
// a fault that this front-end does not serve (test/sandbox/postcopy.test.ts serves them).
ramWords.fill(0);
let bug: VhostUserError | null = null;
server.on('refused', (e: VhostUserError) => {
  if (e.code === VU.DEVICE && !(e.cause instanceof LgnetError)) bug = e;
});
const fdCount = (): number => readdirSync('/proc/self/fd').length;
let baseline = -1;
// Connections must be garbage once torn down: counted here, checked after a full GC every 512 runs
// (when the process has gc(); fuzz/run.ts starts it with --expose-gc).
const gc = (globalThis as { gc?: () => void }).gc;
let live = 0;
let runs = 0;
const collected = new FinalizationRegistry(() => live--);

const REQUESTS = Object.values(REQ);
const RING_REQUESTS = [REQ.SET_VRING_NUM, REQ.SET_VRING_ADDR, REQ.SET_VRING_BASE, REQ.SET_VRING_KICK, REQ.SET_VRING_CALL, REQ.SET_VRING_ENABLE, REQ.GET_VRING_BASE];
const CANDIDATE_SIZES = [0, 8, 12, 18, 20, 24, 40, 72, 104];

function rightSize(request: number, pick: number): number {
  const rule = PAYLOAD_SIZE[request];
  if (rule === undefined) return pick % 64;
  if (typeof rule === 'number') return rule;
  const ok = CANDIDATE_SIZES.filter((s) => rule(s));
  return ok.length ? ok[pick % ok.length]! : 0;
}

interface Msg { bytes: Uint8Array; fds: Array<'ram' | 'eventfd'> }

function generated(inp: Input): Msg {
  const sel = inp.u8();
  const request = sel < 96 ? RING_REQUESTS[sel % RING_REQUESTS.length]! : sel < 240 ? REQUESTS[sel % REQUESTS.length]! : inp.u8();
  const fl = inp.u8();
  const flags = fl < 8 ? inp.u32() : FLAGS.VERSION | (fl < 240 ? FLAGS.NEED_REPLY : 0);
  const sz = inp.u8();
  const size = sz < 16 ? inp.u16() % 300 : rightSize(request, sz);
  const payload = inp.bytes(size);
  const dv = new DataView(payload.buffer);
  const fix = inp.u8();
  if (fix & 1 && size >= 4 && request !== REQ.SET_MEM_TABLE) dv.setUint32(0, (fix >> 1) % 3, true); // a ring index that exists
  if (request === REQ.SET_VRING_NUM && size === 8 && fix & 2) dv.setUint32(4, 1 << ((fix >> 2) % 10), true);
  if (request === REQ.SET_VRING_ADDR && size === 40 && fix & 2) {
    for (let i = 0; i < 3; i++) dv.setBigUint64(8 + 8 * i, BigInt(RAM_UADDR + (inp.u16() << 4) % (RAM_SIZE - 4096)), true);
  }
  if ((request === REQ.SET_MEM_TABLE || request === REQ.ADD_MEM_REG) && fix & 2) {
    const r = { gpa: (fix & 4) * 0x1000, size: fix & 8 ? RAM_SIZE : inp.u32(), uaddr: RAM_UADDR, mmapOffset: fix & 16 ? inp.u16() * 4096 : 0 };
    const table = request === REQ.SET_MEM_TABLE ? encodeMemTable([r]) : encodeMemTable([r]).subarray(0, 40);
    payload.set(table.subarray(0, Math.min(table.length, payload.length)));
  }
  const nfd = inp.u8();
  const fds: Array<'ram' | 'eventfd'> = [];
  const wantFds = request === REQ.SET_MEM_TABLE || request === REQ.ADD_MEM_REG || request === REQ.SET_LOG_BASE || request === REQ.SET_INFLIGHT_FD ? 1
    : (request === REQ.SET_VRING_KICK || request === REQ.SET_VRING_CALL || request === REQ.SET_VRING_ERR) && size === 8 && !(payload[1]! & 1) ? 1 : 0;
  const count = nfd < 16 ? nfd % 3 : wantFds;
  for (let i = 0; i < count; i++) fds.push(request === REQ.SET_MEM_TABLE || request === REQ.ADD_MEM_REG || (nfd & 0x80) ? 'ram' : 'eventfd');
  const bytes = encodeMessage(request, flags, payload);
  if (sz === 255) new DataView(bytes.buffer).setUint32(8, inp.u32(), true); // a header size that lies
  return { bytes, fds };
}

/** The handshake a real front-end would do first: owner, features, memory, and maybe both rings. */
function prefix(inp: Input, mode: number): Msg[] {
  const V = FLAGS.VERSION | FLAGS.NEED_REPLY;
  const out: Msg[] = [
    { bytes: encodeMessage(REQ.SET_OWNER, V), fds: [] },
    { bytes: encodeMessage(REQ.SET_FEATURES, V, encodeU64((hooks.offered & ~mask('RING_PACKED')) | (1n << 30n))), fds: [] },
    { bytes: encodeMessage(REQ.SET_PROTOCOL_FEATURES, V, encodeU64(server.protocolOffered)), fds: [] },
    { bytes: encodeMessage(REQ.SET_MEM_TABLE, V, encodeMemTable([{ gpa: 0, size: RAM_SIZE, uaddr: RAM_UADDR }])), fds: ['ram'] },
  ];
  if (mode < 2) return out;
  for (const index of [0, 1]) {
    const at = (): number => RAM_UADDR + ((inp.u16() << 4) % (RAM_SIZE - 8192));
    out.push(
      { bytes: encodeMessage(REQ.SET_VRING_NUM, V, encodeVringState({ index, num: 1 << (4 + (inp.u8() % 5)) })), fds: [] },
      { bytes: encodeMessage(REQ.SET_VRING_ADDR, V, encodeVringAddr({ index, desc: at() & ~0xf, avail: at() & ~1, used: at() & ~3 })), fds: [] },
      { bytes: encodeMessage(REQ.SET_VRING_BASE, V, encodeVringState({ index, num: inp.u16() })), fds: [] },
      { bytes: encodeMessage(REQ.SET_VRING_KICK, V, encodeVringFile(index, false)), fds: ['eventfd'] },
      { bytes: encodeMessage(REQ.SET_VRING_CALL, V, encodeVringFile(index, true)), fds: [] },
      { bytes: encodeMessage(REQ.SET_VRING_ENABLE, V, encodeVringState({ index, num: 1 })), fds: [] },
    );
  }
  return out;
}

export default {
  about: 'vhost-user: socket framing, every handler, a real device, teardown',
  maxLen: 4096,
  async: true,
  async run(data) {
    const inp = new Input(data);
    const mode = inp.u8() % 3;
    // Guest RAM the rings may land on: the first 64 KiB from the input, the rest as it was.
    let seed = inp.u32() | 1;
    for (let i = 0; i < 16384; i++) {
      seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
      ramWords[i] = seed >>> 0;
    }
    const msgs = mode > 0 ? prefix(inp, mode) : [];
    while (inp.left > 0 && msgs.length < 32) msgs.push(generated(inp));

    const [ours, theirs] = native.unixSocketpair();
    native.setNonblocking(theirs, true);
    const conn = new Connection(server, hooks, theirs);
    live++;
    collected.register(conn, 0);
    const fe = VhostUserFrontend.fromFd(ours, { timeoutMs: 5000 });
    const kick = native.eventfdCreate({ nonblocking: true });
    try {
      // One message at a time, as a front-end does: the next goes once the last was answered.
      for (const m of msgs) {
        const fds = m.fds.map((k) => (k === 'ram' ? ram : native.eventfdCreate({ nonblocking: true })));
        let n: number;
        try {
          n = fe.sendRaw(m.bytes, fds);
        } catch {
          break; // the back-end hung up
        } finally {
          m.fds.forEach((k, i) => { if (k === 'eventfd') native.close(fds[i]!); });
        }
        if (n !== m.bytes.length) break;
        const h = new DataView(m.bytes.buffer);
        if (!(h.getUint32(4, true) & FLAGS.NEED_REPLY) && !REPLYING.has(h.getUint32(0, true))) continue;
        try {
          const reply = await fe.readMessage();
          for (const fd of reply.fds) native.close(fd);
        } catch (e) {
          if (e instanceof FrontendError && e.code === FRONTEND_ERROR.TIMEOUT) throw new Error(`request ${h.getUint32(0, true)} was neither answered nor refused within 5 s`);
          break; // refused: the connection is gone
        }
      }
      native.eventfdWrite(kick, 1);
    } finally {
      fe.close();
      native.close(kick);
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'hang'>((r) => { timer = setTimeout(() => r('hang'), 10_000); });
    const end = await Promise.race([conn.closed.then(() => 'closed' as const), timeout]);
    clearTimeout(timer);
    if (end === 'hang') throw new Error('the connection did not tear down within 10 s of EOF');
    if (bug) throw bug;
    if (dev.memory !== null) throw new Error('guest memory still mapped after teardown');
    const fds = fdCount();
    if (baseline < 0) baseline = fds;
    else if (fds > baseline) throw new Error(`${fds - baseline} fds left behind after teardown`);
    if (gc && ++runs % 512 === 0) {
      for (let k = 0; k < 3 && live > 8; k++) {
        gc();
        await new Promise((r) => setTimeout(r, 5));
      }
      if (live > 8) throw new Error(`${live} torn-down connections are still reachable after a full GC`);
    }
  },
  async close() {
    await dev.close();
    pair.b.close();
    native.munmap(ramMapping);
    native.close(ram);
  },
} satisfies FuzzTarget;
