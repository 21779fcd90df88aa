"""Faults the controller injects into worker processes, on the plan's schedule.

A mixin of the controller: SIGKILL of a leaseholder (and a replacement worker), SIGSTOP of
a leaseholder until another worker's acquire expired its lease then SIGCONT (the zombie's
attempts are remembered, to check that its late settle changed nothing), dropped
connections, a one-database outage and a PostgreSQL restart.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio

from tests.soak._faults import ConnectionKiller, restart_postgres
from tests.soak._plan import FaultEvent, Plan, SoakConfig
from tests.soak._pool import SoakPool, SoakProcess

__all__ = ("Injector",)


class Injector:
    """Fault injection, mixed into the soak controller."""

    if TYPE_CHECKING:
        t0: float
        config: SoakConfig
        plan: Plan
        pool: SoakPool
        faults: Counter[str]
        fenced: dict[str, dict[str, Any]]
        killer: ConnectionKiller | None
        frozen: set[int]

        async def patient(self, text: str, **params: Any) -> list[dict[str, Any]]: ...

    async def until(self, at: float) -> None:
        delay = self.t0 + at - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)

    async def running_attempts(self, owner: str | None = None) -> list[dict[str, Any]]:
        rows = await self.patient(
            "SELECT id, job, owner, token, status, processing_end FROM inventory "
            "WHERE status = 'running' ORDER BY id"
        )
        return [r for r in rows if owner is None or r["owner"] == owner]

    async def pick_leaseholder(self, pick: float) -> SoakProcess | None:
        """A live, running (not frozen) worker that holds a lease right now (polls up to 3 s)."""
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            owners = sorted({str(r["owner"]) for r in await self.running_attempts()})
            holders = [
                p
                for o in owners
                if (p := self.pool.by_owner(o))
                and p.proc.poll() is None
                and not p.expected_exit  # being killed
                and p.pid not in self.frozen
            ]
            if holders:
                return holders[int(pick * len(holders)) % len(holders)]
            await anyio.sleep(0.05)
        return None

    async def inject(self, fault: FaultEvent) -> None:
        if fault.kind == "sigkill":
            victim = await self.pick_leaseholder(fault.pick)
            if victim is None:
                self.faults["sigkill_missed"] += 1
                return
            victim.expected_exit = True
            os.kill(victim.pid, signal.SIGKILL)
            while victim.proc.poll() is None:  # noqa: ASYNC110 - polling a child process
                await anyio.sleep(0.02)
            self.pool.start(victim.slot, victim.generation + 1)
            self.faults["sigkill"] += 1
        elif fault.kind == "sigstop":
            await self.freeze(fault)
        elif fault.kind == "conn_kill":
            assert self.killer is not None
            self.faults[await self.killer.kill(fault.target, fault.pick)] += 1
        elif fault.kind == "db_outage":
            assert self.killer is not None
            dropped = await self.killer.outage(0.3 + 0.9 * fault.pick)
            self.faults["db_outage"] += 1
            self.faults["db_outage_dropped"] += dropped
        elif fault.kind == "pg_restart":
            seconds = await restart_postgres()
            if self.killer is not None:
                await self.killer.aclose()  # its connection did not survive the restart
            self.faults["pg_restart"] += 1
            self.faults["pg_restart_ready_ms"] += int(seconds * 1000)

    async def freeze(self, fault: FaultEvent) -> None:
        """SIGSTOP a leaseholder past its TTL; once another worker expired its lease, SIGCONT."""
        victim = await self.pick_leaseholder(fault.pick)
        if victim is None:
            self.faults["sigstop_missed"] += 1
            return
        self.frozen.add(victim.pid)
        try:
            os.kill(victim.pid, signal.SIGSTOP)
        except ProcessLookupError:  # it exited by itself a moment ago: the supervisor saw
            self.frozen.discard(victim.pid)
            self.faults["sigstop_missed"] += 1
            return
        frozen_at = time.monotonic()
        try:
            with anyio.move_on_after(8 * self.config.lease_ttl) as bound:
                await self.watch_zombie(victim)
            if bound.cancelled_caught:
                # SQLite: the victim may hold the one write lock; nobody can expire it then.
                self.faults["sigstop_unexpired"] += 1
        finally:
            self.frozen.discard(victim.pid)
            if victim.proc.poll() is None:
                os.kill(victim.pid, signal.SIGCONT)
        self.faults["sigstop"] += 1
        self.faults["sigstop_frozen_ms"] += int((time.monotonic() - frozen_at) * 1000)

    async def watch_zombie(self, victim: SoakProcess) -> None:
        """Wait until the stopped victim's leases were expired by another worker's acquire."""
        while not victim.stopped() and victim.proc.poll() is None:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        held = {r["token"] for r in await self.running_attempts(victim.owner)}
        deadline = time.monotonic() + 5 * self.config.lease_ttl
        rows: list[dict[str, Any]] = []
        while held and time.monotonic() < deadline:
            await anyio.sleep(0.1)
            rows = await self.patient(
                "SELECT id, token, status, processing_end FROM inventory WHERE owner = :o",
                o=victim.owner,
            )
            if all(r["status"] != "running" for r in rows if r["token"] in held):
                break
        for r in rows:
            if r["token"] in held and r["status"] == "expired":
                self.fenced[str(r["token"])] = r
                self.faults["zombie_fenced"] += 1

    async def timed(self, fault: FaultEvent) -> None:
        began = time.monotonic()
        await self.inject(fault)
        self.faults[f"{fault.kind}_ms"] += int((time.monotonic() - began) * 1000)

    async def inject_all(self) -> None:
        """Inject the plan's faults on schedule, within ``config.seconds``.

        A freeze (SIGSTOP past the TTL) lasts several seconds, so it runs beside the other
        faults, one freeze at a time; a sigstop that comes while one is in flight is
        counted as ``sigstop_overlap`` and skipped. Injections that block (waiting for a
        leaseholder, for a statement in flight) can put the schedule behind the clock:
        faults still due when ``config.seconds`` is up are counted as ``late_skipped``
        instead of stretching the run past its length.
        """
        deadline = self.t0 + self.config.seconds
        async with anyio.create_task_group() as freezes:
            freezing = False

            async def freeze_one(fault: FaultEvent) -> None:
                nonlocal freezing
                try:
                    await self.timed(fault)
                finally:
                    freezing = False

            for index, fault in enumerate(self.plan.faults):
                await self.until(fault.at)
                if time.monotonic() >= deadline:
                    self.faults["late_skipped"] += len(self.plan.faults) - index
                    break
                if fault.kind == "sigstop":
                    if freezing:
                        self.faults["sigstop_overlap"] += 1
                        continue
                    freezing = True
                    freezes.start_soon(freeze_one, fault)
                else:
                    await self.timed(fault)
            await self.until(self.config.seconds)

    # -- drain ----------------------------------------------------------------------------
