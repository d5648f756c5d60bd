/**
 * The loader and the pure-TS pieces of native/: IovecTable's layout and checks, NativeError's shape,
 * and the error a missing addon gives (in a child, so this process keeps its addon).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { IOVEC_WORDS, IovecTable } from '../../native/iovec.ts';
import { NativeError } from '../../native/errors.ts';
import { candidatePaths, nativePath } from '../../native/index.ts';

describe('IovecTable', () => {
  it('lays entries, frameEnd and bytes over one buffer and splits offsets into 32-bit halves', () => {
    const t = new IovecTable(4, 2);
    expect(t.words.length).toBe(4 * IOVEC_WORDS + 2 * 2);
    expect(t.entries.buffer).toBe(t.words.buffer);
    expect(t.frameEnd.buffer).toBe(t.words.buffer);
    expect(t.bytes.buffer).toBe(t.words.buffer);
    t.push(7, 2 ** 32 + 5, 100);
    t.push(7, 0, 0);
    t.endFrame();
    t.push(8, 16, 1);
    t.endFrame();
    expect(Array.from(t.entries.subarray(0, 12))).toEqual([7, 5, 1, 100, 7, 0, 0, 0, 8, 16, 0, 1]);
    expect(Array.from(t.frameEnd)).toEqual([2, 3]);
    expect([t.count, t.frames, t.frameEntries(0), t.frameEntries(1)]).toEqual([3, 2, 2, 1]);
    t.bytes[1] = -1;
    expect(t.words[4 * IOVEC_WORDS + 2 + 1]).toBe(0xffffffff);
    t.reset();
    expect([t.count, t.frames]).toEqual([0, 0]);
  });

  it('refuses what would not fit or make sense', () => {
    expect(() => new IovecTable(0, 1)).toThrow(RangeError);
    expect(() => new IovecTable(2, 3)).toThrow(RangeError);
    const t = new IovecTable(2, 1);
    expect(() => t.endFrame()).toThrow(RangeError); // empty frame
    expect(() => t.push(-1, 0, 1)).toThrow(RangeError);
    expect(() => t.push(1, -1, 1)).toThrow(RangeError);
    expect(() => t.push(1, 2 ** 53, 1)).toThrow(RangeError);
    expect(() => t.push(1, 0, 2 ** 32)).toThrow(RangeError);
    t.push(1, 0, 1);
    t.push(1, 0, 1);
    expect(() => t.push(1, 0, 1)).toThrow(RangeError); // entries full
    t.endFrame();
    t.reset();
    t.push(1, 0, 1);
    t.endFrame();
    expect(() => t.push(1, 0, 1)).toThrow(RangeError); // frames full
  });
});

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
