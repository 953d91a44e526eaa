"""A PostgreSQL URL checked before anything connects with it.

A typo in a URL (``:54x32``, ``?sslmode=bogus``) is no outage: retrying it never
succeeds. libpq reports such values as an ``OperationalError`` raised before it
connects — the same class as "server unreachable" — so a worker told to wait for its
database would retry a typo for ever. Here the URL is parsed with libpq's own parser
(psycopg's :func:`~psycopg.conninfo.conninfo_to_dict`, which refuses malformed URLs and
unknown parameters) and the values libpq checks only when it connects are checked the
same way (the rules of ``connectOptions2`` in libpq's ``fe-connect.c``), so a wrong URL
is a :class:`~stalwart.errors.ConfigurationError` at once.

The other questions a URL and its errors raise are answered here too, apart from the
store that asks them: how to print the URL (:func:`printable_url`: without its
password), whether a server that answered refused it for good
(:func:`refused_for_good`) and whether a failed transaction may simply be tried again
(:func:`transient`).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..errors import ConfigurationError

__all__ = ["check_conninfo", "invalid_option", "printable_url", "refused_for_good", "transient"]

_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby",
                             "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcertmode": ("disable", "allow", "require"),
    "ssl_min_protocol_version": ("", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "sslcompression": ("0", "1"),
    "sslsni": ("0", "1"),
}
_INTEGERS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
             "keepalives_count", "tcp_user_timeout")
_INT = re.compile(r"\s*[+-]?\d+\s*")
_LIBPQ_INVALID = re.compile(r"\binvalid (?:integer value|port number|[a-z_]+ value)|"
                            r"could not match \d+ port numbers")


def check_conninfo(url: str, printable: str) -> None:
    """Raise :class:`ConfigurationError` (naming ``printable``, the URL without its
    password) if ``url`` is malformed or sets an option to a value libpq refuses."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"invalid PostgreSQL URL {printable}: {_first_line(exc)}"
                                 ) from None
    for key, value in params.items():
        if not isinstance(value, str):
            continue
        problem = _problem(key, value)
        if problem is not None:
            raise ConfigurationError(f"invalid PostgreSQL URL {printable}: {problem}")
    hosts = str(params.get("host") or params.get("hostaddr") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    if params.get("port") and len(ports) not in (1, len(hosts)):
        raise ConfigurationError(f"invalid PostgreSQL URL {printable}: {len(ports)} ports "
                                 f"for {len(hosts)} hosts")


def _problem(key: str, value: str) -> str | None:
    if key == "port":
        for port in value.split(","):
            if port and (not _INT.fullmatch(port) or not 1 <= int(port) <= 65535):
                return f"port {port!r} is not a port number (1-65535)"
    elif key == "hostaddr":
        for addr in value.split(","):
            try:
                if addr:
                    ipaddress.ip_address(addr.strip())
            except ValueError:
                return f"hostaddr {addr!r} is not a numeric IP address"
    elif key in _CHOICES and value not in _CHOICES[key]:
        return (f"{key}={value!r} is not one of "
                f"{', '.join(c for c in _CHOICES[key] if c) or 'the accepted values'}")
    elif key in _INTEGERS and not _INT.fullmatch(value):
        return f"{key}={value!r} is not an integer"
    return None


def invalid_option(exc: BaseException) -> bool:
    """Whether libpq refused a connection over a value in the URL (an option it knows
    that we do not check above), before contacting any server."""
    return _LIBPQ_INVALID.search(str(exc)) is not None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def printable_url(url: str) -> str:
    """``url`` without its password (in the user part or the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_FOR_GOOD = re.compile(
    r'FATAL: +(database "[^"]*" does not exist|role "[^"]*" does not exist|'
    r'password authentication failed|no pg_hba\.conf entry)')


def refused_for_good(exc: BaseException) -> bool:
    """A server that answered, and refused this URL for a reason no retry cures: no
    such database or role, a wrong password, no access rule. (A connection error
    carries no SQLSTATE in psycopg, so the server's FATAL message is what tells.) A
    worker started with a typo in its URL exits instead of retrying for ever."""
    return _FOR_GOOD.search(str(exc)) is not None


def transient(exc: psycopg.Error) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40): the transaction may be
    retried. (psycopg's DeadlockDetected does not derive from TransactionRollback.)"""
    return (exc.sqlstate or "").startswith("40")
