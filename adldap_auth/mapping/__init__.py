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

from ..conf.fields import (
    PHOTO_ATTRIBUTES,
    ProfileMapProblem,
    default_user_attributes_note,
    read_profile_attributes,
    user_text_fields,
)
from .attribute_lists import (
    group_attribute_list,
    schema_checked_attributes,
    unknown_schema_attributes,
    user_attribute_list,
)
from .config import MappingConfig, ProfileSpec, build_mapping_config
from .group_entries import GroupRecord, map_group
from .photos import (
    PHOTO_MAX_SCANS,
    Photo,
    PhotoError,
    jpeg_scan_count,
    photo_digest,
    photo_filename,
    validate_photo,
)
from .users import UserRecord, is_email_address, map_user
from .values import (
    BINARY_GUID_ATTRIBUTES,
    SkipEntry,
    decode_identity,
    entry_guid,
    fieldcase,
    join_values,
    member_key_of,
    normalize_dn,
    primary_group_sid_of,
    username_attribute,
)
from .values import _normalize_dn_parsed as _normalize_dn_parsed  # its cache, for tests

__all__ = [
    "BINARY_GUID_ATTRIBUTES",
    "GroupRecord",
    "MappingConfig",
    "PHOTO_ATTRIBUTES",
    "PHOTO_MAX_SCANS",
    "Photo",
    "PhotoError",
    "ProfileMapProblem",
    "ProfileSpec",
    "SkipEntry",
    "UserRecord",
    "build_mapping_config",
    "decode_identity",
    "default_user_attributes_note",
    "entry_guid",
    "fieldcase",
    "group_attribute_list",
    "is_email_address",
    "join_values",
    "jpeg_scan_count",
    "map_group",
    "map_user",
    "member_key_of",
    "normalize_dn",
    "photo_digest",
    "photo_filename",
    "primary_group_sid_of",
    "read_profile_attributes",
    "schema_checked_attributes",
    "unknown_schema_attributes",
    "user_attribute_list",
    "user_text_fields",
    "username_attribute",
    "validate_photo",
]
