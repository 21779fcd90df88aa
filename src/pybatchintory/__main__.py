"""``python -m pybatchintory``: the same program as the ``pybatchintory`` command."""

from pybatchintory.cli import main

raise SystemExit(main())
