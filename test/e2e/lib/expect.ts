/** Assertions shared by the end-to-end tests. */
import { expect } from 'vitest';
import type { MetricsDocument } from '../../../sandbox/metrics-endpoint.ts';
import { jobResult, type RunResult } from './run.ts';

/** Counters of one queue from an lgnet metrics document. */
export function queue(m: MetricsDocument | undefined, index: number) {
  const q = m?.queues.find((x) => x.index === index);
  if (!q) throw new Error(`queue ${index} missing from lgnet metrics: ${JSON.stringify(m)}`);
  return q;
}

/** Checks the guest's integrity result and the host's view of the upload against the known hash. */
export function expectIntegrity(r: RunResult, size: number): void {
  const res = jobResult(r.outcome, 'integrity');
  expect(res, 'integrity result').toBeDefined();
  expect(r.blobSha256).toMatch(/^[0-9a-f]{64}$/);
  // host → guest: the guest hashed what it received
  expect(res!.rx_rc).toBe(0);
  expect(res!.rx_bytes).toBe(size);
  expect(res!.rx_sha256).toBe(r.blobSha256);
  // guest → host: what the host side hashed itself, not what the guest says
  const got = r.blobEvents.filter((e) => e.event === 'received');
  expect(got, JSON.stringify(r.blobEvents)).toHaveLength(1);
  expect(got[0]!.end).toBe('eof');
  expect(got[0]!.bytes).toBe(size);
  expect(got[0]!.sha256).toBe(r.blobSha256);
  expect(res!.tx_rc).toBe(0);
  expect(r.blobEvents.filter((e) => e.event === 'error')).toEqual([]);
}

/**
 * QEMU's warnings about its vhost-user back-end, from QEMU's stderr: vhost_user_backend_init warns, for
 * one, when a back-end offers a protocol feature the device cannot use (CONFIG, to virtio-net). lgnet's
 * defaults must cause none.
 */
export function backendWarnings(qemuStderr: string): string[] {
  return qemuStderr.split('\n').filter((l) => /warning:/i.test(l) && /vhost|back-?end/i.test(l));
}
