"""Start and stop a real, local, single-node Elasticsearch for tests, CI and benchmarks.

The node is Elastic's ``integ-test-zip`` distribution from Maven Central
(``org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip``), fetched with ``mvn``
(cached in ``~/.m2``), unpacked under a work folder (default ``.es/``), configured for one node on
127.0.0.1 without security, and run in the background.  That distribution ships no JDK: ES 8.x runs on
Java 17+, ES 9.x needs Java 21+; a suitable JDK is picked from ``ES_JAVA_HOME``, ``JAVA_HOME`` and
``/usr/lib/jvm/*``.  Elasticsearch refuses to run as root, so as root the node runs as the system user
``attackmap-es`` (created on first use, after saying so on stderr) through ``runuser``.

The distribution is minimal: no ``GET /`` handler (readiness is ``/_cluster/health``), no Painless, and
only the core mapper types.  Everything the project does against it (point-in-time, search_after,
bulk partial updates with ``if_seq_no``) is core.

State lives in ``<dir>/node.json`` (url, pid, version, home); ``start`` is idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_VERSION = "8.19.21"
"""Newest 8.x on Maven Central that runs on Java 17; 9.x (tested: 9.2.0) works too given Java 21+."""

DEFAULT_PORT = 9200
DEFAULT_DIR = Path(".es")
ES_USER = "attackmap-es"
GROUP_ID = "org.elasticsearch.distribution.integ-test-zip"
ARTIFACT_ID = "elasticsearch"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
HEAP = "512m"
STATE_FILE = "node.json"


def say(message: str) -> None:
    """Tell the user what is about to be installed or created on their machine, before it is."""
    print(f"es_node: {message}", file=sys.stderr, flush=True)


class NodeError(RuntimeError):
    """The node could not be downloaded, configured or started; the message says why."""


@dataclass(frozen=True)
class NodeInfo:
    url: str
    pid: int
    version: str
    home: str
    port: int
    java_home: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# --------------------------------------------------------------------------- java


def required_java(version: str) -> int:
    """The lowest Java feature release a given Elasticsearch version runs on."""
    major = int(version.split(".")[0])
    return 21 if major >= 9 else 17


def java_major(java_home: Path) -> int | None:
    """The feature release of the JDK at ``java_home`` (from its ``release`` file), or None."""
    release = java_home / "release"
    if not (java_home / "bin" / "java").is_file() or not release.is_file():
        return None
    for line in release.read_text(errors="replace").splitlines():
        if line.startswith("JAVA_VERSION="):
            value = line.split("=", 1)[1].strip().strip('"')
            head = value.split(".")[0]
            if head == "1":  # 1.8.0 style
                head = value.split(".")[1]
            try:
                return int(head)
            except ValueError:
                return None
    return None


def find_java(es_version: str) -> Path:
    """A JDK that can run ``es_version``: explicit env first, else the oldest sufficient one installed."""
    need = required_java(es_version)
    for var in ("ES_JAVA_HOME", "JAVA_HOME"):
        value = os.environ.get(var)
        if value:
            major = java_major(Path(value))
            if major is not None and major >= need:
                return Path(value)
    candidates: list[tuple[int, Path]] = []
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        for entry in sorted(jvm_root.iterdir()):
            if entry.is_symlink():
                continue
            major = java_major(entry)
            if major is not None and major >= need:
                candidates.append((major, entry))
    if not candidates:
        raise NodeError(
            f"Elasticsearch {es_version} needs Java {need}+; none found in ES_JAVA_HOME, JAVA_HOME or "
            f"/usr/lib/jvm (install e.g. openjdk-{need}-jdk-headless, or set ES_JAVA_HOME)"
        )
    candidates.sort(key=lambda item: item[0])
    return candidates[0][1]


# --------------------------------------------------------------------------- download / unpack


def m2_repository() -> Path:
    return Path(os.environ.get("MAVEN_REPO_LOCAL", Path.home() / ".m2" / "repository"))


def artifact_path(version: str) -> Path:
    return m2_repository() / GROUP_ID.replace(".", "/") / ARTIFACT_ID / version / f"{ARTIFACT_ID}-{version}.zip"


def download(version: str) -> Path:
    """The distribution zip in the local Maven repository, fetched with ``mvn`` when missing."""
    path = artifact_path(version)
    if path.is_file() and zipfile.is_zipfile(path):
        return path
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NodeError("mvn not found: it is needed to fetch the Elasticsearch distribution from Maven Central")
    cmd = [
        mvn,
        "-B",
        "-q",
        "-U",
        "-Dstyle.color=never",
        f"{DEPENDENCY_PLUGIN}:get",
        f"-Dartifact={GROUP_ID}:{ARTIFACT_ID}:{version}:zip",
        "-Dtransitive=false",
    ]
    if "MAVEN_REPO_LOCAL" in os.environ:
        cmd.append(f"-Dmaven.repo.local={os.environ['MAVEN_REPO_LOCAL']}")
    say(f"downloading Elasticsearch {version} from Maven Central with mvn into {m2_repository()} (~300 MB, once)")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0 or not path.is_file():
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [line for line in lines if "[ERROR]" in line and len(line.split("[ERROR]", 1)[1].strip()) > 40]
        errors = errors[:2]
        detail = "\n".join(errors or lines[-10:])
        raise NodeError(f"mvn could not fetch Elasticsearch {version} from Maven Central:\n{detail}")
    return path


def unpack(zip_path: Path, target_parent: Path, version: str) -> Path:
    """Unpack the zip into ``target_parent/elasticsearch-<version>`` (once), keeping file modes."""
    home = target_parent / f"elasticsearch-{version}"
    marker = home / ".unpacked"
    if marker.is_file():
        return home
    if home.exists():
        shutil.rmtree(home)
    tmp = target_parent / f".unpack-{version}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            extracted = Path(archive.extract(info, tmp))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                extracted.chmod(mode)
    inner = tmp / f"elasticsearch-{version}"
    if not inner.is_dir():
        raise NodeError(f"unexpected layout in {zip_path}: no elasticsearch-{version}/ folder")
    inner.rename(home)
    shutil.rmtree(tmp)
    marker.write_text(str(zip_path))
    return home


# --------------------------------------------------------------------------- user / permissions


def running_as_root() -> bool:
    return os.geteuid() == 0


def ensure_user() -> None:
    """Create the unprivileged system user the node runs as (root only)."""
    with contextlib.suppress(KeyError):
        import pwd

        pwd.getpwnam(ES_USER)
        return
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    say(
        f"creating the system user {ES_USER} (no home, no login shell) to run Elasticsearch, "
        "which refuses to run as root"
    )
    proc = subprocess.run(
        [
            useradd,
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            ES_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 9):  # 9: already exists (raced)
        raise NodeError(f"could not create system user {ES_USER}: {proc.stderr.strip()}")


def _user_can_use(path: Path) -> bool:
    """Whether ES_USER can traverse ``path`` and all its parents (not, e.g., under a 0700 /root)."""
    ensure_user()
    proc = subprocess.run(
        ["runuser", "-u", ES_USER, "--", "test", "-x", str(path)],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def node_base(work_dir: Path) -> Path:
    """Where the distribution, data and logs live: ``work_dir`` itself unless the node user can't reach it."""
    if not running_as_root() or _user_can_use(work_dir):
        return work_dir
    digest = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:12]
    base = Path("/var/tmp") / f"attackmap-es-{digest}"
    say(f"{ES_USER} cannot reach {work_dir}: the node's files go to {base} instead")
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    return base


