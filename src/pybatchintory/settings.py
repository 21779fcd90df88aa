"""Settings from the environment or a ``.env`` file (prefix ``PYBATCHINTORY_``).

Build them once where the program starts and pass them down::

    settings = Settings()                  # reads PYBATCHINTORY_* and .env
    inv = Inventory.from_settings(settings)
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ("Settings",)


class Settings(BaseSettings):
    """pybatchintory's configuration.

    URLs are secrets: they may carry passwords, so they are never printed or logged.
    """

    model_config = SettingsConfigDict(
        env_prefix="PYBATCHINTORY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    inventory_url: SecretStr = Field(
        default=SecretStr("sqlite+aiosqlite:///pybatchintory.db"),
        description="The inventory database (SQLAlchemy URL).",
    )
    meta_url: SecretStr | None = Field(
        default=None, description="The metadata database; unset: the inventory's."
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

    @field_validator("table_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if value and not value.replace("_", "").isalnum():
            raise ValueError("table_prefix may contain only letters, digits and underscores")
        return value
