#!/usr/bin/env bash
# LocalStack run natively (no Docker) for the localsqs tests: SQS, SNS and STS only
# (STS: the aws backend learns the account id for topic ARNs from GetCallerIdentity).
#
#   localstack.sh check            exit 0 if LocalStack can be installed here (a Python >= 3.13 exists)
#   localstack.sh install          venv with localstack-core (outside the melange venv: it needs Python 3.13)
#   localstack.sh start            start it in the background (its own process group) and wait until ready
#   localstack.sh stop             stop it (SIGTERM to the group, SIGKILL after 15 s)
#   localstack.sh run CMD [ARG..]  install, start, run CMD with MELANGE_LOCALSTACK_ENDPOINT set, stop
#
# Settings (environment): LOCALSTACK_PORT (4599), LOCALSTACK_VENV (<repo>/.localstack-venv),
# LOCALSTACK_PYTHON (a Python >= 3.13; found in PATH or pyenv), LOCALSTACK_VERSION (2026.3.0),
# LOCALSTACK_STATE (<venv>/run: pid file, log, private FILESYSTEM_ROOT), LOCALSTACK_START_TIMEOUT (60).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
PORT="${LOCALSTACK_PORT:-4599}"
VENV="${LOCALSTACK_VENV:-$REPO/.localstack-venv}"
VERSION="${LOCALSTACK_VERSION:-2026.3.0}"
STATE="${LOCALSTACK_STATE:-$VENV/run}"
START_TIMEOUT="${LOCALSTACK_START_TIMEOUT:-60}"
ENDPOINT="http://127.0.0.1:$PORT"
# localstack-core declares Python >= 3.10 but imports warnings.deprecated (3.13+); these pins
# keep its resolver away from releases that break it.
PINS=("cbor2<5.8" "pyopenssl==24.3.0" "service-identity==24.1.0")

log() { echo "localstack.sh: $*" >&2; }

find_python() {
    local candidate candidates=(python3.14 python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[3-9]*/bin/python3)
    if [[ -n "${LOCALSTACK_PYTHON:-}" ]]; then candidates=("$LOCALSTACK_PYTHON"); fi
    # Run each candidate: a pyenv shim exists on PATH even when its version is not selected.
    for candidate in "${candidates[@]}"; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
            "$candidate" -c 'import sys; print(sys.executable)'; return
        fi
    done
    log "no Python >= 3.13 found (LocalStack needs it); set LOCALSTACK_PYTHON=/path/to/python3.13"
    return 1
}

find_uv() {
    if command -v uv >/dev/null; then command -v uv; elif [[ -x "$REPO/.tools/bin/uv" ]]; then
        echo "$REPO/.tools/bin/uv"; fi
}

install() {
    local marker="$VENV/.installed-$VERSION"
    if [[ -f "$marker" ]]; then return; fi
    local python uv started=$SECONDS
    python="$(find_python)"
    uv="$(find_uv)"
    log "installing localstack-core==$VERSION with $python into $VENV"
    rm -rf "$VENV"
    if [[ -n "$uv" ]]; then
        "$uv" venv --quiet --python "$python" "$VENV"
        "$uv" pip install --quiet --python "$VENV/bin/python" \
            "localstack-core[runtime]==$VERSION" "${PINS[@]}"
    else
        "$python" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            "localstack-core[runtime]==$VERSION" "${PINS[@]}"
    fi
    touch "$marker"
    log "installed in $((SECONDS - started)) s"
}

ready() {
    # Ready when the gateway answers and both services are available (or already running).
    "$VENV/bin/python" - "$ENDPOINT" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/_localstack/health", timeout=2) as response:
    services = json.load(response)["services"]
sys.exit(0 if all(services.get(s) in ("available", "running") for s in ("sqs", "sns")) else 1)
PY
}

start() {
    install
    if [[ -f "$STATE/pid" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
        log "already running (pid $(cat "$STATE/pid")) at $ENDPOINT"; return
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        log "port $PORT is already in use; stop what listens there or set LOCALSTACK_PORT"
        return 1
    fi
    rm -rf "$STATE" && mkdir -p "$STATE/root"
    local started
    started=$(date +%s.%N)
    # No Docker, no network: skip the DNS server, the certificate download and analytics.
    OVERRIDE_IN_DOCKER=0 GATEWAY_LISTEN="127.0.0.1:$PORT" SERVICES=sqs,sns,sts \
        FILESYSTEM_ROOT="$STATE/root" DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1 \
        SQS_ENDPOINT_STRATEGY=path LOCALSTACK_HOST="127.0.0.1:$PORT" EAGER_SERVICE_LOADING=1 \
        setsid "$VENV/bin/python" -m localstack.runtime.main >"$STATE/localstack.log" 2>&1 \
        </dev/null &
    echo $! >"$STATE/pid"
    local deadline=$((SECONDS + START_TIMEOUT))
    until ready; do
        if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null; then
            log "LocalStack exited during startup; last lines of $STATE/localstack.log:"
            tail -n 30 "$STATE/localstack.log" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "LocalStack did not become ready at $ENDPOINT within $START_TIMEOUT s; log tail:"
            tail -n 30 "$STATE/localstack.log" >&2
            stop
            return 1
        fi
        sleep 0.2
    done
    log "ready at $ENDPOINT after $(echo "$(date +%s.%N) - $started" | bc) s (log: $STATE/localstack.log)"
}

stop() {
    [[ -f "$STATE/pid" ]] || return 0
    local pid
    pid="$(cat "$STATE/pid")"
    rm -f "$STATE/pid"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 75); do
        kill -0 "$pid" 2>/dev/null || { log "stopped"; return 0; }
        sleep 0.2
    done
    log "LocalStack did not stop within 15 s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || true
}

run() {
    start
    trap stop EXIT
    MELANGE_LOCALSTACK_ENDPOINT="$ENDPOINT" "$@"
}

case "${1:-}" in
    check) python="$(find_python)" && log "LocalStack can run here with $python" ;;
    install) install ;;
    start) start ;;
    stop) stop ;;
    run) shift; [[ $# -gt 0 ]] || { log "usage: $0 run CMD [ARG...]"; exit 2; }; run "$@" ;;
    *) echo "usage: $0 check|install|start|stop|run CMD [ARG...]" >&2; exit 2 ;;
esac
