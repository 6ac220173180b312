"""The benchmark harness runs end to end at a tiny size (no timing is asserted, ever).

``python -m benchmarks --sizes 200/20 --skip-alternatives``: a generated directory in a
throwaway slapd, our sync (cold, unchanged, incremental), logins and the floor, each in its
own process; the table must come out with every correctness cell "ok".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_harness_prints_a_table_of_correct_rows(tmp_path):
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "--sizes", "200/20", "--skip-alternatives",
            "--logins", "5", "--out", str(out), "--workdir", str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 200/20 |")]
    scenarios = [row.split(" | ")[1] for row in rows]
    assert any("syncldap full, cold" in s for s in scenarios), done.stdout
    assert any("syncldap full, unchanged" in s for s in scenarios)
    assert any("syncldap incremental" in s for s in scenarios)
    assert any("logins through ADLDAPBackend" in s for s in scenarios)
    assert any(s.startswith("floor: paged ldapsearch") for s in scenarios)
    assert any(s.startswith("floor: bulk_create") for s in scenarios)
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        correctness = cells[6]
        assert correctness in ("ok", ""), row  # the ldapsearch floor writes no database
        if "ADLDAPBackend" in cells[1]:
            assert "FAILED" not in cells[7], row
    assert out.read_text().count("| 200/20 |") == len(rows)
