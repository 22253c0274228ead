#!/usr/bin/env bash
# Install the pinned real agent CLIs into a git-ignored cache under the repo, for tests/integration.
#
#   .cache/agents/node/         npm prefix: Claude Code, Codex CLI, Gemini CLI
#   .cache/agents/aider-venv/   Python venv with Aider
#   .cache/agents/bin/          symlinks claude, codex, gemini, aider
#
# Idempotent: a CLI whose pinned version is already installed is skipped. Without node/npm the Node
# CLIs are skipped (exit 0, their tests skip); without python3 venv support Aider is skipped likewise.
set -euo pipefail

CLAUDE_VERSION=2.1.330
CODEX_VERSION=0.169.0
GEMINI_VERSION=0.61.0
AIDER_VERSION=0.86.2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo/.cache/agents"
node_prefix="$cache/node"
aider_venv="$cache/aider-venv"
bin="$cache/bin"
mkdir -p "$cache" "$bin"

log() { printf '[install-agents] %s\n' "$*"; }

# Print "name: Ns" for the step that just ran.
timed() {
    local label="$1"
    shift
    local start end
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    log "$(awk -v l="$label" -v s="$start" -v e="$end" 'BEGIN { printf "%s installed in %.1f s", l, e - s }')"
}

# Version recorded in an installed npm package's package.json, or empty.
npm_installed_version() {
    local pkg_json="$node_prefix/node_modules/$1/package.json"
    [[ -f "$pkg_json" ]] || return 0
    node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' "$pkg_json" 2>/dev/null || true
}

link() {
    local name="$1" target="$2"
    if [[ -e "$target" ]]; then
        ln -sfn "$target" "$bin/$name"
        log "$bin/$name -> $target"
    else
        rm -f "$bin/$name"
        log "WARNING: $target not found; $name not linked"
    fi
}

install_node_clis() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        log "node/npm not found: skipping Claude Code, Codex and Gemini CLI (their integration tests will skip)."
        log "Install Node.js >= 20 with npm and re-run this script to enable them."
        return 0
    fi
    log "node $(node --version), npm $(npm --version)"

    local -a wanted=(
        "@anthropic-ai/claude-code@$CLAUDE_VERSION"
        "@openai/codex@$CODEX_VERSION"
        "@google/gemini-cli@$GEMINI_VERSION"
    )
    local spec pkg version
    for spec in "${wanted[@]}"; do
        pkg="${spec%@*}"
        version="${spec##*@}"
        if [[ "$(npm_installed_version "$pkg")" == "$version" ]]; then
            log "$pkg@$version already installed: skipping"
            continue
        fi
        # One package per npm call so that each install is timed on its own.
        timed "$pkg@$version" npm install --prefix "$node_prefix" --no-audit --no-fund --save-exact --loglevel=error "$spec"
    done

    link claude "$node_prefix/node_modules/.bin/claude"
    link codex "$node_prefix/node_modules/.bin/codex"
    link gemini "$node_prefix/node_modules/.bin/gemini"
}

install_aider() {
    if ! command -v python3 >/dev/null 2>&1; then
        log "python3 not found: skipping Aider (its integration tests will skip)."
        return 0
    fi
    local installed=""
    if [[ -x "$aider_venv/bin/python" ]]; then
        installed=$("$aider_venv/bin/python" -c \
            'import importlib.metadata as m; print(m.version("aider-chat"))' 2>/dev/null || true)
    fi
    if [[ "$installed" == "$AIDER_VERSION" ]]; then
        log "aider-chat==$AIDER_VERSION already installed: skipping"
    else
        if [[ ! -x "$aider_venv/bin/python" ]]; then
            if ! python3 -m venv "$aider_venv"; then
                log "python3 -m venv failed (python3-venv missing?): skipping Aider."
                rm -rf "$aider_venv"
                return 0
            fi
        fi
        timed "aider-chat==$AIDER_VERSION" \
            "$aider_venv/bin/pip" install --quiet --disable-pip-version-check "aider-chat==$AIDER_VERSION"
    fi
    link aider "$aider_venv/bin/aider"
}

total_start=$(date +%s)
install_node_clis
install_aider
log "done in $(($(date +%s) - total_start)) s; binaries in $bin"
