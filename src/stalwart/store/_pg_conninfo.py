"""A PostgreSQL URL checked before anything connects with it.

A typo in a URL (``:54x32``, ``?sslmode=bogus``) is no outage: retrying it never
succeeds. libpq reports such values as an ``OperationalError`` raised before it
connects — the same class as "server unreachable" — so a worker told to wait for its
database would retry a typo for ever. Here the URL is parsed with libpq's own parser
(psycopg's :func:`~psycopg.conninfo.conninfo_to_dict`, which refuses malformed URLs and
unknown parameters) and the values libpq checks only when it connects are checked the
same way (the rules of ``connectOptions2`` in libpq's ``fe-connect.c``), so a wrong URL
is a :class:`~stalwart.errors.ConfigurationError` at once.
"""

from __future__ import annotations

import ipaddress
import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..errors import ConfigurationError

__all__ = ["check_conninfo", "invalid_option"]

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
