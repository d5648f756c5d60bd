/**
 * The short soak: `npm run soak` (scripts/soak.ts) for 1 minute with a reconnect every 20 s, as
 * CI can afford. The script checks its own targets and exits 1 on a miss; this test runs it as a user
 * would and reads its JSON. The RSS bound is wider here than the 10-minute run's 5 MB: V8's heap is
 * still sizing itself 20 s in. docs/PERFORMANCE.md has the full run and its chart.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../../scripts/qemu.ts';

describe('npm run soak (short)', () => {
  it('1 min of load, reconnects and control churn: no fd moved, every frame accounted for, every round answered', () => {
    const out = mkdtempSync(join(tmpdir(), 'lgnet-soak-'));
    try {
      const r = spawnSync('npx', ['tsx', 'scripts/soak.ts', '--minutes', '1', '--reconnect-s', '20', '--sample-s', '5', '--warmup-s', '20', '--rss-limit-mb', '32', '--out', out], {
        cwd: REPO_ROOT, encoding: 'utf8', timeout: 300_000,
      });
      console.info(`[soak] ${r.stdout.trim().split('\n').filter((l) => l.startsWith('soak')).join('')}`);
      expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
      const res = JSON.parse(readFileSync(join(out, 'soak.json'), 'utf8'));
      expect(res.failures).toEqual([]);
      expect(res.reconnects).toBeGreaterThanOrEqual(2);
      expect(res.connections).toBeGreaterThanOrEqual(res.reconnects + 1);
      expect(res.rounds.length).toBeGreaterThanOrEqual(3);
      expect(res.accounting.lgnetRxFrames).toBe(res.accounting.guestRxPacketsAndDrops);
      expect(res.accounting.lgnetRxFrames).toBeGreaterThan(1000);
      expect(res.ctrl.sent).toBeGreaterThan(1000);
      expect(res.figures.lgnetFdSpread).toBe(0);
      expect(existsSync(join(out, 'soak.svg'))).toBe(true);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 320_000);
});
