/**
 * lgnet as its users get it: a real `npm pack` of this tree, installed into fresh projects with its
 * dependencies from the registry, then used from plain `node` (no loader, no TypeScript):
 *
 *   tarball with a prebuild   (npm pack: prepack compiles dist/ and runs prebuildify)
 *     project 1  npm install                 imports, a pair of embedded devices driven by harness
 *                                            guests, npx lgnet --version, npx lgnet serve on a tap,
 *                                            lgnet describe and lgnet-vhost-user --print-capabilities
 *     project 2  npm install --ignore-scripts   the addon loads from prebuilds/: no compiler involved
 *     global     npm install --global            the lgnet on PATH runs; describe names its lgnet-vhost-user
 *   tarball without one        (the same tree, prebuilds/ removed)
 *     project 3  npm install, with lgnet in allowScripts    node-gyp builds the addon at install
 *
 * The tree is copied from the clone's tracked (and untracked, not ignored) files into a private
 * temporary directory, so neither the clone's build/ nor its prebuilds/ leak into the tarballs.
 */
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { netnsPrerequisites } from '../../harness/netns.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const FIXTURES = fileURLToPath(new URL('./fixtures', import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const work = mkdtempSync(join(tmpdir(), 'lgnet-package-'));
// The whole file works in the registry's and the compiler's time: minutes, not seconds.
const SLOW = 600_000;

