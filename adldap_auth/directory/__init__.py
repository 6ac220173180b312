"""Talking to the directory: connections, searches and readers. Knows nothing of Django models."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """One directory entry: its DN and its attributes.

    ``attrs`` maps *lower-case* attribute names (ranged options such as ``;range=0-1499``
    removed) to the list of raw ``bytes`` values the server returned.
    """

    dn: str
    attrs: dict[str, list[bytes]] = field(default_factory=dict)

    def first(self, name: str) -> bytes | None:
        values = self.attrs.get(name.lower())
        return values[0] if values else None

    def text(self, name: str) -> str | None:
        value = self.first(name)
        return None if value is None else value.decode("utf-8")


class DirectoryError(Exception):
    """Base of every error raised by the directory layer. Never carries a password."""


class DirectoryUnavailable(DirectoryError):
    """No server in the URI list could be reached and bound to."""


class DirectoryTLSError(DirectoryUnavailable):
    """TLS could not be set up: wrong CA, wrong host name, or a server without TLS."""


class IncompleteRead(DirectoryError):
    """A search returned less than its whole scope (size/time limit, dropped connection...).

    A sync that sees this must not remove anyone.
    """
