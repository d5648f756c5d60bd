/**
 * One libFuzzer run of one target, in this process: `tsx fuzz/fuzz-one.ts TARGET [libFuzzer args…]`.
 * fuzz/run.ts starts it and reads what libFuzzer prints. Code under vring/, device/, sandbox/ and
 * errors/ is instrumented for coverage as it loads (fuzz/instrument-hook.ts).
 *
 * A finding (run threw) prints the error and aborts: libFuzzer's SIGABRT handler writes the input as a
 * crash-… artifact and the process exits non-zero.
 */
import { createRequire, register } from 'node:module';
import { pathToFileURL } from 'node:url';
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';

import type { FuzzTarget } from './target.ts';

const root = new URL('../', import.meta.url);
const [name, ...libFuzzerArgs] = process.argv.slice(2);
if (!name) throw new Error('usage: fuzz-one.ts TARGET [libFuzzer args…]');

const { port1, port2 } = new MessageChannel();
const include = ['vring/', 'device/', 'sandbox/', 'errors/'].map((d) => new URL(d, root).href);
register('./instrument-hook.ts', import.meta.url, { data: { port: port2, include }, transferList: [port2] });

interface Jazzer {
  coverageTracker: { enlargeCountersBufferIfNeeded(nextEdgeId: number): void };
  startFuzzing(fn: (data: Buffer) => unknown, args: string[], stop: (signal: number) => void): Promise<void>;
  startFuzzingAsync(fn: (data: Buffer) => Promise<unknown>, args: string[]): Promise<void>;
}
const { fuzzer } = createRequire(import.meta.url)('@jazzer.js/fuzzer') as { fuzzer: Jazzer };
// The instrumented code calls Fuzzer.coverageTracker.incrementCounter and Fuzzer.tracer.* by name.
(globalThis as { Fuzzer?: unknown }).Fuzzer = fuzzer;

const target = ((await import(pathToFileURL(new URL(`targets/${name}.ts`, import.meta.url).pathname).href)) as { default: FuzzTarget }).default;
let edges = 0;
for (let m = receiveMessageOnPort(port1); m; m = receiveMessageOnPort(port1)) edges = Math.max(edges, (m.message as { edges: number }).edges);
port1.close();
if (edges === 0) throw new Error(`no code was instrumented for ${name}: does it import from vring/, device/ or sandbox/?`);
fuzzer.coverageTracker.enlargeCountersBufferIfNeeded(edges);
console.error(`INFO: lgnet fuzz target ${name}: ${edges} instrumented edges`);

function finding(e: unknown): never {
  console.error(`==lgnet-fuzz== FINDING in ${name}:`, e);
  process.abort();
}

const args = [`fuzz-${name}`, `-max_len=${target.maxLen}`, ...libFuzzerArgs];
if (target.async) {
  await fuzzer.startFuzzingAsync(async (data) => {
    try {
      await target.run(data);
    } catch (e) {
      finding(e);
    }
  }, args);
} else {
  await fuzzer.startFuzzing((data) => {
    try {
      target.run(data);
    } catch (e) {
      finding(e);
    }
  }, args, (signal) => process.exit(signal));
}
