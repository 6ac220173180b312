"""The mapping configuration: what the mappers need, built once from the ``LDAP_SYNC_*``
settings and the models, and the plan (attribute -> field, per target) derived from it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..conf import get_config
from ..conf.fields import (
    PHOTO_ATTRIBUTE_KEYS,
    PHOTO_ATTRIBUTES,
    default_user_attributes_note,
    read_profile_attributes,
    user_text_fields,
)
from .values import fieldcase

logger = logging.getLogger(__name__)

_FIELDCASES = (None, "lower", "upper")


@dataclass(frozen=True)
class ProfileSpec:
    """What the mapper may fill in one profile model (``LDAP_SYNC_USER_EXTRA_PROFILES``)."""

    label: str  # "app_label.ModelName", as configured
    text_fields: dict[str, int | None]  # char/text-like field -> max_length (None: unlimited)
    file_fields: frozenset[str] = frozenset()  # FileField/ImageField names
    other_fields: frozenset[str] = frozenset()  # never filled; listed for the debug report
    #: ``LDAP_SYNC_USER_PROFILE_ATTRIBUTES`` for this model: (lower-case attr, field) pairs.
    #: None: the seed's rule (fields named like the attributes) fills the profile.
    attributes: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class MappingConfig:
    """Everything :func:`map_user` / :func:`map_group` need, resolved once per run or process.

    Attribute names are lower-case throughout (as in :class:`~adldap_auth.directory.Entry`).
    Build it with :func:`build_mapping_config`; tests may construct it directly.
    """

    user_attributes: dict[str, str]  # lower-case LDAP attr -> User field
    username_field: str
    user_field_max_lengths: dict[str, int | None]
    username_validator: Callable[[str], None] | None
    extra_attributes: tuple[str, ...]
    profiles: tuple[ProfileSpec, ...]
    fieldcase: str | None  # None / "lower" / "upper"
    separator: str
    identity_attribute: str  # "objectguid", "entryuuid", ...
    exempt_usernames: frozenset[str]  # lower-case
    group_attributes: dict[str, str]  # lower-case LDAP attr -> Group field ("name" mandatory)
    member_attribute: str  # "member", "uniquemember" or "memberuid"
    photo_max_bytes: int
    photo_max_pixels: int
    lowercase_username: bool = True
    #: ``LDAP_SYNC_USERNAME_STRICT``: skip (True) or sync with a problem (False) a username
    #: that ``username_validator`` refuses.
    username_strict: bool = False
    #: User fields that hold e-mail addresses (validated with :func:`is_email_address`).
    email_fields: frozenset[str] = frozenset({"email"})
    #: Group field -> max_length (``auth.Group.name`` is 150).
    group_field_max_lengths: dict[str, int | None] = field(default_factory=lambda: {"name": 150})
    #: ``LDAP_SYNC_USER_THUMBNAILPHOTO_NAME``, for :func:`photo_filename`.
    photo_name_template: str = "{username}_{uuid4}.jpg"
    #: lower-case attr -> spelling as configured, used to match profile fields when
    #: ``fieldcase`` is None (entries only carry lower-case names).
    attribute_names: dict[str, str] = field(default_factory=dict)

    @cached_property
    def _plan(self) -> _Plan:
        return _make_plan(self)

    def spelling(self, attr: str) -> str:
        """The configured spelling of a lower-case attribute name."""
        return self.attribute_names.get(attr, attr)


@dataclass(frozen=True)
class _ProfilePlan:
    label: str
    text: tuple[tuple[str, str, int | None], ...]  # (attr, field, max_length)
    photos: tuple[tuple[str, str], ...]  # (attr, file field)


@dataclass(frozen=True)
class _Plan:
    username_attr: str
    user_fields: tuple[tuple[str, str, int | None, bool], ...]  # (attr, field, max, is_email)
    profiles: tuple[_ProfilePlan, ...]
    group_name_attr: str
    group_fields: tuple[tuple[str, str, int | None], ...]


def _make_plan(config: MappingConfig) -> _Plan:
    username_attrs = [a for a, f in config.user_attributes.items() if f == config.username_field]
    if not username_attrs:
        raise ValueError(f"no attribute is mapped to the username field {config.username_field!r}")
    user_fields = tuple(
        (attr, fname, config.user_field_max_lengths.get(fname), fname in config.email_fields)
        for attr, fname in config.user_attributes.items()
        if fname != config.username_field
    )
    sources = list(dict.fromkeys([*config.user_attributes, *config.extra_attributes]))
    profiles = []
    for spec in config.profiles:
        if spec.attributes is not None:
            profiles.append(_mapped_profile_plan(spec))
            continue
        text = []
        for attr in sources:
            if attr in PHOTO_ATTRIBUTE_KEYS:
                continue
            name = fieldcase(config.spelling(attr), config.fieldcase)
            if name in spec.text_fields:
                text.append((attr, name, spec.text_fields[name]))
        photos = []
        for spelling in PHOTO_ATTRIBUTES:
            attr = spelling.lower()
            name = fieldcase(config.attribute_names.get(attr, spelling), config.fieldcase)
            if name in spec.file_fields:
                photos.append((attr, name))
        profiles.append(_ProfilePlan(spec.label, tuple(text), tuple(photos)))
    name_attrs = [a for a, f in config.group_attributes.items() if f == "name"]
    if not name_attrs:
        raise ValueError("no group attribute is mapped to the Group field 'name'")
    group_fields = tuple(
        (attr, fname, config.group_field_max_lengths.get(fname))
        for attr, fname in config.group_attributes.items()
        if fname != "name"
    )
    return _Plan(username_attrs[0], user_fields, tuple(profiles), name_attrs[0], group_fields)


def _mapped_profile_plan(spec: ProfileSpec) -> _ProfilePlan:
    """The plan of a profile filled from its LDAP_SYNC_USER_PROFILE_ATTRIBUTES map: a file
    field receives the attribute as a photo, a text field its values."""
    text, photos = [], []
    for attr, name in spec.attributes or ():
        if name in spec.file_fields:
            photos.append((attr, name))
        else:
            text.append((attr, name, spec.text_fields[name]))
    return _ProfilePlan(spec.label, tuple(text), tuple(photos))


def build_mapping_config(settings: Any = None, is_ad: bool | None = None) -> MappingConfig:
    """Build the :class:`MappingConfig` from ``LDAP_SYNC_*`` settings and the models.

    ``settings`` defaults to :func:`adldap_auth.conf.get_config`'s object. ``is_ad`` resolves
    ``LDAP_SYNC_IDENTITY_ATTRIBUTE = "auto"`` (``objectGUID`` on AD, ``entryUUID`` elsewhere);
    only the caller that has talked to the server knows it, so "auto" without ``is_ad`` is an
    error. Uses the app registry only (no query). Raises ``ImproperlyConfigured`` for settings
    that cannot be mapped (a field that does not exist or is not a text field, an unknown
    profile model...).
    """
    from django.contrib.auth import get_user_model

    if settings is None:
        settings = get_config()

    user_model = get_user_model()
    username_field = settings.USERNAME_FIELD or user_model.USERNAME_FIELD

    spellings: dict[str, str] = {}
    user_attributes = _lower_map(settings.USER_ATTRIBUTES, "USER_ATTRIBUTES", spellings)
    max_lengths, email_fields = _user_field_map(
        settings, user_model, username_field, user_attributes
    )
    username_validator = _username_validator(user_model, username_field)
    extra = _extra_attributes(settings.USER_EXTRA_ATTRIBUTES, spellings)
    for attr in PHOTO_ATTRIBUTES:
        spellings.setdefault(attr.lower(), attr)
    mode = _fieldcase_mode(settings.USER_CHANGE_FIELDCASE)
    profiles = _profile_specs(settings, spellings)
    identity = _identity_attribute(settings.IDENTITY_ATTRIBUTE, is_ad)
    group_attributes = _lower_map(settings.GROUP_ATTRIBUTES, "GROUP_ATTRIBUTES", spellings)
    group_max_lengths = _group_field_map(group_attributes)

    config = MappingConfig(
        user_attributes=user_attributes,
        username_field=username_field,
        user_field_max_lengths=max_lengths,
        username_validator=username_validator,
        username_strict=bool(settings.USERNAME_STRICT),
        extra_attributes=tuple(dict.fromkeys(extra)),
        profiles=tuple(profiles),
        fieldcase=mode,
        separator=settings.MULTIVALUE_SEPARATOR,
        identity_attribute=identity.lower(),
        exempt_usernames=frozenset(name.lower() for name in settings.USER_EXEMPT_FROM_SYNC),
        group_attributes=group_attributes,
        member_attribute=settings.GROUP_MEMBER_ATTRIBUTE.lower(),
        photo_max_bytes=settings.PHOTO_MAX_BYTES,
        photo_max_pixels=settings.PHOTO_MAX_PIXELS,
        email_fields=frozenset(email_fields),
        group_field_max_lengths=group_max_lengths,
        attribute_names=spellings,
        photo_name_template=settings.USER_THUMBNAILPHOTO_NAME,
    )
    _log_profile_fills(config)
    return config


def _lower_map(value: Mapping[str, str], setting: str, spellings: dict[str, str]) -> dict[str, str]:
    """An ``{attribute: field}`` setting with lower-case attribute names; each attribute's
    spelling as written is added to ``spellings`` (the first one wins)."""
    from django.core.exceptions import ImproperlyConfigured

    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"LDAP_SYNC_{setting} must be a dict")
    result = {}
    for attr, fname in value.items():
        spellings.setdefault(attr.lower(), attr)
        result[attr.lower()] = fname
    return result


def _user_field_map(
    settings: Any, user_model: Any, username_field: str, user_attributes: dict[str, str]
) -> tuple[dict[str, int | None], set[str]]:
    """The ``max_length`` of each User field of ``LDAP_SYNC_USER_ATTRIBUTES`` and the e-mail
    fields among them; each must be a text field that can be synced, one the username."""
    from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
    from django.db import models

    note = default_user_attributes_note(settings, user_model)
    fits = (
        f"; the fields of {user_model._meta.label} it may map to: "
        f"{', '.join(user_text_fields(user_model))}"
    )
    if username_field not in user_attributes.values():
        raise ImproperlyConfigured(
            f"LDAP_SYNC_USER_ATTRIBUTES must map an attribute to the username field "
            f"{username_field!r}{note}{fits}"
        )

    max_lengths: dict[str, int | None] = {}
    email_fields = set()
    for fname in user_attributes.values():
        try:
            model_field = user_model._meta.get_field(fname)
        except FieldDoesNotExist:
            raise ImproperlyConfigured(
                f"LDAP_SYNC_USER_ATTRIBUTES: {user_model._meta.label} has no field "
                f"{fname!r}{note}{fits}"
            ) from None
        if (
            not isinstance(model_field, models.CharField | models.TextField)
            or not model_field.concrete
            or fname == "password"
        ):
            raise ImproperlyConfigured(
                f"LDAP_SYNC_USER_ATTRIBUTES: {user_model._meta.label}.{fname} is not a text "
                f"field that can be synced{fits}"
            )
        max_lengths[fname] = model_field.max_length
        if isinstance(model_field, models.EmailField):
            email_fields.add(fname)
    return max_lengths, email_fields


def _username_validator(user_model: Any, username_field: str) -> Callable[[str], None] | None:
    """One callable running the username field's validators; None when it has none."""
    username_model_field = user_model._meta.get_field(username_field)
    validators = tuple(username_model_field.validators)

    def username_validator(value: str) -> None:
        for validator in validators:
            validator(value)

    return username_validator if validators else None


