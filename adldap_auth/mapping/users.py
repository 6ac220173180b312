"""User entries -> :class:`UserRecord`: username, e-mail addresses, other fields, profiles
and photos, with the rules of the package docstring."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ..directory import Entry
from ..directory.decoding import domain_sid_and_rid, uac_disabled
from .config import MappingConfig
from .values import SkipEntry, _identity, _sid, _text, normalize_dn


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
    profiles, photos = _profile_values(attrs, config, problems)
    disabled = _disabled(entry, problems)
    object_sid = _sid(entry, problems)
    primary_group_sid = _primary_group_sid(entry, object_sid, problems)
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


def _profile_values(
    attrs: dict[str, list[bytes]], config: MappingConfig, problems: list[str]
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, bytes | None]]]:
    """Each profile's text values and photos, by model label then field."""
    profiles: dict[str, dict[str, str]] = {}
    photos: dict[str, dict[str, bytes | None]] = {}
    for profile in config._plan.profiles:
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
    return profiles, photos


def _disabled(entry: Entry, problems: list[str]) -> bool:
    """userAccountControl's ACCOUNTDISABLE bit (AD); enabled when there is none."""
    uac = entry.first("useraccountcontrol")
    if uac is None:
        return False
    try:
        return uac_disabled(uac)
    except ValueError:  # includes UnicodeDecodeError
        problems.append("attribute useraccountcontrol is not a number; taken as enabled")
        return False


def _primary_group_sid(entry: Entry, object_sid: str | None, problems: list[str]) -> str | None:
    """The SID of the AD primary group: the domain part of objectSid plus primaryGroupID."""
    primary_group_id = entry.first("primarygroupid")
    if object_sid is None or primary_group_id is None:
        return None
    try:
        rid = int(primary_group_id.decode("ascii"))
    except ValueError:
        problems.append("attribute primarygroupid is not a number; ignored")
        return None
    return f"{domain_sid_and_rid(object_sid)[0]}-{rid}"
