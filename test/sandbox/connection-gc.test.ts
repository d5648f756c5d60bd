/**
 * A vhost-user connection is garbage once it is torn down, however it ended, and lets go of the guest
 * memory it mapped. Regression: one refused for a bad message stayed alive for good, because the native
 * FdPoller kept its callback until its finalizer, and the callback's closure reached an Error whose
 * stack frame held the FdPoller as receiver: a cycle through a strong handle V8 cannot collect. The
 * coverage-guided vhost-user fuzz target showed it as RSS growing by about 2 KB per connection.
 */
import { readFileSync } from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';

import { afterAll, expect, it } from 'vitest';

import { NetDevice } from '../../device/net.ts';
import { PairBackend } from '../../device/pair-backend.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import * as native from '../../native/index.ts';
import { Connection, VhostUserServer, netDeviceHooks } from '../../sandbox/vhost-user/server.ts';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const pair = new PairBackend();
const dev = new NetDevice({ backend: pair.a, mac: '52:54:00:12:34:56' });
const hooks = netDeviceHooks(dev);
const server = new VhostUserServer({ device: hooks, path: '/nonexistent/lgnet-gc.sock' });
afterAll(async () => {
  await dev.close();
  pair.b.close();
});

/** Opens `n` connections, ends each as `end` says, and returns how many were collected. */
async function collected(n: number, end: (fd: number) => void): Promise<number> {
  let freed = 0;
  const registry = new FinalizationRegistry(() => freed++);
  for (let i = 0; i < n; i++) {
    const [ours, theirs] = native.unixSocketpair();
    native.setNonblocking(theirs, true);
    const conn = new Connection(server, hooks, theirs);
    registry.register(conn, i);
    end(ours);
    native.shutdown(ours);
    await conn.closed;
    native.close(ours);
  }
  for (let k = 0; k < 10 && freed < n; k++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
  return freed;
}

it('connections that end at EOF are collected', async () => {
  expect(await collected(40, () => {})).toBeGreaterThanOrEqual(38);
});

it('connections refused for a bad message are collected', async () => {
  // A header of version 0: refused while it is read, inside the FdPoller's callback.
  expect(await collected(40, (fd) => native.sendMsg(fd, new Uint8Array(12)))).toBeGreaterThanOrEqual(38);
});

it('guest memory of a refused connection is unmapped, not held by the dead connection', async () => {
  const size = 1 << 20;
  const ram = native.memfdCreate('lgnet-gc-ram', size);
  const mapped = (): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:lgnet-gc-ram')).length;
  try {
    for (let i = 0; i < 10; i++) {
      const [ours, theirs] = native.unixSocketpair();
      native.setNonblocking(theirs, true);
      const conn = new Connection(server, hooks, theirs);
      const fe = VhostUserFrontend.fromFd(ours);
      try {
        await fe.setMemTable([{ gpa: 0, size, uaddr: 0x7f00_0000_0000, fd: ram }]);
        await fe.getFeatures(); // answered after the table was handled
        expect(dev.memory, 'the table was installed').not.toBeNull();
        fe.sendRaw(new Uint8Array(12)); // then a bad header: refused, dropped
        await conn.closed;
      } finally {
        fe.close();
      }
    }
    for (let k = 0; k < 10 && mapped() > 0; k++) {
      gc();
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(mapped(), "mappings of the dead connections' guest RAM").toBe(0);
  } finally {
    native.close(ram);
  }
});
