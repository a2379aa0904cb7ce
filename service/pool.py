"""The pool's supervisor (`gat-tune worker`): starts one slot process per device slot,
restarts a slot that dies, forwards SIGTERM, and returns when every slot has exited.

It does not import the trainer, nor torch except to count GPUs for ``--devices auto``: a
slot process imports them itself (service.worker.run_slot), so a pool on named devices does
not pay for torch's import (1-2 s on a 2-core CPU) before its slots pay for it again.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any

from service import db
from service.config import Settings

__all__ = ["RestartBackoff", "StartLine", "resolve_devices", "run_pool"]

log = logging.getLogger(__name__)


def resolve_devices(spec: str) -> list[str]:
    """``auto`` → every visible GPU, else the CPU; or a comma-separated list."""
    if spec == "auto":
        import torch

        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    for d in devices:
        if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ValueError(f"--devices: '{d}' is not cpu or cuda:N")
    return devices


class RestartBackoff:
    """When to start again a slot that died: at once the first time; after a slot that keeps
    dying soon after its start, FIRST seconds, then twice as long each time up to CAP. A slot
    that stayed up STABLE seconds starts the count again."""

    FIRST, CAP, STABLE = 1.0, 60.0, 60.0

    def __init__(self) -> None:
        self.deaths = 0  # in a row, each within STABLE seconds of its start

    def delay(self, lived: float) -> float:
        """Seconds to wait before the next start, after a slot died having lived ``lived`` s."""
        self.deaths = 1 if lived >= self.STABLE else self.deaths + 1
        return 0.0 if self.deaths == 1 else min(self.CAP, self.FIRST * 2 ** (self.deaths - 2))


UPGRADE_WAIT = 120.0  # seconds a pool waits for an unreachable database at start-up


class StartLine:
    """Where a pool's first slots wait for each other after registering, before any claims:
    a slot that claimed before its siblings were there to be seen would pack the trials they
    could train on other cores (a packing slot leaves a trial to an idle slot it can see).

    Shared memory without locks, polled: no slot's death can block another process (a
    multiprocessing Barrier's abort waits for a waiter that was killed). The supervisor
    releases it when a slot dies or the pool stops; a restarted slot does not wait.
    """

    TIMEOUT = 60.0  # seconds a slot waits at most for its siblings to register

    def __init__(self, ctx: Any, slots: int) -> None:
        self.arrived = ctx.RawArray("b", slots)  # one flag per slot: no two write the same byte
        self.released = ctx.RawValue("b", 0)

    def release(self) -> None:
        self.released.value = 1

    def arrive_and_wait(self, index: int, timeout: float = TIMEOUT, stop: threading.Event | None = None) -> None:
        """Say that slot ``index`` is here, then wait until all are (or the line is
        released, ``stop`` is set, or ``timeout`` seconds pass)."""
        self.arrived[index] = 1
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout
        while not (self.released.value or all(self.arrived)) and time.monotonic() < deadline:
            if stop.wait(0.1):
                return


def run_pool(settings: Settings, devices: list[str], per_device: int, *, idle_exit: float | None = None) -> int:
    """Start and supervise the slots; returns when all have exited (SIGTERM, or idle_exit)."""
    waiting_since = time.monotonic()
    db.retry(
        lambda: db.upgrade(settings),
        "database upgrade",
        give_up=lambda: time.monotonic() - waiting_since > UPGRADE_WAIT,
    )
    ctx = mp.get_context("spawn")
    slots = [d for d in devices for _ in range(per_device)]
    cpu_slots = sum(1 for d in slots if d == "cpu")
    threads = max(1, (os.cpu_count() or 1) // max(cpu_slots, 1))
    settings_json = settings.model_dump_json()
    stopping = threading.Event()
    stopped_by: list[str] = []  # the signals; the loop below says the first (a handler should not log)
    said = False

    start_line = StartLine(ctx, len(slots))

    def start(device: str, place: int | None = None) -> mp.process.BaseProcess:
        """A slot process; ``place``: its index on the start line (None: a restart, no wait)."""
        args = (device, settings_json, threads, idle_exit, None if place is None else (start_line, place))
        p = ctx.Process(target=_slot_main, args=args, name=f"slot-{device}")
        p.start()
        log.info("slot on %s: process %s", device, p.pid)
        return p

    procs = [start(d, i) for i, d in enumerate(slots)]
    started = [time.monotonic() for _ in slots]
    backoff = [RestartBackoff() for _ in slots]
    due: list[float | None] = [None for _ in slots]  # a restart's time, while one is waiting

    def forward(signum: int, frame: Any) -> None:  # the loop below says it, then forwards it
        stopped_by.append(signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        if stopped_by and not said:
            alive = [p.pid for p in procs if p.is_alive() and p.pid is not None]
            log.info(
                "%s: stopping %d slot(s); running trials are checkpointed and re-queued", stopped_by[0], len(alive)
            )
            said = True
            start_line.release()  # no slot waits for another that is stopping
            for pid in alive:
                os.kill(pid, signal.SIGTERM)
        for i, p in enumerate(procs):
            if p.is_alive() or p.exitcode == 0 or stopping.is_set():
                continue
            now = time.monotonic()
            if due[i] is None:
                start_line.release()  # the others do not wait for this one
                wait = backoff[i].delay(now - started[i])
                later = f" in {wait:.0f} s (it keeps dying)" if wait else ""
                log.warning(
                    "slot on %s (process %s) died with %s; starting another%s", slots[i], p.pid, p.exitcode, later
                )
                due[i] = now + wait
            if now >= (due[i] or 0.0):
                procs[i], started[i], due[i] = start(slots[i]), time.monotonic(), None
        if all(not p.is_alive() for p in procs) and (said or all(p.exitcode == 0 for p in procs)):
            break
        if said:
            time.sleep(0.5)
        else:
            stopping.wait(0.5)  # a signal wakes it at once: its handler sets the event
    log.info("pool stopped" if stopping.is_set() else "pool idle: every slot has exited")
    return 0


def _slot_main(
    device: str, settings_json: str, threads: int, idle_exit: float | None, start: tuple[StartLine, int] | None
) -> None:
    """A spawned slot's entry point: imports torch and the trainer there, not here."""
    from service.worker import run_slot

    run_slot(device, settings_json, threads, idle_exit, start=start)
