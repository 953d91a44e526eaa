"""A PostgreSQL schema of a test's own: the journal a test opens on PostgreSQL goes
into a fresh, empty schema (a store makes its journal only there, never beside an
application's tables), dropped with everything in it afterwards. stalwart's own test
directories shared six copies of this; users testing their workflows on PostgreSQL need
the same."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["postgres_schema", "with_search_path"]


def with_search_path(url: str, schema: str) -> str:
    """``url`` with connection options that put ``schema`` first on the search path
    (replacing any ``options`` it had)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextlib.contextmanager
def postgres_schema(url: str, *, prefix: str = "stalwart_test") -> Iterator[str]:
    """Make a fresh schema ``{prefix}_{random}`` in the database at ``url``; yield
    ``url`` with it on the search path (open a store on that); drop it afterwards, with
    everything in it. Needs psycopg (the ``postgres`` extra)."""
    import psycopg  # the postgres extra: only a PostgreSQL test needs it

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
