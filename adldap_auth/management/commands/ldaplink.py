"""``manage.py ldaplink <username> [--relink]``: link one Django user to its directory entry.

Exit status: 0 linked (or already linked); 1 not linked (the message says why).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from adldap_auth.directory import DirectoryError
from adldap_auth.linking import LinkError, link_user


class Command(BaseCommand):
    help = (
        "Link an existing Django user to the directory entry with its username, on purpose: "
        "also a superuser, a staff user or a user with a usable password, which the sync never "
        "adopts by itself (see LDAP_SYNC_ADOPT_USERS). From then on the directory controls the "
        "user: fields, groups, memberships, and removal when the entry goes."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username", help="The Django user's username (case-insensitive).")
        parser.add_argument(
            "--relink",
            action="store_true",
            help="Move the user from the directory entry it is linked to, even if that entry "
            "still exists (an account re-created with a new objectGUID/entryUUID).",
        )

    def handle(self, *args, **options) -> None:
        try:
            result = link_user(options["username"], relink=options["relink"])
        except (LinkError, DirectoryError) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(result.message())
