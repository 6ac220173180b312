"""A TCP relay in front of a lab server that can drop a connection in the middle of a reply.

``CuttingProxy(port)`` listens on a free loopback port and relays every connection to
``127.0.0.1:port``. :meth:`CuttingProxy.cut_after` arms it: once a client sends a request that
contains ``marker`` (bytes, e.g. a control's OID, which LDAP sends as text), the relay passes
``keep`` more bytes of the server's reply and then closes both sides of that connection, as a
network cut or a crashed load balancer would, in the middle of a search's messages.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.uri = f"ldap://{host}:{self.port}"
        self.marker: bytes | None = None
        self.keep = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, marker: bytes, keep: int) -> None:
        with self._lock:
            self.marker, self.keep = marker, keep

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            state = {"armed": False, "left": 0}
            threading.Thread(target=self._up, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, state), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        """Client to server: watch for the marker."""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self.marker is not None and self.marker in data:
                        state["armed"], state["left"] = True, self.keep
                        self.marker = None
                server.sendall(data)
        _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        """Server to client: pass ``keep`` bytes once armed, then cut."""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if state["armed"]:
                    if len(data) >= state["left"]:
                        client.sendall(data[: state["left"]])
                        self.cuts += 1
                        break
                    state["left"] -= len(data)
                client.sendall(data)
        _close(client, server)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
