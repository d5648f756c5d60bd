/**
 * The random vhost-user front-end of the fuzz tests (vhost-user-fuzz.test.ts in-process, and
 * cli-fuzz.test.ts against a jailed `lgnet serve`): message and start generators for fast-check, the
 * runner that plays one sequence on a connection, and the run count and time budget both tests share.
 */
import fc from 'fast-check';

import * as native from '../../native/index.ts';
import { mask } from '../../device/features.ts';
import { FLAGS, protocolMask, REQ } from '../../sandbox/vhost-user/messages.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';

const V = FLAGS.VERSION;

/** Payload sizes a request takes when well formed (random contents fill them). */
const SIZES: Partial<Record<number, number[]>> = {
  [REQ.SET_FEATURES]: [8], [REQ.SET_PROTOCOL_FEATURES]: [8], [REQ.SET_VRING_NUM]: [8], [REQ.SET_VRING_BASE]: [8],
  [REQ.GET_VRING_BASE]: [8], [REQ.SET_VRING_ENABLE]: [8], [REQ.SET_VRING_ADDR]: [40], [REQ.SET_VRING_KICK]: [8],
  [REQ.SET_VRING_CALL]: [8], [REQ.SET_VRING_ERR]: [8], [REQ.SET_MEM_TABLE]: [8, 40, 72], [REQ.ADD_MEM_REG]: [40],
  [REQ.REM_MEM_REG]: [40], [REQ.GET_CONFIG]: [12 + 6, 12 + 12], [REQ.SET_CONFIG]: [12 + 6], [REQ.SEND_RARP]: [8],
  [REQ.NET_SET_MTU]: [8], [REQ.SET_STATUS]: [8], [REQ.GET_INFLIGHT_FD]: [24], [REQ.SET_INFLIGHT_FD]: [24],
  [REQ.IOTLB_MSG]: [32], [REQ.SET_SLAVE_REQ_FD]: [0],
};
const REQUESTS = Object.values(REQ);
/** The messages that set a ring up and start it: favoured, so that rings do start on random layouts. */
const RING_REQUESTS = [REQ.SET_VRING_NUM, REQ.SET_VRING_ADDR, REQ.SET_VRING_BASE, REQ.SET_VRING_KICK, REQ.SET_VRING_CALL, REQ.SET_VRING_ENABLE, REQ.GET_VRING_BASE];

export interface FuzzMessage { request: number; flags: number; payload: Uint8Array; fds: Array<'memfd' | 'eventfd'> }

/** Requests that carry fds, and how many a well-formed one has. */
function fdsFor(request: number, payload: Uint8Array): number {
  switch (request) {
    case REQ.SET_MEM_TABLE: return payload.length >= 8 ? Math.min(8, payload[0]!) : 0;
    case REQ.ADD_MEM_REG: case REQ.SET_INFLIGHT_FD: case REQ.SET_SLAVE_REQ_FD: return 1;
    case REQ.SET_VRING_KICK: case REQ.SET_VRING_CALL: case REQ.SET_VRING_ERR: return payload.length >= 8 && payload[1]! & 1 ? 0 : 1;
    default: return 0;
  }
}

/** Guest RAM the handshake installs; ring addresses in random messages often point into it. */
export const RAM_UADDR = 0x7f00_0000_0000;
export const RAM_SIZE = 1 << 20;
/** Behind the IOMMU of start mode 4: the RAM's I/O virtual addresses start here. */
export const RAM_IOVA = 0x10_0000_0000;

