/**
 * The loader and NativeError: NativeError's shape, and the error a missing addon gives (in a child, so
 * this process keeps its addon). IovecTable, the other pure-TS piece of native/, has iovec.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { NativeError } from '../../native/errors.ts';
import { candidatePaths, nativePath } from '../../native/index.ts';

describe('NativeError', () => {
  it('carries errno, code, syscall and advice', () => {
    const e = new NativeError(9, 'writev', 'fd 42');
    expect(e).toBeInstanceOf(Error);
    expect([e.name, e.errno, e.code, e.syscall]).toEqual(['NativeError', 9, 'EBADF', 'writev']);
    expect(e.message).toMatch(/^writev failed with EBADF: fd 42 \(.+\)$/);
    expect(new NativeError(100000, 'x', 'y').code).toBe('UNKNOWN_ERRNO_100000');
  });
});

describe('loader', () => {
  it('loaded from build/Release (or LGNET_NATIVE)', () => {
    expect(candidatePaths()).toContain(nativePath);
  });

  it('lists every path it tried when nothing loads', () => {
    const index = fileURLToPath(new URL('../../native/index.ts', import.meta.url));
    for (const [env, expected] of [
      ['/nonexistent/lgnet.node', ['/nonexistent/lgnet.node: not found']],
      [index, [`${index}: `]], // exists but is not an addon
    ] as const) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', `await import(${JSON.stringify(index)})`], {
        encoding: 'utf8',
        timeout: 20_000,
        env: { ...process.env, LGNET_NATIVE: env },
      });
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('lgnet: cannot load the native addon. Tried:');
      for (const line of expected) expect(r.stderr).toContain(line);
      expect(r.stderr).toContain('npm install');
    }
  });
});
