"""Entry -> Django state: the single truth shared by the batch sync and the login backend.

Pure functions: no network, no ORM query. :func:`build_mapping_config` reads the settings and
introspects models through the app registry once; :func:`map_user` and :func:`map_group` then
turn a directory :class:`~adldap_auth.directory.Entry` into a :class:`UserRecord` or a
:class:`GroupRecord` that the store layer applies.

Semantics of a record's ``fields`` / ``profiles`` / ``photos`` dicts (what the store must do):

- key present, value ``""``: the attribute is absent (or empty) in the directory, so the field
  is cleared. A cleared attribute clears the field.
- key present, any other value: set the field to that value.
- key **absent**: leave the field as it is. This happens when the value could not be used
  (not UTF-8): the record's ``problems`` then says why. Nothing is ever guessed, so a
  transient decoding problem never wipes a field.
- ``photos[label][field] is None``: the photo attribute is absent, so the photo is removed.
  Otherwise it holds the directory's bytes as read, not decoded: the store compares their
  digest with the stored one and only a changed photo goes through :func:`validate_photo`
  (a rejected one leaves the field unchanged, with a warning of the run).

Values:

- User fields take the *first* value of a multi-valued attribute (as django-adldap-sync did);
  profile text fields take *all* values joined with ``LDAP_SYNC_MULTIVALUE_SEPARATOR`` in the
  server's order.
- A value longer than its field's ``max_length`` is truncated, with a problem. Usernames are
  never truncated (the entry is skipped) and e-mail addresses are never truncated (an invalid
  or too long address clears the field, with a problem).
- A username that the username field's validators refuse (``o'neil``, ``john smith``: valid
  directory names) is synced, with a problem, unless ``LDAP_SYNC_USERNAME_STRICT`` is True
  (the entry is skipped). Control characters and invisible format characters are always
  refused. E-mail addresses are checked by :func:`is_email_address`, which accepts
  internationalised addresses (RFC 6531) as the directory holds them.
- NUL characters (which PostgreSQL refuses) are removed from text values, with a problem.
- Profiles are filled from the mapped attributes (``LDAP_SYNC_USER_ATTRIBUTES``) and the extra
  attributes (``LDAP_SYNC_USER_EXTRA_ATTRIBUTES``) whose names, after
  ``LDAP_SYNC_USER_CHANGE_FIELDCASE``, are a char/text field of the profile model; and from
  ``thumbnailPhoto`` / ``jpegPhoto`` when the profile has a file field of that name. Other
  profile fields (integers, booleans, dates...) are never filled: they are listed in
  :attr:`ProfileSpec.other_fields` and reported once, at debug level, when the config is built.
  That is the seed's rule; a profile model named in ``LDAP_SYNC_USER_PROFILE_ATTRIBUTES`` is
  filled from its own ``{attribute: field}`` map instead (an attribute mapped to a file or
  image field is read as a photo), see :func:`read_profile_attributes`.
- ``objectGUID``, ``mS-DS-ConsistencyGuid`` and ``objectSid`` are decoded to their string forms
  wherever they are used as text.

Messages (:class:`SkipEntry`, ``problems``) name attributes and fields, never attribute values
other than a username or group name, never a password, and never the DN: the caller has the DN
(``record.dn``, ``SkipEntry.dn``) and logs it next to the message.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any

import ldap
import ldap.dn

from .directory import Entry
from .directory.decoding import (
    domain_sid_and_rid,
    guid_to_str,
    sid_to_str,
    uac_disabled,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BINARY_GUID_ATTRIBUTES",
    "GroupRecord",
    "MappingConfig",
    "PHOTO_ATTRIBUTES",
    "Photo",
    "PhotoError",
    "ProfileMapProblem",
    "ProfileSpec",
    "SkipEntry",
    "UserRecord",
    "build_mapping_config",
    "decode_identity",
    "fieldcase",
    "group_attribute_list",
    "is_email_address",
    "join_values",
    "jpeg_scan_count",
    "map_group",
    "map_user",
    "normalize_dn",
    "photo_digest",
    "photo_filename",
    "read_profile_attributes",
    "schema_checked_attributes",
    "unknown_schema_attributes",
    "user_attribute_list",
    "validate_photo",
]

#: Photo attributes, in their usual spelling (used for ``CHANGE_FIELDCASE = None``).
PHOTO_ATTRIBUTES = ("thumbnailPhoto", "jpegPhoto")
_PHOTO_ATTRS = tuple(name.lower() for name in PHOTO_ATTRIBUTES)

#: Identity attributes holding a 16-byte little-endian GUID rather than text.
BINARY_GUID_ATTRIBUTES = frozenset({"objectguid", "ms-ds-consistencyguid"})

#: Attributes always requested for users / groups (lower-case), on top of the configured ones.
USER_CONTROL_ATTRIBUTES = ("objectsid", "primarygroupid", "useraccountcontrol")
GROUP_CONTROL_ATTRIBUTES = ("objectsid",)

#: Image formats accepted for photos (``MPO`` is how Pillow names some camera JPEGs).
PHOTO_FORMATS = ("JPEG", "PNG", "GIF")
_ACCEPTED_PHOTO_FORMATS = frozenset({*PHOTO_FORMATS, "MPO"})
#: File name extensions of a stored photo by format; a new file gets the first one.
PHOTO_EXTENSIONS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "GIF": (".gif",)}
#: Most scans a JPEG photo may have. Decoding costs a pass over every pixel a scan, so a small
#: file repeating a scan thousands of times takes seconds to minutes; ordinary progressive
#: JPEGs have 6 (grey) to 18 (CMYK) scans, baseline ones 1 to 4.
PHOTO_MAX_SCANS = 32
#: Where the next JPEG marker starts: 0xFF then a byte that is not a stuffed zero, a restart
#: marker or a fill byte (the way libjpeg finds it, extraneous bytes skipped).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")

_FIELDCASES = (None, "lower", "upper")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# nameAndOptionalUID (uniqueMember): "cn=x,dc=y#'0101'B"
_OPTIONAL_UID = re.compile(r"#'[01]*'B\Z")


class SkipEntry(Exception):
    """This entry cannot be synced; the message says why.

    The message never contains the DN (``exc.dn`` holds it, for the caller's log line) nor any
    secret. ``exc.exempt`` is True when the username is in ``LDAP_SYNC_USER_EXEMPT_FROM_SYNC``
    (an expected skip, to count rather than report as a problem).
    """

    def __init__(self, message: str, dn: str | None = None, *, exempt: bool = False) -> None:
        super().__init__(message)
        self.dn = dn
        self.exempt = exempt


class PhotoError(ValueError):
    """A photo was rejected: too big, not a JPEG/PNG/GIF, corrupt or truncated."""


@dataclass(frozen=True)
class Photo:
    """A photo accepted by :func:`validate_photo`: re-encoded by Pillow, in ``format``."""

    data: bytes
    format: str  # "JPEG", "PNG" or "GIF"

    @property
    def extension(self) -> str:
        return PHOTO_EXTENSIONS[self.format][0]


# --------------------------------------------------------------------------------------------
# Configuration


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
            if attr in _PHOTO_ATTRS:
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
    if attr.lower() in _PHOTO_ATTRS:
        return f"a {type(model_field).__name__}: a photo needs a file or image field"
    return None


def _typed(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


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


def build_mapping_config(settings: Any = None, is_ad: bool | None = None) -> MappingConfig:
    """Build the :class:`MappingConfig` from ``LDAP_SYNC_*`` settings and the models.

    ``settings`` defaults to :data:`adldap_auth.conf.sync_settings`. ``is_ad`` resolves
    ``LDAP_SYNC_IDENTITY_ATTRIBUTE = "auto"`` (``objectGUID`` on AD, ``entryUUID`` elsewhere);
    only the caller that has talked to the server knows it, so "auto" without ``is_ad`` is an
    error. Uses the app registry only (no query). Raises ``ImproperlyConfigured`` for settings
    that cannot be mapped (a field that does not exist or is not a text field, an unknown
    profile model...).
    """
    from django.apps import apps
    from django.contrib.auth import get_user_model
    from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
    from django.db import models

    if settings is None:
        from .conf import sync_settings as settings

    user_model = get_user_model()
    username_field = settings.USERNAME_FIELD or user_model.USERNAME_FIELD

    spellings: dict[str, str] = {}

    def lower_map(value: Mapping[str, str], setting: str) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ImproperlyConfigured(f"LDAP_SYNC_{setting} must be a dict")
        result = {}
        for attr, fname in value.items():
            spellings.setdefault(attr.lower(), attr)
            result[attr.lower()] = fname
        return result

    user_attributes = lower_map(settings.USER_ATTRIBUTES, "USER_ATTRIBUTES")
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

    username_model_field = user_model._meta.get_field(username_field)
    validators = tuple(username_model_field.validators)

    def username_validator(value: str) -> None:
        for validator in validators:
            validator(value)

    extra = []
    for attr in settings.USER_EXTRA_ATTRIBUTES:
        spellings.setdefault(attr.lower(), attr)
        extra.append(attr.lower())
    for attr in PHOTO_ATTRIBUTES:
        spellings.setdefault(attr.lower(), attr)

    mode = settings.USER_CHANGE_FIELDCASE
    if mode not in _FIELDCASES:
        raise ImproperlyConfigured(
            f"LDAP_SYNC_USER_CHANGE_FIELDCASE must be None, 'lower' or 'upper', not {mode!r}"
        )

    profile_maps, map_problems = read_profile_attributes(
        settings.USER_PROFILE_ATTRIBUTES, settings.USER_EXTRA_PROFILES
    )
    if map_problems:
        raise ImproperlyConfigured(
            f"LDAP_SYNC_USER_PROFILE_ATTRIBUTES {map_problems[0].detail}"
        )
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
        profiles.append(
            ProfileSpec(
                label, text_fields, frozenset(file_fields), frozenset(other_fields), mapped
            )
        )

    identity = settings.IDENTITY_ATTRIBUTE
    if identity == "auto":
        if is_ad is None:
            raise ValueError(
                "LDAP_SYNC_IDENTITY_ATTRIBUTE is 'auto': pass is_ad to build_mapping_config"
            )
        identity = "objectGUID" if is_ad else "entryUUID"

    group_attributes = lower_map(settings.GROUP_ATTRIBUTES, "GROUP_ATTRIBUTES")
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

    config = MappingConfig(
        user_attributes=user_attributes,
        username_field=username_field,
        user_field_max_lengths=max_lengths,
        username_validator=username_validator if validators else None,
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
            fieldcase(config.spelling(a), mode)
            for a in (*config.user_attributes, *config.extra_attributes)
        } & spec.other_fields
        logger.debug(
            "Profile %s: filling %s; not filling non-text fields %s",
            spec.label,
            sorted(filled),
            sorted(unmatched),
        )
    return config


def user_attribute_list(config: MappingConfig) -> list[str]:
    """Every attribute a user search must request (lower-case, no duplicates, never ``*``)."""
    names = [
        *config.user_attributes,
        *config.extra_attributes,
        config.identity_attribute,
        *USER_CONTROL_ATTRIBUTES,
    ]
    for profile in config._plan.profiles:
        names.extend(attr for attr, _, _ in profile.text)
        names.extend(attr for attr, _ in profile.photos)
    return list(dict.fromkeys(names))


def schema_checked_attributes(config: MappingConfig) -> dict[str, str]:
    """The attributes mapped to a user field or a profile field, each with the setting that
    maps it (lower-case attr -> setting): those a schema check looks for. Photos filled by
    the naming rule are left out (a profile field named ``thumbnailphoto`` asks for nothing
    on OpenLDAP), and so are the extra attributes that fill no profile field (read for
    callbacks, whatever the schema)."""
    checked = dict.fromkeys(config.user_attributes, "LDAP_SYNC_USER_ATTRIBUTES")
    for spec, profile in zip(config.profiles, config._plan.profiles, strict=True):
        if spec.attributes is not None:
            for attr, _ in spec.attributes:
                checked.setdefault(attr, "LDAP_SYNC_USER_PROFILE_ATTRIBUTES")
        else:
            for attr, _, _ in profile.text:
                checked.setdefault(attr, "LDAP_SYNC_USER_EXTRA_ATTRIBUTES")
    return checked


def unknown_schema_attributes(
    config: MappingConfig, schema: Iterable[str]
) -> list[tuple[str, str]]:
    """``(setting, attribute as written)`` for each mapped attribute (see
    :func:`schema_checked_attributes`) that is no attribute type of ``schema`` (lower-case
    names and OIDs, from :meth:`~adldap_auth.directory.connection.DirectorySession.
    attribute_types`): a misspelling that would otherwise leave its field empty."""
    known = frozenset(schema)
    return [
        (setting, config.spelling(attr))
        for attr, setting in schema_checked_attributes(config).items()
        if attr.partition(";")[0] not in known
    ]


def group_attribute_list(config: MappingConfig) -> list[str]:
    """Every attribute a group search must request (lower-case, no duplicates, never ``*``)."""
    names = [
        *config.group_attributes,
        config.identity_attribute,
        *GROUP_CONTROL_ATTRIBUTES,
        config.member_attribute,
    ]
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class UserRecord:
    """A user entry mapped to Django state. See the module docstring for the dict semantics."""

    dn: str
    guid: str
    username: str
    fields: dict[str, Any]  # User field -> value, always with the username field
    profiles: dict[str, dict[str, str]]  # profile label -> {text field -> value}
    photos: dict[str, dict[str, bytes | None]]  # profile label -> {file field -> bytes/None}
    disabled: bool
    object_sid: str | None
    primary_group_sid: str | None
    member_key: str  # how group member values name this user (see GroupRecord.member_keys)
    attributes: dict[str, list[bytes]]  # raw attrs, for LDAP_SYNC_USER_CALLBACKS
    problems: list[str] = field(default_factory=list)


@dataclass
class GroupRecord:
    """A group entry mapped to Django state.

    ``member_keys`` are ``normalize_dn`` of each ``member``/``uniqueMember`` value, or each
    ``memberUid`` value lower-cased (uid matching is case-insensitive), without duplicates.
    They compare equal to :attr:`UserRecord.member_key` of the member user, or to
    ``normalize_dn(group.dn)`` of a nested group.
    """

    dn: str
    guid: str
    name: str
    fields: dict[str, str]  # Group field -> value, always with "name"
    member_keys: list[str]
    object_sid: str | None
    problems: list[str] = field(default_factory=list)
    #: in the group scope (LDAP_SYNC_GROUP_SEARCH and _FILTER), or only in the membership
    #: scope (a group whose nesting counts, managed only with ..._CREATE_IF_NOT_EXISTS)
    in_scope: bool = True


#: A UUID in its canonical text form (lower case, hyphenated), as OpenLDAP's entryUUID reads.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decode_identity(attr: str, raw: bytes) -> str:
    """An identity attribute's value as the canonical ``*_guid`` string.

    objectGUID (16 bytes) -> UUID string; a textual UUID (entryUUID, ipaUniqueID...) -> its
    canonical lower-case form; any other text (nsUniqueId...) -> stripped and lower-cased.
    ``ValueError`` (``UnicodeDecodeError`` included) when it cannot be decoded. Everything that
    compares entry ids (sync's "present" sets, identity links) must use this function.
    """
    if attr in BINARY_GUID_ATTRIBUTES:
        return guid_to_str(raw)
    text = raw.decode("utf-8").strip()
    if not text:
        raise ValueError("empty identity value")
    if _CANONICAL_UUID.fullmatch(text):
        return text  # already what str(uuid.UUID(text)) gives: skip two conversions
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text.lower()


def _identity(entry: Entry, config: MappingConfig) -> str:
    raw = entry.first(config.identity_attribute)
    if raw is None:
        raise SkipEntry(f"no {config.identity_attribute} attribute", entry.dn)
    try:
        return decode_identity(config.identity_attribute, raw)
    except ValueError:  # includes UnicodeDecodeError
        raise SkipEntry(f"{config.identity_attribute} cannot be decoded", entry.dn) from None


def _decode_special(attr: str, values: list[bytes], separator: str) -> str | None:
    """Text form of the binary attributes we know; None for ordinary attributes."""
    if attr in BINARY_GUID_ATTRIBUTES:
        return separator.join(guid_to_str(v) for v in values)
    if attr == "objectsid":
        return separator.join(sid_to_str(v) for v in values)
    return None


def _text(
    attr: str,
    target: str,
    values: list[bytes] | None,
    separator: str | None,
    max_length: int | None,
    problems: list[str],
) -> str | None:
    """One text value for ``target`` (a field), or None to leave the field unchanged.

    ``separator`` None: the first value only; otherwise all values joined.
    """
    if not values:
        return ""
    chosen = values if separator is not None else values[:1]
    try:
        value = _decode_special(attr, chosen, separator or "")
        if value is None:
            value = join_values(chosen, separator or "")
    except UnicodeDecodeError:
        problems.append(f"attribute {attr} is not valid UTF-8 text; {target} left unchanged")
        return None
    except ValueError:
        problems.append(f"attribute {attr} cannot be decoded; {target} left unchanged")
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
        problems.append(f"attribute {attr} contains NUL characters; removed from {target}")
    if max_length is not None and len(value) > max_length:
        problems.append(
            f"attribute {attr} is {len(value)} characters long; {target} truncated to {max_length}"
        )
        value = value[:max_length]
    return value


#: RFC 5322 ``atext`` other than letters and digits: an unquoted local part's symbols.
_ATEXT_SYMBOLS = frozenset("!#$%&'*+-/=?^_`{|}~")


def _utf8_dot_atom(local: str) -> bool:
    """Whether ``local`` is an RFC 6531 dot-atom: non-empty atoms joined by single dots, of
    ASCII letters, digits, ``atext`` symbols and non-ASCII characters that are neither
    control (Unicode category ``Cc``) nor space or separator characters (``Z*``)."""
    for atom in local.split("."):
        if not atom:
            return False
        for char in atom:
            if char.isascii():
                if not (char.isalnum() or char in _ATEXT_SYMBOLS):
                    return False
            elif unicodedata.category(char) == "Cc" or unicodedata.category(char)[0] == "Z":
                return False
    return True


def is_email_address(value: str) -> bool:
    """Whether ``value`` is an e-mail address, internationalised ones (RFC 6531) included.

    Django's ``validate_email`` refuses non-ASCII local parts (``zoë.müller@example.com``),
    which are real addresses in Active Directory. Rules:

    - exactly one ``@`` outside a quoted local part, at most 320 characters;
    - an ASCII local part: Django's rule (a dot-atom or a quoted string);
    - a local part with non-ASCII characters: a dot-atom (see :func:`_utf8_dot_atom`; no
      spaces, no control characters, no empty atom); quoted non-ASCII local parts are refused;
    - the domain: Django's rule (a host name, IDN included, ``localhost`` or an address
      literal), and it must encode with Python's ``idna`` codec (every label at most 63
      characters once punycoded, no prohibited character).
    """
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    local, at, domain = value.rpartition("@")
    if not at or not local or len(value) > 320:
        return False
    if not local.isascii() and not _utf8_dot_atom(local):
        return False
    try:
        domain.encode("idna")
    except UnicodeError:
        return False
    try:
        # The local part is checked above when Django cannot: give it an ASCII stand-in.
        validate_email(f"{local if local.isascii() else 'x'}@{domain}")
    except ValidationError:
        return False
    return True


def _email(attr: str, target: str, values: list[bytes] | None, max_length, problems) -> str | None:
    """The first value of an e-mail attribute, as the directory holds it (stripped), "" when
    absent or when it is not an address (with a problem), None when it cannot be decoded."""
    if not values:
        return ""
    try:
        value = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        problems.append(f"attribute {attr} is not valid UTF-8 text; {target} left unchanged")
        return None
    if not value:
        return ""
    if max_length is not None and len(value) > max_length:
        problems.append(
            f"attribute {attr} is longer than {max_length} characters; {target} cleared"
        )
        return ""
    if not is_email_address(value):
        problems.append(f"attribute {attr} is not a valid e-mail address; {target} cleared")
        return ""
    return value


#: Invisible characters refused in usernames besides controls: format characters (bidi
#: overrides, zero-width spaces) and line/paragraph separators make look-alike names.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp"})


def _username(entry: Entry, config: MappingConfig, attr: str, problems: list[str]) -> str:
    """The entry's username, or :class:`SkipEntry`.

    A username the field's validators refuse is kept, with a problem, unless
    ``config.username_strict``: it fits the column, and the directory (like django-auth-ldap
    and django-adldap-sync) accepts it, so skipping it would lock the person out.
    """
    from django.core.exceptions import ValidationError

    raw = entry.first(attr)
    if raw is None:
        raise SkipEntry(f"no {attr} attribute (the username)", entry.dn)
    try:
        username = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SkipEntry(f"{attr} (the username) is not valid UTF-8", entry.dn) from None
    if config.lowercase_username:
        username = username.lower()
    if not username.strip():
        raise SkipEntry(f"{attr} (the username) is empty", entry.dn)
    if username.lower() in config.exempt_usernames:
        raise SkipEntry(f"username {username!r} is exempt from sync", entry.dn, exempt=True)
    max_length = config.user_field_max_lengths.get(config.username_field)
    if max_length is not None and len(username) > max_length:
        raise SkipEntry(
            f"username is {len(username)} characters long, more than the {max_length} "
            f"allowed by {config.username_field}",
            entry.dn,
        )
    categories = {unicodedata.category(char) for char in username}
    if "Cc" in categories:
        raise SkipEntry("username contains control characters", entry.dn)
    if categories & _INVISIBLE_CATEGORIES:
        raise SkipEntry(
            "username contains invisible format or separator characters (Unicode Cf, Zl, Zp)",
            entry.dn,
        )
    if config.username_validator is not None:
        try:
            config.username_validator(username)
        except (ValidationError, ValueError):
            refused = (
                f"username {username!r} is refused by the validators of {config.username_field}"
            )
            if config.username_strict:
                raise SkipEntry(f"{refused} (LDAP_SYNC_USERNAME_STRICT)", entry.dn) from None
            problems.append(f"{refused}; synced anyway (LDAP_SYNC_USERNAME_STRICT is False)")
    return username


def map_user(entry: Entry, config: MappingConfig) -> UserRecord:
    """Map a user entry. Raises :class:`SkipEntry` when the entry cannot be synced at all.

    Skipped: no (or undecodable) identity attribute; no, empty or non-UTF-8 username; an
    exempt username (case-insensitive); a username longer than the field's max_length (never
    truncated), with control or invisible format characters, or (only with
    ``LDAP_SYNC_USERNAME_STRICT``) refused by the username field's validators.
    Everything else is mapped, and what could not be used is listed in ``problems``.
    """
    plan = config._plan
    attrs = entry.attrs
    guid = _identity(entry, config)
    problems: list[str] = []
    username = _username(entry, config, plan.username_attr, problems)

    fields: dict[str, Any] = {config.username_field: username}
    for attr, fname, max_length, is_email in plan.user_fields:
        values = attrs.get(attr)
        if is_email:
            value = _email(attr, fname, values, max_length, problems)
        else:
            value = _text(attr, fname, values, None, max_length, problems)
        if value is not None:
            fields[fname] = value

    profiles: dict[str, dict[str, str]] = {}
    photos: dict[str, dict[str, bytes | None]] = {}
    for profile in plan.profiles:
        values_by_field: dict[str, str] = {}
        for attr, fname, max_length in profile.text:
            value = _text(attr, fname, attrs.get(attr), config.separator, max_length, problems)
            if value is not None:
                values_by_field[fname] = value
        profiles[profile.label] = values_by_field
        photo_by_field: dict[str, bytes | None] = {}
        for attr, fname in profile.photos:
            # The directory's bytes, undecoded: the store compares their digest with the
            # stored one and checks (decodes) a photo only when it changed.
            values = attrs.get(attr)
            photo_by_field[fname] = values[0] if values else None
        photos[profile.label] = photo_by_field

    disabled = False
    uac = entry.first("useraccountcontrol")
    if uac is not None:
        try:
            disabled = uac_disabled(uac)
        except ValueError:  # includes UnicodeDecodeError
            problems.append("attribute useraccountcontrol is not a number; taken as enabled")

    object_sid = _sid(entry, problems)
    primary_group_sid = None
    primary_group_id = entry.first("primarygroupid")
    if object_sid is not None and primary_group_id is not None:
        try:
            rid = int(primary_group_id.decode("ascii"))
        except ValueError:
            problems.append("attribute primarygroupid is not a number; ignored")
        else:
            primary_group_sid = f"{domain_sid_and_rid(object_sid)[0]}-{rid}"

    if config.member_attribute == "memberuid":
        member_key = username.lower()
    else:
        member_key = normalize_dn(entry.dn)

    return UserRecord(
        dn=entry.dn,
        guid=guid,
        username=username,
        fields=fields,
        profiles=profiles,
        photos=photos,
        disabled=disabled,
        object_sid=object_sid,
        primary_group_sid=primary_group_sid,
        member_key=member_key,
        attributes=dict(attrs),
        problems=problems,
    )


def _sid(entry: Entry, problems: list[str]) -> str | None:
    raw = entry.first("objectsid")
    if raw is None:
        return None
    try:
        return sid_to_str(raw)
    except ValueError:
        problems.append("attribute objectsid cannot be decoded; ignored")
        return None


def map_group(entry: Entry, config: MappingConfig) -> GroupRecord:
    """Map a group entry. :class:`SkipEntry` for no identity, no usable name, or a name longer
    than ``Group.name`` allows (150): a truncated name could merge two groups."""
    plan = config._plan
    attrs = entry.attrs
    guid = _identity(entry, config)
    raw_name = entry.first(plan.group_name_attr)
    if raw_name is None:
        raise SkipEntry(f"no {plan.group_name_attr} attribute (the group name)", entry.dn)
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise SkipEntry(
            f"{plan.group_name_attr} (the group name) is not valid UTF-8", entry.dn
        ) from None
    if not name.strip():
        raise SkipEntry(f"{plan.group_name_attr} (the group name) is empty", entry.dn)
    max_length = config.group_field_max_lengths.get("name", 150)
    if max_length is not None and len(name) > max_length:
        raise SkipEntry(
            f"group name is {len(name)} characters long, more than the {max_length} allowed",
            entry.dn,
        )
    if "\x00" in name:
        raise SkipEntry("group name contains NUL characters", entry.dn)

    problems: list[str] = []
    fields = {"name": name}
    for attr, fname, field_max in plan.group_fields:
        value = _text(attr, fname, attrs.get(attr), None, field_max, problems)
        if value is not None:
            fields[fname] = value

    member_keys: dict[str, None] = {}
    values = attrs.get(config.member_attribute) or ()
    undecodable = 0
    is_uid = config.member_attribute == "memberuid"
    strip_uid = config.member_attribute == "uniquemember"
    for raw in values:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
            continue
        if is_uid:
            key = text.strip().lower()
        else:
            if strip_uid:
                text = _OPTIONAL_UID.sub("", text)
            key = normalize_dn(text)
        if key:
            member_keys[key] = None
    if undecodable:
        problems.append(
            f"{undecodable} value(s) of attribute {config.member_attribute} are not valid UTF-8; "
            f"ignored"
        )

    return GroupRecord(
        dn=entry.dn,
        guid=guid,
        name=name,
        fields=fields,
        member_keys=list(member_keys),
        object_sid=_sid(entry, problems),
        problems=problems,
    )


# --------------------------------------------------------------------------------------------
# DNs

_DN_VALUE = r'[^,=+"\\<>;#\x00-\x20\x7f](?:[^,=+"\\<>;\x00-\x1f\x7f]*[^,=+"\\<>;\x00-\x20\x7f])?'
_DN_TYPE = r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)"
_DN_AVA = f"{_DN_TYPE}={_DN_VALUE}"
#: DNs with nothing to unescape or reorder: their normal form is just their lower-case form.
_SIMPLE_DN = re.compile(f"{_DN_AVA}(?:,{_DN_AVA})*")


def normalize_dn(dn: str) -> str:
    """The canonical comparison key of a DN.

    Attribute types and values are lower-cased, escapes are resolved (``\\2c`` and ``\\,`` are
    the same comma, ``\\c3\\bc`` is ``ü``), spaces around separators dropped, and the values
    of a multi-valued RDN (``cn=a+sn=b``) sorted; the result is serialised by
    ``ldap.dn.dn2str``. A malformed DN falls back to its stripped lower-case form.

    Plain DNs (most of them) take a regular-expression fast path (about 0.5 µs); the others
    are parsed by python-ldap and cached.
    """
    if _SIMPLE_DN.fullmatch(dn):
        return dn.lower()
    return _normalize_dn_parsed(dn)


@lru_cache(maxsize=1 << 16)
def _normalize_dn_parsed(dn: str) -> str:
    try:
        parsed = ldap.dn.str2dn(dn, flags=ldap.DN_FORMAT_LDAPV3)
    except (ldap.LDAPError, ValueError, TypeError):
        return dn.strip().lower()
    return ldap.dn.dn2str(
        [
            sorted((atype.lower(), (avalue or "").lower(), 1) for atype, avalue, _ in rdn)
            for rdn in parsed
        ]
    )


# --------------------------------------------------------------------------------------------
# Photos


def validate_photo(
    data: bytes, max_bytes: int, max_pixels: int, max_scans: int = PHOTO_MAX_SCANS
) -> Photo:
    """Check a photo and return it re-encoded by Pillow, if it is a sound JPEG, PNG or GIF
    within the limits.

    Raises :class:`PhotoError` when it is larger than ``max_bytes``, not one of those formats,
    declares more than ``max_pixels`` pixels (checked from the header, before any decoding, so
    a decompression bomb is never expanded), is a JPEG of more than ``max_scans`` scans
    (counted before any decoding: each scan costs a pass over the pixels), or is corrupt or
    truncated (``verify()`` and then a full ``load()`` of a second copy, since ``verify()``
    misses truncated JPEG scans).

    The result holds the decoded pixels only, written again (see :func:`_reencode`): whatever
    else the directory's bytes carried (trailing data, comments, EXIF with its GPS position,
    a second frame) is not stored. A site that sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES =
    True`` disables Pillow's own truncation error, and so the last check.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise PhotoError("empty photo")
    if len(data) > max_bytes:
        raise PhotoError(f"photo is {len(data)} bytes, more than {max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as image:
            if image.format not in _ACCEPTED_PHOTO_FORMATS:
                raise PhotoError(f"photo format {image.format} is not accepted")
            width, height = image.size
            if width * height > max_pixels:
                raise PhotoError(f"photo is {width}x{height} pixels, more than {max_pixels}")
            if image.format in ("JPEG", "MPO"):
                scans = jpeg_scan_count(data, max_scans)
                if scans > max_scans:
                    raise PhotoError(f"photo is a JPEG of more than {max_scans} scans")
            image.verify()
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as image:
            image.load()
            return _reencode(image)
    except PhotoError:
        raise
    except Image.DecompressionBombError:
        raise PhotoError("photo declares too many pixels (decompression bomb)") from None
    except UnidentifiedImageError:
        raise PhotoError("photo is not a JPEG, PNG or GIF image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise PhotoError(f"photo is corrupt ({type(exc).__name__})") from None


def jpeg_scan_count(data: bytes, limit: int) -> int:
    """How many scans (SOS segments) the first image of a JPEG has, without decoding it;
    counting stops past ``limit``. Markers are found as libjpeg finds them: segment
    payloads skipped by their length, entropy-coded data and stray bytes searched for the
    next 0xFF that is not stuffing, a restart or a fill byte."""
    scans, position = 0, 2  # after SOI
    while (found := _JPEG_MARKER.search(data, position)) is not None:
        marker, position = data[found.start() + 1], found.end()
        if marker == 0xD9:  # EOI: the end of the first image
            break
        if marker in (0x01, 0xD8):  # TEM, SOI: no payload
            continue
        if marker == 0xDA:
            scans += 1
            if scans > limit:
                break
        position += int.from_bytes(data[position : position + 2], "big")
    return scans


def _reencode(image: Any) -> Photo:
    """Write a loaded image again in its format (an MPO camera file as a plain JPEG): a
    baseline JPEG with the source's quantization tables and chroma subsampling (so about
    its quality and size), a PNG, or a GIF of the first frame. Kept: the ICC colour profile,
    transparency; an EXIF orientation is applied to the pixels, since the EXIF block itself
    is dropped."""
    from PIL import ExifTags, ImageOps, JpegImagePlugin

    fmt = "JPEG" if image.format in ("JPEG", "MPO") else image.format
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        tables = getattr(image, "quantization", None)
        if tables:
            options["qtables"] = [tables[key] for key in sorted(tables)]
        options["subsampling"] = JpegImagePlugin.get_sampling(image)
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    kept = {k: image.info[k] for k in ("transparency", "background") if k in image.info}
    if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    image.info = kept  # no comment, EXIF, XMP or text chunk is carried over
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError) as exc:  # a mode the format cannot be written in
        raise PhotoError(f"photo cannot be re-encoded ({type(exc).__name__})") from None
    return Photo(buffer.getvalue(), fmt)


def photo_filename(
    template: str, username: str, now: datetime, photo_format: str | None = None
) -> str:
    """The file name for a user's photo, from ``LDAP_SYNC_USER_THUMBNAILPHOTO_NAME``.

    ``{username}`` is replaced by the username made safe for a file name (Django's
    ``get_valid_filename``, dot runs collapsed, leading dots removed, at most 64 characters),
    ``{uuid4}`` by a random UUID, then strftime codes are expanded with ``now``. The result is a
    bare file name (no directory part ever escapes); a template that yields nothing usable
    falls back to ``{username}_{uuid4}.jpg``. With ``photo_format`` (of :class:`Photo`), an
    extension that is not one of that format's is replaced (or added): a PNG is never stored
    as ``.jpg``.
    """
    safe_username = _safe_filename_part(username)
    name = template.replace("{username}", safe_username).replace("{uuid4}", str(uuid.uuid4()))
    name = now.strftime(name)
    name = os.path.basename(name.replace("\\", "/")).strip()
    if name in ("", ".", "..") or _CONTROL_CHARS.search(name):
        name = f"{safe_username}_{uuid.uuid4()}.jpg"
    if photo_format is not None:
        root, extension = os.path.splitext(name)
        if extension.lower() not in PHOTO_EXTENSIONS[photo_format]:
            name = root + PHOTO_EXTENSIONS[photo_format][0]
    return name


def _safe_filename_part(text: str) -> str:
    from django.core.exceptions import SuspiciousFileOperation
    from django.utils.text import get_valid_filename

    try:
        safe = get_valid_filename(text)
    except SuspiciousFileOperation:
        safe = ""
    safe = re.sub(r"\.{2,}", ".", safe).lstrip(".")[:64]
    return safe or "user"


def photo_digest(data: bytes) -> str:
    """SHA-256 hex digest of a photo as the directory holds it: an unchanged photo is
    neither decoded nor rewritten."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Small helpers


def fieldcase(name: str, mode: str | None) -> str:
    """Apply ``LDAP_SYNC_USER_CHANGE_FIELDCASE`` (None, "lower" or "upper") to a name."""
    if mode is None:
        return name
    if mode == "lower":
        return name.lower()
    if mode == "upper":
        return name.upper()
    raise ValueError(f"fieldcase must be None, 'lower' or 'upper', not {mode!r}")


def join_values(values: Iterable[bytes], separator: str) -> str:
    """Decode (strict UTF-8) and join the values of a multi-valued attribute."""
    return separator.join(value.decode("utf-8") for value in values)


# --------------------------------------------------------------------------------------------
# Directory rules shared by batch runs and logins


def entry_guid(entry: Entry, identity_attribute: str) -> str | None:
    """An entry's immutable id as stored in identity links, or None when it has none."""
    raw = entry.first(identity_attribute)
    if raw is None:
        return None
    try:
        return decode_identity(identity_attribute.lower(), raw)
    except ValueError:
        return None


def username_attribute(config: MappingConfig) -> str:
    """The attribute mapped to the username field."""
    return next(a for a, f in config.user_attributes.items() if f == config.username_field)


def member_key_of(entry: Entry, config: MappingConfig) -> str:
    """How group member values name this entry (as :attr:`UserRecord.member_key`)."""
    if config.member_attribute == "memberuid":
        try:
            value = entry.text(username_attribute(config)) or ""
        except UnicodeDecodeError:  # map_user skips the entry and says why
            return ""
        return value.lower()
    return normalize_dn(entry.dn)


def primary_group_sid_of(entry: Entry) -> str | None:
    """The SID of an AD entry's primary group (domain SID + ``primaryGroupID``), or None."""
    raw_sid, raw_rid = entry.first("objectsid"), entry.first("primarygroupid")
    if raw_sid is None or raw_rid is None:
        return None
    try:
        return f"{domain_sid_and_rid(sid_to_str(raw_sid))[0]}-{int(raw_rid)}"
    except ValueError:
        return None
