"""The benchmark harness runs end to end at a tiny size (no timing is asserted, ever).

``python -m benchmarks --sizes 200/20 --skip-alternatives``: a generated directory in a
throwaway slapd, our sync (cold, unchanged, incremental; the change feed's rows), logins and
the floors, each in its own process; the table must come out with every correctness cell
"ok". With ``--databases postgres`` or ``mariadb`` (when the local server answers), the same
rows on a throwaway database of that server, the driver's write floor included, and the
database dropped afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.databases import BenchDatabase

REPO = Path(__file__).resolve().parents[2]
OUR_ROWS = (
    "syncldap full, cold",
    "syncldap full, unchanged",
    "syncldap incremental, 1% changed",
    "logins through ADLDAPBackend",
    "syncldap full, cold, change feed on",
    "syncldap incremental via change feed, 1% changed",
    "change feed, nothing changed",
    "floor (Django): bulk_create",
    "floor (driver):",
)


def run_harness(tmp_path: Path, size: str, *extra: str) -> tuple[str, list[list[str]]]:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "--sizes", size, "--skip-alternatives",
            "--logins", "5", "--out", str(out), "--workdir", str(tmp_path / "work"), *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"| {size} |")]
    assert out.read_text().count(f"| {size} |") == len(lines)
    return done.stdout, [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def check_rows(rows: list[list[str]], database: str) -> None:
    """Every row of ``database``: correct, our scenarios and floors all there."""
    ours = [cells for cells in rows if cells[1] == database]
    scenarios = [cells[2] for cells in ours]
    for wanted in OUR_ROWS:
        assert any(wanted in scenario for scenario in scenarios), (wanted, scenarios)
    for _size, _db, scenario, _s, _rss, _ldap, sql, correctness, notes in ours:
        assert correctness == "ok", (scenario, correctness)
        assert "FAILED" not in notes and "RAN AS" not in notes, (scenario, notes)
        if scenario.startswith("floor (driver)"):
            assert sql and int(sql.split()[0]) >= 7 + 2, sql  # a statement a table at least
        if "cold (empty DB)" in scenario:
            assert "x raw floor" in notes, notes


def test_benchmark_harness_prints_a_table_of_correct_rows(tmp_path):
    stdout, rows = run_harness(tmp_path, "200/20")
    assert any(cells[2].startswith("floor: paged ldapsearch") for cells in rows), stdout
    assert {cells[1] for cells in rows} == {"", "sqlite"}
    check_rows(rows, "sqlite")


def _answers(vendor: str) -> bool:
    try:
        BenchDatabase(vendor, "").connect(admin=True).close()
    except Exception:  # noqa: BLE001 - any failure: no server to run on
        return False
    return True


def _bench_databases(vendor: str) -> set[str]:
    conn = BenchDatabase(vendor, "").connect(admin=True)
    try:
        cursor = conn.cursor()
        if vendor == "postgres":
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'")
        else:
            cursor.execute("SHOW DATABASES LIKE 'bench\\_%'")
        return {name for (name,) in cursor.fetchall()}
    finally:
        conn.close()


@pytest.mark.parametrize("vendor", ["postgres", "mariadb"])
def test_benchmark_harness_on_a_database_server(tmp_path, vendor):
    if not _answers(vendor):
        pytest.skip(f"no {vendor} server at its local port")
    before = _bench_databases(vendor)
    _stdout, rows = run_harness(tmp_path, "100/10", "--databases", vendor)
    assert {cells[1] for cells in rows} == {"", vendor}
    check_rows(rows, vendor)
    assert _bench_databases(vendor) <= before  # the run's throwaway databases are dropped