export const message: fc.Arbitrary<FuzzMessage> = fc
  .record({
    request: fc.oneof(
      { weight: 10, arbitrary: fc.constantFrom(...RING_REQUESTS) },
      { weight: 6, arbitrary: fc.constantFrom(...(Object.keys(SIZES).map(Number))) },
      { weight: 3, arbitrary: fc.constantFrom(...REQUESTS) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 60 }) },
    ),
    flagsRandom: fc.integer({ min: 0, max: 39 }),
    flags: fc.integer({ min: 0, max: 0xff }),
    sizeChoice: fc.integer({ min: 0, max: 19 }),
    randomSize: fc.integer({ min: 0, max: 300 }),
    bytes: fc.uint8Array({ minLength: 300, maxLength: 300 }),
    small: fc.integer({ min: 0, max: 2 }),
    inRam: fc.array(fc.integer({ min: 0, max: RAM_SIZE - 1 }), { minLength: 3, maxLength: 3 }),
    fdKinds: fc.array(fc.constantFrom<'memfd' | 'eventfd'>('memfd', 'eventfd', 'eventfd'), { minLength: 8, maxLength: 8 }),
    fdsRandom: fc.integer({ min: 0, max: 9 }),
  })
  .map((r) => {
    const sizes = SIZES[r.request] ?? [0];
    const size = r.sizeChoice === 0 ? r.randomSize : sizes[r.sizeChoice % sizes.length]!;
    const payload = r.bytes.slice(0, size);
    const dv = new DataView(payload.buffer);
    // Small numbers where the server indexes with them (vring index, region count), and ring
    // addresses inside the installed RAM, so that deep paths run and not only the range checks.
    if (payload.length >= 4 && r.small) dv.setUint32(0, r.small - 1, true);
    if (r.request === REQ.SET_VRING_ADDR && payload.length === 40 && r.small) {
      r.inRam.forEach((o, i) => dv.setBigUint64(8 + 8 * i, BigInt(RAM_UADDR + (o & ~0xf)), true));
    }
    if (r.request === REQ.SET_VRING_NUM && payload.length === 8 && r.small) dv.setUint32(4, 1 << (r.small * 3 + 2), true);
    if (r.request === REQ.IOTLB_MSG && payload.length === 32 && r.small) {
      // An update or an invalidation near the RAM's IOVAs, mapping into the RAM (or just past it).
      dv.setBigUint64(0, BigInt(RAM_IOVA + (r.inRam[0]! & ~0xfff)), true);
      dv.setBigUint64(8, BigInt(r.small * 4096 * (1 + (r.inRam[2]! & 7))), true);
      dv.setBigUint64(16, BigInt(RAM_UADDR + (r.inRam[1]! & ~0xfff)), true);
      dv.setUint8(24, 1 + (r.inRam[2]! % 3));
      dv.setUint8(25, r.small === 1 ? 2 : 3);
    }
    const n = r.fdsRandom === 0 ? r.small : fdsFor(r.request, payload);
    return { request: r.request, flags: r.flagsRandom === 0 ? r.flags : V, payload, fds: r.fdKinds.slice(0, n) };
  });

/**
 * How a sequence starts: 0 bare, 1 negotiated with memory, 2 also with both rings running, 3 as 2 but
 * in a postcopy migration that the front-end never serves (advised, listening, the memory table
 * answered and acknowledged; its copy of the userfaultfd closed at once), where the back-end offers it,
 * 4 as 2 but behind an IOMMU (ACCESS_PLATFORM, a back-end channel nobody reads, the whole RAM mapped
 * at RAM_IOVA, rings at IOVAs), where the back-end offers it.
 */
export const start = fc.record({
  mode: fc.integer({ min: 0, max: 4 }),
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
  size: fc.constantFrom(16, 64, 256),
  rings: fc.array(fc.array(fc.integer({ min: 0, max: RAM_SIZE - 8192 }), { minLength: 3, maxLength: 3 }), { minLength: 2, maxLength: 2 }),
});

/** Fills `a` with xorshift32 output from `seed` (reproducible with the property's seed). */
export function fillRandom(a: Uint32Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < a.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    a[i] = x >>> 0;
  }
}

/** Guest RAM shared by the sequences (a memfd this process maps to fill with random bytes) and a kick fd. */
export class FuzzRam {
  readonly fd = native.memfdCreate('lgnet-fuzz-ram', RAM_SIZE);
  private readonly mapping = native.mmap(this.fd, 0, RAM_SIZE);
  readonly words = new Uint32Array(native.mappingBuffer(this.mapping));
  readonly kick = native.eventfdCreate({ nonblocking: true });

  close(): void {
    native.close(this.kick);
    native.munmap(this.mapping);
    native.close(this.fd);
  }
}

/**
 * Plays one sequence on a new connection to `path`: the RAM gets random bytes, the start (bare,
 * negotiated with memory, or with both rings running on random places in it), then the messages, each
 * with fresh fds closed here once sent. Returns how many messages went out before the server hung up.
 */
