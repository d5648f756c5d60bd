/**
 * Live migration of a running guest between two QEMU 7.2 processes on this machine, under load, there
 * and back (issue 12). scripts/migrate.ts does the work; this file judges it:
 *
 *   taps A and B in one bridge (10.0.2.1/24) inside a namespace of its own, as two hosts of one L2
 *   segment; the source QEMU on A, the destination on B with -incoming defer, both memfd share=on and
 *   driven over QMP; while the guest pings the host every 50 ms, runs an iperf3 TCP stream (host→guest)
 *   and downloads a paced 24 MiB blob with a known sha256, the host migrates A → B, then B → A to a
 *   fresh QEMU. For each leg:
 *     - query-migrate says completed (total time and downtime are printed);
 *     - the guest's ping lost at most 5%;
 *     - the iperf3 stream survived (rc 0) and was still running when the migration completed;
 *     - the host pings the guest within 1 s of completion, the guest's MAC was announced (RARP or
 *       gratuitous ARP) through the destination's tap, and the bridge learned it there;
 *     - the blob's download began before the migration and ended after it, and its sha256 is right.
 *   The console moves with the guest: the LGNET-* lines of one boot come from three QEMUs.
 *
 * Two back-ends, the same checks:
 *   1. QEMU's own virtio-net (-netdev tap,vhost=off): the reference, which proves the set-up;
 *   2. lgnet (vhost-user): `lgnet serve` A on tap A and B on tap B; this needs lgnet's dirty log
 *      (LOG_SHMFD, VHOST_F_LOG_ALL), ring hand-over and an announce.
 * Then three shorter runs on lgnet: packed rings (packed=on) there and back, --guest-announce, and a
 * postcopy migration (--postcopy, QEMU's postcopy-ram).
 * Each takes about 40 s under TCG on 2 vCPUs. Why the migration parameters and the guest's RAM size
 * are what they are (QEMU 7.2 under TCG loses dirty pages otherwise): scripts/migrate.ts.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { describeLeg, GUEST_MAC, runMigration, type LegResult, type MigrationRun } from '../../scripts/migrate.ts';
import { backendWarnings } from './lib/expect.ts';

const MiB = 1 << 20;
const BLOB = 24 * MiB;

/** A shorter run's leg: it completed, the blob arrived intact, ping lost ≤ 5 %, the host reached the guest within 1 s. */
function expectDelivered(r: LegResult | undefined, leg: number): LegResult {
  expect(r, `leg ${leg} ran`).toBeDefined();
  expect(r!.status, r!.error).toBe('completed');
  expect(r!.blob?.rc).toBe(0);
  expect(r!.blob?.sha256).toBe(r!.blob?.expectedSha256);
  expect(r!.guestPing?.lossPct).toBeLessThanOrEqual(5);
  expect(r!.hostPing.firstReplyAfterCompleteMs).toBeDefined();
  expect(r!.hostPing.firstReplyAfterCompleteMs!).toBeLessThanOrEqual(1000);
  expect(r!.guestErrors).toEqual([]);
  return r!;
}

