"""The simulator: closed forms, determinism, the service model, configuration and the CLI."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

import resilience as rs
from resilience import backoff
from resilience import simulate as sim
from resilience.config import ConfigError
from resilience.simulate import Outage, Service
from resilience.testing import FakeClock


def retry(attempts: int, **options: Any) -> Any:
    def make(clock: rs.Clock) -> rs.Middleware:
        return rs.Retry(attempts=attempts, clock=clock, **options)

    return make


# -- closed forms --------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_retries_succeed_as_often_as_one_minus_p_to_the_k(attempts: int) -> None:
    """With error rate p and k attempts, 1 - p**k of requests succeed (within 2 %)."""
    service = Service(latency=0.01, error_rate=0.4)
    report = sim.run(retry(attempts), service, rate=100, requests=20_000, seed=attempts)
    expected = 1 - 0.4**attempts
    assert report.fresh_share == pytest.approx(expected, rel=0.02)
    # Each request costs 1 + p + ... + p**(k-1) calls on average.
    calls = sum(0.4**i for i in range(attempts))
    assert report.load == pytest.approx(calls, rel=0.02)
    assert report.errors_by_type == ({"ServiceError": report.errors} if report.errors else {})


@pytest.mark.parametrize("load", [0.3, 0.5, 0.7])
def test_one_server_queue_matches_mm1(load: float) -> None:
    """Poisson arrivals, exponential service, one server: mean time 1/(mu - lambda) (2 %)."""
    mu = 100.0
    service = Service(latency=sim.exponential(1 / mu), capacity=1)
    report = sim.run(None, service, rate=load * mu, requests=100_000, seed=5)
    assert report.mean_latency() == pytest.approx(1 / (mu - load * mu), rel=0.02)
    # and its median is that of the exponential sojourn time: ln 2 / (mu - lambda)
    assert report.p50 == pytest.approx(math.log(2) / (mu - load * mu), rel=0.03)


def test_unlimited_capacity_never_queues() -> None:
    """Without a capacity every call takes exactly its drawn latency."""
    report = sim.run(None, Service(latency=0.02), rate=1000, requests=2000, seed=1)
    assert report.p50 == pytest.approx(0.02)
    assert report.p999 == pytest.approx(0.02)


# -- determinism and comparison --------------------------------------------------------------


def _breaker_stack(clock: rs.Clock) -> rs.Pipeline:
    return (
        rs.Pipeline.builder("stack")
        .add(rs.Fallback(handler=lambda _: "stale"))
        .add(
            rs.Retry(
                attempts=3,
                backoff=backoff.exponential(0.01, jitter="full"),  # unseeded: seeded by the run
                budget=rs.RetryBudget(ratio=0.5, clock=clock),
                clock=clock,
            )
        )
        .add(
            rs.CircuitBreaker(
                failure_ratio=0.5,
                minimum_calls=20,
                window_seconds=1.0,
                open_seconds=0.5,
                clock=clock,
            )
        )
        .add(rs.Bulkhead(20, max_queue=10, max_wait=0.05, clock=clock))
        .add(rs.Timeout(0.1, clock=clock))
        .build()
    )


OUTAGE_SERVICE = Service(
    latency=sim.lognormal(0.01, 0.05),
    error_rate=0.1,
    capacity=30,
    outages=[Outage(4.0, 2.0)],
)


def test_a_run_is_the_same_for_the_same_seed() -> None:
    """Same seed, same figures (jitter of unseeded policies included); another seed differs."""
    first = sim.run(_breaker_stack, OUTAGE_SERVICE, rate=500, duration=10.0, seed=3)
    again = sim.run(_breaker_stack, OUTAGE_SERVICE, rate=500, duration=10.0, seed=3)
    other = sim.run(_breaker_stack, OUTAGE_SERVICE, rate=500, duration=10.0, seed=4)
    assert first.summary() == again.summary()
    assert list(first.recorder.latencies) == list(again.recorder.latencies)
    assert first.summary() != other.summary()


def test_a_breaker_and_a_fallback_during_an_outage() -> None:
    """The outage trips the breaker; the fallback answers; the service is spared."""
    report = sim.run(_breaker_stack, OUTAGE_SERVICE, rate=500, duration=10.0, seed=3)
    assert report.fresh + report.fallbacks + report.errors == report.requests
    assert report.errors == 0  # the fallback answers everything else
    assert report.trips >= 1
    assert report.fallbacks_by_reason["CircuitOpenError"] > 0
    assert sum(report.fallbacks_by_reason.values()) == report.fallbacks
    assert report.outage_load is not None
    assert report.outage_load < 0.5
    assert report.outages == ((4.0, 6.0),)
    windows = report.timeline(0.2)
    assert len(windows) == 50
    assert sum(w.requests for w in windows) == report.requests
    assert sum(w.service_calls for w in windows) == report.service_calls
    assert {w.breaker for w in windows[22:28]} >= {"open"}  # during the outage
    assert windows[0].breaker == "closed"
    assert windows[-1].breaker == "closed"


def test_naive_retries_multiply_the_load_during_an_outage() -> None:
    """Retry > Timeout without a breaker or budget: about 3 calls per request in the outage."""
    service = Service(latency=0.01, outages=[Outage(2.0, 2.0)])

    def naive(clock: rs.Clock) -> rs.Pipeline:
        return rs.Pipeline(
            [rs.Retry(attempts=3, clock=clock), rs.Timeout(0.1, clock=clock)], name="naive"
        )

    def budgeted(clock: rs.Clock) -> rs.Pipeline:
        budget = rs.RetryBudget(ratio=0.2, min_per_second=1, clock=clock)
        return rs.Pipeline(
            [rs.Retry(attempts=3, budget=budget, clock=clock), rs.Timeout(0.1, clock=clock)]
        )

    reports = sim.compare(
        {"naive": naive, "budget": budgeted}, service, rate=200, duration=6.0, seed=2
    )
    # Three attempts each, but for requests late in the outage whose retries land after it.
    naive_load = reports["naive"].outage_load
    assert naive_load is not None
    assert 2.5 < naive_load <= 3.0
    assert reports["budget"].outage_load is not None
    assert reports["budget"].outage_load < 1.6
    assert reports["naive"].requests == reports["budget"].requests  # the same arrivals
    assert reports["naive"].errors_by_type == {"TimeoutExceeded": reports["naive"].errors}


# -- the service model ---------------------------------------------------------------------


def test_a_full_queue_refuses_and_an_overloaded_service_slows() -> None:
    """At twice its capacity the service queues (latency grows) and then refuses."""
    slow = Service(latency=0.01, capacity=1)
    queued = sim.run(None, slow, rate=150, requests=2000, seed=1)
    assert queued.p99 > 1.0  # the queue grows without bound
    bounded = Service(latency=0.01, capacity=1, max_queue=5)
    refused = sim.run(None, bounded, rate=150, requests=2000, seed=1)
    assert refused.errors_by_type.get("OverloadError", 0) > 500
    assert refused.p99 <= 0.06 + 1e-9  # at most 5 waiting, 10 ms each, plus its own


def test_callers_that_give_up_still_load_a_service_unless_it_cancels() -> None:
    """Abandoned requests are still served: retries on timeouts then collapse a service at
    70 % load (a retry storm); one that drops them (``cancels=True``) stays up."""

    def impatient(clock: rs.Clock) -> rs.Pipeline:
        return rs.Pipeline([rs.Retry(attempts=3, clock=clock), rs.Timeout(0.03, clock=clock)])

    def at(cancels: bool) -> sim.Report:
        service = Service(latency=sim.exponential(0.01), capacity=1, cancels=cancels)
        return sim.run(impatient, service, rate=70, requests=5000, seed=1)

    kept, dropped = at(False), at(True)
    assert kept.fresh_share < 0.05  # the backlog of abandoned work starves everyone
    assert kept.load > 2.9
    assert dropped.fresh_share > 0.6
    assert dropped.load < 2.2


def test_outages_hang_or_refuse() -> None:
    """A hanging outage answers after ``hang`` seconds; an erroring one at once."""
    hang = Service(latency=0.01, outages=[Outage(0.0, 100.0, hang=2.0)])
    report = sim.run(None, hang, rate=10, requests=50, seed=1)
    assert report.errors_by_type == {"OutageError": 50}
    assert report.p50 == pytest.approx(2.0)
    refuse = Service(latency=0.01, outages=[Outage(0.0, 100.0, mode="error")])
    report = sim.run(None, refuse, rate=10, requests=50, seed=1)
    assert report.errors == 50
    assert report.p99 == 0.0


def test_latency_distributions() -> None:
    """The distributions draw what they claim: a lognormal's median and p99, a mixture's shares."""
    import random

    rng = random.Random(1)
    draw = sim.lognormal(0.01, 0.1)
    values = sorted(draw(rng) for _ in range(50_000))
    assert values[25_000] == pytest.approx(0.01, rel=0.03)
    assert values[49_500] == pytest.approx(0.1, rel=0.05)
    mixed = sim.mixture((0.9, sim.constant(0.01)), (0.1, sim.constant(1.0)))
    drawn = [mixed(rng) for _ in range(20_000)]
    assert drawn.count(1.0) / len(drawn) == pytest.approx(0.1, abs=0.01)
    assert set(drawn) == {0.01, 1.0}
    assert sim.exponential(0.5)(rng) >= 0


# -- pipelines from configuration, sweeps ---------------------------------------------------

CONFIG: dict[str, Any] = {
    "pipelines": {
        "client": {
            "layers": [
                {"retry": {"attempts": 2}},
                {"timeout": 0.05},
                {"circuit_breaker": {"ref": "shared"}},
            ]
        }
    },
    "policies": {"shared": {"circuit_breaker": {"failure_ratio": 0.9, "minimum_calls": 50}}},
}


def test_a_pipeline_from_configuration_runs_on_the_virtual_clock() -> None:
    """from_config builds the file's pipeline with the run's clock; overrides set parameters."""
    make = sim.from_config(CONFIG, "client")
    service = Service(latency=0.01, error_rate=0.3)
    two = sim.run(make, service, rate=100, requests=5000, seed=1)
    assert two.fresh_share == pytest.approx(1 - 0.3**2, rel=0.02)
    three = sim.run(
        sim.from_config(CONFIG, "client", overrides={"retry.attempts": 3}),
        service,
        rate=100,
        requests=5000,
        seed=1,
    )
    assert three.fresh_share == pytest.approx(1 - 0.3**3, rel=0.02)
    assert CONFIG["pipelines"]["client"]["layers"][0] == {"retry": {"attempts": 2}}  # untouched
    # A short form gets its first parameter; a ref goes to the named policy.
    overridden = sim.from_config(
        CONFIG, "client", overrides={"timeout.seconds": 0.02, "circuit_breaker.minimum_calls": 7}
    )
    registry_pipeline = overridden(FakeClock())
    assert isinstance(registry_pipeline, rs.Pipeline)
    layers = registry_pipeline.layers
    assert layers[1].seconds == 0.02  # type: ignore[attr-defined]
    assert layers[2].minimum_calls == 7  # type: ignore[attr-defined]


def test_bad_overrides_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="has 0 bulkhead layers"):
        sim.from_config(CONFIG, "client", overrides={"bulkhead.max_concurrent": 3})
    with pytest.raises(ConfigError, match="attempts"):
        sim.from_config(CONFIG, "client", overrides={"retry.attempts": 0})
    with pytest.raises(ConfigError, match="no policy 'nope'"):
        sim.from_config(CONFIG, "client", overrides={"policies.nope.x": 1})


def test_a_sweep_runs_every_combination_on_the_same_requests() -> None:
    def make(clock: rs.Clock, attempts: int, timeout: float) -> rs.Pipeline:
        return rs.Pipeline(
            [rs.Retry(attempts=attempts, clock=clock), rs.Timeout(timeout, clock=clock)]
        )

    service = Service(latency=sim.exponential(0.02), error_rate=0.2)
    points = sim.sweep(
        make,
        service,
        {"attempts": [1, 3], "timeout": [0.01, 1.0]},
        rate=100,
        requests=3000,
        seed=1,
    )
    assert [p.params for p in points] == [
        {"attempts": 1, "timeout": 0.01},
        {"attempts": 1, "timeout": 1.0},
        {"attempts": 3, "timeout": 0.01},
        {"attempts": 3, "timeout": 1.0},
    ]
    fresh = {(p.params["attempts"], p.params["timeout"]): p.report.fresh_share for p in points}
    assert fresh[3, 1.0] > fresh[1, 1.0] > fresh[1, 0.01]
    assert fresh[3, 1.0] == pytest.approx(1 - 0.2**3, rel=0.02)
    text = sim.format_sweep(points)
    assert "attempts=3, timeout=1.0" in text


# -- misuse ---------------------------------------------------------------------------------


def test_a_policy_on_the_system_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="reads the system clock"):
        sim.run(lambda clock: rs.Retry(attempts=2), Service(), rate=10, requests=10)
    with pytest.raises(ValueError, match="reads the system clock"):
        sim.run(
            lambda clock: rs.Retry(attempts=2, budget=rs.RetryBudget(), clock=clock),
            Service(),
            rate=10,
            requests=10,
        )


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Service(error_rate=1.5), ValueError, "error_rate must be between 0 and 1"),
        (lambda: Service(capacity=0), ValueError, "capacity must be at least 1"),
        (lambda: Service(max_queue=3), ValueError, "max_queue needs a capacity"),
        (lambda: Service(latency="fast"), TypeError, "latency must be a number"),  # type: ignore[arg-type]
        (lambda: Service(latency=lambda r: -1.0), ValueError, "latency must draw"),
        (lambda: Service(outages=[(1, 2)]), TypeError, "Outage objects"),  # type: ignore[list-item]
        (lambda: Outage(1.0, 0.0), ValueError, "length must be finite and greater than 0"),
        (lambda: Outage(1.0, 1.0, mode="down"), ValueError, "mode must be"),  # type: ignore[arg-type]
        (lambda: sim.lognormal(0.1, 0.05), ValueError, "p99 must be greater"),
        (lambda: sim.exponential(0), ValueError, "mean must be finite and greater than 0"),
        (lambda: sim.mixture(), ValueError, "at least one"),
        (lambda: sim.run(None, Service(), rate=0, requests=1), ValueError, "rate must be"),
        (lambda: sim.run(None, Service(), rate=1), ValueError, "requests=, duration="),
        (lambda: sim.run(None, Service(), rate=1, requests=0), ValueError, "requests must be"),
        (lambda: sim.run(None, "svc", rate=1, requests=1), TypeError, "service must be"),  # type: ignore[arg-type]
        (lambda: sim.run(rs.Retry(), Service(), rate=1, requests=1), TypeError, "not a pipeline"),
        (lambda: sim.run(lambda c: 3, Service(), rate=1, requests=1), TypeError, "must return"),  # type: ignore[arg-type,return-value]
    ],
)
def test_bad_input_is_refused(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_a_simulation_that_cannot_finish_says_so() -> None:
    """A call waiting on something no timer brings ends the run with a clear error."""

    class Forever(rs.Middleware):
        def wrap(self, next: Any, /) -> Any:
            return next

        def awrap(self, next: Any, /) -> Any:
            async def wait(fn: Any, args: Any, kwargs: Any) -> Any:
                await asyncio.get_running_loop().create_future()

            return wait

    with pytest.raises(RuntimeError, match="the simulation is stuck"):
        sim.run(lambda clock: Forever(), Service(), rate=10, requests=3)


async def test_a_run_from_async_code_uses_its_own_thread() -> None:
    """Called inside a running loop (a notebook, an async test), it still runs."""
    report = sim.run(retry(2), Service(error_rate=0.5), rate=100, requests=1000, seed=1)
    assert report.fresh_share == pytest.approx(0.75, rel=0.05)


# -- text, plots, command line ------------------------------------------------------------


def test_the_report_table_and_plot(tmp_path: Path) -> None:
    reports = sim.compare(
        {"unprotected": None, "stack": _breaker_stack},
        OUTAGE_SERVICE,
        rate=200,
        duration=8.0,
        seed=1,
    )
    text = sim.format_reports(reports.values())
    for row in ("fresh", "p99.9", "load during outages", "breaker trips", "CircuitOpenError"):
        assert row in text
    pytest.importorskip("matplotlib")
    out = tmp_path / "runs.png"
    sim.plot_reports(list(reports.values()), str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "resilience.json"
    config.write_text(json.dumps(CONFIG))
    args = [str(config), "--rate", "100", "--requests", "2000", "--error-rate", "0.3"]
    assert sim.main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["unprotected", "client"]
    assert rows[0]["fresh"] == pytest.approx(0.7, abs=0.03)
    assert rows[1]["fresh"] == pytest.approx(0.91, abs=0.03)
    assert sim.main([*args, "--pipeline", "client", "--sweep", "retry.attempts=1..3"]) == 0
    out = capsys.readouterr().out
    assert "retry.attempts=3" in out
    assert "retry.attempts=1" in out
    assert sim.main([*args, "--sweep", "retry.attempts=0,1", "--pipeline", "client"]) == 1
    assert "attempts" in capsys.readouterr().err
    assert sim.main([str(tmp_path / "missing.toml")]) == 1
    with pytest.raises(SystemExit):
        sim.main(["--latency", "weird:1"])


def test_a_timeline_window_shows_the_breaker_state_that_held_longest() -> None:
    """A slice that was open 0.1 s, half-open 0.05 s and closed 0.05 s shows "open"."""
    record = sim.Recorder()
    record.breaker = [(0.25, "open"), (0.35, "half_open"), (0.45, "open"), (0.55, "closed")]
    record.request(0.1, 0.01, True)
    windows = record.report("r", 0.8).timeline(0.2)
    assert [w.breaker for w in windows] == ["closed", "open", "open", "closed"]
    no_breaker = sim.Recorder()
    no_breaker.request(0.1, 0.01, True)
    assert [w.breaker for w in no_breaker.report("r", 0.4).timeline(0.2)] == [None, None]


def test_a_sweep_plot_and_the_module_entry_point(tmp_path: Path) -> None:
    """plot_sweep writes a PNG; ``python -m resilience simulate`` runs the command."""
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    points = sim.sweep(
        lambda clock, attempts: rs.Retry(attempts=attempts, clock=clock),
        Service(error_rate=0.3),
        {"attempts": [1, 2]},
        rate=100,
        requests=500,
    )
    out = tmp_path / "sweep.png"
    sim.plot_sweep(points, str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="points is empty"):
        sim.plot_sweep([], str(out))
    done = subprocess.run(
        [sys.executable, "-m", "resilience", "simulate", "--requests", "300", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["name"] == "unprotected"
    assert row["requests"] == 300
