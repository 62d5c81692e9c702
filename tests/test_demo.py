"""The chaos demo runs to completion, and its figures agree with each other."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.demo import DemoOptions, RunResult, format_table, parse, plot, run_demo


async def test_a_short_demo_runs_and_adds_up() -> None:
    """Both runs finish; requests split exactly into answers and errors; protection helps."""
    options = DemoOptions(duration=1.0, clients=8, outage_hang=0.3, quiet=True, seed=3)
    bare, guarded = await run_demo(options)
    for run in (bare, guarded):
        assert run.requests > 0
        assert run.fresh + run.fallbacks + run.failed == run.requests
        assert len(run.latencies) == run.requests
        assert len(run.timeline) == run.requests
        # Nearest rank: p99 is a measured latency, with at least 99 % of them at or
        # below it and fewer than 99 % strictly below it.
        p99 = run.percentile(0.99)
        assert p99 in run.latencies
        assert sum(x <= p99 for x in run.latencies) >= 0.99 * run.requests
        assert sum(x < p99 for x in run.latencies) < 0.99 * run.requests
    assert bare.fallbacks == 0
    assert bare.downstream_calls == bare.requests  # no retries without protection
    assert guarded.failed == 0  # the fallback answers whatever is left
    assert guarded.answered == guarded.requests
    assert bare.failed > 0  # 30 % injected errors reach unprotected callers
    table = format_table(bare, guarded)
    assert f"{bare.requests}" in table
    assert "breaker trips" in table


def test_percentile_is_the_nearest_rank() -> None:
    """percentile(q) is the smallest latency with at least q of them at or below it."""
    run = RunResult("known", latencies=[0.5, 0.1, 0.4, 0.2, 0.3])  # not in order
    quantiles = (0.0, 0.2, 0.21, 0.5, 0.8, 0.99, 1.0)
    assert [run.percentile(q) for q in quantiles] == [0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    hundred = RunResult("hundred", latencies=[i / 100 for i in range(100, 0, -1)])
    assert (hundred.percentile(0.5), hundred.percentile(0.99)) == (0.5, 0.99)
    assert math.isnan(RunResult("empty").percentile(0.99))


def test_options_are_checked() -> None:
    """Bad command-line values are refused with a message naming the option."""
    options, plot = parse(["--duration", "2", "--clients", "5", "--seed", "9", "--quiet"])
    assert (options.duration, options.clients, options.seed, options.quiet) == (2.0, 5, 9, True)
    assert plot is None
    for bad in (["--duration", "0"], ["--clients", "0"], ["--error-rate", "1.5"]):
        with pytest.raises(SystemExit):
            parse(bad)


def test_module_entry_point_needs_the_demo_command() -> None:
    """``python -m resilience`` without ``demo`` prints its usage and exits 2."""
    done = subprocess.run(
        [sys.executable, "-m", "resilience"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "usage: python -m resilience {demo" in done.stderr


def test_module_entry_point_runs_the_demo() -> None:
    """``python -m resilience demo`` prints the side-by-side table."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "resilience",
            "demo",
            "--duration",
            "0.5",
            "--clients",
            "4",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "unprotected" in done.stdout
    assert "calls reaching the service" in done.stdout


def _tiny_runs() -> tuple[RunResult, RunResult]:
    bare = RunResult("unprotected", requests=2, fresh=1, failed=1)
    bare.timeline = [(0.1, True, 0.01), (0.5, False, 0.3)]
    guarded = RunResult("protected", requests=1, fallbacks=1)
    guarded.timeline = [(0.2, True, 0.001)]
    return bare, guarded


def test_plot_needs_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without matplotlib, --plot says how to install it instead of failing obscurely."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"--plot needs matplotlib"):
        plot(*_tiny_runs(), str(tmp_path / "out.png"), 1.0)


def test_plot_draws_both_runs(tmp_path: Path) -> None:
    """With matplotlib installed, --plot writes a PNG."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.png"
    plot(*_tiny_runs(), str(out), 1.0)
    assert out.read_bytes()[:4] == b"\x89PNG"
