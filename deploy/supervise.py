"""Run the processes of a Procfile and keep them running: the process list of an attackmap deployment.

    python deploy/supervise.py deploy/Procfile --only worker --scale worker=2

Each line of the Procfile is ``name: command``; ``$VAR``, ``${VAR}`` and ``${VAR:-default}`` are read from
the environment. ``--only`` picks the processes this machine runs, ``--scale name=N`` starts N of one. Every
process gets ``ATTACKMAP_PROCESS=<name>.<n>``; its output goes to this one's, each line prefixed with that
name. A process that exits is started again (after 1 s, doubling to 30 s while it keeps failing). SIGTERM or
SIGINT stops them all (SIGTERM, then SIGKILL after ``--grace`` seconds) and then this supervisor.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand(text: str, env: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        found = env.get(name, "")
        return found if found or match.group("default") is None else match.group("default")

    return _VARIABLE.sub(value, text)


def read_procfile(path: Path) -> dict[str, str]:
    processes: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name.strip()) or not command.strip():
            raise SystemExit(f"{path}:{number}: expected 'name: command'")
        processes[name.strip()] = command.strip()
    return processes


@dataclass
class Supervised:
    label: str
    command: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    backoff: float = 1.0
    starts: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.starts += 1
        print(f"supervise: {self.label} started, pid {self.proc.pid}", flush=True)
        threading.Thread(target=self._relay, args=(self.proc,), daemon=True).start()

    def _relay(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            sys.stdout.write(f"{self.label} | {raw.decode(errors='replace')}")
            sys.stdout.flush()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("procfile", type=Path)
    parser.add_argument("--only", default=None, help="comma-separated process names (default: all)")
    parser.add_argument("--scale", action="append", default=[], help="name=N: start N of this process")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    processes = read_procfile(args.procfile)
    wanted = args.only.split(",") if args.only else list(processes)
    unknown = [name for name in wanted if name not in processes]
    if unknown:
        parser.error(f"not in {args.procfile}: {', '.join(unknown)}")
    scale = {name: int(n) for name, _, n in (item.partition("=") for item in args.scale)}
    supervised: list[Supervised] = []
    for name in wanted:
        for n in range(1, scale.get(name, 1) + 1):
            env = {**os.environ, "ATTACKMAP_PROCESS": f"{name}.{n}"}
            supervised.append(Supervised(f"{name}.{n}", shlex.split(expand(processes[name], env)), env))
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    for item in supervised:
        item.start()
    while not stopping.wait(0.5):
        for item in supervised:
            if item.proc is not None and item.proc.poll() is not None and not stopping.is_set():
                print(
                    f"supervise: {item.label} exited with {item.proc.returncode}; again in {item.backoff:g}s",
                    flush=True,
                )
                if stopping.wait(item.backoff):
                    break
                item.backoff = min(item.backoff * 2, 30.0)
                item.start()
    for item in supervised:
        item.terminate()
    deadline = time.monotonic() + args.grace
    for item in supervised:
        item.wait(deadline)
    print("supervise: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
