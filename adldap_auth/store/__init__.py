"""Writing mapped records to the database: diff first, then bulk writes, one transaction a batch.

The store knows nothing of LDAP. It receives :class:`~adldap_auth.mapping.UserRecord` and
:class:`~adldap_auth.mapping.GroupRecord` objects, compares them with what the database holds,
and writes only what differs, so a run over an unchanged directory issues no write at all.

A batch that fails on a database constraint is rolled back and retried entry by entry, each in
its own savepoint, so one bad row is reported and skipped while the rest of the batch lands.

The :class:`Store` is one class assembled from one mixin per concern, each in its own module:
``groups``, ``users``, ``adoption``, ``profiles`` (and photos), ``memberships`` and
``removals``; ``core`` holds the state they share, ``report`` what a run counted.
"""

from .adoption import adoption_obstacles
from .core import Store
from .memberships import MembershipTable
from .report import MAX_PROBLEMS, RunReport
from .users import UserOutcome, unusable_password

__all__ = [
    "MAX_PROBLEMS",
    "MembershipTable",
    "RunReport",
    "Store",
    "UserOutcome",
    "adoption_obstacles",
    "unusable_password",
]
