/**
 * Loading lgnet.node, once per thread: $LGNET_NATIVE if set (and then only that), else what
 * node-gyp-build finds under the package root: build/Release or build/Debug (a clone, or an install
 * that compiled), then prebuilds/<platform>-<arch>/ (a tarball that carries a prebuild: no compiler
 * needed). It hands the addon the NativeError class; the mapping registry is shared by all threads.
 */
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { RawBinding } from './binding.ts';
import { NativeError } from './errors.ts';

/** The package root: one level above native/ in a clone, two above dist/native/ in what ships. */
const PACKAGE_ROOT = fileURLToPath(new URL(new URL(import.meta.url).pathname.endsWith('.ts') ? '..' : '../..', import.meta.url));

/** The paths the loader tries, in order. */
export function candidatePaths(): string[] {
  const explicit = process.env['LGNET_NATIVE'];
  if (explicit) return [resolve(explicit)];
  const require = createRequire(import.meta.url);
  const gypBuild = require('node-gyp-build') as { path(dir: string): string };
  try {
    return [gypBuild.path(PACKAGE_ROOT)];
  } catch {
    // Nothing built and no prebuild for this platform: report where node-gyp-build looked.
    return [resolve(PACKAGE_ROOT, 'build/Release/lgnet.node'), resolve(PACKAGE_ROOT, `prebuilds/${process.platform}-${process.arch}/lgnet.node`)];
  }
}

function load(): { binding: RawBinding; path: string } {
  const require = createRequire(import.meta.url);
  const failures: string[] = [];
  for (const path of candidatePaths()) {
    try {
      const binding = require(path) as RawBinding;
      binding.initialize(NativeError);
      return { binding, path };
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      failures.push(`  ${path}: ${err.code === 'MODULE_NOT_FOUND' ? 'not found' : (err.message ?? String(e))}`);
    }
  }
  throw new Error(
    `lgnet: cannot load the native addon. Tried:\n${failures.join('\n')}\n` +
      `In a clone, \`npm ci\` builds it (node-gyp). A package without a prebuild for this platform builds it at install ` +
      `when the project allows lgnet's install script: add "allowScripts": { "lgnet": true } to its package.json ` +
      `(or run \`npm install-scripts approve lgnet\`), then \`npm rebuild lgnet\`. Or point LGNET_NATIVE at a built lgnet.node.`,
  );
}

const loaded = load();
/** The raw addon of this thread. Only native/ uses it; everything else goes through the typed facade. */
export const binding: RawBinding = loaded.binding;
/** The path lgnet.node was loaded from. */
export const nativePath: string = loaded.path;