def chown_tree(path: Path) -> None:
    import pwd

    entry = pwd.getpwnam(ES_USER)
    uid, gid = entry.pw_uid, entry.pw_gid
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(full).st_uid != uid:
                    os.lchown(full, uid, gid)


# --------------------------------------------------------------------------- configure


def configure(home: Path, data: Path, logs: Path, port: int) -> None:
    transport = port + 100 if port + 100 <= 65535 else port - 100
    config = home / "config"
    (config / "elasticsearch.yml").write_text(
        "\n".join(
            [
                "# written by devtools/es_node.py",
                "cluster.name: attackmap-test",
                "node.name: attackmap-test-node",
                f"path.data: {data}",
                f"path.logs: {logs}",
                "network.host: 127.0.0.1",
                f"http.port: {port}",
                f"transport.port: {transport}",
                "discovery.type: single-node",
                "xpack.security.enabled: false",
                # CI disks are often > 90 % full: don't let watermarks block writes or shard allocation.
                "cluster.routing.allocation.disk.threshold_enabled: false",
                "action.destructive_requires_name: false",
                "",
            ]
        )
    )
    options = config / "jvm.options.d"
    options.mkdir(exist_ok=True)
    (options / "attackmap-heap.options").write_text(f"-Xms{HEAP}\n-Xmx{HEAP}\n")


# --------------------------------------------------------------------------- health / state


