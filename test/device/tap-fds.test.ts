/**
 * Tap fds handed over (TapOptions.fds, `lgnet serve --tap-fd`): a manager that made the tap passes its
 * fds, as libvirt passes QEMU `-netdev tap,fds=`, and the backend serves them as its own. Frames flow
 * both ways on every pair; what the backend refuses (not a tap, no vnet header, two interfaces, counts
 * that do not match) it refuses with NET_BAD_TAP_FD and leaves the fds open; what it takes it owns and
 * closes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { openSync, readFileSync } from 'node:fs';

/** Open-file flags as /proc/PID/fdinfo prints them (octal; Linux x86-64 and aarch64). */
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
import { NET_ERROR, NetConfigError } from '../../device/errors.ts';
import { TapBackend } from '../../device/tap-backend.ts';
import { createNetns, netnsPrerequisites, openTapIn, type Netns } from '../../harness/netns.ts';
import { ip4, udpFrame } from '../../harness/frames.ts';
import * as native from '../../native/index.ts';
import { nativeErrorOf, thrownBy } from '../helpers/errors.ts';
import { FLOWS, sprayFlows } from '../helpers/flows.ts';
import { createBed, expectedPayload, udpSink } from './helpers.ts';

const pre = netnsPrerequisites();
if (!pre.ok) console.warn(`tap fd tests skipped: ${pre.why}`);

/** Whether fd is open in this process. */
const isOpen = (fd: number): boolean => {
  try {
    native.setCloexec(fd, true);
    return true;
  } catch {
    return false;
  }
};

describe.runIf(pre.ok)('tap fds handed to the backend', () => {
  let ns: Netns | undefined;
  afterEach(() => {
    ns?.destroy();
    ns = undefined;
  });

  it('two queues of a multi-queue tap made elsewhere: frames both ways on both pairs; the backend owns the fds', async () => {
    const bed = await createBed({ tapFds: true, queuePairs: 2, accept: ['VERSION_1', 'MRG_RXBUF', 'RING_EVENT_IDX', 'MAC', 'MQ'] });
    expect(bed.backend.name).toBe('lgtap0');
    expect(bed.backend.queuePairs).toBe(2);
    const fds = [...bed.backend.fds];
    for (const fd of fds) {
      expect(native.tapInfo(fd).name).toBe('lgtap0');
      // Opened blocking and inheritable here; the backend made them nonblocking and close-on-exec (a
      // child of lgnet's must not inherit the tap).
      const flags = Number.parseInt(/^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
      expect(flags & O_NONBLOCK, `fd ${fd} nonblocking`).toBe(O_NONBLOCK);
      expect(flags & O_CLOEXEC, `fd ${fd} close-on-exec`).toBe(O_CLOEXEC);
    }
    // Host → guest: 64 flows, spread by the tap over both queues, all delivered.
    const got = await sprayFlows(bed.ns, bed.guestIp, bed.drv, 2);
    expect(got[0]! + got[1]!).toBe(FLOWS);
    expect(got[0], `${got}`).toBeGreaterThan(0);
    expect(got[1], `${got}`).toBeGreaterThan(0);
    // Guest → host on each pair.
    const sink = await udpSink(bed, 7401, 2);
    for (const pair of [0, 1]) {
      bed.drv.send(udpFrame({ srcMac: bed.guestMac, dstMac: bed.tapMac, srcIp: ip4(bed.guestIp), dstIp: ip4(bed.hostIp), srcPort: 5000 + pair, dstPort: 7401, payload: expectedPayload(100, pair) }), { pair, kick: true });
    }
    expect((await sink.datagrams()).length).toBe(2);
    expect(bed.dev.metrics().queues.filter((q) => q.index % 2 === 1).map((q) => q.frames)).toEqual([1, 1]);
    await bed.dev.close();
    for (const fd of fds) expect(isOpen(fd), `fd ${fd} closed with the backend`).toBe(false);
  });

  it('refuses what is not one vnet-header tap, with NET_BAD_TAP_FD, and leaves the fds open', () => {
    ns = createNetns('lgtfd');
    const n = ns;
    const good = openTapIn(n, { name: 'lgtfd0', vnetHdr: true, address: false });
    const noHdr = openTapIn(n, { name: 'lgtfd1', vnetHdr: false, address: false });
    const other = openTapIn(n, { name: 'lgtfd2', vnetHdr: true, address: false });
    const efd = n.track(native.eventfdCreate({ nonblocking: true }));
    const bare = n.track(openBareTun());
    const cases: Array<[string, () => unknown, RegExp]> = [
      ['an eventfd', () => new TapBackend({ fds: [efd] }), /not a tun fd \((ENOTTY|EINVAL)\)/],
      ['a tun fd attached to nothing', () => new TapBackend({ fds: [bare] }), /attached to no interface/],
      ['no vnet header', () => new TapBackend({ fds: [noHdr.fd] }), /lacks IFF_VNET_HDR/],
      ['two interfaces', () => new TapBackend({ fds: [good.fd, other.fd] }), /all fds must be queues of one tap/],
      ['pairs and fds differ', () => new TapBackend({ fds: [good.fd], queuePairs: 2 }), /1 fds for 2 queue pairs/],
      ['a name that is not theirs', () => new TapBackend({ fds: [good.fd], name: 'lgtfd9' }), /queues of lgtfd0, not of lgtfd9/],
      ['the same fd twice', () => new TapBackend({ fds: [good.fd, good.fd] }), /given twice/],
      ['none', () => new TapBackend({ fds: [] }), /none given/],
    ];
    for (const [what, fn, message] of cases) {
      const e = thrownBy(fn, NetConfigError);
      expect(e.code, what).toBe(NET_ERROR.BAD_TAP_FD);
      expect(e.message, what).toMatch(message);
    }
    for (const fd of [good.fd, noHdr.fd, other.fd, efd, bare]) expect(isOpen(fd), `fd ${fd}`).toBe(true);
    // The good one, alone, is taken.
    const b = new TapBackend({ fds: [good.fd], io: 'syscall' });
    n.untrack(good.fd);
    expect([b.name, b.queuePairs, b.io]).toEqual(['lgtfd0', 1, 'syscall']);
    b.close();
    expect(isOpen(good.fd)).toBe(false);
    expect(nativeErrorOf(() => native.tapInfo(good.fd)).code).toBe('EBADF');
  });

  it('a detached queue handed over is attached again', () => {
    ns = createNetns('lgtfd');
    const n = ns;
    const q0 = openTapIn(n, { name: 'lgtfdq', vnetHdr: true, multiQueue: true, address: false });
    const q1 = n.track(native.withNetns(n.path, () => native.tapOpen({ name: 'lgtfdq', vnetHdr: true, multiQueue: true }).fd));
    native.tapSetQueue(q1, false);
    expect(native.tapInfo(q1).flags & native.IFF.DETACH_QUEUE).toBe(native.IFF.DETACH_QUEUE);
    const b = new TapBackend({ fds: [q0.fd, q1], io: 'syscall' });
    n.untrack(q0.fd);
    n.untrack(q1);
    try {
      expect(native.tapInfo(q1).flags & native.IFF.DETACH_QUEUE).toBe(0);
    } finally {
      b.close();
    }
  });
});

/** /dev/net/tun opened and never attached (TUNSETIFF), as a careless manager might pass it. */
function openBareTun(): number {
  return openSync('/dev/net/tun', 'r+');
}
