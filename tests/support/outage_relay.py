"""A TCP path to a real server that a test can cut and restore: an outage as a client sees one.

``cut()`` resets every open connection and closes the listening port (new connections are refused), as when
the server dies; ``restore()`` listens again on the same port. ``lose_next_request_or_reply()`` aims a cut
at one request: the next thing a client sends is lost, or reaches the server with its answer lost, then
every connection is reset and the port listens again. Nothing about the server is faked: the bytes go to
and from the real one.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class OutageRelay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.port = free_port()
        self._target = target
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._aimed: bool | None = None  # the next request: True delivered (its reply lost), False lost
        self._mute = threading.Event()  # replies are dropped
        self.connections = 0
        self.restore()

    def lose_next_request_or_reply(self, deliver: bool) -> None:
        """Lose the next request a client sends (``deliver`` False), or deliver it and lose its reply."""
        self._mute.set()
        self._aimed = deliver

    def _reset(self) -> None:
        self.cut()
        self._mute.clear()
        self.restore()

    def restore(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            self._server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the port again
            threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def cut(self) -> None:
        """Reset every connection and refuse new ones."""
        with self._lock:
            if self._server is not None:
                # shutdown() stops the listening at once; close() alone waits for the accept() in progress.
                with contextlib.suppress(OSError):
                    self._server.shutdown(socket.SHUT_RDWR)
                self._server.close()
                self._server = None
            for s in self._open:
                # Linger 0: close with a RST, as a server host that went away does, not an orderly FIN.
                # shutdown() first: a pump thread blocked in recv() keeps the socket alive past close().
                with contextlib.suppress(OSError):  # already closed by its pump
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    close = cut

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
                self.connections += 1
            for a, b, request in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, request), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests and self._aimed is not None:
                    deliver, self._aimed = self._aimed, None
                    if deliver:
                        sink.sendall(data)
                    threading.Timer(0.5, self._reset).start()  # time for the server to act on it
                elif requests or not self._mute.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
