"""Copy ``results/latest.md`` into README.md between its markers.

``python -m benchmarks._readme`` (after ``make bench``).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    latest = (HERE / "results" / "latest.md").read_text().strip()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{latest}\n{END}{tail}")


if __name__ == "__main__":
    main()
