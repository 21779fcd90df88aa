"""The shared SQLAlchemy Core implementation of the inventory store."""

from pybatchintory_adapters._sqlalchemy.adapter import SQLAlchemyAdapter
from pybatchintory_adapters._sqlalchemy.capabilities import Capabilities
from pybatchintory_adapters._sqlalchemy.store import SQLAlchemyStore

__all__ = ("Capabilities", "SQLAlchemyAdapter", "SQLAlchemyStore")
