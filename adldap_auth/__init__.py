"""adldap-auth: keep Django users, groups, memberships, profiles and photos in step with a directory.

Vocabulary used across the package:

- ``*_dn``: a distinguished name, as a ``str``.
- ``*_guid``: an entry's immutable id as a canonical string (objectGUID as a UUID, or entryUUID).
- ``*_sid``: an objectSid in its ``S-1-5-21-...`` string form.
- ``*_attrs``: an attribute dict, lower-case attribute names to lists of ``bytes`` values.
- ``entry``: an :class:`adldap_auth.directory.Entry` (dn plus attrs), straight from the server.
- ``record``: the result of mapping an entry (:class:`adldap_auth.mapping.UserRecord`).

Layers, each importing only those below it: ``conf`` -> ``directory`` -> ``mapping`` ->
``groups`` -> ``membership`` -> ``store`` and ``nesting`` -> ``sync`` -> (``management``,
``tasks``); the login path (``login``, ``backends``) uses the layers below ``sync`` for one
user. Settings are read only through :func:`adldap_auth.conf.get_config`, which validates
them as ``manage.py check`` does (tests/unit/test_layers.py guards the direction).
"""

__version__ = "0.1.0"
