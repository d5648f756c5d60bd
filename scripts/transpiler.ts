/**
 * For processes that run lgnet from its TypeScript sources under tsx (test fixtures, benchmarks) and
 * then enter the jail. tsx keeps esbuild's transform service (`esbuild --service=VERSION --ping`) as
 * a child process once a module missed its cache; enterJail refuses to go on while a child it was not
 * told about runs. The compiled `lgnet serve` that ships has no such child: this is test tooling only.
 */
import { liveChildren } from '../sandbox/jail.ts';

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Ends the transpiler service, if it runs: SIGKILL, then waits up to 2 s until it no longer runs
 * (libuv reaps it; wait4 stays allowed in the jail for that). Call it after the last import, just
 * before enterJail. Returns the pids it ended.
 */
export function endTranspilerService(): number[] {
  const ended: number[] = [];
  const isService = (argv: string[]): boolean =>
    argv.length > 0 && /(^|\/)esbuild[^/]*$/.test(argv[0]!) && argv.some((a) => a.startsWith('--service='));
  for (const c of liveChildren().filter((c) => isService(c.argv))) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch { /* it ended by itself */ }
    for (let waited = 0; waited < 2000; waited += 5) {
      if (!liveChildren().some((l) => l.pid === c.pid)) break;
      Atomics.wait(sleepCell, 0, 0, 5);
    }
    ended.push(c.pid);
  }
  return ended;
}
