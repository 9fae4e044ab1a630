"""Where to reach something that listens on a bind address: the one helper, IPv6 included.

A wildcard bind (0.0.0.0, ::, empty) is reached on loopback of the same family; an IPv6 literal
is bracketed in URLs.  Pure core.
"""

from __future__ import annotations

_WILDCARDS = {"": "127.0.0.1", "-": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def connect_host(bind: str) -> str:
    """The host to connect to for a server bound to `bind`, bracketed when it is IPv6."""
    host = _WILDCARDS.get(bind, bind)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host


def http_url(bind: str, port: int) -> str:
    """`http://host:port` for a server bound to `bind:port`."""
    return f"http://{connect_host(bind)}:{port}"