function run(cmd: string, args: string[], cwd: string, opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: opts.timeoutMs ?? SLOW, env: { ...process.env, ...opts.env } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} (in ${cwd}) exited ${r.status ?? r.signal}:\n${r.stdout}\n${r.stderr}`);
  return r;
}

/** The files of this tree as git knows them (tracked, plus untracked files that are not ignored). */
function treeFiles(): string[] {
  const out = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: REPO, encoding: 'utf8' });
  return out.split('\0').filter((f) => f && existsSync(join(REPO, f)));
}

/** npm pack in dir; returns the tarball's path. */
function pack(dir: string, dest: string, ignoreScripts: boolean): string {
  mkdirSync(dest, { recursive: true });
  const r = run('npm', ['pack', '--json', '--pack-destination', dest, ...(ignoreScripts ? ['--ignore-scripts'] : [])], dir);
  const json = r.stdout.slice(r.stdout.indexOf('['));
  const [{ filename }] = JSON.parse(json) as Array<{ filename: string }>;
  return join(dest, filename);
}

function project(name: string, extra: Record<string, unknown> = {}): string {
  const dir = join(work, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `lgnet-user-${name}`, version: '1.0.0', private: true, type: 'module', ...extra }, null, 2));
  return dir;
}

function tarList(tgz: string): string[] {
  return execFileSync('tar', ['tzf', tgz], { encoding: 'utf8' }).split('\n').filter(Boolean).map((f) => f.replace(/^package\//, ''));
}

let withPrebuild = '';
let withoutPrebuild = '';

beforeAll(() => {
  const tree = join(work, 'tree');
  for (const f of treeFiles()) {
    mkdirSync(dirname(join(tree, f)), { recursive: true });
    cpSync(join(REPO, f), join(tree, f));
  }
  // Dev tools for prepack (tsc, prebuildify), from the clone.
  symlinkSync(join(REPO, 'node_modules'), join(tree, 'node_modules'));
  withPrebuild = pack(tree, join(work, 'out-prebuild'), false);
  rmSync(join(tree, 'prebuilds'), { recursive: true, force: true });
  withoutPrebuild = pack(tree, join(work, 'out-source'), true);
}, SLOW);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('the tarball', () => {
  it('ships the compiled entry points, the prebuild, the addon sources and no test or CI file', () => {
    const files = tarList(withPrebuild);
    for (const f of ['package.json', 'README.md', 'LICENSE', 'bin/lgnet', 'bin/lgnet-vhost-user', 'binding.gyp', 'native/addon.cc',
      'dist/index.js', 'dist/index.d.ts', 'dist/harness/index.js', 'dist/harness/index.d.ts',
      'dist/vring/index.js', 'dist/vring/index.d.ts', 'dist/sandbox/main.js', 'dist/device/worker.js']) {
      expect(files, f).toContain(f);
    }
    expect(files.filter((f) => f.startsWith('prebuilds/linux-') && f.endsWith('.node')).length).toBe(1);
    const offending = files.filter((f) => /(^|\/)test\/|\.test\.|^\.ci\/|^scripts\/|^\.github\/|\.ts$/.test(f) && !f.endsWith('.d.ts'));
    expect(offending).toEqual([]);
    expect(tarList(withoutPrebuild).some((f) => f.startsWith('prebuilds/'))).toBe(false);
  });
});

describe('installed with its prebuild', () => {
  let dir = '';
  beforeAll(() => {
    dir = project('p1');
    run('npm', ['install', '--no-audit', '--no-fund', withPrebuild], dir);
  }, SLOW);

  it('imports lgnet, lgnet/harness and lgnet/vring in plain node; two embedded devices pass frames A → B byte for byte', () => {
    writeFileSync(join(dir, 'pair.mjs'), readFileSync(join(FIXTURES, 'pair.mjs')));
    const r = run(process.execPath, ['pair.mjs'], dir, { timeoutMs: 60_000, env: { NODE_OPTIONS: '' } });
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { sent: string[]; received: string[]; exports: Record<string, string[]>; nativePath: string };
    expect(out.received).toEqual(out.sent);
    expect(out.sent.length).toBe(8);
    expect(out.exports).toEqual({
      lgnet: ['NetDevice', 'PairBackend', 'SwitchBackend', 'TapBackend', 'VhostUserServer', 'enterJail', 'LgnetError'],
      harness: ['GuestRam', 'VirtioNetDriver', 'VhostUserFrontend', 'createNetns'],
      vring: ['GuestMemory', 'SplitQueue', 'DriverQueue'],
    });
    // The prebuild, since npm does not run a dependency's install script unless allowed.
    expect(out.nativePath).toBe(join(dir, 'node_modules/lgnet/prebuilds', `${process.platform}-${process.arch}`, 'lgnet.node'));
  }, 60_000);

  it('npx lgnet --version prints the version', () => {
    const r = run('npx', ['--no-install', 'lgnet', '--version'], dir, { timeoutMs: 60_000 });
    expect(r.stdout.trim()).toBe(VERSION);
  }, 60_000);

  it('npx lgnet describe names the installed lgnet-vhost-user, which answers --print-capabilities', () => {
    const d = JSON.parse(run('npx', ['--no-install', 'lgnet', 'describe'], dir, { timeoutMs: 60_000 }).stdout) as { type: string; binary: string };
    expect(d.binary).toBe(realpathSync(join(dir, 'node_modules/lgnet/bin/lgnet-vhost-user')));
    expect(run(d.binary, ['--print-capabilities'], tmpdir(), { timeoutMs: 60_000 }).stdout).toBe('{"type":"net"}\n');
    expect(run('npx', ['--no-install', 'lgnet-vhost-user', '--print-capabilities'], dir, { timeoutMs: 60_000 }).stdout).toBe(`{"type":"${d.type}"}\n`);
  }, 60_000);

  it.skipIf(!netnsPrerequisites().ok)('npx lgnet serve, inside a namespace, serves a harness vhost-user session on a tap', () => {
    writeFileSync(join(dir, 'serve.mjs'), readFileSync(join(FIXTURES, 'serve.mjs')));
    const r = run(process.execPath, ['serve.mjs'], dir, { timeoutMs: 90_000, env: { NODE_OPTIONS: '' } });
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
    expect(out['ready'], String(out['log'])).toMatch(/^lgnet ready socket=.* tap=lgpkg0 queues=1 mode=server$/);
    expect(out['arpReply'], String(out['log'])).toBe(true);
    expect(out['stoppedCleanly']).toBe(true);
    expect(out['socketRemoved']).toBe(true);
  }, 90_000);
});

describe('installed globally', () => {
  it('the lgnet on PATH prints the version, and describe names its lgnet-vhost-user', () => {
    // --prefix keeps the "global" install inside this test's directory.
    const prefix = join(work, 'global');
    run('npm', ['install', '--global', '--prefix', prefix, '--no-audit', '--no-fund', withPrebuild], work);
    const r = run(join(prefix, 'bin', 'lgnet'), ['--version'], tmpdir(), { timeoutMs: 60_000 });
    expect(r.stdout.trim()).toBe(VERSION);
    // What management software would be given: the global install's program, by its real path.
    const d = JSON.parse(run(join(prefix, 'bin', 'lgnet'), ['describe'], tmpdir(), { timeoutMs: 60_000 }).stdout) as { binary: string };
    expect(d.binary).toBe(realpathSync(join(prefix, 'lib/node_modules/lgnet/bin/lgnet-vhost-user')));
    expect(run(d.binary, ['--print-capabilities'], tmpdir(), { timeoutMs: 60_000 }).stdout).toBe('{"type":"net"}\n');
  }, SLOW);
});

describe('installed with --ignore-scripts from the tarball with a prebuild', () => {
  it('loads the addon from prebuilds/ (no compiler ran)', () => {
    const dir = project('p2');
    run('npm', ['install', '--no-audit', '--no-fund', '--ignore-scripts', withPrebuild], dir);
    expect(existsSync(join(dir, 'node_modules/lgnet/build'))).toBe(false);
    const r = run(process.execPath, ['-e', "import('lgnet').then((m) => console.log(m.native.nativePath, typeof m.native.eventfdCreate({ nonblocking: true })))"], dir, { timeoutMs: 60_000 });
    expect(r.stdout.trim()).toBe(`${join(dir, 'node_modules/lgnet/prebuilds', `${process.platform}-${process.arch}`, 'lgnet.node')} number`);
  }, SLOW);
});

describe('installed from a tarball without a prebuild, install script allowed', () => {
  it('node-gyp builds the addon at install, and lgnet loads it from build/', () => {
    // npm runs a dependency's install script only when the project allows it (allowScripts).
    const dir = project('p3', { allowScripts: { lgnet: true } });
    // JOBS: node-gyp's make runs one compiler per CPU (the build is what is tested, not its speed).
    run('npm', ['install', '--no-audit', '--no-fund', withoutPrebuild], dir, { env: { JOBS: 'max' } });
    expect(readdirSync(join(dir, 'node_modules/lgnet'))).not.toContain('prebuilds');
    const r = run(process.execPath, ['-e', "import('lgnet').then((m) => console.log(m.native.nativePath))"], dir, { timeoutMs: 60_000 });
    expect(r.stdout.trim()).toBe(join(dir, 'node_modules/lgnet/build/Release/lgnet.node'));
  }, SLOW);
});