function migrationSuite(backend: 'qemu' | 'lgnet', title: string): void {
  describe(title, () => {
    let run: MigrationRun;

    beforeAll(async () => {
      run = await runMigration({
        backend,
        legs: 2,
        seconds: 12,
        blobBytes: BLOB,
        iperfDir: 'rx',
        // the back-end's own account of the hand-over, for when a leg fails
        ...(backend === 'lgnet' ? { lgnetArgs: ['--log-level', 'debug'] } : {}),
      });
      console.info(`[migration ${backend}] ${(run.wallMs / 1000).toFixed(1)} s\n${run.legs.map((l) => `  ${describeLeg(l)}`).join('\n')}`);
      const failed = run.error || run.legs.some((l) => l.status !== 'completed' || l.error);
      if (failed) {
        console.error(
          `[migration ${backend}] ${run.error ?? ''}\n` +
            run.legs.map((l) => `leg ${l.leg}: ${l.error ?? ''}`).join('\n') +
            `\n--- QEMU stderr ---\n${run.qemus.map((q) => `${q.name} (${q.side}, exit ${q.exitCode}${q.signal ? ` ${q.signal}` : ''}): ${q.stderr.trim()}`).join('\n')}` +
            `\n--- serial (last 60 lines) ---\n${run.serial.slice(-60).map((l) => `${l.qemu} ${l.line}`).join('\n')}` +
            (backend === 'lgnet' ? `\n--- lgnet A ---\n${run.lgnetLogs.A.slice(-8000)}\n--- lgnet B ---\n${run.lgnetLogs.B.slice(-8000)}` : ''),
        );
      }
    }, 300_000);

    it('boots, and nothing outside a migration broke the run', () => {
      expect(run.booted).toBe(true);
      expect(run.error).toBeUndefined();
    });

    for (const [leg, from, to] of [[1, 'A', 'B'], [2, 'B', 'A']] as const) {
      describe(`leg ${leg}: ${from} → ${to}`, () => {
        const L = (): LegResult => {
          const r = run.legs[leg - 1];
          if (!r) throw new Error(`leg ${leg} did not run (an earlier one failed)`);
          return r;
        };

        it('the migration completes (query-migrate: completed) and the destination runs the guest', () => {
          const r = L();
          expect([r.from, r.to]).toEqual([from, to]);
          expect(r.status, r.error).toBe('completed');
          expect(r.error, r.error).toBeUndefined();
          expect(r.totalTimeMs).toBeGreaterThan(0);
          expect(r.downtimeMs).toBeGreaterThanOrEqual(0);
          expect(r.stopToResumeMs).toBeDefined();
        });

        it("the guest's ping every 50 ms lost at most 5%", () => {
          const p = L().guestPing;
          expect(p, 'load-ping result').toBeDefined();
          expect(p!.transmitted).toBeGreaterThan(100); // 12 s at 50 ms, less what the guest did not run
          expect(p!.lossPct).toBeLessThanOrEqual(5);
        });

        it('the iperf3 TCP stream survives the migration (rc 0, still running at completion)', () => {
          const r = L();
          expect(r.iperf?.rc, r.iperf?.output).toBe(0);
          expect(r.iperf!.summary?.bytes).toBeGreaterThan(0);
          expect(r.iperf!.endedAt, 'iperf3 end seen on the console').toBeDefined();
          expect(r.iperf!.endedAt!).toBeGreaterThan(r.completedAt!);
        });

        it('the host pings the guest within 1 s of completion; the announce left through the new tap and the bridge learned it', () => {
          const r = L();
          const tap = to === 'A' ? 'lgma' : 'lgmb';
          expect(r.hostPing.firstReplyAfterCompleteMs, `host ping replies: ${r.hostPing.received}/${r.hostPing.sent}`).toBeDefined();
          expect(r.hostPing.firstReplyAfterCompleteMs!).toBeLessThanOrEqual(1000);
          const announce = r.announce.find((a) => (a.kind === 'rarp' || a.kind === 'garp') && a.at >= r.startedAt!);
          expect(announce, `ARP/RARP from ${GUEST_MAC} into ${tap}: ${JSON.stringify(r.announce.map((a) => a.line))}`).toBeDefined();
          expect(announce!.at - r.completedAt!).toBeLessThanOrEqual(1000);
          expect(r.fdbPorts).toContain(tap);
        });

        it("the guest's RX data is intact: the blob sent during the migration has its sha256 at the destination", () => {
          const r = L();
          const b = r.blob;
          expect(b, 'load-blob result').toBeDefined();
          expect(b!.rc).toBe(0);
          expect(b!.bytes).toBe(BLOB);
          expect(b!.sha256).toBe(b!.expectedSha256);
          // it was on the wire while the migration ran: asked for before, finished after
          expect(b!.getAt!).toBeLessThan(r.startedAt!);
          expect(b!.doneAt!).toBeGreaterThan(r.completedAt!);
        });

        it('the guest reported no error', () => {
          expect(L().guestErrors).toEqual([]);
        });
      });
    }

    it("the guest's console moved with it: one boot's LGNET-* lines come from three QEMUs, and it powers off on the last", () => {
      const lgnetLines = run.serial.filter((l) => l.line.startsWith('LGNET-'));
      const by = (re: RegExp) => lgnetLines.find((l) => re.test(l.line))?.qemu;
      expect(by(/^LGNET-READY /)).toBe('q1');
      expect(by(/^LGNET-ACK \{"cmd":"report","tag":"leg1"/)).toBe('q2');
      expect(by(/^LGNET-ACK \{"cmd":"report","tag":"leg2"/)).toBe('q3');
      expect(by(/^LGNET-DONE /)).toBe('q3');
      expect(lgnetLines.filter((l) => l.line.startsWith('LGNET-BOOT'))).toHaveLength(1);
      expect(run.poweredOff).toBe(true);
    });

    it('every QEMU ended by itself with exit 0 and no warning about its back-end', () => {
      expect(run.qemus.map((q) => q.name)).toEqual(['q1', 'q2', 'q3']);
      for (const q of run.qemus) {
        expect(q.exitCode, `${q.name}: ${q.stderr}`).toBe(0);
        expect(backendWarnings(q.stderr), q.stderr).toEqual([]);
      }
    });

    if (backend === 'lgnet') {
      it('both lgnets served their QEMUs without refusing a message', () => {
        for (const log of [run.lgnetLogs.A, run.lgnetLogs.B]) {
          expect(log).toContain('front-end connected');
          expect(log).not.toContain('message refused');
        }
      });
    }
  });
}

migrationSuite('qemu', "live migration, QEMU's own virtio-net (tap, vhost=off): there and back under load");
migrationSuite('lgnet', 'live migration, lgnet (vhost-user): there and back under load');

// Packed rings keep no position in guest memory: the hand-over rests on GET_VRING_BASE's two halves
// (avail and used, each with its wrap counter), which QEMU carries in the migration stream.
describe('live migration, lgnet on packed rings (packed=on): there and back', () => {
  let run: MigrationRun;
  beforeAll(async () => {
    run = await runMigration({ backend: 'lgnet', legs: 2, seconds: 8, blobBytes: 8 * MiB, iperfDir: 'rx', deviceFlags: { packed: 'on' } });
    console.info(`[migration lgnet packed] ${(run.wallMs / 1000).toFixed(1)} s\n${run.legs.map((l) => `  ${describeLeg(l)}`).join('\n')}`);
  }, 240_000);

  it('the guest took packed rings on every lgnet', () => {
    expect(run.error).toBeUndefined();
    for (const log of [run.lgnetLogs.A, run.lgnetLogs.B]) {
      const negotiated = log.split('\n').filter((l) => l.includes('"features negotiated"')).map((l) => JSON.parse(l) as { features: string[] });
      expect(negotiated.length, log.slice(-2000)).toBeGreaterThan(0);
      for (const n of negotiated) expect(n.features).toContain('RING_PACKED');
    }
  });

  for (const leg of [1, 2]) {
    it(`leg ${leg}: completes, the blob arrives intact, ping lost at most 5%, the host reaches the guest within 1 s`, () => {
      expectDelivered(run.legs[leg - 1], leg);
    });
  }

  it('no lgnet refused a message, broke a queue, or had to correct the base it was handed', () => {
    for (const log of [run.lgnetLogs.A, run.lgnetLogs.B]) {
      expect(log).toContain('front-end connected');
      expect(log).not.toContain('message refused');
      expect(log).not.toContain('queue broken');
      expect(log).not.toContain('queue resumed where its ring shows');
    }
    expect(run.poweredOff).toBe(true);
  });
});

// With --guest-announce lgnet offers GUEST_ANNOUNCE: QEMU then asks the guest to announce itself
// (config interrupt, VIRTIO_NET_S_ANNOUNCE) instead of sending SEND_RARP, and the guest's gratuitous
// ARP has to go out through lgnet's TX queue on the destination.
describe('live migration, lgnet --guest-announce: the guest announces itself through lgnet', () => {
  let run: MigrationRun;
  beforeAll(async () => {
    run = await runMigration({ backend: 'lgnet', legs: 1, seconds: 8, blobBytes: 8 * MiB, iperfDir: 'rx', lgnetArgs: ['--guest-announce'] });
    console.info(`[migration lgnet --guest-announce] ${(run.wallMs / 1000).toFixed(1)} s\n${run.legs.map((l) => `  ${describeLeg(l)}`).join('\n')}`);
  }, 240_000);

  it('completes with the blob intact, and the announce is the guest\'s own gratuitous ARP (no RARP), learned by the bridge', () => {
    expect(run.error).toBeUndefined();
    const r = run.legs[0]!;
    expect(r.status).toBe('completed');
    expect(r.blob?.sha256).toBe(r.blob?.expectedSha256);
    const after = r.announce.filter((a) => a.at >= r.startedAt!);
    expect(after.some((a) => a.kind === 'garp'), JSON.stringify(after.map((a) => a.line))).toBe(true);
    expect(after.some((a) => a.kind === 'rarp'), 'no RARP: QEMU did not ask lgnet for one').toBe(false);
    expect(r.fdbPorts).toContain('lgmb');
    expect(r.hostPing.firstReplyAfterCompleteMs!).toBeLessThanOrEqual(1000);
    expect(run.lgnetLogs.B).not.toContain('message refused');
  });
});

// Postcopy (lgnet --postcopy, QEMU's postcopy-ram): the source switches right after `migrate`, so the
// guest runs on the destination while most of its RAM is still on the source. lgnet's workers then
// touch ring and buffer pages that are not there yet; each such fault reaches QEMU through the
// userfaultfd lgnet gave it at POSTCOPY_ADVISE, and QEMU's trace counts the faults it served. How many
// is a race with the guest's vCPU, which touches most of those pages first: 0 to 4 per leg on a fast
// machine (5 to 17 on a slower one), so the count is reported, not asserted. That lgnet's faults do
// wait for QEMU and are served is asserted where it can be made to happen: test/sandbox/postcopy.test.ts.
// One leg (A → B) keeps CI short; `npm run bench:migration-postcopy` goes there and back, 3 rounds.
describe('live migration, lgnet postcopy (postcopy-ram, --postcopy): A → B under load', () => {
  let run: MigrationRun;
  beforeAll(async () => {
    run = await runMigration({ backend: 'lgnet', legs: 1, seconds: 6, blobBytes: 4 * MiB, iperfDir: 'rx', postcopyAfterMs: 0 });
    console.info(
      `[migration lgnet postcopy] ${(run.wallMs / 1000).toFixed(1)} s\n` +
        run.legs.map((l) => `  ${describeLeg(l)}; states ${l.states?.join('→')}; postcopy ${l.ram?.['postcopy-bytes']} bytes, lgnet faults served ${l.postcopyFaults?.served}`).join('\n'),
    );
  }, 240_000);

  for (const leg of [1]) {
    it(`leg ${leg}: goes through postcopy and completes; the blob arrives intact, ping lost at most 5%, the host reaches the guest within 1 s`, () => {
      expect(run.error).toBeUndefined();
      const r = expectDelivered(run.legs[leg - 1], leg);
      expect(r.states).toContain('postcopy-active');
      expect(r.ram?.['postcopy-bytes']).toBeGreaterThan(0);
      expect(r.postcopyFaults, 'the destination QEMU\'s fault trace was read').toBeDefined();
      expect(r.iperf?.rc, r.iperf?.output).toBe(0);
    });
  }

  it('the destination lgnet was advised, listened and ended postcopy; neither lgnet refused a message', () => {
    const dst = run.lgnetLogs.B;
    expect(dst).toContain('postcopy advised');
    expect(dst).toContain('postcopy listening');
    expect(dst).toContain('postcopy memory table acknowledged');
    expect(dst).toContain('postcopy ended');
    for (const log of [run.lgnetLogs.A, run.lgnetLogs.B]) {
      expect(log).not.toContain('message refused');
      expect(log).not.toContain('queue broken');
    }
    expect(run.poweredOff).toBe(true);
  });
});
