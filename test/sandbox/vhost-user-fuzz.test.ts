/**
 * Random front-ends against the vhost-user server (fast-check): sequences of messages with real
 * request numbers, payloads of the right size with random contents (and sometimes of a random size),
 * random flags now and then, and random fds (memfds, eventfds) attached. Whatever a sequence does —
 * map random regions, start rings at random addresses, break queues — the process keeps serving:
 * the next well-behaved front-end negotiates, reads the config and gets traffic through, and once
 * every connection is gone no fd and no guest mapping is left behind.
 */
import { existsSync, readFileSync } from 'node:fs';

import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as native from '../../native/index.ts';

import { ip4, mac, udpFrame } from '../../harness/frames.ts';
import { destroyAllNetns, netnsPrerequisites } from '../../harness/netns.ts';
import { mask } from '../../device/features.ts';
import { FuzzRam, fuzzRuns, fuzzTimeout, message, playSequence, SEQUENCE_TIMEOUT_MS, SequenceTimes, start } from './vhost-user-fuzz-helpers.ts';
import { createVuBed, expectedPayload, fdCount, udpSink, until, type VuBed } from './vhost-user-helpers.ts';

/** Mappings of memfds the fuzzer sent or the server made for it (inflight buffers), in this process. */
function fuzzMappings(): string[] {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => /memfd:lgnet-(fuzz|inflight)/.test(l));
}

const pre = netnsPrerequisites();
/** Sequences played, all of them (LGNET_FUZZ_RUNS overrides): 3 s idle, about 30 s on a crowded 2-vCPU machine. */
const RUNS = fuzzRuns(500);

describe.skipIf(!pre.ok)('vhost-user server: random front-ends', () => {
  let bed: VuBed;
  let ram: FuzzRam | undefined;
  let uffdDevice = -1;
  beforeAll(async () => {
    // With /dev/userfaultfd the server offers postcopy, and start mode 3 and random POSTCOPY_*
    // messages reach it (docs/SECURITY.md, "Postcopy").
    uffdDevice = existsSync('/dev/userfaultfd') ? native.userfaultfdDevice() : -1;
    if (uffdDevice < 0) console.warn('[fuzz] no /dev/userfaultfd (Linux before 6.1): postcopy is not offered, start mode 3 runs as mode 2');
    // ACCESS_PLATFORM offered: start mode 4 and random IOTLB messages reach the IOMMU paths.
    bed = await createVuBed({ features: mask('ACCESS_PLATFORM'), ...(uffdDevice >= 0 ? { userfaultfd: uffdDevice } : {}) });
    ram = new FuzzRam();
  });
  afterAll(async () => {
    ram?.close();
    await bed?.close();
    destroyAllNetns();
    if (uffdDevice >= 0) native.close(uffdDevice);
  });

  it(`${RUNS} random message sequences on rings over random bytes: the process serves on, and leaks no fd and no mapping`, async () => {
    // Settle what the bed itself holds before counting.
    const warm = await bed.guest();
    warm.close();
    expect(await until(() => bed.server.connection === null)).toBe(true);
    const fds0 = fdCount();
    const maps0 = fuzzMappings().length;
    const times = new SequenceTimes();
    // Every one of RUNS sequences is played (no time limit that would end the run early and pass).
    await fc.assert(
      fc.asyncProperty(start, fc.array(message, { minLength: 1, maxLength: 24 }), (st, msgs) => times.time(async () => {
        await playSequence(bed.path, ram!, st, msgs);
        expect(await until(() => bed.server.connection === null, 5000), 'the connection is torn down').toBe(true);
      })),
      { numRuns: RUNS, timeout: SEQUENCE_TIMEOUT_MS },
    );
    expect(times.count).toBe(RUNS);
    // The process still serves a real front-end, traffic included.
    const g = await bed.guest();
    try {
      expect((await g.fe.getConfig(0, 6)).length).toBe(6);
      const q = bed.dev.metrics().queues;
      expect(q.every((x) => x.running && x.broken === null)).toBe(true);
      const sink = await udpSink(bed.ns, bed.hostIp, 7600, 1, 5000);
      const tapMac = mac(bed.ns.exec('cat', '/sys/class/net/lgtap0/address').trim());
      const payload = expectedPayload(100, 7);
      expect(g.drv.send(udpFrame({ srcMac: mac(bed.guestMac), dstMac: tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 40000, dstPort: 7600, payload }))).toBe(true);
      expect(await g.drv.drainTx(0, 5000)).toBe(0);
      expect((await sink.datagrams()).map((d) => d.hex)).toEqual([Buffer.from(payload).toString('hex')]);
    } finally {
      g.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
    expect(await until(() => fdCount() <= fds0 && fuzzMappings().length <= maps0, 5000), `fds ${fdCount()} vs ${fds0}, mappings left: ${fuzzMappings().join('\n')}`).toBe(true);
    const q = bed.dev.metrics().queues;
    const advised = bed.server.metrics.requests['POSTCOPY_ADVISE'] ?? 0;
    const iotlb = bed.server.metrics.requests['IOTLB_MSG'] ?? 0;
    expect(iotlb, 'sequences behind an IOMMU').toBeGreaterThan(0);
    console.log(`[fuzz] ${times.summary()}, ${bed.server.metrics.messages} messages (${advised} POSTCOPY_ADVISE, ${iotlb} IOTLB_MSG), queues broken ${q.map((x) => x.queueBroken).join("/")}, errors by code: ${JSON.stringify(bed.server.metrics.errors)}`);
    if (uffdDevice >= 0) expect(advised, 'sequences in a postcopy migration').toBeGreaterThan(0);
  }, fuzzTimeout(RUNS, 30_000));
});

