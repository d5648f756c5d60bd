/** ProcFile (sandbox/proc-file.ts): a /proc file re-read in place, whole, whatever its first buffer. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ProcFile } from '../../sandbox/proc-file.ts';

describe('ProcFile', () => {
  it('reads the whole text through a buffer far smaller than it, again and again', () => {
    const f = new ProcFile('/proc/self/net/dev', 16);
    try {
      expect(f.isOpen).toBe(true);
      for (let i = 0; i < 3; i++) {
        const text = f.read()!;
        const lines = (t: string) => t.split('\n').map((l) => l.split(':')[0]);
        expect(text.length).toBeGreaterThan(16);
        expect(lines(text)).toEqual(lines(readFileSync('/proc/self/net/dev', 'latin1')));
      }
    } finally {
      f.close();
    }
    expect(f.read()).toBeUndefined();
  });
  it('answers undefined for a path it could not open', () => {
    const f = new ProcFile('/proc/self/no-such-file');
    expect(f.isOpen).toBe(false);
    expect(f.read()).toBeUndefined();
    f.close();
  });
});
