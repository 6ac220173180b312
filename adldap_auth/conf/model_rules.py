"""Rules for the settings that name models and fields: the user and group attribute maps, the
username field and the profile models with their maps (they read the app registry, no query)."""

from __future__ import annotations

from typing import Any

from .fields import default_user_attributes_note, read_profile_attributes, user_text_fields
from .messages import (
    E009,
    E014,
    E015,
    E016,
    E017,
    E018,
    E019,
    E028,
    E029,
    E030,
    E031,
    W006,
    Message,
)
from .reader import sync_settings
from .value_rules import (
    DICT_EXAMPLES,
    dict_problem,
    full_name,
    list_problem,
    show,
    str_list,
    string,
)


def concrete_field(model: Any, name: str) -> Any:
    """The concrete, non-many-to-many field ``name`` of ``model``, or None."""
    from django.core.exceptions import FieldDoesNotExist

    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    if not getattr(field, "concrete", False) or field.many_to_many:
        return None
    return field


def effective_username_field() -> str:
    """LDAP_SYNC_USERNAME_FIELD when valid (E016 reports it otherwise), or USERNAME_FIELD."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    configured = sync_settings.USERNAME_FIELD
    if isinstance(configured, str) and configured.strip():
        field = concrete_field(user_model, configured)
        if field is not None and field.unique:
            return configured
    return user_model.USERNAME_FIELD


def user_attributes(name: str, value: Any) -> list[Message]:
    problem = dict_problem(value)
    if problem is not None:
        return [E009(full_name(name), detail=problem, example=DICT_EXAMPLES[name])]
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    origin = default_user_attributes_note(sync_settings, user_model)
    found = []
    username = effective_username_field()
    if username not in value.values():
        found.append(E014(full_name(name), field=username, origin=origin))
    fits = user_text_fields(user_model)
    for attribute, field in value.items():
        if field in fits:
            continue
        model_field = concrete_field(user_model, field)
        if model_field is None:
            problem = "not a field"
        elif field == "password":
            problem = "the password hash (never synced)"
        else:
            problem = f"a {type(model_field).__name__} (not text)"
        found.append(
            E015(
                full_name(name), attribute=attribute, field=field, problem=problem,
                model=user_model._meta.label, origin=origin, fields=", ".join(fits),
            )
        )  # fmt: skip
    return found


def group_attributes(name: str, value: Any) -> list[Message]:
    problem = dict_problem(value)
    if problem is not None:
        return [E009(full_name(name), detail=problem, example=DICT_EXAMPLES[name])]
    from django.contrib.auth.models import Group

    found = []
    if "name" not in value.values():
        found.append(E017(full_name(name)))
    for attribute, field in value.items():
        if concrete_field(Group, field) is None:
            found.append(E018(full_name(name), attribute=attribute, field=field))
    return found


def username_field_setting(name: str, value: Any) -> list[Message]:
    found = string(optional=True)(name, value)
    if found or value is None:
        return found
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    field = concrete_field(user_model, value)
    if field is None or not field.unique:
        problem = "a field" if field is None else "a unique field"
        model = user_model._meta.label
        return [E016(full_name(name), value=show(value), problem=problem, model=model)]
    return []


def profiles(name: str, value: Any) -> list[Message]:
    found = str_list(name, value)
    if found:
        return found
    from django.apps import apps
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    for label in value:
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as error:
            if label.count(".") == 1:
                detail = str(error).rstrip(".")
            else:
                detail = 'expected "app_label.ModelName"'
            found.append(E019(full_name(name), value=show(label), detail=detail))
            continue
        field = user_link(model)
        if field is None or field.related_model is not user_model:
            found.append(
                W006(full_name(name), value=show(label), user_model=user_model._meta.label)
            )
    return found


_PROFILE_MAP_CHECKS = {"type": E028, "model": E029, "field": E030, "duplicate": E031}


def profile_attributes(name: str, value: Any) -> list[Message]:

    labels = sync_settings.USER_EXTRA_PROFILES
    if list_problem(labels) is not None:
        labels = []  # E008 under LDAP_SYNC_USER_EXTRA_PROFILES
    _maps, problems = read_profile_attributes(value, labels)
    return [_PROFILE_MAP_CHECKS[p.kind](full_name(name), detail=p.detail) for p in problems]


def user_link(model: Any) -> Any:
    """The OneToOneField ``user`` of a profile model, or None."""
    from django.core.exceptions import FieldDoesNotExist

    try:
        field = model._meta.get_field("user")
    except FieldDoesNotExist:
        return None
    return field if field.one_to_one and field.concrete else None
