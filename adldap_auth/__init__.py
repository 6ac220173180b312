"""adldap-auth: keep Django users, groups, memberships, profiles and photos in step with a directory.

Vocabulary used across the package:

- ``*_dn``: a distinguished name, as a ``str``.
- ``*_guid``: an entry's immutable id as a canonical string (objectGUID as a UUID, or entryUUID).
- ``*_sid``: an objectSid in its ``S-1-5-21-...`` string form.
- ``*_attrs``: an attribute dict, lower-case attribute names to lists of ``bytes`` values.
- ``entry``: an :class:`adldap_auth.directory.Entry` (dn plus attrs), straight from the server.
- ``record``: the result of mapping an entry (:class:`adldap_auth.mapping.UserRecord`).

Layers, each importing only those below it: ``conf`` -> ``directory`` -> ``mapping`` ->
``groups`` -> ``store`` -> ``sync`` -> (``management``, ``tasks``); ``backends`` uses
``mapping``, ``groups`` and ``store`` for one user.
"""

__version__ = "0.1.0"
