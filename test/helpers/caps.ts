/** Running `lgnet serve` as a manager would: uid 0 with no capability, and reading what a process has. */
import { readFileSync } from 'node:fs';

/** A command prefix: uid 0 with every capability gone from the bounding set, so exec gives it none. */
export const NO_CAPS: readonly string[] = ['setpriv', '--bounding-set', '-all', '--inh-caps', '-all'];

/** A process's effective capabilities (CapEff of /proc/PID/status). */
export function capEff(pid: number): bigint {
  return BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]}`);
}
