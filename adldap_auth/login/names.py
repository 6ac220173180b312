"""Login names and the user search: what a typed name becomes, which entries it may match,
and which attributes the search reads."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from ldap.filter import escape_filter_chars

from ..conf import get_config
from ..directory.readers import and_filter
from ..mapping import MappingConfig, build_mapping_config, user_attribute_list

#: Characters refused anywhere in a typed login name (Unicode categories): controls (tab,
#: newline, NUL...), invisible format characters (zero-width spaces, bidi overrides) and
#: line/paragraph separators. The mapper refuses the same ones in directory usernames
#: (:func:`adldap_auth.mapping.map_user`), so no account is locked out by this rule.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
#: Attributes read on top of the mapper's: both usual identity attributes (to recognise AD
#: from the entry, without a rootDSE read).
DETECTION_ATTRIBUTES = ("objectguid", "entryuuid", "objectsid")


def normalize_login_name(username: str) -> str:
    """The name a user typed, made searchable: plain spaces (U+0020) stripped,
    ``DOMAIN\\user`` -> ``user``.

    ``user@domain`` is returned unchanged (see :func:`user_search_filter`). Gives "" (the
    login is refused) for a name with a control, format or line/paragraph separator character
    anywhere (NUL, tab, newline, a zero-width space...), checked *before* any stripping, and
    for other white space (a no-break space...) left at either end once plain spaces are
    stripped. No directory username has the former (the mapper refuses them); the directory's
    matching rules (RFC 4518) drop or fold both, so ``alice\\t`` would otherwise find alice;
    and Samba compares filter values only up to a NUL.
    """
    if any(unicodedata.category(char) in _REFUSED_CATEGORIES for char in username):
        return ""
    name = username.strip(" ")
    if "\\" in name:
        name = name.partition("\\")[2].strip(" ")
    if name != name.strip():
        return ""
    return name


def _local_part(login: str) -> str:
    return login.rpartition("@")[0].strip(" ") if "@" in login else ""


def is_exempt(login: str, exempt_usernames: Iterable[str]) -> bool:
    """True when the typed name, or its local part, is in ``LDAP_SYNC_USER_EXEMPT_FROM_SYNC``."""
    exempt = {name.lower() for name in exempt_usernames}
    return login.lower() in exempt or _local_part(login).lower() in exempt


def user_search_filter(
    user_filter: str, username_attr: str, login: str, upn_attr: str | None = None
) -> str:
    """The user search for a typed name: the scope filter and the escaped name.

    ``user@domain`` also matches its local part, and the ``upn_attr`` (``userPrincipalName``
    on AD) when given.
    """
    clauses = [f"({username_attr}={escape_filter_chars(login)})"]
    local = _local_part(login)
    if local:
        clauses.append(f"({username_attr}={escape_filter_chars(local)})")
        if upn_attr:
            clauses.append(f"({upn_attr}={escape_filter_chars(login)})")
    name_filter = clauses[0] if len(clauses) == 1 else "(|" + "".join(clauses) + ")"
    return and_filter(user_filter, name_filter)


def _mapping_configs() -> list[MappingConfig]:
    """The mapping configs a login may use: both AD and not AD when the identity is "auto"."""
    if str(get_config().IDENTITY_ATTRIBUTE).lower() == "auto":
        return [build_mapping_config(is_ad=True), build_mapping_config(is_ad=False)]
    return [build_mapping_config(is_ad=None)]


def username_attribute(config: MappingConfig | None = None) -> str:
    """The attribute mapped to the username field, as spelled in ``LDAP_SYNC_USER_ATTRIBUTES``."""
    config = config or _mapping_configs()[0]
    attr = next(a for a, f in config.user_attributes.items() if f == config.username_field)
    return config.spelling(attr)


def login_user_attributes() -> list[str]:
    """Everything the login's user search requests: the mapper's list, plus detection ones."""
    names: list[str] = []
    for config in _mapping_configs():
        names.extend(user_attribute_list(config))
    names.extend(DETECTION_ATTRIBUTES)
    return list(dict.fromkeys(names))