def health(url: str, timeout: float = 2.0) -> str | None:
    """Cluster status (green/yellow/red) or None when nothing healthy answers at ``url``."""
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health", timeout=timeout) as resp:
            body = json.loads(resp.read())
            status = body.get("status")
            return str(status) if status else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_ready(url: str, timeout: float = 2.0) -> bool:
    return health(url, timeout) in ("green", "yellow")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(work_dir: Path) -> NodeInfo | None:
    path = work_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return NodeInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def running_node(work_dir: Path = DEFAULT_DIR) -> NodeInfo | None:
    """The node recorded in ``work_dir`` if its process lives and it answers healthy."""
    info = read_state(work_dir)
    if info is None:
        return None
    if pid_alive(info.pid) and is_ready(info.url):
        return info
    return None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return port if port + 100 <= 65535 else free_port()


@contextlib.contextmanager
def _locked(work_dir: Path) -> Iterator[None]:
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- start / stop


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return "(no console log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start(
    port: int | None = DEFAULT_PORT,
    work_dir: Path = DEFAULT_DIR,
    version: str | None = None,
    timeout: float = 240.0,
) -> NodeInfo:
    """Start (or reuse) the node recorded in ``work_dir``; return its info once it is yellow/green.

    ``port=None`` picks a free port.  ``version`` defaults to ``$ATTACKMAP_ES_VERSION`` or DEFAULT_VERSION.
    """
    version = version or os.environ.get("ATTACKMAP_ES_VERSION") or DEFAULT_VERSION
    work_dir = work_dir.resolve()
    with _locked(work_dir):
        existing = running_node(work_dir)
        if existing is not None:
            return existing
        stale = read_state(work_dir)
        if stale is not None and pid_alive(stale.pid):  # alive but not healthy: it holds the data dir
            _terminate(stale.pid, timeout=60.0)
        if port is None:
            port = free_port()
        elif not port_free(port):
            raise NodeError(f"port {port} on 127.0.0.1 is taken by another process; pick another with --port")
        java_home = find_java(version)
        say(f"starting Elasticsearch {version} on 127.0.0.1:{port} with the JDK at {java_home}")
        zip_path = download(version)
        base = node_base(work_dir)
        home = unpack(zip_path, base, version)
        data = base / f"data-{version}"
        logs = base / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        configure(home, data, logs, port)
        pid_file = logs / "es.pid"
        pid_file.unlink(missing_ok=True)
        console = logs / f"console-{port}.log"
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("JAVA_HOME", "ES_JAVA_OPTS", "ES_PATH_CONF", "JAVA_TOOL_OPTIONS")
        }
        env["ES_JAVA_HOME"] = str(java_home)
        cmd = [str(home / "bin" / "elasticsearch"), "-p", str(pid_file)]
        if running_as_root():
            ensure_user()
            for path in (home, data, logs):
                chown_tree(path)
            base.chmod(0o755)
            cmd = ["runuser", "-u", ES_USER, "--", "env", f"ES_JAVA_HOME={java_home}", *cmd]
        with open(console, "wb") as out:
            launcher = subprocess.Popen(
                cmd,
                cwd=str(home),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if launcher.poll() is not None:
                raise NodeError(
                    f"Elasticsearch {version} exited with code {launcher.returncode} during start "
                    f"(java {java_home}). Last log lines from {console}:\n{_tail(console)}"
                )
            if pid_file.is_file() and is_ready(url):
                break
            time.sleep(0.5)
        else:
            _kill_group(launcher.pid)
            raise NodeError(f"Elasticsearch {version} not ready within {timeout:.0f}s:\n{_tail(console)}")
        pid = int(pid_file.read_text().strip())
        info = NodeInfo(url=url, pid=pid, version=version, home=str(home), port=port, java_home=str(java_home))
        (work_dir / STATE_FILE).write_text(info.to_json() + "\n")
        return info


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop(work_dir: Path = DEFAULT_DIR, timeout: float = 60.0) -> bool:
    """Stop the node recorded in ``work_dir`` (SIGTERM, wait, SIGKILL after ``timeout``).

    Returns whether a live node was stopped.
    """
    work_dir = work_dir.resolve()
    with _locked(work_dir):
        info = read_state(work_dir)
        if info is None:
            return False
        stopped = _terminate(info.pid, timeout)
        (work_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL; whether it was alive."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        _reap(pid)
        time.sleep(0.25)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def _reap(pid: int) -> None:
    """Collect zombie children of this process (the node is ours when started in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(-1, os.WNOHANG)


def url(work_dir: Path = DEFAULT_DIR) -> str | None:
    info = running_node(work_dir.resolve())
    return info.url if info else None
