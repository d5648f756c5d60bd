import { defineConfig } from 'vitest/config';

// Tests use real taps, namespaces and threads: run files one at a time in forked processes so that
// namespace names, tap names and CPU time do not collide.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
