/**
 * docs/OPERATIONS.md's Prometheus section as an operator copies it: the scrape config and the rules
 * pass promtool (Debian's prometheus package, scripts/install-deps.sh), and every lgnet metric the
 * rules name is one the exporter serves.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ProcessSampler } from '../../sandbox/metrics-process.ts';
import { TapCounters } from '../../sandbox/metrics-tap.ts';
import { PrometheusExporter, type ServerSource } from '../../sandbox/prometheus.ts';
import { REPO_ROOT } from '../../scripts/qemu.ts';

const doc = readFileSync(join(REPO_ROOT, 'docs/OPERATIONS.md'), 'utf8');
const section = doc.slice(doc.indexOf('\n## Prometheus\n'), doc.indexOf('\n## Every metric\n'));
const [config, rules] = [...section.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);

function promtool(kind: 'config' | 'rules', text: string): { status: number | null; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'lgnet-promtool-'));
  try {
    const file = join(dir, `${kind}.yml`);
    writeFileSync(file, text);
    const r = spawnSync('promtool', ['check', kind, file], { encoding: 'utf8', timeout: 20_000 });
    if (r.error) throw new Error(`promtool is missing (${r.error.message}): run scripts/install-deps.sh, which installs Debian's prometheus package`);
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("docs/OPERATIONS.md's Prometheus section", () => {
  it('has a scrape config and rules that promtool accepts', () => {
    expect(config).toContain('scrape_configs:');
    expect(rules).toContain('groups:');
    const c = promtool('config', config!);
    expect(c.status, c.output).toBe(0);
    const r = promtool('rules', rules!);
    expect(r.status, r.output).toBe(0);
  });

  it('names in its rules only metrics lgnet serves', () => {
    const server: ServerSource = { metrics: { connections: 0, reconnects: 0, requests: {}, refusals: {}, rarp: 0 } as unknown as ServerSource['metrics'], connection: null };
    const proc = new ProcessSampler();
    const tap = new TapCounters('lo');
    try {
      const exporter = new PrometheusExporter({ device: () => { throw new Error('not scraped'); }, server, process: proc, tap, version: 'test' });
      const served = new Set(exporter.registry.getMetricsAsArray().map((m) => m.name));
      const named = [...new Set([...rules!.matchAll(/\b(lgnet_[a-z0-9_]+)/g)].map((m) => m[1]!))];
      expect(named.length).toBeGreaterThanOrEqual(5);
      expect(named.filter((n) => !served.has(n))).toEqual([]);
    } finally {
      proc.close();
      tap.close();
    }
  });
});
