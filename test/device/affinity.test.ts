/**
 * NetDeviceOptions.cpus: each queue pair's two workers run on one CPU, the pairs on the list's CPUs in
 * turn, as /proc/self/task/<tid>/status shows for the named worker threads; traffic still flows on the
 * pinned workers. A CPU the process may not use is refused when the device is made, and a worker
 * thread that still cannot pin itself reports it and ends.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import * as native from '../../native/index.ts';
import { NET_ERROR, NetConfigError } from '../../device/errors.ts';
import { createCounters } from '../../device/metrics.ts';
import { NetDevice } from '../../device/net.ts';
import { WorkerHost } from '../../device/worker-host.ts';
import { PairBackend } from '../../device/pair-backend.ts';
import { ip4, udpFrame } from '../../harness/frames.ts';
import { createBed, expectedPayload, udpSink } from './helpers.ts';

/** Cpus_allowed_list of this process's thread named `comm`, or undefined if there is none. */
function allowedOf(comm: string): string | undefined {
  for (const tid of readdirSync('/proc/self/task')) {
    let name: string;
    try {
      name = readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue; // the thread ended
    }
    if (name !== comm) continue;
    const status = readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
    return /^Cpus_allowed_list:\s*(\S+)$/m.exec(status)?.[1];
  }
  return undefined;
}

it('pins each pair\'s RX and TX workers to one CPU, the pairs in turn, and frames still go', async () => {
  const allowed = native.threadAffinity();
  if (allowed.length < 2) console.log(`only CPU ${allowed.join(',')} is allowed here: both pairs share it, and pinned cannot be told from unpinned`);
  // The last allowed CPU first, so that the order of the list is what decides.
  const cpus = allowed.length >= 2 ? [allowed[allowed.length - 1]!, allowed[0]!] : [allowed[0]!];
  const bed = await createBed({ accept: ['VERSION_1', 'MAC', 'MQ', 'RING_EVENT_IDX'], queuePairs: 2, device: { cpus } });
  const want = (pair: number): string => String(cpus[pair % cpus.length]);
  expect(allowedOf('lgnet-rx0')).toBe(want(0));
  expect(allowedOf('lgnet-tx1')).toBe(want(0));
  expect(allowedOf('lgnet-rx2')).toBe(want(1));
  expect(allowedOf('lgnet-tx3')).toBe(want(1));
  // The main thread is left as it was.
  expect(native.threadAffinity()).toEqual(allowed);

  const sink = await udpSink(bed, 7310, 2, 5000);
  for (let pair = 0; pair < 2; pair++) {
    const frame = udpFrame({
      srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp),
      srcPort: 5003, dstPort: 7310, payload: expectedPayload(80, pair),
    });
    expect(bed.drv.send(frame, { pair })).toBe(true);
    expect(await bed.drv.drainTx(pair)).toBe(0);
  }
  expect((await sink.datagrams()).length).toBe(2);
});

it('refuses a CPU the process may not run on, and an empty list, with NET_BAD_CPUS', () => {
  const allowed = native.threadAffinity();
  const outside = Math.max(...allowed) + 1; // never in this process's set
  const pair = new PairBackend();
  try {
    for (const cpus of [[outside], [], [0.5], [-1]]) {
      let err: unknown;
      try {
        new NetDevice({ backend: pair.a, cpus });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(NetConfigError);
      expect((err as NetConfigError).code).toBe(NET_ERROR.BAD_CPUS);
      expect((err as Error).message).toContain(allowed.join(','));
    }
  } finally {
    pair.a.close();
    pair.b.close();
  }
});

it('native: a thread sets its own affinity, and only its own', async () => {
  const { Worker } = await import('node:worker_threads');
  const allowed = native.threadAffinity();
  const cpu = allowed[allowed.length - 1]!;
  // A worker pins itself and reports what it sees; the main thread keeps its own set.
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    const b = require(workerData.addon);
    b.setThreadAffinity(new Uint32Array([workerData.cpu]));
    parentPort.postMessage(b.threadAffinity());`;
  const w = new Worker(src, { eval: true, workerData: { addon: native.nativePath, cpu } });
  const seen = await new Promise<number[]>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  expect(seen).toEqual([cpu]);
  expect(native.threadAffinity()).toEqual(allowed);
  expect(() => native.setThreadAffinity([])).toThrow(RangeError);
  expect(() => native.setThreadAffinity([native.MAX_CPUS])).toThrow(RangeError);
});

it('a worker thread that cannot pin itself reports NET_BAD_CPUS, and ends', async () => {
  const outside = Math.max(...native.threadAffinity()) + 1;
  expect(outside).toBeLessThan(native.MAX_CPUS);
  const events: Array<{ ev: string; code?: string }> = [];
  let gone = false;
  // The device checks cpus first; the host alone lets the thread meet the kernel's refusal.
  const host = new WorkerHost({ index: 0, counters: createCounters(), cpu: outside, onEvent: (e) => events.push(e), onGone: () => { gone = true; } });
  await expect(host.start()).rejects.toMatchObject({ code: NET_ERROR.WORKER_START, message: expect.stringContaining(`CPU ${outside}`) });
  expect(events).toContainEqual(expect.objectContaining({ ev: 'broken', code: NET_ERROR.BAD_CPUS }));
  await expect.poll(() => gone, { timeout: 5000 }).toBe(true);
  expect(host.started).toBe(false);
});
