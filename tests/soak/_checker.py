"""The soak's checker: reads the ledger with plain SQL and lists every broken invariant.

Per job, over the ids of its window that exist in the metadata table:

- every id lies in exactly one range whose last attempt ``succeeded``, or in one dead range;
- no two ranges of a job overlap (every attempt of a range has the same bounds);
- no attempt is still ``running``; nothing is waiting for a retry after the drain;
- attempt numbers of a range are 1, 2, ... in ledger order; only the last one may have
  succeeded, and at most one did;
- every ``failed`` attempt has error type, message, traceback and fingerprint;
- caps hold (a heavier-than-cap row only alone, flagged ``oversized``); the recorded count
  and weight are the range's real ones;
- the side-effect log: every id processed by a succeeded attempt was processed by exactly
  one, and a succeeded attempt processed exactly the rows of its range.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ("Findings", "check_ledger")

_LIMIT = 25  # violations listed per kind
_SHOWN = (
    "id",
    "attempt",
    "status",
    "owner",
    "token",
    "processing_start",
    "processing_end",
    "expires_at",
    "retry_after",
    "failures",
    "dead",
)


@dataclass
class Findings:
    """What the checker found."""

    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    lost: int = 0
    _per_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def violate(self, kind: str, message: str) -> None:
        self._per_kind[kind] += 1
        if self._per_kind[kind] <= _LIMIT:
            self.violations.append(f"[{kind}] {message}")
        elif self._per_kind[kind] == _LIMIT + 1:
            self.violations.append(f"[{kind}] ... more")


async def _rows(engine: AsyncEngine, sql: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(sa.text(sql))).mappings()]


async def check_ledger(
    engine: AsyncEngine, jobs: list[dict[str, Any]], fenced: dict[str, dict[str, Any]]
) -> Findings:
    """Check the drained ledger; ``fenced`` maps zombie tokens to their row when fenced."""
    found = Findings()
    attempts = await _rows(
        engine,
        "SELECT id, job, meta_id_start, meta_id_end, count, weight, attempt, status, token, "
        "dead, oversized, retry_after, error_type, error_message, logging, fingerprint, "
        "processing_start, processing_end, owner, expires_at, failures "
        "FROM inventory ORDER BY job, meta_id_start, id",
    )
    files = await _rows(engine, "SELECT id, size_in_bytes FROM files ORDER BY id")
    effects = await _rows(engine, "SELECT job, meta_id, token FROM soak_effects")
    weight_of = {int(f["id"]): int(f["size_in_bytes"] or 0) for f in files}
    ids = sorted(weight_of)
    by_token = {a["token"]: a for a in attempts if a["token"]}

    status_counts: dict[str, int] = defaultdict(int)
    for a in attempts:
        status_counts[str(a["status"])] += 1
        if a["status"] == "running":
            found.violate("running", f"attempt {a['id']} of {a['job']} is still running")
        if a["status"] == "failed":
            missing = [
                k for k in ("error_type", "error_message", "logging", "fingerprint") if not a[k]
            ]
            if missing:
                found.violate("failure-record", f"failed attempt {a['id']} lacks {missing}")
    found.counts.update({f"status_{k}": v for k, v in sorted(status_counts.items())})
    found.counts["attempts"] = len(attempts)
    found.counts["retries"] = sum(1 for a in attempts if int(a["attempt"]) > 1)
    found.counts["expiries"] = status_counts.get("expired", 0)

    # Side effects of succeeded attempts, per job and id.
    done_by: dict[tuple[str, int], set[str]] = defaultdict(set)
    processed: dict[str, set[int]] = defaultdict(set)
    for e in effects:
        token = e["token"]
        attempt = by_token.get(token)
        if attempt is None:
            found.violate("effects", f"effect of unknown token {token} for id {e['meta_id']}")
            continue
        processed[token].add(int(e["meta_id"]))
        if attempt["status"] == "succeeded":
            done_by[(str(e["job"]), int(e["meta_id"]))].add(token)
    for (job_name, meta_id), tokens in sorted(done_by.items()):
        if len(tokens) > 1:
            found.duplicates += 1
            found.violate(
                "duplicate", f"{job_name}: id {meta_id} processed by succeeded {sorted(tokens)}"
            )
    found.counts["effects"] = len(effects)

    for job in jobs:
        _check_job(
            found, job, [a for a in attempts if a["job"] == job["name"]], ids, weight_of, processed
        )

    for token, before in fenced.items():
        after = by_token.get(token)
        if (
            after is None
            or after["status"] != before["status"]
            or str(after["processing_end"]) != str(before["processing_end"])
        ):
            found.violate(
                "fence", f"zombie attempt changed after it was fenced: {before} -> {after}"
            )
    return found


def _check_job(
    found: Findings,
    job: dict[str, Any],
    attempts: list[dict[str, Any]],
    ids: list[int],
    weight_of: dict[int, int],
    processed: dict[str, set[int]],
) -> None:
    name = job["name"]
    lo = job.get("id_start")
    hi = job.get("id_end")
    window = [i for i in ids if (lo is None or i >= lo) and (hi is None or i <= hi)]
    ranges: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in attempts:
        ranges[int(a["meta_id_start"])].append(a)
    covered: dict[int, str] = {}  # id -> "succeeded" | "dead" | other final state
    previous_end: int | None = None
    for start in sorted(ranges):
        tries = sorted(ranges[start], key=lambda a: int(a["id"]))
        ends = {int(a["meta_id_end"]) for a in tries}
        end = max(ends)
        if len(ends) > 1:
            found.violate("overlap", f"{name}: range starting {start} has ends {sorted(ends)}")
        if previous_end is not None and start <= previous_end:
            found.violate(
                "overlap", f"{name}: range [{start}, {end}] overlaps one ending {previous_end}"
            )
        previous_end = end if previous_end is None else max(previous_end, end)
        numbers = [int(a["attempt"]) for a in tries]
        if numbers != list(range(1, len(tries) + 1)):
            found.violate("attempt-numbers", f"{name} [{start}, {end}]: attempts {numbers}")
            for a in tries:
                found.violate("attempt-rows", str({k: a[k] for k in _SHOWN}))
        succeeded = [a for a in tries if a["status"] == "succeeded"]
        last = tries[-1]
        if len(succeeded) > 1 or (succeeded and succeeded[0] is not last):
            found.violate(
                "succeeded-twice",
                f"{name} [{start}, {end}]: {[(a['attempt'], a['status']) for a in tries]}",
            )
        if last["status"] == "succeeded":
            final = "succeeded"
        elif last["status"] in ("failed", "expired") and bool(last["dead"]):
            final = "dead"
        else:
            final = (
                f"{last['status']} (dead={bool(last['dead'])}, retry_after={last['retry_after']})"
            )
        rows = ids[bisect_left(ids, start) : bisect_right(ids, end)]
        for i in rows:
            covered[i] = final
        _check_caps(found, job, tries, rows, weight_of)
        if final == "succeeded":
            did = processed.get(str(last["token"]), set())
            if did != set(rows):
                found.violate(
                    "effects",
                    f"{name} [{start}, {end}]: succeeded attempt {last['id']} processed "
                    f"{len(did)} ids, the range has {len(rows)} (missing "
                    f"{sorted(set(rows) - did)[:5]}, extra {sorted(did - set(rows))[:5]})",
                )
        if (lo is not None and start < lo) or (hi is not None and end > hi):
            found.violate("window", f"{name}: range [{start}, {end}] outside [{lo}, {hi}]")
    lost = [i for i in window if covered.get(i) not in ("succeeded", "dead")]
    if lost:
        found.lost += len(lost)
        states = sorted({covered.get(i, "never handed out") for i in lost})
        found.violate("lost", f"{name}: {len(lost)} ids lost, e.g. {lost[:8]}: {states}")
    found.counts[f"dead_ids_{name}"] = sum(1 for i in window if covered.get(i) == "dead")


def _check_caps(
    found: Findings,
    job: dict[str, Any],
    tries: list[dict[str, Any]],
    rows: list[int],
    weight_of: dict[int, int],
) -> None:
    a = tries[0]
    count, weight = int(a["count"]), int(a["weight"])
    real_weight = sum(weight_of[i] for i in rows)
    where = f"{job['name']} [{a['meta_id_start']}, {a['meta_id_end']}]"
    if (count, weight) != (len(rows), real_weight):
        found.violate(
            "measure", f"{where}: ledger ({count}, {weight}), rows ({len(rows)}, {real_weight})"
        )
    cap_count, cap_weight = job.get("max_count"), job.get("max_weight")
    if cap_count is not None and count > cap_count:
        found.violate("cap", f"{where}: count {count} > max_count {cap_count}")
    if cap_weight is not None and weight > cap_weight and not (bool(a["oversized"]) and count == 1):
        found.violate("cap", f"{where}: weight {weight} > max_weight {cap_weight}")
