/**
 * Reference figures for the guest on QEMU's own userspace virtio-net (tap, vhost=off; vectors=0 under
 * TCG): boot time, ping RTT, TCP guest→host and host→guest, UDP 64-byte packets/s guest→host.
 * Everything inside a throwaway namespace (host side 10.0.2.1, guest 10.0.2.2).
 *
 *   npx tsx scripts/bench/qemu-baseline.ts [--runs 3] [--time 10] [--json out.json]
 */
import { writeFileSync } from 'node:fs';
import { bootGuest, ensureGuestImage, iperfSummary } from '../qemu.ts';
import { createTapNamespace } from '../netns.ts';

const argv = process.argv.slice(2);
const opt = (name: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? argv[i + 1]! : def;
};
const runs = Number(opt('runs', '3'));
const secs = Number(opt('time', '10'));
const jsonOut = opt('json', '');

const median = (xs: number[]) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main() {
  ensureGuestImage();
  const rows: Record<string, number>[] = [];
  for (let run = 1; run <= runs; run++) {
    const net = createTapNamespace();
    let g: ReturnType<typeof bootGuest> | undefined;
    try {
      await net.startIperf3Server({ port: 5201 });
      const udpCmd = `iperf3 -c 10.0.2.1 -p 5201 -u -b 0 -l 64 -t ${Math.min(secs, 5)} -J`;
      g = bootGuest({
        netns: net.ns,
        netdev: { type: 'tap', ifname: net.tap },
        guest: { ip: '10.0.2.2/24', peer: '10.0.2.1', jobs: ['ping', 'iperf3-client-tx', 'iperf3-client-rx', 'cmd'], pingCount: 20, iperfTime: secs, cmd: udpCmd },
        timeoutMs: 60_000 + 4 * secs * 1000,
      });
      const o = await g.done;
      if (!o.ok) throw new Error(`run ${run} failed: ${o.errors.join('; ')}\n${o.serial.slice(-3000)}\n${o.stderr}`);
      const r = (job: string) => o.results.find((x) => x.job === job);
      let udpPps = NaN;
      try {
        const u = iperfSummary(JSON.parse(String(r('cmd')?.output)));
        if (u?.packets !== undefined) udpPps = u.packets / u.seconds;
      } catch {
        /* leave NaN */
      }
      const row = {
        bootMs: o.bootMs ?? NaN,
        readyMs: o.readyMs ?? NaN,
        pingAvgMs: Number(r('ping')?.rtt_avg_ms),
        tcpTxGbps: (r('iperf3-client-tx')?.iperf?.bitsPerSecond ?? NaN) / 1e9,
        tcpRxGbps: (r('iperf3-client-rx')?.iperf?.bitsPerSecond ?? NaN) / 1e9,
        udp64TxKpps: udpPps / 1e3,
      };
      rows.push(row);
      console.log(`[qemu-baseline] run ${run}/${runs} accel=${g.accel}: ${JSON.stringify(row)}`);
    } finally {
      await g?.kill();
      await net.destroy();
    }
  }
  const keys = Object.keys(rows[0] ?? {});
  const med = Object.fromEntries(keys.map((k) => [k, Number(median(rows.map((r) => r[k]!)).toFixed(3))]));
  console.log(`[qemu-baseline] median of ${rows.length}: ${JSON.stringify(med)}`);
  if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ runs: rows, median: med, secs }, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
