# shellcheck shell=bash
# Sourced by .ci/run: start a real Prefect server (SQLite, temporary PREFECT_HOME) for the test suite.
#
# - `prefect server start` on a free port of 127.0.0.1, analytics off, late-runs service off (it causes
#   SQLite lock storms when runs back up), in a temporary PREFECT_HOME removed on exit;
# - waits until GET /api/health answers (~10 s on a fresh database);
# - exports PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED=false and ATTACKMAP_REQUIRE_PREFECT=1
#   (the Prefect tests then fail instead of skipping);
# - stops the server on exit (chained with any EXIT trap already set).

_attackmap_pf_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_attackmap_pf_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
    elif [ -x "$_attackmap_pf_root/.venv/bin/python" ]; then echo "$_attackmap_pf_root/.venv/bin/python"
    elif command -v python >/dev/null 2>&1; then echo python
    else echo python3
    fi
}

_attackmap_pf_stop() {
    if [ -n "${_attackmap_pf_pid:-}" ] && kill -0 "$_attackmap_pf_pid" 2>/dev/null; then
        kill -TERM "$_attackmap_pf_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$_attackmap_pf_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$_attackmap_pf_pid" 2>/dev/null || true
    fi
    [ -n "${_attackmap_pf_home:-}" ] && rm -rf "$_attackmap_pf_home"
}

_attackmap_pf_start() {
    local py port t0 url
    py="$(_attackmap_pf_python)"
    t0=$(date +%s)
    port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    _attackmap_pf_home="$(mktemp -d -t attackmap-prefect.XXXXXX)"
    url="http://127.0.0.1:$port/api"
    export PREFECT_HOME="$_attackmap_pf_home"
    export PREFECT_SERVER_ANALYTICS_ENABLED=false
    export PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED=false
    PREFECT_API_URL="" \
        "$py" -m prefect server start --host 127.0.0.1 --port "$port" \
        >"$_attackmap_pf_home/server.log" 2>&1 &
    _attackmap_pf_pid=$!
    for _ in $(seq 1 240); do
        if "$py" -c "import sys, httpx; sys.exit(0 if httpx.get('$url/health', timeout=2).status_code == 200 else 1)" \
            2>/dev/null; then
            export PREFECT_API_URL="$url"
            export ATTACKMAP_REQUIRE_PREFECT=1
            echo "prefect.sh: Prefect server ready at $url in $(( $(date +%s) - t0 ))s" >&2
            return 0
        fi
        kill -0 "$_attackmap_pf_pid" 2>/dev/null || break
        sleep 0.5
    done
    echo "prefect.sh: Prefect server did not start; last log lines:" >&2
    tail -n 30 "$_attackmap_pf_home/server.log" >&2 || true
    return 1
}

_attackmap_pf_prev_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
# shellcheck disable=SC2064
trap "_attackmap_pf_stop; ${_attackmap_pf_prev_trap:-:}" EXIT

_attackmap_pf_start
