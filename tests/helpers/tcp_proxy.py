"""A TCP forwarder a test puts between keyflow and a server, and cuts: the server's outage without losing its state.

moto keeps its buckets in memory, so restarting it would lose them; cutting the path to it is what keyflow sees of an
S3 outage all the same: connections reset mid-request, then refused, then accepted again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

from tests.helpers.services import free_port


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0), as a crashed server or a dropped route does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class CuttableProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_port``; :meth:`cut` resets every connection and refuses new ones.

    :meth:`cut_when` arms a trigger: of the first request whose first bytes match, only the headers are forwarded,
    then the path is cut for ``down_seconds`` while that request's body is being sent.
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.cuts: list[bytes] = []  # the first line of each request the trigger cut
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._trigger: Callable[[bytes], bool] | None = None
        self._down_seconds = 0.0
        self._stopped = False

    @property
    def url(self) -> str:
        """The proxy's HTTP endpoint (what the profile points at instead of the server)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CuttableProxy:
        """Listen (again) on the proxy's port and accept connections in a background thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="keyflow-proxy-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and reset every connection for good."""
        self._stopped = True
        self._down()

    def cut(self, down_seconds: float) -> None:
        """Reset every connection and refuse new ones; listen again after ``down_seconds`` (in the background)."""
        self._down()

        def back() -> None:
            time.sleep(down_seconds)
            if not self._stopped:
                self.start()

        threading.Thread(target=back, name="keyflow-proxy-back", daemon=True).start()

    def cut_when(self, matches: Callable[[bytes], bool], down_seconds: float) -> None:
        """Cut the path (once) when a request's first bytes ``matches``, after forwarding those bytes."""
        with self._lock:
            self._trigger, self._down_seconds = matches, down_seconds

    def __enter__(self) -> CuttableProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()  # a connect now gets ECONNREFUSED
        for conn in conns:
            _reset(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed by a cut or stop
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut between accept and here
                    _reset(client)
                    _reset(upstream)
                    continue
                self._conns.update((client, upstream))
            for src, dst, watch in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, watch), name="keyflow-proxy-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                if watch:
                    with self._lock:
                        if self._trigger is not None and self._trigger(data):
                            self._trigger, cut = None, True
                            self.cuts.append(data.split(b"\r\n", 1)[0])
                if cut:  # the request's headers reach the server; its body never will
                    head = data.find(b"\r\n\r\n")
                    dst.sendall(data if head < 0 else data[: head + 4])
                    self.cut(self._down_seconds)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            for sock in (src, dst):
                _reset(sock)
