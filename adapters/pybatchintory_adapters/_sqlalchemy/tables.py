"""The inventory's tables: the seed's ledger columns by name, plus leases, errors and jobs."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from pybatchintory_adapters._sqlalchemy.types import LedgerId, LedgerJSON, LedgerWeight, Timestamp

__all__ = ("SCHEMA_VERSION", "Tables", "build_tables")

SCHEMA_VERSION = 3
"""The version these tables describe; ``migrations`` holds the steps up to it."""


@dataclass(frozen=True)
class Tables:
    """The inventory's tables, named with the configured prefix."""

    metadata: sa.MetaData
    inventory: sa.Table
    jobs: sa.Table
    schema: sa.Table


def build_tables(prefix: str = "") -> Tables:
    """Describe the tables; ``prefix`` is prepended to every table and index name."""
    metadata = sa.MetaData()
    name = f"{prefix}inventory"
    inventory = sa.Table(
        name,
        metadata,
        sa.Column("id", LedgerId(), primary_key=True, autoincrement=True),
        # The seed's columns, by name.
        sa.Column("meta_table", sa.String(255), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("job_identifier", sa.String(255)),
        sa.Column("job_result", LedgerJSON()),
        sa.Column("processing_start", Timestamp()),
        sa.Column("processing_end", Timestamp()),
        sa.Column("meta_id_start", sa.BigInteger(), nullable=False),
        sa.Column("meta_id_end", sa.BigInteger(), nullable=False),
        # Version 3: NUMERIC(38, 10), for FLOAT and NUMERIC weight columns (was BIGINT).
        sa.Column("weight", LedgerWeight(), nullable=False, default=0),
        sa.Column("count", sa.BigInteger(), nullable=False, default=0),
        sa.Column("attempt", sa.Integer(), nullable=False, default=1),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("logging", sa.Text()),
        sa.Column("config", LedgerJSON()),
        # Leases.
        sa.Column("owner", sa.String(255)),
        sa.Column("token", sa.String(64)),
        sa.Column("heartbeat_at", Timestamp()),
        sa.Column("expires_at", Timestamp()),
        # Retries: set only on the newest attempt of a range that waits for another one.
        sa.Column("retry_after", Timestamp()),
        sa.Column("failures", sa.Integer(), nullable=False, default=0),
        sa.Column("dead", sa.Boolean(), nullable=False, default=False),
        sa.Column("oversized", sa.Boolean(), nullable=False, default=False),
        # Errors.
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text()),
        sa.Column("fingerprint", sa.String(64)),
        sa.Column("code_version", sa.String(255)),
        sa.Index(f"ix_{name}_job_start", "job", "meta_id_start"),
        sa.Index(f"ix_{name}_job_retry", "job", "retry_after"),
        # (job, status, id): running leases for expiry, newest successes for ETA and status.
        sa.Index(f"ix_{name}_job_status", "job", "status", "id"),
        sa.Index(f"ix_{name}_job_dead", "job", "dead"),
        sa.Index(f"ix_{name}_owner_status", "owner", "status"),
        sa.Index(f"ix_{name}_job_fingerprint", "job", "fingerprint"),
        # Version 2: succeeded ranges in id order (InventorySource pages, audit).
        sa.Index(f"ix_{name}_job_status_start", "job", "status", "meta_id_start"),
    )
    jobs = sa.Table(
        f"{prefix}inventory_jobs",
        metadata,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("meta_table", sa.String(255), nullable=False),
        sa.Column("source", LedgerJSON(), nullable=False),
        sa.Column("id_start", sa.BigInteger()),
        sa.Column("id_end", sa.BigInteger()),
        sa.Column("cursor", sa.BigInteger()),
        sa.Column("created_at", Timestamp()),
        sa.Column("updated_at", Timestamp()),
        sa.Index(f"ix_{prefix}inventory_jobs_meta_table", "meta_table"),
    )
    schema = sa.Table(
        f"{prefix}inventory_schema",
        metadata,
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("applied_at", Timestamp()),
    )
    return Tables(metadata=metadata, inventory=inventory, jobs=jobs, schema=schema)
