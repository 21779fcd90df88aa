"""Settings from the environment or a ``.env`` file (prefix ``PYBATCHINTORY_``).

Build them once where the program starts and pass them down::

    settings = Settings()                  # reads PYBATCHINTORY_* and .env
    inv = Inventory.from_settings(settings)

The seed's (0.0.8) names are read too: ``PYBATCHINTORY_INVENTORY_CONN`` and
``PYBATCHINTORY_META_CONN`` for the two URLs, ``PYBATCHINTORY_ENV_FILE`` naming the dot-env
file instead of ``.env``, and ``configure(dot_env=..., settings={...})`` for the settings that
``Inventory.from_settings()`` and the top-level calls use when none are passed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pybatchintory.errors import ConfigurationError

__all__ = ("ENV_FILE_VARIABLE", "Settings", "configure", "current_settings")

ENV_FILE_VARIABLE = "PYBATCHINTORY_ENV_FILE"
"""Names the dot-env file to read instead of ``.env`` (the seed's variable)."""

_SEED_NAMES = {"inventory_conn": "inventory_url", "meta_conn": "meta_url"}


class Settings(BaseSettings):
    """pybatchintory's configuration.

    URLs are secrets: they may carry passwords, so they are never printed or logged.
    """

    model_config = SettingsConfigDict(
        env_prefix="PYBATCHINTORY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    inventory_url: SecretStr = Field(
        default=SecretStr("sqlite+aiosqlite:///pybatchintory.db"),
        description="The inventory database (SQLAlchemy URL); the seed's INVENTORY_CONN too.",
        validation_alias=AliasChoices(
            "PYBATCHINTORY_INVENTORY_URL", "PYBATCHINTORY_INVENTORY_CONN"
        ),
    )
    meta_url: SecretStr | None = Field(
        default=None,
        description="The metadata database; unset: the inventory's. The seed's META_CONN too.",
        validation_alias=AliasChoices("PYBATCHINTORY_META_URL", "PYBATCHINTORY_META_CONN"),
    )
    meta_table: str | None = Field(default=None, description="Default metadata table.")
    meta_id: str = Field(default="id", description="Id column of the metadata table.")
    meta_weight: str | None = Field(default=None, description="Weight column, if any.")
    meta_timestamp: str | None = Field(default=None, description="Timestamp column, if any.")
    table_prefix: str = Field(default="", description="Prefix of the inventory's tables.")
    lease_ttl: float = Field(default=60.0, gt=0, description="Lease time-to-live, seconds.")
    max_attempts: int = Field(default=3, ge=1, description="Failures before a range is dead.")
    retry_delay: float = Field(default=0.0, ge=0, description="Base backoff, seconds.")
    code_version: str | None = Field(default=None, description="Recorded with every failure.")
    owner: str | None = Field(default=None, description="Lease owner; unset: host:pid:random.")

    def __init__(self, **values: Any) -> None:
        if "_env_file" not in values:
            named = os.environ.get(ENV_FILE_VARIABLE)
            if named:
                values["_env_file"] = _existing(named, ENV_FILE_VARIABLE)
        super().__init__(**values)

    @field_validator("table_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if value and not value.replace("_", "").isalnum():
            raise ValueError("table_prefix may contain only letters, digits and underscores")
        return value


def _existing(path: str, named_by: str) -> str:
    if not Path(path).is_file():
        raise ConfigurationError(f"the dot-env file {path!r} named by {named_by} does not exist")
    return path


_lock = threading.Lock()
_configured: Settings | None = None


def configure(dot_env: str | None = None, settings: Mapping[str, Any] | None = None) -> Settings:
    """Set the settings used when none are passed (the seed's ``configure``).

    ``settings`` (the seed's upper-case names work: ``INVENTORY_CONN``, ``META_CONN``, or
    this package's: ``INVENTORY_URL``, ``META_TABLE``, ...) win over the environment, which
    wins over ``dot_env`` (or ``PYBATCHINTORY_ENV_FILE``, or ``.env``). Returns them.

    Raises:
        ConfigurationError: ``dot_env`` does not exist, or a value is invalid.
    """
    values: dict[str, Any] = {}
    for key, value in (settings or {}).items():
        name = key.lower().removeprefix("pybatchintory_")
        values[_SEED_NAMES.get(name, name)] = value
    if dot_env is not None:
        values["_env_file"] = _existing(dot_env, "configure(dot_env=...)")
    configured = Settings(**values)
    global _configured
    with _lock:
        _configured = configured
    return configured


def current_settings() -> Settings:
    """The settings of ``configure()``, else read now from the environment and dot-env file."""
    with _lock:
        configured = _configured
    return configured if configured is not None else Settings()
