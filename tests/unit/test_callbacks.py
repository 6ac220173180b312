"""The shipped removed-user callbacks and callback resolution (adldap_auth.callbacks)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from adldap_auth import callbacks
from adldap_auth.callbacks import (
    LEGACY_CALLBACKS,
    removed_user_deactivate,
    removed_user_delete,
    resolve_callback,
)


@pytest.mark.django_db
def test_deactivate_writes_only_is_active(django_assert_num_queries) -> None:
    user = get_user_model().objects.create(username="jdoe", first_name="John")
    user.first_name = "Changed in memory only"
    with django_assert_num_queries(1):
        removed_user_deactivate(user)
    user.refresh_from_db()
    assert user.is_active is False
    assert user.first_name == "John"


@pytest.mark.django_db
def test_deactivate_an_inactive_user_writes_nothing(django_assert_num_queries) -> None:
    user = get_user_model().objects.create(username="jdoe", is_active=False)
    with django_assert_num_queries(0):
        removed_user_deactivate(user)


@pytest.mark.django_db
def test_delete() -> None:
    user = get_user_model().objects.create(username="jdoe")
    removed_user_delete(user)
    assert not get_user_model().objects.filter(username="jdoe").exists()


def test_resolve_our_paths_and_the_legacy_ones() -> None:
    assert resolve_callback("adldap_auth.callbacks.removed_user_delete") is removed_user_delete
    for old, new in LEGACY_CALLBACKS.items():
        assert old.startswith("adldap_sync.callbacks.")
        assert resolve_callback(old) is resolve_callback(new)
    assert resolve_callback("adldap_sync.callbacks.removed_user_deactivate") is (
        callbacks.removed_user_deactivate
    )


def test_resolve_errors() -> None:
    with pytest.raises(ImportError):
        resolve_callback("no_such_module.func")
    with pytest.raises(ImportError):
        resolve_callback("adldap_auth.callbacks.no_such_func")
    with pytest.raises(TypeError):
        resolve_callback("adldap_auth.callbacks.LEGACY_CALLBACKS")
