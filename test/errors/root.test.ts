/**
 * One error root: every error class lgnet throws on purpose extends LgnetError, carries a stable code
 * from its layer's table (prefixed by layer), and errno/syscall where a system call failed.
 * `instanceof LgnetError` also holds for an error made by a second copy of the module.
 */
import { describe, expect, it } from 'vitest';

import { LgnetError, isLgnetError } from '../../errors/index.ts';
import * as native from '../../native/index.ts';
import { NativeError } from '../../native/index.ts';
import { GuestMemory, VringError, VringErrorCode } from '../../vring/index.ts';
import { NET_ERROR, NetConfigError, NetError } from '../../device/errors.ts';
import { parseMac } from '../../device/config.ts';
import { JAIL_ERROR, JailError } from '../../sandbox/jail.ts';
import { BPF_ERROR, BpfAssemblyError, assemble } from '../../sandbox/seccomp-bpf.ts';
import { VU, VhostUserError } from '../../sandbox/vhost-user/errors.ts';
import { FRONTEND_ERROR, FrontendError } from '../../harness/vhost-user-frontend.ts';

function caught(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

describe('the error root', () => {
  it('a failed system call is a NativeError: an LgnetError with errno, syscall and Node\'s code', () => {
    const e = caught(() => native.close(0x7fff_fff0));
    expect(e).toBeInstanceOf(NativeError);
    expect(e).toBeInstanceOf(LgnetError);
    expect(e).toMatchObject({ name: 'NativeError', code: 'EBADF', errno: 9, syscall: 'close' });
  });

  it('a broken ring rule is a VringError with a VRING_ code', () => {
    const mem = new GuestMemory([{ gpa: 0, size: 4096, buffer: new ArrayBuffer(4096) }]);
    const e = caught(() => mem.read(8192, new Uint8Array(16)));
    expect(e).toBeInstanceOf(VringError);
    expect(isLgnetError(e, VringErrorCode.UNMAPPED)).toBe(true);
    expect((e as LgnetError).errno).toBeUndefined();
  });

  it('a device configuration error is a NetError with a NET_ code', () => {
    const e = caught(() => parseMac('01:00:5e:00:00:01'));
    expect(e).toBeInstanceOf(NetConfigError);
    expect(e).toBeInstanceOf(NetError);
    expect(e).toBeInstanceOf(LgnetError);
    expect((e as NetError).code).toBe(NET_ERROR.BAD_MAC);
  });

  it('the sandbox and harness classes extend it, and every table keeps its layer\'s prefix', () => {
    const samples: Array<[LgnetError, string]> = [
      [new JailError(JAIL_ERROR.USER, 'ids', 'x', new NativeError(1, 'setresuid', 'y')), 'LGNET_JAIL_'],
      [new BpfAssemblyError('x'), 'LGNET_BPF_'],
      [new VhostUserError(VU.BAD_VERSION, 'x'), 'VU_'],
      [new FrontendError(FRONTEND_ERROR.NACK, 'x'), 'FRONTEND_'],
    ];
    for (const [e, prefix] of samples) {
      expect(e).toBeInstanceOf(LgnetError);
      expect(e.code.startsWith(prefix), e.code).toBe(true);
      expect(e.name).toBe(e.constructor.name);
    }
    expect(samples[0]![0]).toMatchObject({ errno: 1, syscall: 'setresuid' });
    const tables: Array<[Record<string, string>, string]> = [
      [VringErrorCode, 'VRING_'], [NET_ERROR, 'NET_'], [JAIL_ERROR, 'LGNET_JAIL_'], [BPF_ERROR, 'LGNET_BPF_'], [FRONTEND_ERROR, 'FRONTEND_'],
    ];
    for (const [table, prefix] of tables) for (const code of Object.values(table)) expect(code.startsWith(prefix), code).toBe(true);
    expect(() => assemble([{ op: 'ja', target: 'nowhere' }])).toThrow(BpfAssemblyError);
  });

  it('instanceof LgnetError holds for an error from a second copy of the module (branded, not by identity)', async () => {
    // A query makes the module loader evaluate the file again: a second class, as two installed copies would be.
    const second: string = '../../errors/index.ts?second-copy';
    const other = (await import(second)) as typeof import('../../errors/index.ts');
    expect(other.LgnetError).not.toBe(LgnetError);
    const e = new other.LgnetError('X_TEST', 'from another copy');
    expect(e).toBeInstanceOf(LgnetError);
    expect(new Error('plain')).not.toBeInstanceOf(LgnetError);
    expect(null).not.toBeInstanceOf(LgnetError);
    // A subclass still tests its own prototype chain.
    expect(new LgnetError('X', 'y')).not.toBeInstanceOf(VringError);
  });
});
