"""Lock-conflict retries (adldap_auth.dbwrite): nested retries share one deadline."""

from __future__ import annotations

import time

import pytest
from django.db import DatabaseError

from adldap_auth import dbwrite


def test_nested_retries_wait_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A retried write inside a retried login (the backend around write_user) gives up when
    the outer budget is spent, instead of starting a full wait again at every outer try."""
    monkeypatch.setattr(dbwrite, "LOCKED_RETRY_SECONDS", 0.3)
    monkeypatch.setattr(dbwrite, "LOCKED_FIRST_PAUSE", 0.01)
    calls = {"outer": 0, "inner": 0}

    def busy() -> None:
        calls["inner"] += 1
        raise DatabaseError("database is locked")

    def login() -> None:
        calls["outer"] += 1
        dbwrite.retry_locked(busy, "inner write")

    started = time.monotonic()
    with pytest.raises(DatabaseError):
        dbwrite.retry_locked(login, "login")
    assert calls["outer"] == 1
    assert calls["inner"] > 1
    assert time.monotonic() - started < 0.3 + 1.0  # one budget (the last pause is capped)


def test_separate_writes_each_get_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbwrite, "LOCKED_RETRY_SECONDS", 0.1)
    monkeypatch.setattr(dbwrite, "LOCKED_FIRST_PAUSE", 0.01)
    outcomes = iter([DatabaseError("database is locked"), None])

    def busy_once() -> str:
        error = next(outcomes)
        if error:
            raise error
        return "written"

    with pytest.raises(DatabaseError):
        dbwrite.retry_locked(
            lambda: (_ for _ in ()).throw(DatabaseError("database is locked")), "a"
        )
    assert dbwrite.retry_locked(busy_once, "b") == "written"
