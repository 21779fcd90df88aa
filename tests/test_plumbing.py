from tests.helpers import create_meta_table, fetch_all


async def test_a_fresh_database_per_backend(db_url: str, backend: str) -> None:
    await create_meta_table(db_url, rows=1000)
    rows = await fetch_all(db_url, "SELECT count(*) AS n, sum(size_in_bytes) AS w FROM files")
    assert rows[0]["n"] == 1000
    assert int(rows[0]["w"]) == sum((i * 7919) % 1000 + 1 for i in range(1, 1001))
