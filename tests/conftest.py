"""Markers follow folders: every test under ``tests/unit`` is ``unit``, under
``tests/integration`` ``integration``, under ``tests/faults`` ``faults``, so a marker can
never disagree with where a test lives (``pytest -m unit`` is the fast suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

_FOLDERS = {"unit", "integration", "faults"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each collected test with the name of its folder under ``tests/``."""
    here = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(here).parts[0]
        if folder not in _FOLDERS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in tests/unit, tests/integration or tests/faults"
            )
        item.add_marker(folder)
