"""``make demo`` end to end, on its OpenLDAP directory (Samba's ports belong to the test lab).

Runs ``python -m example_site.demo --directory openldap --check`` twice in a temporary data
folder: the first run creates the database and syncs in full, the second reuses the database
(incremental); both change the directory, sync the changes, serve the site, log in over HTTP
as the demo user and check the photo and the nested groups, then stop everything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_demo(data_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADLDAP_DEMO_", "DJANGO_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = ["--directory", "openldap", "--check", "--port", str(_free_port())]
    done = subprocess.run(
        [sys.executable, "-m", "example_site.demo", *args, "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_demo_runs_twice_reusing_the_database(tmp_path: Path):
    first = run_demo(tmp_path)
    assert "[3] First sync (full)" in first
    assert "full sync from ldaps://127.0.0.1:" in first  # TLS, certificate verified
    assert "users             277      276" in first  # dave is disabled: never created
    assert "new hire nina (Nina Novak) joins 'Web Team'" in first
    assert "create user 'nina'" in first
    assert "remove user" in first and "(disabled)" in first
    assert "check: groups shown: 7 (2 direct, 5 inherited through nesting)" in first
    assert "Stopped: nothing of the demo is left running." in first

    second = run_demo(tmp_path)
    assert "(reused)" in second
    assert "First sync (incremental: the database was synced before)" in second
    assert "new hire oscar (Oscar Olsen)" in second  # usernames are never reused
    assert "create user 'oscar'" in second
    assert "Checked in" in second
