"""The chaos demo runs to completion, and its figures agree with each other."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

import resilience as rs
from resilience import demo
from resilience.demo import DemoOptions, format_table, parse, plot, run_demo
from resilience.simulate import Recorder, Report
from resilience.testing import FakeClock


async def test_a_short_demo_runs_and_adds_up() -> None:
    """All three runs finish; requests split exactly into answers and errors; protection helps."""
    options = DemoOptions(duration=1.0, clients=8, outage_hang=0.3, quiet=True, seed=3)
    bare, naive, guarded = await run_demo(options)
    assert [r.name for r in (bare, naive, guarded)] == [
        "unprotected",
        "naive retries",
        "recommended",
    ]
    for run in (bare, naive, guarded):
        assert run.requests > 0
        assert run.fresh + run.fallbacks + run.errors == run.requests
        assert len(run.recorder.latencies) == run.requests
        # Nearest rank: p99 is a measured latency, with at least 99 % of them at or
        # below it and fewer than 99 % strictly below it.
        latencies = list(run.recorder.latencies)
        p99 = run.p99
        assert p99 in latencies
        assert sum(x <= p99 for x in latencies) >= 0.99 * run.requests
        assert sum(x < p99 for x in latencies) < 0.99 * run.requests
        assert run.outages == (options.outage,)
    assert bare.fallbacks == 0
    assert bare.service_calls == bare.requests  # no retries without protection
    assert naive.service_calls > naive.requests  # retries
    assert naive.fallbacks == 0
    assert naive.trips == 0
    assert guarded.errors == 0  # the fallback answers whatever is left
    assert sum(guarded.fallbacks_by_reason.values()) == guarded.fallbacks
    assert bare.errors > 0  # 30 % injected errors reach unprotected callers
    table = format_table([bare, naive, guarded])
    assert f"{bare.requests}" in table
    assert "breaker trips" in table
    assert "per request during the outage" in table


def test_the_best_fresh_share_is_computed_from_the_profile() -> None:
    """37 % of attempts fail (30 % errors, 10 % slow, drawn independently): three attempts
    leave 0.37**3 failing, and the outage takes a fifth of the run."""
    options = DemoOptions()
    assert demo.best_fresh_share(options) == pytest.approx(0.8 * (1 - 0.37**3))
    no_outage = DemoOptions(outage_length=0.0)
    assert demo.best_fresh_share(no_outage) == pytest.approx(1 - 0.37**3)
    # Retrying through the outage answers some of its requests after it, never more.
    bound = demo.retry_through_bound(options)
    assert demo.best_fresh_share(options) < bound < 1 - 0.37**3
    assert demo.retry_through_bound(no_outage) == pytest.approx(1 - 0.37**3)
    # Slow answers that the attempt timeout does not cut are not failures.
    patient = DemoOptions(slow_seconds=demo.ATTEMPT_TIMEOUT / 2)
    assert demo.best_fresh_share(patient) == pytest.approx(0.8 * (1 - 0.3**3))


def test_the_recommended_breaker_rides_out_a_cold_start_and_a_normal_day() -> None:
    """The first outcomes of a cold start are mostly errors (they come back first); then 37 %
    of attempts fail. The demo's breaker stays closed through both, and trips in an outage."""
    _, breaker = demo.protected_pipeline(DemoOptions())
    settings = {k: v for k, v in breaker.settings().items() if k != "consecutive_failures"}
    clock = FakeClock(100.0)
    copy = rs.CircuitBreaker(**settings, clock=clock)

    def outcome(fails: bool) -> None:
        def call() -> None:
            if fails:
                raise ConnectionError("down")

        with contextlib.suppress(ConnectionError, rs.CircuitOpenError):
            copy.call(call)
        clock.advance(0.002)  # 500 calls a second

    pattern = [True] * 17 + [False] * 33  # a cold start: 17 errors back before most answers
    pattern += ([True] * 37 + [False] * 63) * 10  # a normal day, two seconds of it
    for fails in pattern:
        outcome(fails)
    assert copy.state is rs.CircuitState.CLOSED
    for _ in range(200):  # an outage: everything fails
        outcome(True)
    assert copy.state is rs.CircuitState.OPEN


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
    assert "simulate" in done.stderr


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


def _tiny_runs() -> list[Report]:
    reports = []
    for name, outcomes in (("unprotected", [True, False]), ("recommended", [True])):
        record = Recorder()
        for index, fresh in enumerate(outcomes):
            record.request(0.1 + 0.4 * index, 0.01, fresh)
            record.calls.append(0.1 + 0.4 * index)
        reports.append(record.report(name, 1.0, [(0.4, 0.6)]))
    return reports


def test_plot_needs_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without matplotlib, --plot says how to install it instead of failing obscurely."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"plots need matplotlib"):
        plot(_tiny_runs(), str(tmp_path / "out.png"))


def test_plot_draws_every_run(tmp_path: Path) -> None:
    """With matplotlib installed, --plot writes a PNG."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.png"
    plot(_tiny_runs(), str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"