def _extra_attributes(attributes: Iterable[str], spellings: dict[str, str]) -> list[str]:
    """``LDAP_SYNC_USER_EXTRA_ATTRIBUTES`` in lower case; their spellings go to ``spellings``."""
    extra = []
    for attr in attributes:
        spellings.setdefault(attr.lower(), attr)
        extra.append(attr.lower())
    return extra


def _fieldcase_mode(mode: Any) -> str | None:
    """``LDAP_SYNC_USER_CHANGE_FIELDCASE``, checked: None, "lower" or "upper"."""
    from django.core.exceptions import ImproperlyConfigured

    if mode not in _FIELDCASES:
        raise ImproperlyConfigured(
            f"LDAP_SYNC_USER_CHANGE_FIELDCASE must be None, 'lower' or 'upper', not {mode!r}"
        )
    return mode


def _profile_specs(settings: Any, spellings: dict[str, str]) -> list[ProfileSpec]:
    """A :class:`ProfileSpec` for each model of ``LDAP_SYNC_USER_EXTRA_PROFILES``, with its
    ``LDAP_SYNC_USER_PROFILE_ATTRIBUTES`` map if it has one (spellings go to ``spellings``)."""
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    profile_maps, map_problems = read_profile_attributes(
        settings.USER_PROFILE_ATTRIBUTES, settings.USER_EXTRA_PROFILES
    )
    if map_problems:
        raise ImproperlyConfigured(f"LDAP_SYNC_USER_PROFILE_ATTRIBUTES {map_problems[0].detail}")
    profiles = []
    for label in settings.USER_EXTRA_PROFILES:
        try:
            profile_model = apps.get_model(label)
        except (LookupError, ValueError):
            raise ImproperlyConfigured(
                f"LDAP_SYNC_USER_EXTRA_PROFILES: no model {label!r}"
            ) from None
        attr_map = profile_maps.get(profile_model._meta.label_lower)
        mapped = None
        if attr_map is not None:
            for attr in attr_map:
                spellings.setdefault(attr.lower(), attr)
            mapped = tuple((attr.lower(), name) for attr, name in attr_map.items())
        profiles.append(_profile_spec(label, profile_model, mapped))
    return profiles


