# shellcheck shell=bash
# Sourced by .ci/run: a real Redis and a real PostgreSQL for the tests (shared cache tier, replay memory,
# event claims, budget ledger, Prefect on PostgreSQL).
#
# - installs Debian's redis-server and postgresql when missing (non-interactive, needs root);
# - starts both with devtools/datastores.py (Redis with maxmemory + allkeys-lru; a throwaway PostgreSQL
#   cluster made with initdb, run as the `postgres` user when we are root), on free ports of 127.0.0.1,
#   in temporary folders; ~3 s;
# - exports ATTACKMAP_REDIS_URL, ATTACKMAP_POSTGRES_URL and ATTACKMAP_REQUIRE_DATASTORES=1 (the tests
#   that need them then fail instead of skipping);
# - stops both on exit (chained with any EXIT trap already set).

_attackmap_ds_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_attackmap_ds_install() {
    local pkgs=()
    command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql)
    if [ "${#pkgs[@]}" -gt 0 ]; then
        echo "datastores.sh: installing ${pkgs[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
}

_attackmap_ds_stop() {
    if [ -n "${_attackmap_ds_pid:-}" ] && kill -0 "$_attackmap_ds_pid" 2>/dev/null; then
        kill -TERM "$_attackmap_ds_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$_attackmap_ds_pid" 2>/dev/null || break; sleep 0.2; done
    fi
    [ -n "${_attackmap_ds_env:-}" ] && rm -f "$_attackmap_ds_env"
}

_attackmap_ds_start() {
    local t0
    t0=$(date +%s)
    _attackmap_ds_install || { echo "datastores.sh: could not install redis-server/postgresql" >&2; return 1; }
    _attackmap_ds_env="$(mktemp -t attackmap-datastores.XXXXXX)"
    rm -f "$_attackmap_ds_env"
    (cd "$_attackmap_ds_root" && exec "$_attackmap_ds_root/.venv/bin/python" -m devtools.datastores "$_attackmap_ds_env") &
    _attackmap_ds_pid=$!
    for _ in $(seq 1 300); do
        [ -s "$_attackmap_ds_env" ] && break
        kill -0 "$_attackmap_ds_pid" 2>/dev/null || { echo "datastores.sh: the datastores exited" >&2; return 1; }
        sleep 0.2
    done
    [ -s "$_attackmap_ds_env" ] || { echo "datastores.sh: Redis/PostgreSQL not up after 60 s" >&2; return 1; }
    set -a
    # shellcheck disable=SC1090
    . "$_attackmap_ds_env"
    set +a
    export ATTACKMAP_REQUIRE_DATASTORES=1
    echo "datastores.sh: Redis at $ATTACKMAP_REDIS_URL, PostgreSQL at $ATTACKMAP_POSTGRES_URL ($(( $(date +%s) - t0 )) s)" >&2
}

_attackmap_ds_prev_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
# shellcheck disable=SC2064
trap "_attackmap_ds_stop; ${_attackmap_ds_prev_trap:-:}" EXIT

_attackmap_ds_start
