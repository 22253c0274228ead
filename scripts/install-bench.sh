#!/usr/bin/env bash
# Install the tools the benchmarks compare fleetd with into the git-ignored .cache/bench (never part of `make test`).
#
#   .cache/bench/node/   npm prefix: ccusage (its native binary comes as an optional dependency)
#   .cache/bench/bin/    symlink ccusage
#
# Idempotent: skipped when the pinned version is already there. Without node/npm it says so and exits 0
# (bench/ingest.py then reports ccusage as missing).
set -euo pipefail

CCUSAGE_VERSION=20.0.24

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo/.cache/bench"
node_prefix="$cache/node"
mkdir -p "$cache/bin"

log() { printf '[install-bench] %s\n' "$*"; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "node/npm not found: skipping ccusage (bench/ingest.py runs without its baseline)."
    exit 0
fi
pkg_json="$node_prefix/node_modules/ccusage/package.json"
installed=""
if [[ -f "$pkg_json" ]]; then
    installed=$(node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' "$pkg_json" 2>/dev/null || true)
fi
if [[ "$installed" == "$CCUSAGE_VERSION" ]]; then
    log "ccusage@$CCUSAGE_VERSION already installed: skipping"
else
    npm install --prefix "$node_prefix" --no-audit --no-fund --save-exact --loglevel=error "ccusage@$CCUSAGE_VERSION"
fi
ln -sfn "$node_prefix/node_modules/.bin/ccusage" "$cache/bin/ccusage"
log "ccusage $CCUSAGE_VERSION in $cache/bin"