def _profile_spec(
    label: str, profile_model: Any, mapped: tuple[tuple[str, str], ...] | None
) -> ProfileSpec:
    """One profile model's fields, sorted into text, file and other (never filled) fields."""
    from django.db import models

    text_fields: dict[str, int | None] = {}
    file_fields = set()
    other_fields = set()
    for model_field in profile_model._meta.concrete_fields:
        if model_field.primary_key or model_field.is_relation:
            continue
        if isinstance(model_field, models.FileField):
            file_fields.add(model_field.name)
        elif isinstance(model_field, models.CharField | models.TextField):
            text_fields[model_field.name] = model_field.max_length
        else:
            other_fields.add(model_field.name)
    return ProfileSpec(label, text_fields, frozenset(file_fields), frozenset(other_fields), mapped)


def _identity_attribute(identity: str, is_ad: bool | None) -> str:
    """``LDAP_SYNC_IDENTITY_ATTRIBUTE``, with "auto" resolved by ``is_ad``."""
    if identity == "auto":
        if is_ad is None:
            raise ValueError(
                "LDAP_SYNC_IDENTITY_ATTRIBUTE is 'auto': pass is_ad to build_mapping_config"
            )
        identity = "objectGUID" if is_ad else "entryUUID"
    return identity


def _group_field_map(group_attributes: dict[str, str]) -> dict[str, int | None]:
    """The ``max_length`` of each Group field of ``LDAP_SYNC_GROUP_ATTRIBUTES``; each must be
    a text field, one of them ``name``."""
    from django.apps import apps
    from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
    from django.db import models

    if "name" not in group_attributes.values():
        raise ImproperlyConfigured("LDAP_SYNC_GROUP_ATTRIBUTES must map an attribute to 'name'")
    group_model = apps.get_model("auth", "Group")
    group_max_lengths: dict[str, int | None] = {}
    for fname in group_attributes.values():
        try:
            model_field = group_model._meta.get_field(fname)
        except FieldDoesNotExist:
            raise ImproperlyConfigured(
                f"LDAP_SYNC_GROUP_ATTRIBUTES: {group_model._meta.label} has no field {fname!r}"
            ) from None
        if not isinstance(model_field, models.CharField | models.TextField):
            raise ImproperlyConfigured(
                f"LDAP_SYNC_GROUP_ATTRIBUTES: {group_model._meta.label}.{fname} is not a text field"
            )
        group_max_lengths[fname] = model_field.max_length
    return group_max_lengths


def _log_profile_fills(config: MappingConfig) -> None:
    """Say at debug level which fields of each profile are filled, and which non-text fields
    named like a mapped attribute are not."""
    plan = config._plan
    for spec, profile_plan in zip(config.profiles, plan.profiles, strict=True):
        filled = {f for _, f, _ in profile_plan.text} | {f for _, f in profile_plan.photos}
        if spec.attributes is not None:
            logger.debug(
                "Profile %s: filling %s from LDAP_SYNC_USER_PROFILE_ATTRIBUTES",
                spec.label,
                sorted(filled),
            )
            continue
        unmatched = {
            fieldcase(config.spelling(a), config.fieldcase)
            for a in (*config.user_attributes, *config.extra_attributes)
        } & spec.other_fields
        logger.debug(
            "Profile %s: filling %s; not filling non-text fields %s",
            spec.label,
            sorted(filled),
            sorted(unmatched),
        )
