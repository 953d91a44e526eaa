"""The browser tests never skip silently: without Chromium they skip saying why, and
with ``CI=true`` they fail instead (the rule the ``browser`` fixture applies)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Dash


def test_no_browser_skips_with_a_reason_or_fails_in_ci(dash: Dash, tmp_path: Path) -> None:
    gone = str(tmp_path / "no-chromium")
    skip = dash.missing_browser(gone, {})
    assert skip is not None and skip[0] is False and f"no Chromium at {gone}" in skip[1]
    fail = dash.missing_browser(gone, {"CI": "true"})
    assert fail is not None and fail[0] is True
    assert "with CI=true the browser tests run, they never skip" in fail[1]
    assert dash.missing_browser(sys.executable, {"CI": "true"}) is None  # one is there
