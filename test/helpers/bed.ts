/**
 * What every layer's test bed shares. A bed is what one layer's tests stand on:
 *
 *   vring    makeRig()      test/vring/helpers.ts           a split ring over plain memory, both sides
 *   device   createBed()    test/device/helpers.ts          a NetDevice on a tap in a namespace, driven
 *                                                           by the harness's guest driver
 *   sandbox  createVuBed()  test/sandbox/vhost-user-helpers  the vhost-user server in this process,
 *                                                           driven by the harness's front-end
 *
 * Beds that hold threads, fds or namespaces are tracked here and closed after their test (or their
 * file), even when the test fails, so no test file repeats the teardown. close() becomes idempotent:
 * a test may still close a bed early.
 */
import { afterAll, afterEach } from 'vitest';

import { destroyAllNetns } from '../../harness/netns.ts';

export interface Closable {
  close(): Promise<void> | void;
}

const perTest = new Set<Closable>();
const perFile = new Set<Closable>();

async function closeAll(set: Set<Closable>): Promise<void> {
  const beds = [...set];
  set.clear();
  for (const b of beds) await b.close();
}

// Registered once per test file, when the first bed module is imported during collection.
afterEach(() => closeAll(perTest));
afterAll(async () => {
  await closeAll(perFile);
  destroyAllNetns();
});

/**
 * Tracks a bed: closed after the current test (`'test'`) or after the file (`'file'`, for beds made
 * in beforeAll). Returns the bed, its close() made idempotent.
 */
export function trackBed<B extends Closable>(bed: B, scope: 'test' | 'file' = 'test'): B {
  const set = scope === 'test' ? perTest : perFile;
  const close = bed.close.bind(bed);
  let closing: Promise<void> | undefined;
  bed.close = () => {
    set.delete(bed);
    closing ??= Promise.resolve(close());
    return closing;
  };
  set.add(bed);
  return bed;
}
