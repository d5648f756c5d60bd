/**
 * The runner's vhost-user command line is well formed: QEMU accepts it and starts the vhost-user
 * handshake (its first message is GET_FEATURES) on the socket, in both socket modes. No backend
 * answers, so QEMU waits; the test reads the first message header and kills QEMU. Bounded: ~10 s.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, ensureGuestImage, qemuArgs, type GuestHandle } from '../../scripts/qemu.ts';

const VHOST_USER_GET_FEATURES = 1;

/** Resolves with the first vhost-user header (request, flags, size) read from the socket. */
function firstHeader(sock: Socket): Promise<{ request: number; flags: number; size: number }> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 12) resolve({ request: buf.readUInt32LE(0), flags: buf.readUInt32LE(4), size: buf.readUInt32LE(8) });
    });
    sock.on('error', reject);
  });
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error(`${what}: no answer in ${ms} ms`)), ms))]);
}

describe('QEMU runner: vhost-user netdev', () => {
  let guest: GuestHandle | undefined;
  let server: Server | undefined;
  let dir: string | undefined;
  const sockets: Socket[] = [];

  afterEach(async () => {
    await guest?.kill();
    guest = undefined;
    for (const s of sockets.splice(0)) s.destroy();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('builds the expected arguments (memfd shared memory, vectors=0 under TCG, mq)', () => {
    const args = qemuArgs(
      { netdev: { type: 'vhost-user', socket: '/run/lgnet.sock', reconnect: 1, queues: 2 }, deviceFlags: { mrg_rxbuf: 'off' }, mtu: 9000 },
      'tcg',
      { kernel: '/k', initrd: '/i' },
    );
    const after = (flag: string) => args.filter((_, i) => args[i - 1] === flag);
    expect(after('-object')).toContain('memory-backend-memfd,id=mem,size=256M,share=on');
    expect(after('-numa')).toContain('node,memdev=mem');
    expect(after('-chardev')).toEqual(['socket,id=chr0,path=/run/lgnet.sock,reconnect=1']);
    expect(after('-netdev')).toEqual(['vhost-user,id=n0,chardev=chr0,queues=2']);
    expect(after('-device')).toEqual(['virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0,mq=on,host_mtu=9000,mrg_rxbuf=off']);
    const kvm = qemuArgs({ netdev: { type: 'tap', ifname: 'lgtap0', queues: 2 } }, 'kvm', { kernel: '/k', initrd: '/i' });
    expect(kvm.join(' ')).toContain('-accel kvm -cpu host');
    expect(kvm.join(' ')).toContain('tap,id=n0,ifname=lgtap0,script=no,downscript=no,vhost=off,queues=2');
    expect(kvm.join(' ')).toContain('vectors=6,mq=on');
  });

  it('client mode with reconnect: QEMU keeps retrying, then sends GET_FEATURES to a late server', async () => {
    ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'lgnet-vu-'));
    const path = join(dir, 'vu.sock');
    guest = bootGuest({ netdev: { type: 'vhost-user', socket: path, reconnect: 1 }, timeoutMs: 20_000 });
    await new Promise((r) => setTimeout(r, 1500)); // nobody serves the socket yet
    expect(guest.pid).toBeGreaterThan(0);
    const conn = new Promise<Socket>((resolve) => {
      server = createServer((s) => {
        sockets.push(s);
        resolve(s);
      });
      server.listen(path);
    });
    const hdr = await withTimeout(conn.then(firstHeader), 10_000, 'QEMU did not reconnect');
    expect(hdr.request).toBe(VHOST_USER_GET_FEATURES);
    expect(hdr.flags & 0x3).toBe(1); // version 1
    expect(hdr.size).toBe(0);
  }, 20_000);

  it('server mode: QEMU listens and sends GET_FEATURES to the backend that connects', async () => {
    ensureGuestImage();
    dir = mkdtempSync(join(tmpdir(), 'lgnet-vu-'));
    const path = join(dir, 'vu.sock');
    guest = bootGuest({ netdev: { type: 'vhost-user', socket: path, server: true }, timeoutMs: 20_000 });
    const hdr = await withTimeout(
      (async () => {
        for (;;) {
          try {
            const s = await new Promise<Socket>((resolve, reject) => {
              const c = createConnection(path, () => resolve(c));
              c.once('error', reject);
            });
            sockets.push(s);
            return await firstHeader(s);
          } catch {
            await new Promise((r) => setTimeout(r, 100)); // not listening yet
          }
        }
      })(),
      10_000,
      'QEMU did not listen',
    );
    expect(hdr.request).toBe(VHOST_USER_GET_FEATURES);
  }, 20_000);
});
