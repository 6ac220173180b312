"""Which model fields the settings may name: the user fields of LDAP_SYNC_USER_ATTRIBUTES and
the profile maps of LDAP_SYNC_USER_PROFILE_ATTRIBUTES (read once here, for the checks and the
mapper alike, so the two cannot disagree)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The photo attributes: mapped to an image field, a photo rather than text.
PHOTO_ATTRIBUTES = ("thumbnailPhoto", "jpegPhoto")
PHOTO_ATTRIBUTE_KEYS = tuple(name.lower() for name in PHOTO_ATTRIBUTES)


def user_text_fields(user_model: Any) -> list[str]:
    """The fields of ``user_model`` that ``LDAP_SYNC_USER_ATTRIBUTES`` may map an attribute
    to: concrete text fields (``CharField``, ``TextField`` and their subclasses such as
    ``EmailField``), except ``password``. ``first_name`` and ``last_name`` are among them only
    when the model has them (``AbstractUser`` does, ``AbstractBaseUser`` does not)."""
    from django.db import models

    return [
        field.name
        for field in user_model._meta.concrete_fields
        if isinstance(field, models.CharField | models.TextField) and field.name != "password"
    ]


def default_user_attributes_note(settings: Any, user_model: Any) -> str:
    """Text saying that LDAP_SYNC_USER_ATTRIBUTES is not set and its default, written for
    ``auth.User``, does not fit ``user_model``; "" when the site set it (or uses auth.User)."""
    is_set = getattr(settings, "is_set", None)
    if is_set is None or is_set("USER_ATTRIBUTES") or user_model._meta.label == "auth.User":
        return ""
    return (
        " (LDAP_SYNC_USER_ATTRIBUTES is not set, and its default is written for "
        "django.contrib.auth's User: set it for this model)"
    )


@dataclass(frozen=True)
class ProfileMapProblem:
    """What is wrong in ``LDAP_SYNC_USER_PROFILE_ATTRIBUTES``; ``detail`` reads after the
    setting's name ("maps 'x' to 'y', which is not a field of app.Model")."""

    kind: str  # "type", "model", "field" or "duplicate" (one system check id each)
    detail: str


#: An attribute description (RFC 4512): a name or an OID, with options (``;binary``).
_ATTRIBUTE_NAME = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9-]+)*\Z")


def read_profile_attributes(
    value: Any, profile_labels: Iterable[str]
) -> tuple[dict[str, dict[str, str]], list[ProfileMapProblem]]:
    """``LDAP_SYNC_USER_PROFILE_ATTRIBUTES`` checked against the profile models: the maps
    that can be used, by model (``_meta.label_lower``; attributes as written), and what is
    wrong. The single reading of the setting, for :func:`build_mapping_config` (which raises
    on the first problem) and the system checks (one message per problem).

    ``profile_labels`` are those of ``LDAP_SYNC_USER_EXTRA_PROFILES``: a map of a model that
    is not among them would be silently unused, so it is a problem.
    """
    from django.apps import apps

    problems: list[ProfileMapProblem] = []

    def problem(kind: str, detail: str) -> None:
        problems.append(ProfileMapProblem(kind, detail))

    if not isinstance(value, Mapping):
        problem("type", 'must be a dict such as {"app_label.ModelName": {"telephoneNumber": '
                f'"phone"}}, not {_typed(value)}')  # fmt: skip
        return {}, problems
    profiles = set()
    for label in profile_labels:
        try:
            profiles.add(apps.get_model(label)._meta.label_lower)
        except (LookupError, ValueError, TypeError, AttributeError):
            continue  # reported under LDAP_SYNC_USER_EXTRA_PROFILES
    maps: dict[str, dict[str, str]] = {}
    for label, attr_map in value.items():
        if not isinstance(label, str):
            problem("type", f'has the key {_typed(label)}, not an "app_label.ModelName" string')
            continue
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as error:
            why = 'expected "app_label.ModelName"'
            if label.count(".") == 1:
                why = str(error).rstrip(".")
            problem("model", f"names {label!r}, which is not an installed model ({why})")
            continue
        key = model._meta.label_lower
        if key not in profiles:
            problem("model", f"names {label!r}, which is not a model of "
                    "LDAP_SYNC_USER_EXTRA_PROFILES, so its map would never be used")  # fmt: skip
        elif key in maps:
            problem("duplicate", f"names {model._meta.label} twice (also as {label!r})")
        elif not isinstance(attr_map, Mapping):
            problem("type", f"maps {label!r} to {_typed(attr_map)}, not a dict of LDAP "
                    "attribute names to field names")  # fmt: skip
        else:
            found = _profile_map_problems(model, attr_map)
            problems.extend(found)
            maps[key] = {} if found else dict(attr_map)
    return {key: attr_map for key, attr_map in maps.items() if attr_map}, problems


def _profile_map_problems(model: Any, attr_map: Mapping[Any, Any]) -> list[ProfileMapProblem]:
    """The problems of one model's ``{attribute: field}`` map."""
    problems: list[ProfileMapProblem] = []

    def problem(kind: str, detail: str) -> None:
        problems.append(ProfileMapProblem(kind, detail))

    label = model._meta.label
    attrs: dict[str, str] = {}  # lower-case attr -> as written
    fields: dict[str, str] = {}  # field -> attr as written
    for attr, name in attr_map.items():
        if not isinstance(attr, str) or not _ATTRIBUTE_NAME.match(attr):
            problem("type", f"has the key {_typed(attr)} in the map of {label}, which is not "
                    "an LDAP attribute name")  # fmt: skip
            continue
        if not isinstance(name, str) or not name.strip():
            problem("type", f"maps {attr!r} to {_typed(name)} in the map of {label}, not a "
                    "field name")  # fmt: skip
            continue
        why = _profile_field_problem(model, attr, name)
        if why:
            problem("field", f"maps {attr!r} to {name!r}, which is {why} of {label}")
        if attr.lower() in attrs:
            problem("duplicate", f"lists the attribute {attr!r} twice in the map of {label} "
                    f"(also as {attrs[attr.lower()]!r}; attribute names ignore case)")  # fmt: skip
        elif name in fields:
            problem("duplicate", f"maps both {fields[name]!r} and {attr!r} to {label}.{name}")
        attrs.setdefault(attr.lower(), attr)
        fields.setdefault(name, attr)
    return problems


def _profile_field_problem(model: Any, attr: str, name: str) -> str | None:
    """Why the field ``name`` of a profile model cannot receive ``attr``, or None."""
    from django.core.exceptions import FieldDoesNotExist
    from django.db import models

    try:
        model_field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return "not a field"
    if (
        not getattr(model_field, "concrete", False)
        or model_field.is_relation
        or model_field.primary_key
        or getattr(model_field, "generated", False)
    ):
        return "a field the sync cannot write (a relation, the primary key or a computed field)"
    if isinstance(model_field, models.FileField):
        return None  # the attribute is read as a photo
    if not isinstance(model_field, models.CharField | models.TextField):
        return f"a {type(model_field).__name__}, not a text, file or image field"
    if attr.lower() in PHOTO_ATTRIBUTE_KEYS:
        return f"a {type(model_field).__name__}: a photo needs a file or image field"
    return None


def _typed(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"
