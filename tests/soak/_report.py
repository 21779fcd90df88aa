"""The report of one soak run: one line with operations, faults, duplicates, lost ids."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tests.soak._checker import Findings
from tests.soak._plan import SoakConfig

__all__ = ("Report",)


@dataclass
class Report:
    """The outcome of one run."""

    backend: str
    config: SoakConfig
    findings: Findings
    faults: Counter[str] = field(default_factory=Counter)
    ops: int = 0
    wall: float = 0.0
    problems: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        return [*self.problems, *self.findings.violations]

    def line(self) -> str:
        c = self.findings.counts
        faults = ",".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        phases = " ".join(f"{k}={v:.1f}" for k, v in self.phases.items())
        return (
            f"SOAK backend={self.backend} seed={self.config.seed} workers={self.config.workers} "
            f"seconds={self.config.seconds:g} ops={self.ops} leases={c.get('attempts', 0)} "
            f"retries={c.get('retries', 0)} expiries={c.get('expiries', 0)} "
            f"faults[{faults}] duplicates={self.findings.duplicates} "
            f"lost={self.findings.lost} violations={len(self.violations)} wall={self.wall:.1f}s "
            f"({phases})"
        )
