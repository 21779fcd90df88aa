"""Database adapters for pybatchintory, found through the ``pybatchintory.adapters`` entry points.

``_sqlalchemy`` holds the one SQLAlchemy Core implementation every built-in adapter shares;
``sqlite``, ``postgres`` and ``mysql`` hold only what differs between those databases.
"""
