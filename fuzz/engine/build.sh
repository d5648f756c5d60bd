#!/usr/bin/env bash
# Builds the coverage-guided fuzzing engine (jazzer.js's addon over Debian's libFuzzer) once.
# Run through npm (`npm run fuzz:build`), which puts its node-gyp on PATH. Idempotent: a build newer
# than its inputs is kept.
set -euo pipefail
cd "$(dirname "$0")"
jazzer=$(node -p "require('path').dirname(require.resolve('@jazzer.js/fuzzer/package.json'))")
out="$jazzer/build/Release/jazzerjs.node"
if ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a >/dev/null 2>&1; then
  echo "fuzz:build: libFuzzer is missing; install it with: bash scripts/install-deps.sh (libclang-rt-14-dev)" >&2
  exit 1
fi
if [ -f "$out" ] && [ -z "$(find binding.gyp libfuzzer-compat.cc include "$jazzer/package.json" -newer "$out")" ]; then
  exit 0
fi
echo "fuzz:build: building the jazzer.js engine against libFuzzer 14"
rm -rf src && mkdir -p src/shared
cp "$jazzer"/*.cpp "$jazzer"/*.h src/ && cp "$jazzer"/shared/*.cpp "$jazzer"/shared/*.h src/shared/
JOBS="${JOBS:-max}" node-gyp rebuild --loglevel=warn >build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
mkdir -p "$(dirname "$out")"
cp build/Release/jazzerjs.node "$out"
