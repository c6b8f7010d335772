"""A real Redis and a real PostgreSQL for tests, benchmarks and the local deployment.

Each context manager yields a URL: the one given when it answers, else a server started here from
Debian's packages (`redis-server`; `postgresql`'s initdb and postgres) on a free port of 127.0.0.1 in a
temporary folder, stopped and removed on exit. PostgreSQL refuses to run as root: as root the cluster
is made and run as the `postgres` system user the Debian package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from devtools.servers import ServerUnavailable

REDIS_MAXMEMORY = "256mb"
POSTGRES_USER = "attackmap"
POSTGRES_DATABASES = ("attackmap", "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait(port: int, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(port):
        if proc.poll() is not None:
            raise ServerUnavailable(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"{what} not answering on port {port} after {timeout:.0f}s")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole session (runuser forwards nothing reliably), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------------------- Redis


def redis_healthy(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def redis_server(url: str | None = None) -> Iterator[str]:
    """``url`` when it answers PING, else ``redis-server`` as a shared mapping cache is meant to run:
    ``maxmemory`` with ``allkeys-lru``, nothing persisted. Raises ServerUnavailable."""
    if url:
        if redis_healthy(url):
            yield url
            return
        raise ServerUnavailable(f"{url} does not answer PING")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable("redis-server not found (Debian package redis-server)")
    work = Path(tempfile.mkdtemp(prefix="attackmap-redis-"))
    port = _free_port()
    log = work / "redis.log"
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(work), "--save", ""]
    command += ["--appendonly", "no", "--maxmemory", REDIS_MAXMEMORY, "--maxmemory-policy", "allkeys-lru"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(port, proc, log, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- PostgreSQL


def postgres_healthy(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ServerUnavailable(f"{name} not found (Debian package postgresql)")
    return found


def _as_owner(command: list[str]) -> list[str]:
    """Run as the `postgres` system user when we are root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServerUnavailable("running as root and there is no `postgres` user to run PostgreSQL as") from exc
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def postgres_server(url: str | None = None) -> Iterator[str]:
    """``url`` when it answers, else a throwaway cluster (initdb, trust on 127.0.0.1) with the databases
    ``attackmap`` (ledger, tests) and ``prefect`` (a Prefect server); yields the ``attackmap`` database's
    URL. Raises ServerUnavailable."""
    if url:
        if postgres_healthy(url):
            yield url
            return
        raise ServerUnavailable(f"{url} does not accept connections")
    work = Path(tempfile.mkdtemp(prefix="attackmap-pg-"))
    data = work / "data"
    log = work / "postgres.log"
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            owner = pwd.getpwnam("postgres")
            os.chown(work, owner.pw_uid, owner.pw_gid)
    init = _as_owner([_postgres_bin("initdb"), "-D", str(data), "-U", POSTGRES_USER, "--auth=trust", "-E", "UTF8"])
    done = subprocess.run(init, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise ServerUnavailable(f"initdb failed: {done.stderr[-1500:]}")
    port = _free_port()
    server = [_postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(work)]
    server += ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "fsync=off"]
    with log.open("wb") as out:
        proc = subprocess.Popen(_as_owner(server), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(port, proc, log, "postgres")
        base = f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}"
        import psycopg

        deadline = time.monotonic() + 30
        while not postgres_healthy(f"{base}/postgres"):
            if time.monotonic() > deadline:
                raise ServerUnavailable("postgres accepts no connections")
            time.sleep(0.2)
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            for name in POSTGRES_DATABASES:
                conn.execute(f"CREATE DATABASE {name}")
        yield f"{base}/attackmap"
    finally:
        _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def prefect_database_url(attackmap_url: str) -> str:
    """The ``prefect`` database beside the ``attackmap`` one, in the form Prefect's server takes."""
    base = attackmap_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/prefect"


def main() -> None:
    """``python -m devtools.datastores ENV_FILE``: start Redis and PostgreSQL, write their URLs to ENV_FILE
    as ``NAME=value`` lines once both answer, and keep them until SIGTERM (what .ci/datastores.sh runs)."""
    import sys

    target = Path(sys.argv[1])
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with redis_server() as redis_url, postgres_server() as postgres_url:
        target.write_text(f"ATTACKMAP_REDIS_URL={redis_url}\nATTACKMAP_POSTGRES_URL={postgres_url}\n")
        while not stop:
            time.sleep(0.2)


if __name__ == "__main__":
    main()
