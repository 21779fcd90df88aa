"""Thin layers on the public API for the hosts pipelines run in.

Each module imports its host lazily and needs its extra:

- ``pybatchintory.integrations.dask`` (``pip install pybatchintory[dask]``): worker loops on
  a ``distributed.Client``, each leasing, processing and settling on its own worker.
- ``pybatchintory.integrations.spark`` (``pip install pybatchintory[spark]``): driver-side
  leasing (one batch, one DataFrame, one write) and executor-side leasing inside
  ``mapPartitions``.

Nothing but the ledger is shared between the processes: every worker, executor or driver
opens its own ``pybatchintory.sync.SyncInventory`` on the inventory database.
"""
