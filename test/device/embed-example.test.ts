/**
 * scripts/embed-example.ts, the example docs/EMBEDDING.md walks through, runs as a user would run it
 * and does what it says: 24 frames from guest A reach guest B through a pair of embedded devices,
 * spread out by A's rate limit, and A's capture holds all 24 for tcpdump.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { expect, it } from 'vitest';

import { REPO_ROOT } from '../../scripts/qemu.ts';

it('the embedding example runs: frames A → B, rate-limited, captured', () => {
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-embed-test-'));
  try {
    const pcap = join(dir, 'a.pcap');
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'scripts/embed-example.ts'), pcap], { encoding: 'utf8', timeout: 60_000, cwd: REPO_ROOT });
    expect(r.status, r.stderr).toBe(0);
    const ms = Number(/B received 24 frames from A in (\d+) ms/.exec(r.stdout)?.[1]);
    expect(ms, r.stdout).toBeGreaterThanOrEqual(150); // 8 at once, 16 more at 80 frames/s
    expect(r.stdout).toMatch(/A tx: frames 24, bytes 2400, throttled [1-9]\d* times, captured 24/);
    expect(r.stdout).toMatch(/B rx: frames 24, interrupts [1-9]/);
    const dump = spawnSync('tcpdump', ['-r', pcap, '-nn', '-e'], { encoding: 'utf8' });
    expect(dump.status, dump.stderr).toBe(0);
    const lines = dump.stdout.split('\n').filter((l) => l.includes('52:54:00:00:00:0a > 52:54:00:00:00:0b, ethertype Unknown (0x88b5), length 100'));
    expect(lines.length).toBe(24);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 90_000);
