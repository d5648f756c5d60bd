/**
 * io_uring inside the jail, on a real kernel (child process: fixtures/uring-jail.ts). The jail allows
 * io_uring_enter on lgnet's own rings only, and each ring was restricted before the jail to
 * READV/WRITEV on its registered tap. So a jailed worker with a ring moves frames on its tap and
 * nothing else: open, connect, a read of another fd through the ring all fail, as do a new ring, a
 * register op, entering a ring the jail was not told about, and closing a ring's fd (whose number
 * another ring could then take).
 */
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createNetns, destroyAllNetns, netnsPrerequisites, type Netns } from '../../harness/netns.ts';
import { fixture } from './child.ts';

const supported = process.arch === 'x64' && process.getuid?.() === 0 && netnsPrerequisites().ok;
const EACCES = 13;
const EBADF = 9;

describe.runIf(supported)('io_uring in the jail', () => {
  let ns: Netns;
  let out: Record<string, any>;
  beforeAll(() => {
    ns = createNetns('lgujail');
    const r = spawnSync(process.execPath, ['--import', 'tsx', fixture('uring-jail.ts'), ns.path, ns.name], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, any>;
  }, 70_000);
  afterAll(() => destroyAllNetns());

  it('the process is jailed, and the device serves through its rings', () => {
    expect(out['jail']).toEqual({ sandboxed: true, uid: 65534 });
    expect(out['probeJail']).toMatchObject({ ok: true, role: 'worker' });
    expect(out['io']).toBe('uring');
    expect(out['ioUring']).toEqual([1, 1]);
  });

  it('frames go both ways through io_uring inside the jail, every one counted', () => {
    const t = out['traffic'];
    expect(t.broken).toEqual([null, null]);
    expect(t.tx).toBe(64);
    expect(t.txFrames).toBe(64);
    expect(t.rx).toBe(64);
    expect(t.txDropBackend + t.rxDropBackend).toBe(0);
  });

  it('a jailed worker reads its tap through its ring', () => {
    expect(out['probe'].tapReadv.res).toBeGreaterThan(12 + 14);
  });

  it('open, connect and reads of other fds through the ring fail', () => {
    const p = out['probe'];
    expect(p.openat).toEqual({ res: -EACCES });
    expect(p.connect).toEqual({ res: -EACCES });
    expect(p.readvWire).toEqual({ res: -EACCES });
    expect(p.readvFile).toEqual({ res: -EACCES });
    expect(p.readvSlot1).toEqual({ res: -EBADF });
  });

  it('no new ring, no register op, and no entering a ring the jail was not told about', () => {
    const p = out['probe'];
    expect(p.register).toEqual({ code: 'EPERM', syscall: 'io_uring_register' });
    expect(p.setup).toEqual({ code: 'EPERM', syscall: 'io_uring_setup' });
    expect(p.rogueEnter).toEqual({ code: 'EPERM', syscall: 'io_uring_enter' });
    expect(out['mainRogue']).toEqual({ code: 'EPERM', syscall: 'io_uring_enter' });
    expect(out['mainSetup']).toEqual({ code: 'EPERM', syscall: 'io_uring_setup' });
  });

  it("a ring's fd cannot be closed (so its number cannot be handed to another ring); other fds can", () => {
    expect(out['closeRing']).toEqual({ code: 'EPERM', syscall: 'close' });
    expect(out['closeSpare']).toEqual({ res: null });
  });
});
