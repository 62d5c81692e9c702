"""The generated sync shells are what tools/unasync.py makes of the async ones."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_sync_shells_are_generated_from_the_async_ones() -> None:
    """src/resilience/_shells_sync.py is current: run `python tools/unasync.py` after editing
    src/resilience/_shells.py."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_check_fails_on_a_stale_sync_module(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is not vacuous: a sync module that differs from the generated one fails."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import unasync

    wanted = unasync.generate()
    assert "async def" not in wanted
    assert "await " not in wanted
    assert "def circuit_breaker(" in wanted
    target = tmp_path / "_shells_sync.py"
    target.write_text(wanted.replace("permit < 0", "permit <= 0", 1))
    monkeypatch.setattr(unasync, "TARGET", target)
    monkeypatch.setattr(sys, "argv", ["unasync.py", "--check"])
    assert unasync.main() == 1
    target.write_text(wanted)
    assert unasync.main() == 0
