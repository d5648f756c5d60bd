/**
 * A hostile front-end against the vhost-user server (DESIGN.md, "Untrusted input", vhost-user list).
 * Each broken rule gets its typed error (counted by code), the connection is dropped, every fd that
 * came with the message is closed, and the next connection is served. 10,000 repeated SET_MEM_TABLE
 * and SET_VRING_CALL messages leave no fds and no mappings behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import * as native from '../../native/index.ts';
import { VU, type VhostUserErrorCode } from '../../sandbox/vhost-user/errors.ts';
import {
  encodeConfig, encodeHeader, encodeMemTable, encodeMessage, encodeU64, encodeVringFile, encodeVringState, FLAGS, REQ,
} from '../../sandbox/vhost-user/messages.ts';
import { VhostUserFrontend } from '../../harness/vhost-user-frontend.ts';
import { destroyAllNetns, netnsPrerequisites } from '../../harness/netns.ts';
import { createVuBed, fdCount, mapCount, until, type VuBed } from './vhost-user-helpers.ts';

const pre = netnsPrerequisites();

/** Mappings of the hostile test's RAM memfd in this process. */
function memfdMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:lgnet-hostile-ram')).length;
}
const V = FLAGS.VERSION;

describe.skipIf(!pre.ok)('vhost-user server: hostile front-end', () => {
  let bed: VuBed;
  let ram: { fd: number; size: number } | undefined;

  beforeAll(async () => {
    bed = await createVuBed();
    ram = { fd: native.memfdCreate('lgnet-hostile-ram', 1 << 20), size: 1 << 20 };
  });
  afterAll(async () => {
    if (ram) native.close(ram.fd);
    await bed?.close();
    destroyAllNetns();
  });

  const errors = (code: VhostUserErrorCode) => bed.server.metrics.errors[code] ?? 0;

  /** A socketpair end to send as an fd: its peer reads EOF once every copy of it is closed. */
  function probeFd(): { send: number; closedEverywhere: () => boolean; close: () => void } {
    const [a, b] = native.unixSocketpair();
    native.setNonblocking(b, true);
    let sentClosed = false;
    return {
      send: a,
      closedEverywhere() {
        if (!sentClosed) {
          native.close(a);
          sentClosed = true;
        }
        return native.recvMsg(b, new Uint8Array(1), 0).bytes === 0;
      },
      close() {
        if (!sentClosed) native.close(a);
        native.close(b);
      },
    };
  }

  /**
   * Connects, runs `hostile`, and expects: the error code counted once more, the connection dropped,
   * and then a fresh connection that negotiates and reads config.
   */
  async function expectRefused(code: VhostUserErrorCode, hostile: (fe: VhostUserFrontend) => Promise<void> | void, timeoutMs = 3000): Promise<void> {
    const before = errors(code);
    const fe = await VhostUserFrontend.connect(bed.path);
    try {
      await hostile(fe);
      expect(await fe.waitClosed(timeoutMs), `connection dropped for ${code}`).toBe(true);
    } finally {
      fe.close();
    }
    expect(await until(() => errors(code) === before + 1 && bed.server.connection === null, timeoutMs)).toBe(true);
    const good = await VhostUserFrontend.connect(bed.path);
    try {
      await good.negotiate();
      expect((await good.getConfig(0, 6)).length).toBe(6);
    } finally {
      good.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
  }

  it('a header shorter than 12 bytes', async () => {
    await expectRefused(VU.SHORT_HEADER, (fe) => void fe.sendRaw(new Uint8Array([1, 0, 0, 0, 1])));
  });

  it('a payload size that does not fit the request', async () => {
    await expectRefused(VU.BAD_SIZE, (fe) => fe.sendRequest(REQ.SET_FEATURES, new Uint8Array(4)));
    await expectRefused(VU.BAD_SIZE, (fe) => fe.sendRequest(REQ.GET_FEATURES, new Uint8Array(8)));
    await expectRefused(VU.BAD_SIZE, (fe) => fe.sendRequest(REQ.SET_VRING_ADDR, new Uint8Array(32)));
    await expectRefused(VU.BAD_SIZE, (fe) => fe.sendRequest(REQ.SET_MEM_TABLE, new Uint8Array(8 + 31)));
    // The table says 2 regions but carries 1.
    await expectRefused(VU.BAD_SIZE, (fe) => {
      const t = encodeMemTable([{ gpa: 0, size: 4096, uaddr: 0 }]);
      t[0] = 2;
      fe.sendRequest(REQ.SET_MEM_TABLE, t, { fds: [ram!.fd] });
    });
  });

  it('a payload larger than any request has, and one that never arrives', async () => {
    await expectRefused(VU.PAYLOAD_TOO_LARGE, (fe) => void fe.sendRaw(encodeHeader({ request: REQ.SET_CONFIG, flags: V, size: 1 << 20 })));
    await expectRefused(VU.SHORT_PAYLOAD, (fe) => void fe.sendRaw(encodeHeader({ request: REQ.SET_FEATURES, flags: V, size: 8 })), 5000);
  });

  it('a bad version, and the REPLY flag on a request', async () => {
    await expectRefused(VU.BAD_VERSION, (fe) => void fe.sendRaw(encodeMessage(REQ.GET_FEATURES, 0x2)));
    await expectRefused(VU.BAD_VERSION, (fe) => void fe.sendRaw(encodeMessage(REQ.GET_FEATURES, 0x0)));
    await expectRefused(VU.BAD_FLAGS, (fe) => void fe.sendRaw(encodeMessage(REQ.GET_FEATURES, V | FLAGS.REPLY)));
  });

  it('unknown and unsupported requests', async () => {
    await expectRefused(VU.UNKNOWN_REQUEST, (fe) => fe.sendRequest(999));
    await expectRefused(VU.UNSUPPORTED_REQUEST, (fe) => fe.sendRequest(REQ.SET_LOG_FD));
    await expectRefused(VU.UNSUPPORTED_REQUEST, (fe) => fe.sendRequest(REQ.VRING_KICK, encodeVringState({ index: 0, num: 0 })));
  });

  it('wrong fd counts: every fd that came is closed', async () => {
    const p1 = probeFd();
    const p2 = probeFd();
    try {
      await expectRefused(VU.BAD_FD_COUNT, (fe) => fe.sendRequest(REQ.SET_OWNER, new Uint8Array(0), { fds: [p1.send, p2.send] }));
      expect(p1.closedEverywhere()).toBe(true);
      expect(p2.closedEverywhere()).toBe(true);
    } finally {
      p1.close();
      p2.close();
    }
    // KICK without NOFD and without an fd; CALL with NOFD and an fd; a table of one region with no fd.
    await expectRefused(VU.BAD_FD_COUNT, (fe) => fe.sendRequest(REQ.SET_VRING_KICK, encodeVringFile(0, false)));
    const p3 = probeFd();
    try {
      await expectRefused(VU.BAD_FD_COUNT, (fe) => fe.sendRequest(REQ.SET_VRING_CALL, encodeVringFile(0, true), { fds: [p3.send] }));
      expect(p3.closedEverywhere()).toBe(true);
    } finally {
      p3.close();
    }
    await expectRefused(VU.BAD_FD_COUNT, (fe) => fe.sendRequest(REQ.SET_MEM_TABLE, encodeMemTable([{ gpa: 0, size: 4096, uaddr: 0 }])));
  });

  it('more fds than a message may carry', async () => {
    const probes = Array.from({ length: 10 }, () => probeFd());
    try {
      await expectRefused(VU.TOO_MANY_FDS, (fe) => fe.sendRequest(REQ.SET_OWNER, new Uint8Array(0), { fds: probes.map((p) => p.send) }));
      for (const p of probes) expect(p.closedEverywhere()).toBe(true);
    } finally {
      for (const p of probes) p.close();
    }
  });

  it('an out-of-range vring index (and its fd is closed)', async () => {
    await expectRefused(VU.BAD_QUEUE_INDEX, (fe) => fe.sendRequest(REQ.SET_VRING_NUM, encodeVringState({ index: 2, num: 256 })));
    await expectRefused(VU.BAD_QUEUE_INDEX, (fe) => fe.sendRequest(REQ.GET_VRING_BASE, encodeVringState({ index: 0xffff_ffff, num: 0 })));
    await expectRefused(VU.BAD_QUEUE_INDEX, (fe) => fe.sendRequest(REQ.SET_VRING_ENABLE, encodeVringState({ index: 7, num: 1 })));
    const p = probeFd();
    try {
      await expectRefused(VU.BAD_QUEUE_INDEX, (fe) => fe.sendRequest(REQ.SET_VRING_KICK, encodeVringFile(200, false), { fds: [p.send] }));
      expect(p.closedEverywhere()).toBe(true);
    } finally {
      p.close();
    }
  });

  it('bad ring sizes, states and addresses', async () => {
    await expectRefused(VU.BAD_QUEUE_SIZE, (fe) => fe.sendRequest(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 0 })));
    await expectRefused(VU.BAD_QUEUE_SIZE, (fe) => fe.sendRequest(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 100 })));
    await expectRefused(VU.BAD_QUEUE_SIZE, (fe) => fe.sendRequest(REQ.SET_VRING_NUM, encodeVringState({ index: 0, num: 65536 })));
    await expectRefused(VU.BAD_VRING_STATE, (fe) => fe.sendRequest(REQ.SET_VRING_BASE, encodeVringState({ index: 0, num: 0x10000 })));
    await expectRefused(VU.BAD_VRING_STATE, (fe) => fe.sendRequest(REQ.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 2 })));
    // Rings outside the memory table: refused when the ring would start.
    await expectRefused(VU.BAD_RING_ADDR, async (fe) => {
      await fe.negotiate();
      await fe.setMemTable([{ gpa: 0, size: ram!.size, uaddr: 0x10_0000_0000, fd: ram!.fd }]);
      await fe.setVringNum(0, 256);
      await fe.setVringAddr(0, { desc: 0x20_0000_0000, avail: 0x10_0000_1000, used: 0x10_0000_2000 });
      await fe.setVringEnable(0, true);
      const kick = native.eventfdCreate();
      try {
        fe.sendRequest(REQ.SET_VRING_KICK, encodeVringFile(0, false), { fds: [kick] });
      } finally {
        native.close(kick);
      }
    });
  });

  it('memory tables: overlaps, overflows, zero sizes, too many regions, fds too short', async () => {
    const table = (regions: Array<{ gpa: bigint | number; size: bigint | number; uaddr: bigint | number; mmapOffset?: bigint | number }>) =>
      (fe: VhostUserFrontend) => fe.sendRequest(REQ.SET_MEM_TABLE, encodeMemTable(regions), { fds: regions.map(() => ram!.fd) });
    await expectRefused(VU.MEM_OVERLAP, table([{ gpa: 0, size: 8192, uaddr: 0x1000_0000 }, { gpa: 4096, size: 4096, uaddr: 0x2000_0000 }]));
    await expectRefused(VU.MEM_OVERLAP, table([{ gpa: 0, size: 4096, uaddr: 0x1000_0000 }, { gpa: 0x10000, size: 4096, uaddr: 0x1000_0000 }]));
    await expectRefused(VU.MEM_OVERFLOW, table([{ gpa: 0xffff_ffff_ffff_f000n, size: 0x2000, uaddr: 0 }]));
    await expectRefused(VU.MEM_OVERFLOW, table([{ gpa: 0, size: 0x1000, uaddr: 0xffff_ffff_ffff_f000n }]));
    await expectRefused(VU.MEM_OVERFLOW, table([{ gpa: 0, size: 0x1000, uaddr: 0, mmapOffset: 0xffff_ffff_ffff_f000n }]));
    await expectRefused(VU.MEM_ZERO_SIZE, table([{ gpa: 0, size: 0, uaddr: 0 }]));
    await expectRefused(VU.MEM_UNALIGNED, table([{ gpa: 0, size: 4096, uaddr: 0, mmapOffset: 12 }]));
    await expectRefused(VU.MEM_MAP_FAILED, table([{ gpa: 0, size: 64 << 20, uaddr: 0 }]));
    await expectRefused(VU.MEM_TOO_MANY_REGIONS, (fe) => {
      const t = encodeMemTable(Array.from({ length: 8 }, (_, i) => ({ gpa: i * 4096, size: 4096, uaddr: i * 4096 })));
      t[0] = 9;
      fe.sendRequest(REQ.SET_MEM_TABLE, t, { fds: Array.from({ length: 8 }, () => ram!.fd) });
    });
    await expectRefused(VU.MEM_NOT_FOUND, (fe) => fe.sendRequest(REQ.REM_MEM_REG, new Uint8Array(40)));
  });

  it('features and protocol features that were not offered', async () => {
    await expectRefused(VU.FEATURES_NOT_OFFERED, (fe) => fe.sendRequest(REQ.SET_FEATURES, encodeU64(1n << 63n)));
    await expectRefused(VU.FEATURES_NOT_OFFERED, (fe) => fe.sendRequest(REQ.SET_FEATURES, encodeU64(1n << 17n))); // CTRL_VQ: QEMU keeps it
    await expectRefused(VU.PROTOCOL_FEATURES_NOT_OFFERED, (fe) => fe.sendRequest(REQ.SET_PROTOCOL_FEATURES, encodeU64(1n << 14n)));
  });

  it('config access outside the config space or to read-only fields; MTU and status out of range', async () => {
    // CONFIG negotiated first (the bed offers it): these are range errors, not unnegotiated requests.
    // A refused GET_CONFIG is answered with an empty payload, the spec's error form, before the drop.
    const getConfigRefused = (c: Uint8Array) => async (fe: VhostUserFrontend) => {
      await fe.negotiate();
      fe.sendRequest(REQ.GET_CONFIG, c);
      const m = await fe.readMessage(2000);
      expect([m.request, m.flags & FLAGS.REPLY, m.payload.length]).toEqual([REQ.GET_CONFIG, FLAGS.REPLY, 0]);
    };
    await expectRefused(VU.CONFIG_RANGE, getConfigRefused(encodeConfig({ offset: 20, size: 8 })));
    await expectRefused(VU.CONFIG_RANGE, getConfigRefused(encodeConfig({ offset: 0xffff_fff0, size: 0x20 })));
    await expectRefused(VU.CONFIG_RANGE, async (fe) => {
      await fe.negotiate();
      fe.sendRequest(REQ.SET_CONFIG, encodeConfig({ offset: 100, data: new Uint8Array(4) }));
    });
    await expectRefused(VU.CONFIG_RANGE, async (fe) => { // status and max_virtqueue_pairs are the device's
      await fe.negotiate();
      fe.sendRequest(REQ.SET_CONFIG, encodeConfig({ offset: 6, data: new Uint8Array(4) }));
    });
    const lying = encodeConfig({ offset: 0, size: 6 });
    lying[4] = 8; // says 8 bytes, carries 6
    await expectRefused(VU.BAD_SIZE, getConfigRefused(lying));
    // Without negotiating CONFIG, even a well-formed GET_CONFIG is refused.
    await expectRefused(VU.UNSUPPORTED_REQUEST, async (fe) => {
      fe.sendRequest(REQ.GET_CONFIG, encodeConfig({ offset: 0, size: 6 }));
      expect((await fe.readMessage(2000)).payload.length).toBe(0);
    });
    await expectRefused(VU.BAD_MTU, (fe) => fe.sendRequest(REQ.NET_SET_MTU, encodeU64(10)));
    await expectRefused(VU.BAD_STATUS, (fe) => fe.sendRequest(REQ.SET_STATUS, encodeU64(0x100)));
    await expectRefused(VU.BAD_INFLIGHT, (fe) => fe.sendRequest(REQ.GET_INFLIGHT_FD, new Uint8Array(24)));
  });

  it('NEED_REPLY on a refused request is answered with a non-zero REPLY_ACK before the drop', async () => {
    await expectRefused(VU.BAD_QUEUE_INDEX, async (fe) => {
      fe.sendRequest(REQ.SET_VRING_NUM, encodeVringState({ index: 9, num: 256 }), { needReply: true });
      const m = await fe.readMessage(2000);
      expect(m.request).toBe(REQ.SET_VRING_NUM);
      expect(m.flags & FLAGS.REPLY).toBe(FLAGS.REPLY);
      expect(m.payload).toEqual(encodeU64(1));
    });
  });

  it('10,000 SET_MEM_TABLE and SET_VRING_CALL messages leak no fds and no mappings', async () => {
    const fe = await VhostUserFrontend.connect(bed.path);
    try {
      await fe.negotiate();
      const region = { gpa: 0, size: ram!.size, uaddr: 0x4000_0000, fd: ram!.fd };
      // Warm up (first mapping, first ring fds), then measure.
      await fe.setMemTable([region]);
      const call0 = native.eventfdCreate();
      await fe.setVringCall(0, call0);
      native.close(call0);
      const fds0 = fdCount();
      const maps0 = mapCount();
      const messages0 = bed.server.metrics.messages;
      for (let i = 0; i < 10_000; i++) {
        fe.sendRequest(REQ.SET_MEM_TABLE, encodeMemTable([region]), { fds: [region.fd] });
        const call = native.eventfdCreate();
        fe.sendRequest(REQ.SET_VRING_CALL, encodeVringFile(i & 1, false), { fds: [call] });
        native.close(call);
        if (i % 100 === 99) await fe.barrier(); // keeps the socket buffer from filling up
      }
      await fe.barrier();
      expect(fe.isClosed).toBe(false);
      expect(bed.server.metrics.messages - messages0).toBeGreaterThanOrEqual(20_000);
      const fds1 = fdCount();
      const maps1 = mapCount();
      expect(fds1 - fds0).toBeLessThanOrEqual(1); // the second ring's call fd
      expect(bed.server.connection!.fdCount()).toBe(3); // 1 region + 2 call fds
      // Each SET_MEM_TABLE maps the memfd anew and releases the old mapping at once (its pages become
      // zero pages; the address range itself goes when V8 collects the old ArrayBuffer): the memfd is
      // mapped exactly once, and the map count only moves with the JS heap.
      expect(memfdMappings()).toBe(1);
      expect(maps1 - maps0).toBeLessThan(500);
    } finally {
      fe.close();
    }
    expect(await until(() => bed.server.connection === null)).toBe(true);
  }, 120_000);

  it('after all that, a well-behaved guest gets traffic', async () => {
    const g = await bed.guest();
    try {
      const sent = g.drv.send(new Uint8Array(60).fill(0xab));
      expect(sent).toBe(true);
      expect(await g.drv.drainTx(0, 5000)).toBe(0);
      expect(bed.dev.metrics().queues.filter((q) => q.running).length).toBe(2);
    } finally {
      g.close();
    }
  });
});
