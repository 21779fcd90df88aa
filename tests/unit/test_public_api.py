"""The public surface: exports, the error tree, settings, the adapter registry, bad input."""

from __future__ import annotations

import inspect
import os
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import pybatchintory as pbi
from pybatchintory import errors
from pybatchintory._registry import adapter_for, normalise_url

PASSWORD = "s3cret"
SECRET_URL = f"postgresql://u:{PASSWORD}@h/db"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PYBATCHINTORY_* variables and an empty working directory (no stray .env)."""
    for name in list(os.environ):
        if name.upper().startswith("PYBATCHINTORY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- exports ----------------------------------------------------------------------------------


def test_all_is_a_sorted_tuple_without_duplicates() -> None:
    assert isinstance(pbi.__all__, tuple)
    assert list(pbi.__all__) == sorted(pbi.__all__)
    assert len(set(pbi.__all__)) == len(pbi.__all__)


def test_every_exported_name_resolves() -> None:
    for name in pbi.__all__:
        assert getattr(pbi, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from pybatchintory import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(pbi.__all__)


def test_every_error_is_exported() -> None:
    for name in errors.__all__:
        assert name in pbi.__all__, name
        assert getattr(pbi, name) is getattr(errors, name)


def test_version_is_a_string() -> None:
    assert isinstance(pbi.__version__, str) and pbi.__version__


# -- the error tree ---------------------------------------------------------------------------


def _exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    ]


def test_every_error_derives_from_the_root() -> None:
    classes = _exception_classes()
    assert {c.__name__ for c in classes} == set(errors.__all__)
    for cls in classes:
        assert issubclass(cls, pbi.PybatchintoryError), cls
        assert issubclass(cls, Exception), cls


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (pbi.ConfigurationError, ValueError),
        (pbi.InvalidArgument, pbi.ConfigurationError),
        (pbi.UnknownTable, pbi.ConfigurationError),
        (pbi.UnknownColumn, pbi.ConfigurationError),
        (pbi.InvalidColumn, pbi.ConfigurationError),
        (pbi.UnsupportedURL, pbi.ConfigurationError),
        (pbi.MissingDriver, pbi.ConfigurationError),
        (pbi.MissingDriver, ImportError),
        (pbi.AlreadySettled, pbi.LeaseLost),
        (pbi.StoreUnavailable, pbi.StoreError),
        (pbi.StoreConflict, pbi.StoreError),
        (pbi.UnknownJob, LookupError),
    ],
)
def test_error_hierarchy(child: type[BaseException], parent: type[BaseException]) -> None:
    assert issubclass(child, parent)


@pytest.mark.parametrize(
    "cls", [pbi.JobConflict, pbi.NoBatchAvailable, pbi.LeaseLost, pbi.StoreError]
)
def test_runtime_errors_are_not_configuration_errors(cls: type[BaseException]) -> None:
    assert not issubclass(cls, pbi.ConfigurationError)
    assert not issubclass(cls, ValueError)


# -- settings ---------------------------------------------------------------------------------


def test_settings_defaults(clean_env: Path) -> None:
    settings = pbi.Settings()
    assert settings.inventory_url.get_secret_value() == "sqlite+aiosqlite:///pybatchintory.db"
    assert settings.meta_url is None
    assert settings.meta_id == "id"
    assert settings.lease_ttl == 60.0
    assert settings.max_attempts == 3
    assert settings.retry_delay == 0.0


def test_settings_read_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", "sqlite+aiosqlite:///env.db")
    monkeypatch.setenv("PYBATCHINTORY_META_URL", "sqlite+aiosqlite:///meta.db")
    monkeypatch.setenv("PYBATCHINTORY_META_TABLE", "files")
    monkeypatch.setenv("PYBATCHINTORY_META_ID", "file_id")
    monkeypatch.setenv("PYBATCHINTORY_META_WEIGHT", "size_in_bytes")
    monkeypatch.setenv("PYBATCHINTORY_TABLE_PREFIX", "pbi_")
    monkeypatch.setenv("PYBATCHINTORY_LEASE_TTL", "12.5")
    monkeypatch.setenv("PYBATCHINTORY_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("PYBATCHINTORY_CODE_VERSION", "abc123")
    settings = pbi.Settings()
    assert settings.inventory_url.get_secret_value() == "sqlite+aiosqlite:///env.db"
    assert settings.meta_url is not None
    assert settings.meta_url.get_secret_value() == "sqlite+aiosqlite:///meta.db"
    assert settings.meta_table == "files"
    assert settings.meta_id == "file_id"
    assert settings.meta_weight == "size_in_bytes"
    assert settings.table_prefix == "pbi_"
    assert settings.lease_ttl == 12.5
    assert settings.max_attempts == 7
    assert settings.code_version == "abc123"


def test_settings_read_a_dotenv_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text(
        "PYBATCHINTORY_INVENTORY_URL=sqlite+aiosqlite:///from_dotenv.db\n"
        "PYBATCHINTORY_META_TABLE=assets\n"
        "PYBATCHINTORY_MAX_ATTEMPTS=9\n"
        "UNRELATED_VARIABLE=ignored\n",
        encoding="utf-8",
    )
    settings = pbi.Settings()
    assert settings.inventory_url.get_secret_value() == "sqlite+aiosqlite:///from_dotenv.db"
    assert settings.meta_table == "assets"
    assert settings.max_attempts == 9
    # The environment wins over the file.
    monkeypatch.setenv("PYBATCHINTORY_MAX_ATTEMPTS", "2")
    assert pbi.Settings().max_attempts == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PYBATCHINTORY_LEASE_TTL", "0"),
        ("PYBATCHINTORY_MAX_ATTEMPTS", "0"),
        ("PYBATCHINTORY_RETRY_DELAY", "-1"),
        ("PYBATCHINTORY_TABLE_PREFIX", "bad-prefix;"),
    ],
)
def test_settings_reject_bad_values(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        pbi.Settings()


def test_settings_never_show_a_password(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", SECRET_URL)
    monkeypatch.setenv("PYBATCHINTORY_META_URL", SECRET_URL.replace("/db", "/meta"))
    settings = pbi.Settings()
    assert settings.inventory_url.get_secret_value() == SECRET_URL
    for text in (
        repr(settings),
        str(settings),
        f"{settings}",
        repr(settings.inventory_url),
        str(settings.model_dump()),
        settings.model_dump_json(),
    ):
        assert PASSWORD not in text, text


def test_a_dotenv_password_is_not_shown_either(clean_env: Path) -> None:
    (clean_env / ".env").write_text(f"PYBATCHINTORY_INVENTORY_URL={SECRET_URL}\n")
    settings = pbi.Settings()
    assert settings.inventory_url.get_secret_value() == SECRET_URL
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)


# -- the adapter registry ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["oracle://x", "mssql+aioodbc://u@h/db", "not a url at all"])
def test_an_unknown_scheme_is_unsupported(url: str) -> None:
    with pytest.raises(pbi.UnsupportedURL):
        adapter_for(url)


def test_the_unsupported_message_lists_the_installed_adapters() -> None:
    with pytest.raises(pbi.UnsupportedURL) as info:
        adapter_for("oracle://x")
    message = str(info.value)
    assert "oracle" in message
    for name in ("sqlite", "postgresql", "mysql"):
        assert name in message


def test_postgresql_without_a_driver_picks_asyncpg() -> None:
    adapter, url = adapter_for("postgresql://u@h/db")
    assert adapter.name == "postgresql"
    assert sa.make_url(url).drivername == "postgresql+asyncpg"
    assert sa.make_url(url).database == "db"


def test_the_filled_in_url_keeps_the_password() -> None:
    _, url = adapter_for(SECRET_URL)
    assert sa.make_url(url).password == PASSWORD
    assert PASSWORD not in normalise_url(SECRET_URL)


def test_sqlite_picks_aiosqlite() -> None:
    adapter, url = adapter_for("sqlite:///x.db")
    assert adapter.name == "sqlite"
    assert url.startswith("sqlite+aiosqlite://")


def test_mysql_and_mariadb_pick_the_mysql_adapter() -> None:
    for url in ("mysql://u@h/db", "mysql+aiomysql://u@h/db", "mariadb+aiomysql://u@h/db"):
        adapter, full = adapter_for(url)
        assert "aiomysql" in full
        assert adapter.extra == "mysql"


def test_a_missing_driver_names_the_extra() -> None:
    with pytest.raises(pbi.MissingDriver) as info:
        adapter_for("mysql+asyncmy://u@h/db")
    message = str(info.value)
    assert "pip install" in message
    assert "pybatchintory[mysql]" in message
    assert isinstance(info.value, ImportError)


def test_a_sync_driver_is_refused() -> None:
    with pytest.raises(pbi.MissingDriver) as info:
        adapter_for("postgresql+psycopg2://u@h/db")
    assert "asyncpg" in str(info.value)


def test_an_inventory_with_an_unknown_scheme_fails_at_construction() -> None:
    with pytest.raises(pbi.UnsupportedURL):
        pbi.Inventory("oracle://x")


def test_an_inventory_with_a_missing_driver_fails_at_construction() -> None:
    with pytest.raises(pbi.MissingDriver):
        pbi.Inventory("mysql+asyncmy://u@h/db")


def test_an_inventory_repr_hides_the_password() -> None:
    inventory = pbi.Inventory(SECRET_URL)
    assert PASSWORD not in repr(inventory)
    assert PASSWORD not in str(inventory)


# -- Inventory and MetaTable argument validation ----------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lease_ttl": 0},
        {"lease_ttl": -1},
        {"lease_ttl": "60"},
        {"lease_ttl": True},
        {"lease_ttl": float("nan")},
        {"max_attempts": 0},
        {"max_attempts": -3},
        {"max_attempts": 1.5},
        {"max_attempts": True},
        {"retry_delay": -1},
        {"retry_delay": "1"},
        {"retry_delay": True},
        {"retry_delay": float("nan")},
        {"owner": ""},
        {"owner": "x" * 256},
        {"table_prefix": "a-b"},
        {"table_prefix": "x; drop table y"},
    ],
    ids=repr,
)
def test_inventory_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(pbi.InvalidArgument):
        pbi.Inventory("sqlite+aiosqlite:///:memory:", **kwargs)  # type: ignore[arg-type]


def test_inventory_accepts_good_arguments() -> None:
    inventory = pbi.Inventory(
        "sqlite+aiosqlite:///:memory:",
        owner="worker-1",
        lease_ttl=0.5,
        max_attempts=1,
        retry_delay=0,
        table_prefix="pbi_",
    )
    assert inventory.owner == "worker-1"
    assert inventory.lease_ttl == 0.5


def test_meta_table_rejects_a_raw_string_filter() -> None:
    with pytest.raises(pbi.InvalidArgument) as info:
        pbi.MetaTable("files", where="kind = 'csv'")  # type: ignore[arg-type]
    assert "where" in str(info.value)


@pytest.mark.parametrize("where", [b"kind = 'csv'", 42, ["kind"]], ids=repr)
def test_meta_table_rejects_other_filter_kinds(where: object) -> None:
    with pytest.raises(pbi.InvalidArgument):
        pbi.MetaTable("files", where=where)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "where",
    [
        None,
        {"kind": "csv"},
        {"kind": ["csv", "json"]},
        sa.column("kind") == "csv",
        lambda table: table.c.kind == "csv",
    ],
    ids=["none", "mapping", "mapping-list", "expression", "callable"],
)
def test_meta_table_accepts_the_documented_filters(where: object) -> None:
    assert pbi.MetaTable("files", where=where).name == "files"  # type: ignore[arg-type]


def test_settle_needs_a_timestamp_column() -> None:
    with pytest.raises(pbi.InvalidArgument) as info:
        pbi.MetaTable("files", settle=timedelta(1))
    assert "timestamp" in str(info.value)
    assert pbi.MetaTable("files", timestamp="imported", settle=timedelta(seconds=30)).settle


def test_settle_must_be_a_non_negative_timedelta() -> None:
    with pytest.raises(pbi.InvalidArgument):
        pbi.MetaTable("files", timestamp="imported", settle=timedelta(seconds=-1))
    with pytest.raises(pbi.InvalidArgument):
        pbi.MetaTable("files", timestamp="imported", settle=30)  # type: ignore[arg-type]


@pytest.mark.parametrize("table", ["", "   ", None, 5])
def test_meta_table_needs_a_table_name(table: object) -> None:
    with pytest.raises(pbi.InvalidArgument):
        pbi.MetaTable(table)  # type: ignore[arg-type]


# -- the seed's (0.0.8) settings and arguments ------------------------------------------------


def test_settings_read_the_seeds_names(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_CONN", "sqlite+aiosqlite:///seed.db")
    monkeypatch.setenv("PYBATCHINTORY_META_CONN", "sqlite+aiosqlite:///seed_meta.db")
    settings = pbi.Settings()
    assert settings.inventory_url.get_secret_value() == "sqlite+aiosqlite:///seed.db"
    assert settings.meta_url is not None
    assert settings.meta_url.get_secret_value() == "sqlite+aiosqlite:///seed_meta.db"
    monkeypatch.setenv("PYBATCHINTORY_INVENTORY_URL", "sqlite+aiosqlite:///new.db")
    assert pbi.Settings().inventory_url.get_secret_value() == "sqlite+aiosqlite:///new.db"
    assert pbi.Settings(inventory_url="x").inventory_url.get_secret_value() == "x"


def test_the_seeds_env_file_variable(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("PYBATCHINTORY_META_TABLE=from_dot_env\n")
    (clean_env / "other.env").write_text("PYBATCHINTORY_META_TABLE=from_named_file\n")
    assert pbi.Settings().meta_table == "from_dot_env"
    monkeypatch.setenv("PYBATCHINTORY_ENV_FILE", "other.env")
    assert pbi.Settings().meta_table == "from_named_file"
    monkeypatch.setenv("PYBATCHINTORY_ENV_FILE", "missing.env")
    with pytest.raises(pbi.ConfigurationError, match=r"missing\.env"):
        pbi.Settings()


def test_configure_sets_the_settings_of_calls_that_take_none(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pybatchintory import settings as settings_module

    (clean_env / "seed.env").write_text("PYBATCHINTORY_META_WEIGHT=size_in_mib\n")
    monkeypatch.setattr(settings_module, "_configured", None)
    configured = pbi.configure(
        dot_env=str(clean_env / "seed.env"), settings={"INVENTORY_CONN": "sqlite:///c.db"}
    )
    assert configured.inventory_url.get_secret_value() == "sqlite:///c.db"
    assert configured.meta_weight == "size_in_mib"
    assert settings_module.current_settings() is configured
    assert pbi.Inventory.from_settings().url == "sqlite:///c.db"
    with pytest.raises(pbi.ConfigurationError, match=r"nowhere\.env"):
        pbi.configure(dot_env="nowhere.env")


def test_the_seeds_arguments_are_checked_before_anything_is_written(clean_env: Path) -> None:
    from pybatchintory._default_inventory import seed_call

    call = seed_call(
        None,
        meta_table_name="meta_table",
        meta_table_cols={"uid": "id", "item": "file", "weight": "size_in_mib"},
        batch_weight=1.5,
        batch_id_min=20,
        batch_id_max=80,
    )
    assert isinstance(call.source, pbi.MetaTable)
    assert (call.source.table, call.source.id, call.source.weight) == (
        "meta_table",
        "id",
        "size_in_mib",
    )
    assert (call.max_weight, call.id_start, call.id_end, call.item) == (1.5, 20, 80, "file")
    with pytest.raises(pbi.InvalidArgument, match="batch_weight"):
        seed_call("t", weight=10, batch_weight=10)
    with pytest.raises(pbi.InvalidArgument, match="meta_table_name"):
        seed_call("t", meta_table_name="u")
    with pytest.raises(pbi.InvalidArgument, match="not file"):
        seed_call("t", meta_table_cols={"file": "path"})
    with pytest.raises(pbi.InvalidArgument, match="PYBATCHINTORY_META_TABLE"):
        seed_call(None, batch_count=5)
