"""Drive pybatchintory 0.0.8 (the seed) from its own virtualenv; no import of ours.

``SEED_PYTHON _seed_runner.py SYNC_URL TABLE JOB`` then one JSON command per line on
stdin: ``{"caps": {"batch_count": 1000}, "n": 15, "seconds": 10, "start_at": 0}``; it
answers each with one JSON line: lease latencies (acquire + succeeded), ranges, errors.
The seed has no async API and no locking: this is its documented use, one call per batch.
"""

import json
import sys
import time
import traceback


def main():
    url, table, job = sys.argv[1:4]
    import pybatchintory
    from pybatchintory import acquire_batch, configure

    configure(settings={"INVENTORY_CONN": url, "INVENTORY_TABLE_NAME": "seed_inventory"})
    if url.startswith("mysql"):
        # The seed's table has VARCHAR columns without a length, which MySQL/MariaDB
        # refuse; give them one (the only change: what an operator would have to do).
        import sqlalchemy as sa

        for column in pybatchintory.sql.db.table_inventory.columns:
            if isinstance(column.type, sa.String) and not isinstance(column.type, sa.Enum):
                if column.type.length is None:
                    column.type.length = 255
    pybatchintory.sql.db.initialize_metadata_backend()
    cols = {"uid": "id", "item": "kind", "weight": "size_in_bytes"}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        samples, ranges, errors = [], [], []
        time.sleep(max(0.0, command.get("start_at", 0) - time.time()))
        began = time.perf_counter()
        deadline = began + command["seconds"]
        while time.perf_counter() < deadline and len(samples) < command["n"]:
            t0 = time.perf_counter()
            try:
                batch = acquire_batch(job, table, meta_table_cols=cols, **command["caps"])
                if batch is None:
                    break
                batch.succeeded()
            except Exception as exc:  # the seed raises on detected races, and sqlite locks
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if len(errors) > 1000:
                    break
                continue
            samples.append(time.perf_counter() - t0)
            ranges.append((batch.id_range.id_min, batch.id_range.id_max))
        print(
            json.dumps(
                {
                    "lease": samples,
                    "ranges": ranges,
                    "errors": errors[:20],
                    "error_count": len(errors),
                    "elapsed": time.perf_counter() - began,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
