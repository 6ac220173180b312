"""write_nesting against the test database: rows new, unchanged, changed and gone, in batches."""

from __future__ import annotations

import pytest

from adldap_auth import nesting
from adldap_auth.groups import GroupGraph
from adldap_auth.models import GroupNode
from tests.unit.test_groups import group

pytestmark = pytest.mark.django_db


def _graph(count: int, renamed: int | None = None, member: str = "alice") -> GroupGraph:
    records = [group(f"G{i:04d}", member, *([f"group:G{i + 1:04d}"] if i + 1 < count else []))
               for i in range(count)]  # fmt: skip
    if renamed is not None:
        records[renamed].fields = {"name": "renamed", "description": "new"}
    return GroupGraph(records)


def test_rows_are_written_compared_and_rewritten_in_batches(monkeypatch):
    monkeypatch.setattr(nesting, "_WRITE_BATCH", 7)  # several batches of each kind
    assert nesting.write_nesting(_graph(20)) == 20
    assert nesting.write_nesting(_graph(20)) == 0
    assert nesting.write_nesting(_graph(20, renamed=3, member="bob")) == 20  # every member list
    assert nesting.write_nesting(_graph(20, renamed=3, member="bob")) == 0
    assert nesting.write_nesting(_graph(20, renamed=5, member="bob")) == 2  # G0003 and G0005
    row = GroupNode.objects.get(guid="guid-G0005")
    assert row.fields == {"name": "G0005", "description": "new"}
    assert row.member_keys == sorted(row.member_keys) and len(row.member_keys) == 2
    assert GroupNode.objects.get(guid="guid-G0003").fields == {"name": "G0003"}
    assert nesting.write_nesting(_graph(12, renamed=5, member="bob")) == 9  # 8 gone, G0011's list
    assert GroupNode.objects.count() == 12
    assert GroupNode.objects.get(guid="guid-G0001").parent_guids == ["guid-G0000"]
