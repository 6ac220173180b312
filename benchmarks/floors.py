"""The raw write floor: the rows a cold ``syncldap full`` writes, loaded through the driver.

The same tables and rows as the cold run's database holds afterwards: ``auth_user``,
``auth_group``, the *effective* memberships in ``auth_user_groups``, the identity links
(``adldap_auth_directoryuser``, ``adldap_auth_directorygroup``), the stored nesting
(``adldap_auth_groupnode``, member keys included) and the profiles (``testapp_employee``).
Photos, whose files the cold run also writes, are left out: the floor is the database's.

How each database loads fastest through its own driver, into the tables Django made (their
indexes, unique constraints and foreign keys kept):

- PostgreSQL: ``COPY ... FROM STDIN`` (psycopg 3 ``cursor.copy``, ``write_row``), one per table;
- MariaDB: multi-row ``INSERT`` statements of :data:`MARIADB_ROWS` rows;
- SQLite: one ``executemany`` per table.

All in one transaction; primary keys are given (the tables are empty), so the memberships need
no read-back. The driver connection is Django's own (``connection.connection``): the same
connection settings as the sync's, and no statement goes through Django.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Rows per MariaDB INSERT (well under the default 16 MB max_allowed_packet at these widths).
MARIADB_ROWS = 5_000


@dataclass
class Table:
    name: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def tables(expected: dict[str, Any], now: Any, server: str) -> list[Table]:
    """The rows of a cold run, from the harness's ``Expected`` (users in order: id = index+1)."""
    users = expected["user_rows"]
    links = expected["user_links"]
    user_ids = {key: index for index, (key, *_rest) in enumerate(users, start=1)}
    group_ids = {name: index for index, name in enumerate(expected["groups"], start=1)}
    unusable = "!" + "x" * 40  # an unusable password, as the sync sets
    return [
        Table(
            "auth_user",
            ("id", "password", "is_superuser", "username", "first_name", "last_name", "email",
             "is_staff", "is_active", "date_joined"),
            [(user_ids[key], unusable, False, key, given, sn, mail or "", False, True, now)
             for key, given, sn, mail in users],
        ),
        Table("auth_group", ("id", "name"), [(i, name) for name, i in group_ids.items()]),
        Table(
            "auth_user_groups",
            ("user_id", "group_id"),
            [(user_ids[key], group_ids[name])
             for key, names in expected["memberships"].items() for name in names],
        ),
        Table(
            "adldap_auth_directoryuser",
            ("user_id", "guid", "dn", "server", "object_sid", "primary_group_sid",
             "photo_digests", "first_seen", "last_changed", "removal_reason"),
            [(user_ids[key], guid, dn, server, "", "", "{}", now, now, "")
             for key, guid, dn, _department, _title in links],
        ),
        Table(
            "adldap_auth_directorygroup",
            ("group_id", "guid", "dn", "object_sid", "last_changed"),
            [(group_ids[name], guid, dn, "", now)
             for name, guid, dn, _keys, _parents in expected["group_links"]],
        ),
        Table(
            "adldap_auth_groupnode",
            ("guid", "dn", "object_sid", "fields", "in_scope", "member_keys", "member_digest",
             "parent_guids"),
            [(guid, dn, "", json.dumps({"name": name}), True, json.dumps(keys),
              hashlib.sha256("\n".join(keys).encode()).hexdigest(), json.dumps(parents))
             for name, guid, dn, keys, parents in expected["group_links"]],
        ),
        Table(
            "testapp_employee",
            ("user_id", "department", "title", "phone"),
            [(user_ids[key], department or "", title or "", "")
             for key, _guid, _dn, department, title in links],
        ),
    ]  # fmt: skip


def load(vendor: str, raw: Any, expected: dict[str, Any], server: str) -> dict[str, int]:
    """Load the rows through ``raw`` (the driver connection); statements and rows sent."""
    now = datetime.now(UTC)
    if vendor == "sqlite":  # Django's SQLite format: text, UTC, no offset
        now = now.replace(tzinfo=None).isoformat(" ")
    elif vendor == "mariadb":  # Django stores naive UTC in MySQL/MariaDB
        now = now.replace(tzinfo=None)
    loaded = tables(expected, now, server)
    loader = {"postgres": _load_postgres, "mariadb": _load_mariadb, "sqlite": _load_sqlite}
    statements = loader[vendor](raw, loaded)
    return {"statements": statements, "rows": sum(len(t.rows) for t in loaded)}


def _load_postgres(raw: Any, loaded: list[Table]) -> int:
    statements = 2  # BEGIN, COMMIT
    with raw.transaction(), raw.cursor() as cursor:
        for table in loaded:
            with cursor.copy(f"COPY {table.name} ({', '.join(table.columns)}) FROM STDIN") as copy:
                for row in table.rows:
                    copy.write_row(row)
            statements += 1
    return statements


def _load_mariadb(raw: Any, loaded: list[Table]) -> int:
    cursor = raw.cursor()
    cursor.execute("START TRANSACTION")
    statements = 2  # START TRANSACTION, COMMIT
    for table in loaded:
        row_sql = "(" + ", ".join(["%s"] * len(table.columns)) + ")"
        head = f"INSERT INTO {table.name} ({', '.join(table.columns)}) VALUES "
        for chunk in _chunks(table.rows, MARIADB_ROWS):
            cursor.execute(
                head + ", ".join([row_sql] * len(chunk)), [v for row in chunk for v in row]
            )
            statements += 1
    raw.commit()
    cursor.close()
    return statements


def _load_sqlite(raw: Any, loaded: list[Table]) -> int:
    cursor = raw.cursor()
    cursor.execute("BEGIN")
    statements = 2  # BEGIN, COMMIT
    for table in loaded:
        marks = ", ".join(["?"] * len(table.columns))
        cursor.executemany(
            f"INSERT INTO {table.name} ({', '.join(table.columns)}) VALUES ({marks})", table.rows
        )
        statements += 1
    cursor.execute("COMMIT")
    cursor.close()
    return statements


def _chunks(rows: list[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def statement_label(vendor: str) -> str:
    return {
        "postgres": "COPY (psycopg 3 cursor.copy)",
        "mariadb": f"multi-row INSERT ({MARIADB_ROWS} rows a statement)",
        "sqlite": "executemany (sqlite3)",
    }[vendor]
