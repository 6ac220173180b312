"""What a server says about itself: its rootDSE, the administrators' groups of the bound
account's token, and the attribute types of its schema."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import ldap
import ldap.schema

from .decoding import domain_sid_and_rid

#: supportedCapabilities value announced by Active Directory (and Samba AD).
AD_CAPABILITY_OID = "1.2.840.113556.1.4.800"


@dataclass(frozen=True)
class RootDSE:
    """What the server says about itself before a run's searches."""

    is_ad: bool
    naming_context: str | None
    highest_committed_usn: int | None
    ds_service_name: str | None
    invocation_id: str | None
    current_time: str | None
    vendor: str | None
    #: SIDs of the bound account's token (AD's rootDSE ``tokenGroups``), for
    #: :attr:`privileged_groups`; empty elsewhere.
    token_sids: tuple[str, ...] = ()
    #: The DN of the entry holding the server's schema (RFC 4512, 5.1), for
    #: :meth:`DirectorySession.attribute_types`.
    subschema_subentry: str | None = None
    #: The control OIDs of the rootDSE's ``supportedControl`` (e.g. Content Synchronization).
    supported_controls: frozenset[str] = frozenset()

    @property
    def privileged_groups(self) -> list[str]:
        """The administrators' groups the bound account belongs to (see :func:`privileged_groups`)."""
        return privileged_groups(self.token_sids)


#: Domain groups (by RID) and built-in groups (by SID) whose members administer the domain or
#: the forest: a sync account in one of them can change everything it reads.
PRIVILEGED_RIDS = {512: "Domain Admins", 518: "Schema Admins", 519: "Enterprise Admins"}
PRIVILEGED_SIDS = {"S-1-5-32-544": "BUILTIN\\Administrators"}


def privileged_groups(sids: Iterable[str]) -> list[str]:
    """Names of the administrators' groups among ``sids`` (``S-1-5-...`` strings), sorted."""
    found = set()
    for sid in sids:
        if sid in PRIVILEGED_SIDS:
            found.add(PRIVILEGED_SIDS[sid])
        elif sid.startswith("S-1-5-21-") and sid.count("-") == 7:  # S-1-5-21-a-b-c-RID
            with contextlib.suppress(ValueError):
                rid = domain_sid_and_rid(sid)[1]
                if rid in PRIVILEGED_RIDS:
                    found.add(PRIVILEGED_RIDS[rid])
    return sorted(found)


def attribute_type_names(values: Iterable[bytes]) -> frozenset[str]:
    """The names and OIDs (lower-case) of the ``attributeTypes`` values of a subschema entry,
    parsed by python-ldap's :class:`ldap.schema.SubSchema`."""
    schema = ldap.schema.SubSchema({"attributeTypes": list(values)}, check_uniqueness=0)
    names: set[str] = set()
    for oid in schema.listall(ldap.schema.AttributeType):
        names.add(oid.lower())
        names.update(name.lower() for name in schema.get_obj(ldap.schema.AttributeType, oid).names)
    return frozenset(names)
