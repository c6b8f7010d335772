# shellcheck shell=bash
# Sourced by .ci/run: start a real single-node Elasticsearch for the test suite.
#
# - installs a JDK and Maven from Debian's packages when missing (non-interactive, needs root);
# - starts the node with scripts/es_node.py (distribution fetched from Maven Central into ~/.m2,
#   unpacked under .es/, run as the system user attackmap-es, on a free port of 127.0.0.1);
# - exports ATTACKMAP_ES_URL and ATTACKMAP_REQUIRE_ES=1 (ES tests then fail instead of skipping);
# - stops the node on exit (chained with any EXIT trap already set).
#
# Knobs: ATTACKMAP_ES_VERSION (default in devtools/es_node.py: 8.19.21, runs on Java 17;
# 9.x needs Java 21+, e.g. the Temurin 25 JDK in /usr/lib/jvm), ATTACKMAP_ES_PORT (default: any free
# port), ES_JAVA_HOME (force a JDK). Cold start (download + boot) takes ~30-40 s; warm ~12 s.

_attackmap_es_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_attackmap_es_dir="$_attackmap_es_root/.es"

_attackmap_es_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
    elif [ -x "$_attackmap_es_root/.venv/bin/python" ]; then echo "$_attackmap_es_root/.venv/bin/python"
    elif command -v python >/dev/null 2>&1; then echo python
    else echo python3
    fi
}

_attackmap_es_java_major() {  # $1: a JDK home; prints its feature release or nothing
    [ -x "$1/bin/java" ] && [ -f "$1/release" ] || return 0
    sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$1/release" | head -1
}

_attackmap_es_need_java() {  # ES 8.x: Java 17+; ES 9+: Java 21+
    local v="${ATTACKMAP_ES_VERSION:-8}"
    if [ "${v%%.*}" -ge 9 ] 2>/dev/null; then echo 21; else echo 17; fi
}

_attackmap_es_install() {
    local need have=0 jdk major pkgs=()
    need="$(_attackmap_es_need_java)"
    for jdk in ${ES_JAVA_HOME:-} ${JAVA_HOME:-} /usr/lib/jvm/*; do
        major="$(_attackmap_es_java_major "$jdk")"
        if [ -n "$major" ] && [ "$major" -ge "$need" ]; then have=1; break; fi
    done
    [ "$have" = 1 ] || pkgs+=("openjdk-$need-jdk-headless")
    command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
    command -v runuser >/dev/null 2>&1 || pkgs+=(util-linux)
    if [ "${#pkgs[@]}" -gt 0 ]; then
        echo "es.sh: installing ${pkgs[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
}

_attackmap_es_stop() {
    "$(_attackmap_es_python)" "$_attackmap_es_root/scripts/es_node.py" stop --dir "$_attackmap_es_dir" || true
}

_attackmap_es_start() {
    local t0 url
    t0=$(date +%s)
    _attackmap_es_install || { echo "es.sh: could not install JDK/maven" >&2; return 1; }
    url="$("$(_attackmap_es_python)" "$_attackmap_es_root/scripts/es_node.py" start \
        --dir "$_attackmap_es_dir" --port "${ATTACKMAP_ES_PORT:-0}")" || {
        echo "es.sh: Elasticsearch did not start" >&2
        return 1
    }
    export ATTACKMAP_ES_URL="$url"
    echo "es.sh: Elasticsearch ${ATTACKMAP_ES_VERSION:-(default)} ready at $url in $(( $(date +%s) - t0 ))s" >&2
}

# Chain our stop with whatever EXIT trap .ci/run already has (and with one it sets later via this helper).
_attackmap_es_prev_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
# shellcheck disable=SC2064
trap "_attackmap_es_stop; ${_attackmap_es_prev_trap:-:}" EXIT

# Required from here on: if the node does not come up, the ES tests fail (with the reason) instead of skipping.
export ATTACKMAP_REQUIRE_ES=1
_attackmap_es_start
