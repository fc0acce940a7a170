"""Network facts every adapter asks about the same way."""

from __future__ import annotations

import socket


def dns_is_down(exc: BaseException) -> bool:
    """Whether resolving a host name failed for now ("Temporary failure in name resolution"), not for good.

    The resolver's EAI_AGAIN is what a DNS outage or a failover's brief gap looks like: worth retrying, unlike a
    name that does not exist (EAI_NONAME), which is a typo in the configuration.
    """
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN
    return "temporary failure in name resolution" in str(exc).lower()
