#!/usr/bin/env bash
# Lints the package as users get it: publint on the manifest and files, then arethetypeswrong on a
# tarball of the compiled files (packed with --ignore-scripts, so no prebuild is compiled for it).
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build:ts --silent
npx publint --strict
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
npm pack --ignore-scripts --silent --pack-destination "$out" >/dev/null
# ESM only: require() of lgnet is not supported (Node 20 cannot require ESM), so CJS resolutions are not checked.
npx attw "$out"/lgnet-*.tgz --profile esm-only
