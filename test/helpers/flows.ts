/**
 * Many flows from the host at once: one UDP datagram from each of FLOWS fresh sockets (distinct source
 * ports, so distinct flow hashes), and which queue pair of a harness driver each arrived on. A
 * multi-queue tap spreads them by hash: all on one queue of two by chance is 2^-63.
 */
import { spawnSync } from 'node:child_process';
import { expect } from 'vitest';
import type { Netns } from '../../harness/netns.ts';
import type { VirtioNetDriver } from '../../harness/virtio-net.ts';

export const FLOWS = 64;
const PORT = 7777;

/** `perFlow` datagrams of payload [tag, flow] from each of `flows` sockets; exits 2 if sending has not ended in 10 s. */
const SPRAY = `
const dgram = require('node:dgram');
const [dst, flows, perFlow, tag, port] = process.argv.slice(1).map((a, i) => (i === 0 ? a : Number(a)));
let open = flows;
for (let f = 0; f < flows; f++) {
  const s = dgram.createSocket('udp4');
  let left = perFlow;
  const next = () => (left-- > 0 ? s.send(Buffer.from([tag, f]), port, dst, next) : (s.close(), --open || process.exit(0)));
  s.bind(0, next);
}
setTimeout(() => process.exit(2), 10000);
`;

/** Sends `perFlow` UDP datagrams to dst:port from each of `flows` fresh sockets in `ns` (distinct source ports: distinct flow hashes). */
export function sprayUdp(ns: Netns, dst: string, opts: { flows: number; perFlow?: number; tag?: number; port?: number }): void {
  const argv = [dst, opts.flows, opts.perFlow ?? 1, opts.tag ?? 0, opts.port ?? PORT].map(String);
  const r = spawnSync('ip', ['netns', 'exec', ns.name, process.execPath, '-e', SPRAY, ...argv], { encoding: 'utf8', timeout: 15_000 });
  expect(r.status, r.stderr).toBe(0);
}

let runs = 0;

/** Sprays FLOWS flows from `ns` at `dst` and returns how many distinct flows `drv` received on each of its `pairs`. */
export async function sprayFlows(ns: Netns, dst: string, drv: VirtioNetDriver, pairs: number): Promise<number[]> {
  const tag = (++runs) & 0xff;
  sprayUdp(ns, dst, { flows: FLOWS, tag });
  const seen = Array.from({ length: pairs }, () => new Set<number>());
  const take = (): void => {
    for (let p = 0; p < pairs; p++) {
      for (const f of drv.receive(p)) {
        // IPv4 without options, UDP to PORT: the payload [tag, flow] at byte 42.
        if (f.frame.length >= 44 && f.frame[23] === 17 && ((f.frame[36]! << 8) | f.frame[37]!) === PORT && f.frame[42] === tag) seen[p]!.add(f.frame[43]!);
      }
      drv.fillRx(p);
    }
  };
  const deadline = Date.now() + 3000;
  while (seen.reduce((n, s) => n + s.size, 0) < FLOWS && Date.now() < deadline) {
    take();
    await new Promise((res) => setTimeout(res, 10));
  }
  await new Promise((res) => setTimeout(res, 100)); // a late frame (or one on a second pair) would show now
  take();
  return seen.map((s) => s.size);
}
