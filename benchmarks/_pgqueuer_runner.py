"""Drive pgqueuer 1.6 from its own virtualenv: the reference for a tuned PostgreSQL queue.

``PGQ_PYTHON _pgqueuer_runner.py DSN`` installs pgqueuer's schema, then reads one JSON
command per line: ``{"enqueue": 20000}`` adds no-op jobs; ``{"batch": 10, "n": 2000}``
dequeues (``FOR UPDATE SKIP LOCKED``, marks picked) and acknowledges (moves to the log)
``n`` jobs, ``batch`` per dequeue, and answers with the elapsed time. This is pgqueuer's
own repository API, the two statements its consumer loop issues per batch.
"""

import asyncio
import json
import sys
import time
import uuid
from datetime import timedelta


async def main(dsn):
    import asyncpg
    from pgqueuer.queries import EntrypointExecutionParameter, Queries

    conn = await asyncpg.connect(dsn)
    queries = Queries.from_asyncpg_connection(conn)
    await queries.install()
    entrypoints = {"noop": EntrypointExecutionParameter(concurrency_limit=0)}
    manager = uuid.uuid4()
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if "enqueue" in command:
            n = command["enqueue"]
            for offset in range(0, n, 1000):
                k = min(1000, n - offset)
                await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
            print(json.dumps({"enqueued": n}), flush=True)
            continue
        batch, n = command["batch"], command["n"]
        done, calls = 0, 0
        began = time.perf_counter()
        while done < n:
            jobs = await queries.dequeue(
                batch_size=min(batch, n - done),
                entrypoints=entrypoints,
                queue_manager_id=manager,
                global_concurrency_limit=None,
                heartbeat_timeout=timedelta(seconds=30),
            )
            if not jobs:
                break
            await queries.log_jobs([(job, "successful", None) for job in jobs])
            done += len(jobs)
            calls += 1
        elapsed = time.perf_counter() - began
        print(json.dumps({"jobs": done, "calls": calls, "elapsed": elapsed}), flush=True)
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
