"""An AWS endpoint emulated in-process (a moto server on a free loopback port), reached by boto3 over HTTP."""

from __future__ import annotations

import logging
import socket
from typing import Any


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedAWS:
    """Start with :meth:`start`, stop with :meth:`stop`; ``endpoint_url`` is what profiles point at."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> EmbeddedAWS:
        """Start the moto server in a background thread; returns itself."""
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO; an embedded endpoint should be silent.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop the moto server when it runs."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> EmbeddedAWS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
