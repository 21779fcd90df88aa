"""Finds the adapter for a URL through the ``pybatchintory.adapters`` entry points."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pybatchintory.errors import UnsupportedURL
from pybatchintory.protocols import StoreAdapter

__all__ = ("ENTRY_POINT_GROUP", "adapter_for", "normalise_url")

ENTRY_POINT_GROUP = "pybatchintory.adapters"


@cache
def _load(name: str) -> StoreAdapter:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    for point in found:
        adapter: StoreAdapter = point.load()
        return adapter
    known = sorted(point.name for point in entry_points(group=ENTRY_POINT_GROUP))
    raise UnsupportedURL(
        f"no pybatchintory adapter for {name!r} URLs; installed adapters: "
        f"{', '.join(known) or 'none (is pybatchintory installed?)'}"
    )


def _parse(url: str | URL) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise UnsupportedURL(f"not a database URL: {exc}") from None


def adapter_for(url: str | URL) -> tuple[StoreAdapter, str]:
    """The adapter for ``url`` and the URL with its async driver filled in.

    Raises:
        UnsupportedURL: No adapter is registered for the URL's scheme.
        MissingDriver: The adapter's driver is not installed (names the extra).
    """
    parsed = _parse(url)
    adapter = _load(parsed.get_backend_name())
    driver = parsed.get_driver_name() if "+" in parsed.drivername else adapter.default_driver()
    adapter.check_driver(driver)
    full = parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}")
    return adapter, full.render_as_string(hide_password=False)


def normalise_url(url: str | URL) -> str:
    """``url`` with its password hidden, for messages and logs."""
    return _parse(url).render_as_string(hide_password=True)
