"""The exceptions pybatchintory raises.

Every exception derives from one root, so ``except pbi.PybatchintoryError`` catches them all::

    PybatchintoryError
    ├── ConfigurationError          bad input, raised before anything is written
    │   ├── InvalidArgument         a limit <= 0, id_start > id_end, a raw string filter, ...
    │   ├── UnknownTable            the metadata table does not exist
    │   ├── UnknownColumn           a named column does not exist
    │   ├── InvalidColumn           a column exists but has the wrong type (non-integer id)
    │   ├── UnsupportedURL          no adapter for the URL's scheme
    │   ├── MissingDriver           the adapter exists, its driver is not installed
    │   └── EventLoopRunning        a synchronous call made inside a running event loop
    ├── JobConflict                 a job reused with another source, window or filter
    ├── UnknownJob                  an operator call names a job that was never recorded
    ├── NoBatchAvailable            nothing to hand out right now
    ├── SchemaMismatch              the inventory's schema is older or newer than this code
    ├── LeaseLost                   the lease expired or was taken over; the settle changed nothing
    │   └── AlreadySettled          this handle was settled before
    └── StoreError                  the inventory database failed
        ├── StoreUnavailable        cannot connect, or the connection dropped
        └── StoreConflict           deadlock or serialisation failure that outlived its retries
"""

from __future__ import annotations

__all__ = (
    "AlreadySettled",
    "ConfigurationError",
    "EventLoopRunning",
    "InvalidArgument",
    "InvalidColumn",
    "JobConflict",
    "LeaseLost",
    "MissingDriver",
    "NoBatchAvailable",
    "PybatchintoryError",
    "SchemaMismatch",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "UnknownColumn",
    "UnknownJob",
    "UnknownTable",
    "UnsupportedURL",
)


class PybatchintoryError(Exception):
    """Root of every exception raised by pybatchintory."""


class ConfigurationError(PybatchintoryError, ValueError):
    """Bad input: raised before anything is written."""


class InvalidArgument(ConfigurationError):
    """An argument is out of range or of the wrong kind."""


class UnknownTable(ConfigurationError):
    """The metadata table does not exist in its database."""


class UnknownColumn(ConfigurationError):
    """A named column does not exist in the metadata table."""


class InvalidColumn(ConfigurationError):
    """A column exists but cannot serve its role (for example a non-integer id)."""


class UnsupportedURL(ConfigurationError):
    """No adapter is registered for the URL's scheme."""


class MissingDriver(ConfigurationError, ImportError):
    """The adapter for the URL exists but its database driver is not installed."""


class EventLoopRunning(ConfigurationError, RuntimeError):
    """A synchronous call (``pbi.acquire_batch``, ``pybatchintory.sync``) inside a running loop.

    Blocking there would stall every task of the loop; the message names the async spelling.
    """


class JobConflict(PybatchintoryError):
    """A job name was reused with another source, window or filter."""


class UnknownJob(PybatchintoryError, LookupError):
    """An operation names a job that the inventory has never recorded."""


class NoBatchAvailable(PybatchintoryError):
    """There is nothing to hand out for the job right now."""


class SchemaMismatch(PybatchintoryError):
    """The inventory's schema version differs from the one this code needs.

    An older schema is brought up to date with ``pybatchintory migrate``; a newer one needs
    a newer pybatchintory.
    """


class LeaseLost(PybatchintoryError):
    """The lease of an attempt expired or was taken over; the settle changed nothing."""


class AlreadySettled(LeaseLost):
    """The batch was already settled by this handle; a second settle changes nothing."""


class StoreError(PybatchintoryError):
    """The inventory database failed."""


class StoreUnavailable(StoreError):
    """The inventory database cannot be reached, or the connection dropped."""


class StoreConflict(StoreError):
    """A deadlock or serialisation failure persisted through every retry."""
