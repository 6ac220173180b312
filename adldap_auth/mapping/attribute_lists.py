"""The attribute lists a mapping configuration implies: what a user or group search requests,
and which mapped attributes a schema check looks for."""

from __future__ import annotations

from collections.abc import Iterable

from .config import MappingConfig

#: Attributes always requested for users / groups (lower-case), on top of the configured ones.
USER_CONTROL_ATTRIBUTES = ("objectsid", "primarygroupid", "useraccountcontrol")
GROUP_CONTROL_ATTRIBUTES = ("objectsid",)


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
