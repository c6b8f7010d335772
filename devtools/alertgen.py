"""Alerts at a real SOC's cardinality, made from a few example alerts (benchmarks and tests).

A fleet sends the same few attacks from thousands of machines and hundreds of users, and every alert
carries values of its own. From each example this makes copies that vary what varies in real data:

- per host (5,000 by default): host name, host.id, agent.id, host IP, the Windows computer name;
- per user (800 by default), for human accounts: the name everywhere it appears (profile paths in
  command lines and file paths), and the account's SID in registry paths;
- per alert: the alert's uuid, event.id, timestamps, PIDs and the process entity ids, the winlog record
  id, the source port, temp folder and file names (``%TEMP%\\tmpA3F9\\``, ``/tmp/tmp.k3J9x2Qa/``), the
  epoch-stamped output files of remote execution tools (``\\\\127.0.0.1\\ADMIN$\\__1759489200.37``);
- a share of alerts (``distinct_commands``, 2% by default) gets a command line never seen before.

Rule ids and names stay stable per rule, as Kibana keeps them. Deterministic for a seed.
"""

from __future__ import annotations

import random
import re
import string
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# Accounts that are the same on every machine (services, built-ins): never varied.
_SHARED_ACCOUNTS = frozenset({"root", "nginx", "jenkins", "ubuntu", "system", "svc_print", "ci-artifacts"})
_HUMAN = re.compile(r"^[a-z][a-z.-]{3,}$")
_SID = re.compile(r"S-1-5-21-\d+-\d+-\d+-\d+")
_EPOCH_FILE = re.compile(r"__\d{10}\.\d+")
_SURNAMES = (
    "kowalski lindqvist nakamura gupta hassan morris ortega schmidt novak silva jensen okafor "
    "tanaka dubois rossi murphy cohen larsen ivanova moreau fischer kaur nguyen petrov bauer "
    "haddad costa horvat suzuki obrien varga keller lopez weber wolff yilmaz zhang andersen"
).split()


@dataclass(frozen=True)
class Host:
    name: str
    id: str
    agent_id: str
    ip: str


class RealisticAlerts:
    """`alert(i)`: the i-th alert of the stream (example i mod n, varied); deterministic per seed."""

    def __init__(
        self,
        examples: Sequence[dict[str, Any]],
        *,
        hosts: int = 5_000,
        users: int = 800,
        distinct_commands: float = 0.02,
        seed: int = 42,
    ) -> None:
        self.examples = [orjson.dumps(e) for e in examples]
        self.distinct_commands = distinct_commands
        self.rng = random.Random(seed)
        self.hosts = [self._host(n) for n in range(hosts)]
        initials = string.ascii_lowercase
        self.users = [
            f"{initials[n % 26]}{_SURNAMES[(n // 26) % len(_SURNAMES)]}{n // 1040 or ''}" for n in range(users)
        ]
        self.sids = [f"S-1-5-21-1177264410-903311873-2881649720-{1100 + n}" for n in range(users)]

    def _host(self, n: int) -> Host:
        kind = ("WS", "SRV", "MBP", "LNX")[n % 4]
        return Host(
            name=f"ACM-{kind}-{n:05d}",
            id=str(uuid.UUID(int=self.rng.getrandbits(128))),
            agent_id=str(uuid.UUID(int=self.rng.getrandbits(128))),
            ip=f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}",
        )

    def _word(self, n: int) -> str:
        return "".join(self.rng.choice(string.ascii_lowercase) for _ in range(n))

    def alert(self, i: int) -> dict[str, Any]:
        rng = self.rng
        raw = self.examples[i % len(self.examples)]
        doc = orjson.loads(raw)
        user = doc.get("user")
        old_name = user.get("name") if isinstance(user, dict) else None
        if isinstance(old_name, str) and _HUMAN.match(old_name) and old_name.lower() not in _SHARED_ACCOUNTS:
            n = rng.randrange(len(self.users))
            text = raw.decode().replace(old_name, self.users[n])
            text = _SID.sub(self.sids[n], text)
            doc = orjson.loads(text)
        host = self.hosts[rng.randrange(len(self.hosts))]
        seconds = 1_790_000_000 + i // 50
        stamp = f"2026-{1 + (i // 2_000_000) % 12:02d}-{1 + (i // 80_000) % 28:02d}T{(i // 3600) % 24:02d}:"
        stamp += f"{(i // 60) % 60:02d}:{i % 60:02d}.{rng.randrange(1000):03d}Z"
        doc["@timestamp"] = stamp
        for key in ("kibana.alert.start", "kibana.alert.original_time"):
            if key in doc:
                doc[key] = stamp
        if "kibana.alert.uuid" in doc:
            doc["kibana.alert.uuid"] = f"{rng.getrandbits(256):064x}"
        event = doc.get("event")
        if isinstance(event, dict):
            event["id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        if isinstance(doc.get("host"), dict):
            doc["host"].update({"name": host.name, "hostname": host.name, "id": host.id, "ip": [host.ip]})
        if isinstance(doc.get("agent"), dict):
            doc["agent"]["id"] = host.agent_id
        winlog = doc.get("winlog")
        if isinstance(winlog, dict):
            winlog["record_id"] = rng.randrange(10**9)
            if "computer_name" in winlog:
                winlog["computer_name"] = f"{host.name}.acme-robotics.local"
        source = doc.get("source")
        if isinstance(source, dict) and "port" in source:
            source["port"] = rng.randrange(1024, 65536)
        process = doc.get("process")
        if isinstance(process, dict):
            process["pid"] = rng.randrange(200, 65_000)
            process["entity_id"] = f"{rng.getrandbits(96):024x}"
            parent = process.get("parent")
            if isinstance(parent, dict):
                parent["pid"] = rng.randrange(200, 65_000)
            command = process.get("command_line")
            if isinstance(command, str):
                process["command_line"] = self._command(command, seconds)
        return doc

    def _command(self, command: str, seconds: int) -> str:
        rng = self.rng
        if "\\Temp\\" in command:
            command = command.replace("\\Temp\\", f"\\Temp\\tmp{rng.randrange(16**4):04X}\\")
        if "/tmp/" in command:
            command = command.replace("/tmp/", f"/tmp/tmp.{self._word(4)}{rng.randrange(10**4):04d}/")
        command = _EPOCH_FILE.sub(f"__{seconds}.{rng.randrange(100):02d}", command)
        if rng.random() < self.distinct_commands:  # a command line never seen before
            command += f" --session {self._word(10)}"
        return command

    def stream(self, n: int) -> Iterator[dict[str, Any]]:
        return (self.alert(i) for i in range(n))
