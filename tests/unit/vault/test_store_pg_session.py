"""The PostgreSQL store's connection string: how the store is named, never with its password."""

from __future__ import annotations

import pytest

from secretvault.api.errors import InvalidArgument
from secretvault.vault.store_pg_session import Connector, describe, is_postgresql


@pytest.mark.parametrize(("given", "shown"), [
    ("postgresql://vault:s3cret@db.example:5433/keys", "postgresql://vault@db.example:5433/keys"),
    ("postgres://db.example/keys?sslmode=verify-full&password=s3cret",
     "postgresql://db.example/keys"),
    ("host=db.example dbname=keys user=vault password=s3cret", "postgresql://vault@db.example/keys"),
    ("postgresql://vault@/keys?host=/run/pg&port=5432",
     "postgresql://vault@/keys?host=/run/pg&port=5432"),
])
def test_the_store_is_named_without_its_password(given: str, shown: str) -> None:
    assert describe(given) == shown
    assert Connector(given).name == shown
    assert "s3cret" not in shown
    assert is_postgresql(given)


@pytest.mark.parametrize("bad", ["host=a password", "password=s3cret x", "postgresql://[::1"])
def test_a_bad_string_is_one_line_that_does_not_quote_it(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="not a PostgreSQL connection string") as e:
        describe(bad)
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)


def test_a_path_is_not_postgresql() -> None:
    assert not is_postgresql("/var/lib/secretvault/keys.sqlite3")


def test_tcp_keepalives_unless_the_url_says_otherwise() -> None:
    mine = Connector("postgresql://db.example/keys")._params
    assert mine["keepalives"] == 1 and mine["keepalives_idle"] == 5
    theirs = Connector("postgresql://db.example/keys?keepalives_idle=30")._params
    assert theirs["keepalives_idle"] == "30"