export async function playSequence(path: string, ram: FuzzRam, st: typeof start extends fc.Arbitrary<infer T> ? T : never, msgs: FuzzMessage[]): Promise<number> {
  fillRandom(ram.words, st.seed);
  const fe = await VhostUserFrontend.connect(path);
  let sent = 0;
  /** Mode 4: this end of the back-end channel, and where ring addresses start (IOVAs then). */
  let channel = -1;
  let ringBase = RAM_UADDR;
  try {
    if (st.mode >= 1) {
      // Split rings: the rings below are laid out (and fuzzed) as split rings.
      // Modes 1–3 without ACCESS_PLATFORM: their ring addresses are front-end addresses.
      const neg = await fe.negotiate({
        features: (offered) => offered & ~mask('RING_PACKED') & (st.mode === 4 ? ~0n : ~mask('ACCESS_PLATFORM')),
        protocolFeatures: FRONTEND_PROTOCOL_FEATURES | protocolMask('PAGEFAULT', ...(st.mode === 4 ? ['SLAVE_REQ' as const] : [])),
      });
      const region = { gpa: 0, size: RAM_SIZE, uaddr: RAM_UADDR, mmapOffset: 0, fd: ram.fd };
      if (st.mode === 3 && neg.protocolFeatures & protocolMask('PAGEFAULT')) {
        native.close(await fe.postcopyAdvise());
        await fe.postcopyListen();
        await fe.setMemTablePostcopy([region]);
      } else {
        await fe.setMemTable([region]);
      }
      if (st.mode === 4 && neg.features & mask('ACCESS_PLATFORM')) {
        const [mine, theirs] = native.unixSocketpair();
        channel = mine; // never read: lgnet's misses fill it and are dropped
        try {
          await fe.setBackendReqFd(theirs);
        } finally {
          native.close(theirs);
        }
        await fe.iotlbUpdate(RAM_IOVA, RAM_SIZE, RAM_UADDR, 3);
        ringBase = RAM_IOVA;
      }
    }
    if (st.mode >= 2) {
      for (const [index, at] of st.rings.entries()) {
        await fe.setVringNum(index, st.size);
        await fe.setVringBase(index, 0);
        await fe.setVringAddr(index, { desc: ringBase + (at[0]! & ~0xf), avail: ringBase + (at[1]! & ~0x1), used: ringBase + (at[2]! & ~0x3) });
        await fe.setVringKick(index, ram.kick);
        await fe.setVringCall(index, null);
        await fe.setVringEnable(index, true);
      }
      native.eventfdWrite(ram.kick, 1);
    }
    for (const m of msgs) {
      const fds = m.fds.map((k) => (k === 'memfd' ? native.memfdCreate('lgnet-fuzz', 64 << 10) : native.eventfdCreate({ nonblocking: true })));
      try {
        fe.sendRaw(encode(m), fds);
        sent++;
      } catch {
        break; // the server dropped us: the rest cannot be sent
      } finally {
        for (const fd of fds) native.close(fd);
      }
    }
    await new Promise((r) => setTimeout(r, 2));
  } finally {
    fe.close();
    native.closeQuietly(channel);
  }
  return sent;
}

/** A message's bytes: header and payload as they are (flags and size included). */
export function encode(m: FuzzMessage): Uint8Array {
  const b = new Uint8Array(12 + m.payload.length);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, m.request, true);
  dv.setUint32(4, m.flags, true);
  dv.setUint32(8, m.payload.length, true);
  b.set(m.payload, 12);
  return b;
}

/**
 * How many sequences a fuzz test plays: $LGNET_FUZZ_RUNS, else `defaultRuns`. A test plays exactly this
 * many or fails; it never stops early on a clock.
 */
export function fuzzRuns(defaultRuns: number): number {
  const text = process.env['LGNET_FUZZ_RUNS'];
  if (text === undefined || text === '') return defaultRuns;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`LGNET_FUZZ_RUNS must be a positive integer, not '${text}'`);
  return n;
}

/**
 * Average budget of one sequence (ms), for the test's timeout. Measured on a 2-vCPU machine: mean
 * 5 ms idle, 14 ms beside four CPU hogs, 40–55 ms beside six (p99 0.3–0.4 s); this is about twice the
 * worst mean, so 500 sequences fit in 60 s plus set-up even on a crowded machine.
 */
export const SEQUENCE_BUDGET_MS = 120;

/** One sequence that takes longer than this has hung: it fails with its own counterexample. */
export const SEQUENCE_TIMEOUT_MS = 20_000;

/** The vitest timeout for `runs` sequences: their budget plus `fixedMs` for set-up and checks. */
export function fuzzTimeout(runs: number, fixedMs: number): number {
  return fixedMs + runs * SEQUENCE_BUDGET_MS;
}

/** Wall time of each sequence played, for the summary a test prints. */
export class SequenceTimes {
  private readonly ms: number[] = [];

  get count(): number {
    return this.ms.length;
  }

  /** Runs `fn` and records how long it took. */
  async time<T>(fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.ms.push(performance.now() - t0);
    }
  }

  /** "N sequences in S s (median M ms, p99 P ms, max X ms)". */
  summary(): string {
    const s = [...this.ms].sort((a, b) => a - b);
    const at = (q: number): number => Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0);
    const total = s.reduce((a, b) => a + b, 0) / 1000;
    return `${s.length} sequences in ${total.toFixed(1)} s (median ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms)`;
  }
}
