"""The databases a row group runs on: a SQLite file, or a throwaway PostgreSQL or MariaDB one.

``--databases sqlite,postgres,mariadb``: every adldap-auth scenario (and the write floors) runs
on each. PostgreSQL is the local server at 127.0.0.1:5432 (user ``postgres``, trust), MariaDB
the one at 127.0.0.1:3306 (``root``, empty password), as the test suite's
``ADLDAP_TEST_DB`` passes use them; each row group gets a database of its own
(``bench_<pid>_<n>``), created before its first scenario and dropped at the end of the size.
The server's own settings are kept (MariaDB: its default collation, as sites get it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

VENDORS = ("sqlite", "postgres", "mariadb")
_PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
_MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
_serial = count(1)


def parse_databases(text: str) -> list[str]:
    """``sqlite,postgres,mariadb`` (``pg``, ``postgresql``, ``mysql`` accepted), in that order."""
    aliases = {"pg": "postgres", "postgresql": "postgres", "mysql": "mariadb"}
    names = []
    for part in text.split(","):
        name = aliases.get(part.strip().lower(), part.strip().lower())
        if not name:
            continue
        if name not in VENDORS:
            raise ValueError(f"unknown database {part!r}; known: {', '.join(VENDORS)}")
        if name not in names:
            names.append(name)
    return names or ["sqlite"]


@dataclass
class BenchDatabase:
    """One row group's database: where Django finds it, and a driver connection to check it."""

    vendor: str
    name: str  # the database name (PostgreSQL, MariaDB) or the SQLite file
    created: bool = False

    @classmethod
    def new(cls, vendor: str, workdir: Path, stem: str) -> BenchDatabase:
        if vendor == "sqlite":
            return cls(vendor, str(workdir / f"{stem}.sqlite3"))
        return cls(vendor, f"bench_{os.getpid()}_{next(_serial)}")

    @property
    def label(self) -> str:
        return self.vendor

    def django(self) -> dict[str, Any]:
        """The ``DATABASES["default"]`` entry of the scenario processes."""
        if self.vendor == "postgres":
            return {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": _PG["host"], "PORT": str(_PG["port"]), "USER": _PG["user"],
                "PASSWORD": "", "NAME": self.name,
            }  # fmt: skip
        if self.vendor == "mariadb":
            return {
                "ENGINE": "django.db.backends.mysql",
                "HOST": _MARIADB["host"], "PORT": str(_MARIADB["port"]),
                "USER": _MARIADB["user"], "PASSWORD": "", "NAME": self.name,
                "OPTIONS": {"charset": "utf8mb4"},
            }  # fmt: skip
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": self.name}

    def create(self) -> None:
        if self.vendor == "sqlite":
            Path(self.name).unlink(missing_ok=True)
        else:
            self._admin(f"CREATE DATABASE {self._create_clause()}")
        self.created = True

    def drop(self) -> None:
        if not self.created:
            return
        if self.vendor == "sqlite":
            Path(self.name).unlink(missing_ok=True)
        elif self.vendor == "postgres":
            self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        else:
            self._admin(f"DROP DATABASE IF EXISTS {self.name}")
        self.created = False

    def _create_clause(self) -> str:
        return f"{self.name} CHARACTER SET utf8mb4" if self.vendor == "mariadb" else self.name

    def _admin(self, statement: str) -> None:
        conn = self.connect(admin=True)
        try:
            conn.cursor().execute(statement)
        finally:
            conn.close()

    def connect(self, admin: bool = False) -> Any:
        """A DB-API connection (autocommit); ``admin``: to the server, not this database."""
        if self.vendor == "sqlite":
            import sqlite3

            return sqlite3.connect(f"file:{self.name}?mode=ro", uri=True)
        if self.vendor == "postgres":
            import psycopg

            return psycopg.connect(
                **_PG, dbname="postgres" if admin else self.name, autocommit=True
            )
        import MySQLdb

        extra = {} if admin else {"database": self.name}
        conn = MySQLdb.connect(**_MARIADB, charset="utf8mb4", **extra)
        conn.autocommit(True)
        return conn


def server_versions(vendors: list[str]) -> str:
    """``PostgreSQL 15.x, MariaDB 10.x`` for the machine line: the servers the run used."""
    parts = []
    for vendor in vendors:
        if vendor == "sqlite":
            continue
        try:
            conn = BenchDatabase(vendor, "").connect(admin=True)
            cursor = conn.cursor()
            cursor.execute("SHOW server_version" if vendor == "postgres" else "SELECT VERSION()")
            version = str(cursor.fetchone()[0]).split(" ")[0]
            conn.close()
        except Exception as error:  # noqa: BLE001 - only a label
            version = f"? ({type(error).__name__})"
        parts.append(f"{'PostgreSQL' if vendor == 'postgres' else 'MariaDB'} {version}")
    return ", ".join(parts)
