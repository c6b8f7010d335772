"""Jobs on forked worker processes: results in input order, and no job lost when a worker dies.

A worker process can die under a job — killed by an operator or the out-of-memory killer, or
crashed in native code on one input. Its pool is then broken and every job it had in flight comes
back unfinished; those jobs are run again in a fresh pool, *one at a time* (a job that kills its
worker while alone is the culprit, not a bystander). A culprit is split in two and the halves run
alone in turn, down to the single input that kills its worker: that input alone is abandoned (its
caller makes it a dead letter) after it did so twice, and everything else is processed. A job
that merely shared a pool with the culprit is processed once more, never abandoned.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("attackmap.workers")

J = TypeVar("J")
R = TypeVar("R")

# A single input is abandoned after killing its worker this many times while running alone.
SOLO_DEATHS_TO_ABANDON = 2


@dataclass(frozen=True)
class Lane(Generic[J, R]):
    """How to run, split and give up on one kind of job.

    ``work`` runs in a forked worker (a module-level function: the worker inherits everything the
    parent had loaded). ``split`` cuts a job in two, or returns [] for a job of one input.
    ``abandon`` is the result for that one input when it keeps killing its worker."""

    work: Callable[[J], R]
    split: Callable[[J], list[J]]
    abandon: Callable[[J, str], R]


@dataclass
class _Slot(Generic[J, R]):
    job: J
    result: R | None = None
    done: bool = False
    solo_deaths: int = 0


@dataclass
class WorkerDeaths:
    """What the run survived: pools broken by a dying worker, and the inputs given up on."""

    broken_pools: int = 0
    abandoned: int = 0
    exit_codes: list[int] = field(default_factory=list)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "died"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class ForkedRunner(Generic[J, R]):
    """Runs a stream of jobs on `workers` forked processes, at most 2 per worker in flight, and
    yields their results in input order (see the module docstring for worker deaths)."""

    def __init__(self, lane: Lane[J, R], workers: int) -> None:
        self.lane = lane
        self.workers = workers
        self.deaths = WorkerDeaths()
        self._pool: ProcessPoolExecutor | None = None

    def _submit(self, slot: _Slot[J, R]) -> Future[R]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        return self._pool.submit(self.lane.work, slot.job)

    def _discard_pool(self) -> list[int]:
        """Shut the broken pool down; the exit codes of its workers that died on their own."""
        pool, self._pool = self._pool, None
        if pool is None:
            return []
        processes = list(getattr(pool, "_processes", {}).values())  # best effort, for the message only
        pool.shutdown(wait=True, cancel_futures=True)
        return [p.exitcode for p in processes if p.exitcode not in (None, 0, -signal.SIGTERM)]

    def run(self, jobs: Iterable[J]) -> Iterator[R]:
        pending = iter(jobs)
        exhausted = False
        slots: deque[_Slot[J, R]] = deque()  # input order, from the first result not yet yielded
        suspects: deque[_Slot[J, R]] = deque()  # to run alone, in input order
        in_flight: dict[Future[R], _Slot[J, R]] = {}
        try:
            while True:
                while slots and slots[0].done:
                    yield slots.popleft().result  # type: ignore[misc]
                if exhausted and not slots:
                    return
                if suspects:
                    if not in_flight:
                        slot = suspects.popleft()
                        in_flight[self._submit(slot)] = slot
                else:
                    while not exhausted and len(in_flight) < 2 * self.workers:
                        try:
                            job = next(pending)
                        except StopIteration:
                            exhausted = True
                            break
                        slots.append(_Slot(job))
                        in_flight[self._submit(slots[-1])] = slots[-1]
                if not in_flight:
                    continue
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                if not any(_broke(f) for f in finished):
                    for future in finished:
                        slot = in_flight.pop(future)
                        slot.result, slot.done = future.result(), True
                    continue
                self._survive(in_flight, slots, suspects)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def _survive(
        self, in_flight: dict[Future[R], _Slot[J, R]], slots: deque[_Slot[J, R]], suspects: deque[_Slot[J, R]]
    ) -> None:
        """A worker died: keep what finished, queue the rest to run alone, deal with a lone culprit."""
        wait(in_flight)  # the broken pool fails every job it still had, at once
        alone = len(in_flight) == 1
        unfinished: list[_Slot[J, R]] = []
        for future, slot in in_flight.items():
            if _broke(future):
                unfinished.append(slot)
            else:
                slot.result, slot.done = future.result(), True
        in_flight.clear()
        codes = self._discard_pool()
        self.deaths.broken_pools += 1
        self.deaths.exit_codes.extend(codes)
        how = describe_exit(codes[0] if codes else None)
        if not (alone and len(unfinished) == 1):
            log.warning("a worker process %s; its %d unfinished job(s) run again, one at a time", how, len(unfinished))
            suspects.extendleft(reversed(unfinished))
            return
        culprit = unfinished[0]
        parts = self.lane.split(culprit.job)
        if parts:
            log.warning("a worker process %s on a job run alone; it is split to find the input", how)
            index = slots.index(culprit)
            halves = [_Slot[J, R](part) for part in parts]
            del slots[index]
            for offset, half in enumerate(halves):
                slots.insert(index + offset, half)
            suspects.extendleft(reversed(halves))
            return
        culprit.solo_deaths += 1
        if culprit.solo_deaths < SOLO_DEATHS_TO_ABANDON:
            suspects.appendleft(culprit)
            return
        log.warning("a worker process %s on one input %d times: that input is given up on", how, culprit.solo_deaths)
        self.deaths.abandoned += 1
        culprit.result = self.lane.abandon(culprit.job, f"the worker process enriching it {how}")
        culprit.done = True


def _broke(future: Future[Any]) -> bool:
    return isinstance(future.exception(), BrokenProcessPool)
