"""Tests of `resilience.config`: building, errors with key paths, sharing, reload, schema, CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.config import ConfigError, Registry, schema, to_config
from resilience.testing import FakeClock

USERS = {
    "pipelines": {
        "users.get": {
            "layers": [
                {"fallback": {"value": {"cached": True}}},
                {
                    "retry": {
                        "attempts": 3,
                        "on": ["builtins.ConnectionError", "resilience.TimeoutExceeded"],
                        "backoff": {"exponential": {"initial": 0.1, "maximum": 2.0}},
                    }
                },
                {"circuit_breaker": {"ref": "users-api"}},
                {"timeout": 0.5},
            ]
        },
        "users.list": {"layers": [{"circuit_breaker": {"ref": "users-api"}}]},
    },
    "policies": {
        "users-api": {"circuit_breaker": {"failure_ratio": 0.5, "minimum_calls": 20}},
    },
}


def registry(config: dict[str, Any] = USERS, **environ: str) -> Registry:
    return Registry(config, environ=environ)


def layers(reg: Registry, name: str) -> tuple[rs.Middleware, ...]:
    return reg.pipeline(name)._current().layers


def test_a_pipeline_is_built_in_order_and_named_policies_are_shared() -> None:
    reg = registry()
    fallback, retry, breaker, timeout = layers(reg, "users.get")
    assert isinstance(fallback, rs.Fallback)
    assert fallback.value == {"cached": True}
    assert isinstance(retry, rs.Retry)
    assert retry.attempts == 3
    assert retry.on == (ConnectionError, rs.TimeoutExceeded)
    assert repr(retry.backoff) == "exponential(initial=0.1, base=2, maximum=2)"
    assert isinstance(timeout, rs.Timeout)
    assert timeout.seconds == 0.5
    assert breaker is reg.policy("users-api")
    assert layers(reg, "users.list")[0] is breaker
    assert reg.pipeline("users.get").call(lambda: "fresh") == "fresh"
    assert reg.pipeline("users.get").call(lambda: 1 / 0) == {"cached": True}


def test_every_problem_is_reported_with_its_key_path() -> None:
    bad = {
        "pipelines": {
            "users.get": {
                "layers": [
                    {"retry": {"attempts": 0, "atempts": 1, "on": "nowhere.Error"}},
                    {"timout": 1},
                    {"circuit_breaker": {"ref": "missing"}},
                    "retry",
                ]
            }
        },
        "policy": {},
    }
    with pytest.raises(ConfigError) as caught:
        registry(bad)
    assert caught.value.errors == [
        "pipelines.\"users.get\".layers[0].retry.atempts: unknown key (did you mean 'attempts'?)",
        'pipelines."users.get".layers[0].retry.attempts: must be >= 1, got 0',
        "pipelines.\"users.get\".layers[0].retry.on: cannot import 'nowhere.Error': "
        "No module named 'nowhere'",
        "pipelines.\"users.get\".layers[1].timout: unknown kind (did you mean 'timeout'?)",
        "pipelines.\"users.get\".layers[2].circuit_breaker.ref: no policy 'missing'",
        'pipelines."users.get".layers[3]: must be a table of one key, the policy\'s kind '
        "(timeout, retry, circuit_breaker, fallback, throttle, bulkhead, fault_injection, "
        "adaptive_limiter, adaptive_throttler, hedge, retry_budget, keyed)",
        "policy: unknown key (did you mean 'policies'?)",
    ]
    assert isinstance(caught.value, ValueError)


def test_files_in_toml_json_and_yaml(tmp_path: Path) -> None:
    toml = tmp_path / "resilience.toml"
    toml.write_text(
        '[pipelines."users.get"]\n'
        "layers = [{ retry = { attempts = 2, backoff = 0.0 } }, { timeout = 0.25 }]\n"
    )
    (tmp_path / "resilience.json").write_text(json.dumps(USERS))
    (tmp_path / "resilience.yaml").write_text(
        "pipelines:\n  a:\n    layers:\n      - bulkhead: {max_concurrent: 4}\n"
    )
    assert [type(layer) for layer in layers(Registry.from_file(toml, environ={}), "users.get")] == [
        rs.Retry,
        rs.Timeout,
    ]
    from_json = Registry.from_file(tmp_path / "resilience.json", environ={})
    assert len(layers(from_json, "users.get")) == 4
    yaml_layers = layers(Registry.from_file(tmp_path / "resilience.yaml", environ={}), "a")
    assert isinstance(yaml_layers[0], rs.Bulkhead)
    assert yaml_layers[0].max_concurrent == 4
    (tmp_path / "resilience.ini").write_text("")
    with pytest.raises(ConfigError, match="unknown format"):
        Registry.from_file(tmp_path / "resilience.ini")


def test_environment_variables_override_single_values() -> None:
    reg = registry(
        **{
            "RESILIENCE__policies__users-api__circuit_breaker__minimum_calls": "7",
            "RESILIENCE__pipelines__users.get__layers__1__retry__attempts": "5",
            "OTHER": "ignored",
        }
    )
    assert reg.policy("users-api").minimum_calls == 7
    assert layers(reg, "users.get")[1].attempts == 5
    with pytest.raises(ConfigError, match="no item 9"):
        registry(**{"RESILIENCE__pipelines__users.get__layers__9__retry__attempts": "5"})


def test_a_pipeline_can_be_named_before_any_configuration() -> None:
    reg = Registry(environ={})

    @reg.pipeline("late")
    def work() -> str:
        return "done"

    with pytest.raises(RuntimeError, match="no configuration holds the pipeline 'late'"):
        work()
    reg.load({"pipelines": {"late": {"layers": [{"retry": 2}]}}})
    assert work() == "done"


# -- reload ------------------------------------------------------------------------------------


def test_reload_keeps_the_state_of_what_did_not_change(clock: FakeClock) -> None:
    config = {
        "policies": {
            "api": {"circuit_breaker": {"minimum_calls": 1, "open_seconds": 30}},
            "rate": {"throttle": {"rate": 2, "burst": 2, "max_wait": 0}},
        },
        "pipelines": {"p": {"layers": [{"circuit_breaker": {"ref": "api"}}, {"retry": 1}]}},
    }
    reg = registry(config)
    breaker, throttle = reg.policy("api"), reg.policy("rate")
    with pytest.raises(ZeroDivisionError):
        reg.pipeline("p").call(lambda: 1 / 0)
    assert breaker.state is rs.CircuitState.OPEN
    throttle.call(lambda: None)
    retry = layers(reg, "p")[1]

    reg.reload(config)  # nothing changed
    assert reg.policy("api") is breaker
    assert breaker.state is rs.CircuitState.OPEN
    assert reg.policy("rate") is throttle
    assert throttle.metrics().available < 2
    assert layers(reg, "p")[1] is retry

    changed = json.loads(json.dumps(config))
    changed["policies"]["api"]["circuit_breaker"]["minimum_calls"] = 5  # update() takes it
    changed["policies"]["rate"]["throttle"]["rate"] = 4
    changed["pipelines"]["p"]["layers"][1] = {"retry": 3}  # Retry has no update(): a new one
    reg.reload(changed)
    assert reg.policy("api") is breaker
    assert breaker.minimum_calls == 5
    assert breaker.state is rs.CircuitState.OPEN
    assert reg.policy("rate") is throttle
    assert throttle.rate == 4
    assert layers(reg, "p")[1] is not retry
    assert layers(reg, "p")[1].attempts == 3


def test_an_invalid_reload_changes_nothing() -> None:
    reg = registry()
    before = layers(reg, "users.get")
    broken = json.loads(json.dumps(USERS))
    broken["pipelines"]["users.get"]["layers"][3] = {"timeout": -1}
    with pytest.raises(ConfigError, match=r"layers\[3\]\.timeout"):
        reg.reload(broken)
    assert layers(reg, "users.get") == before


def test_a_running_call_finishes_on_the_chain_it_started_with() -> None:
    reg = registry({"pipelines": {"p": {"layers": [{"fallback": {"value": "old"}}]}}})
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(10.0)
        raise ConnectionError("failed after the reload")

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(reg.pipeline("p").call, slow)
        assert entered.wait(10.0)
        reg.reload({"pipelines": {"p": {"layers": [{"fallback": {"value": "new"}}]}}})
        release.set()
        assert running.result(10.0) == "old"
    assert reg.pipeline("p").call(lambda: 1 / 0) == "new"


def test_a_hundred_reloads_while_threads_and_tasks_call() -> None:
    def config(limit: int) -> dict[str, Any]:
        return {
            "policies": {"cap": {"bulkhead": {"max_concurrent": limit, "max_queue": 64}}},
            "pipelines": {"p": {"layers": [{"retry": 1}, {"bulkhead": {"ref": "cap"}}]}},
        }

    reg = registry(config(8))
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    def work() -> int:
        with lock:
            count[0] += 1
        return 1

    async def awork() -> int:
        return work()

    def caller() -> int:
        made = 0
        while not done.is_set() and made < 20_000:
            made += reg.pipeline("p").call(work)
        return made

    async def acaller() -> int:
        made = 0
        while not done.is_set() and made < 20_000:
            made += await reg.pipeline("p").acall(awork)
            await asyncio.sleep(0)
        return made

    with ThreadPoolExecutor(5) as pool:
        threads = [pool.submit(caller) for _ in range(4)]
        tasks = pool.submit(asyncio.run, _gather(acaller, 3))
        for index in range(100):
            reg.reload(config(4 + index % 5))
        done.set()
        made = sum(future.result(30.0) for future in threads) + sum(tasks.result(30.0))
    assert made == count[0]
    assert reg.policy("cap").metrics().in_flight == 0


async def _gather(make: Any, count: int) -> list[int]:
    return list(await asyncio.gather(*(make() for _ in range(count))))


# -- round trip, schema, CLI, fuzz --------------------------------------------------------------


def _described(policy: Any) -> str:
    return json.dumps(policy.describe(), default=repr, sort_keys=True)


@pytest.mark.parametrize(
    "policy",
    [
        rs.Timeout(1.5),
        rs.Retry(4, on=(ConnectionError, rs.TimeoutExceeded), backoff=rs.backoff.linear(0.2)),
        rs.Retry(2, backoff=rs.backoff.constant(0.5, jitter="equal")),
        rs.CircuitBreaker(failure_ratio=0.3, minimum_calls=7, window_seconds=10),
        rs.CircuitBreaker(consecutive_failures=3, open_seconds=rs.backoff.exponential(1.0)),
        rs.Fallback(value={"a": [1, 2]}, on=KeyError),
        rs.Throttle(rate=10, per=2.0, burst=4, max_wait=0.5),
        rs.Bulkhead(5, max_queue=3, max_wait=1.0),
        rs.FaultInjector(error_rate=0.2, latency=0.1, latency_rate=0.3),
        rs.AdaptiveLimiter(algorithm=rs.AIMD(), initial_limit=10),
        rs.AdaptiveThrottler(k=1.5),
        rs.Hedge(0.2, max_hedges=2, mode="fallback"),
        rs.RetryBudget(ratio=0.1),
    ],
    ids=lambda policy: type(policy).__name__,
)
def test_describe_round_trips_through_configuration(policy: Any) -> None:
    config = to_config(policy)
    (kind,) = config
    if kind == "retry_budget":
        rebuilt = Registry({"policies": {"b": config}}, environ={}).policy("b")
    else:
        rebuilt = layers(Registry({"pipelines": {"p": {"layers": [config]}}}, environ={}), "p")[0]
    assert type(rebuilt) is type(policy)
    if kind == "retry_budget":
        assert (rebuilt.ratio, rebuilt.min_per_second, rebuilt.ttl) == (0.1, 10.0, 10.0)
    else:
        assert _described(rebuilt) == _described(policy)


def test_a_keyed_layer_makes_its_policy_per_key() -> None:
    config = {
        "pipelines": {
            "api": {
                "layers": [
                    {
                        "keyed": {
                            "key": "host",
                            "max_keys": 100,
                            "policy": {"circuit_breaker": {"minimum_calls": 1}},
                        }
                    }
                ]
            }
        }
    }
    reg = registry(config)
    keyed = layers(reg, "api")[0]
    assert isinstance(keyed, rs.Keyed)
    for host in ("a", "b"):
        with rs.tags(host=host), pytest.raises(ZeroDivisionError):
            reg.pipeline("api").call(lambda: 1 / 0)
    first, second = keyed.policy_for("a"), keyed.policy_for("b")
    assert isinstance(first, rs.CircuitBreaker)
    assert first is not second
    assert first.state is rs.CircuitState.OPEN
    config["pipelines"]["api"]["layers"][0]["keyed"]["policy"] = {
        "circuit_breaker": {"minimum_calls": 0}
    }
    with pytest.raises(ConfigError, match=r"keyed\.policy\.circuit_breaker\.minimum_calls"):
        registry(config)


def test_a_lambda_has_no_configuration() -> None:
    with pytest.raises(ValueError, match="no importable dotted path"):
        to_config(rs.Retry(on=lambda error: True))


def test_the_schema_names_every_kind_and_keyword() -> None:
    document = schema()
    kinds = document["properties"]["policies"]["additionalProperties"]["properties"]
    assert set(kinds) == set(rs.config.KINDS)
    assert "attempts" in kinds["retry"]["properties"]
    assert kinds["retry"]["properties"]["attempts"] == {"type": ["integer"]}
    json.dumps(document)


def test_the_command_line_checks_and_prints_the_schema(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[pipelines.p]\nlayers = [{ retry = 2 }, { timeout = 1.0 }]\n")
    bad = tmp_path / "bad.toml"
    bad.write_text('[pipelines.p]\nlayers = [{ retry = { attempts = "x" } }]\n')
    run = [sys.executable, "-m", "resilience"]
    checked = subprocess.run([*run, "check", str(good)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0
    assert "pipeline p" in checked.stdout
    assert "retry" in checked.stdout
    assert "timeout" in checked.stdout
    refused = subprocess.run([*run, "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "pipelines.p.layers[0].retry.attempts" in refused.stderr
    printed = subprocess.run([*run, "schema"], capture_output=True, text=True, timeout=60)
    assert json.loads(printed.stdout)["title"] == "resilience configuration"


def test_a_file_is_watched_and_reloaded(tmp_path: Path) -> None:
    file = tmp_path / "live.toml"
    file.write_text("[policies.cap]\nbulkhead = { max_concurrent = 2 }\n")
    reg = Registry.from_file(file, environ={})
    stop = reg.watch(file, interval=0.01)
    try:
        file.write_text("[policies.cap]\nbulkhead = { max_concurrent = 9 }\n# changed\n")
        changed = threading.Event()
        for _ in range(500):  # bounded: up to 5 s for the poller to see the change
            if reg.policy("cap").max_concurrent == 9:
                changed.set()
                break
            changed.wait(0.01)
        assert changed.is_set()
    finally:
        stop()


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.text(max_size=5), max_size=2),
)
keywords = st.sampled_from(
    [
        "attempts",
        "seconds",
        "rate",
        "burst",
        "max_concurrent",
        "on",
        "backoff",
        "failure_ratio",
        "minimum_calls",
        "delay",
        "mode",
        "value",
        "ratio",
        "bogus",
        "budget",
        "algorithm",
    ]
)
layer = st.dictionaries(
    st.sampled_from([*rs.config.KINDS, "nonsense"]),
    st.one_of(values, st.dictionaries(keywords, values, max_size=3)),
    min_size=1,
    max_size=2,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.lists(layer, max_size=3), max_size=2))
def test_fuzzed_configurations_are_built_or_refused_with_key_paths(
    pipelines: dict[str, list[Any]],
) -> None:
    config = {"pipelines": {name: {"layers": items} for name, items in pipelines.items()}}
    errors = list(rs.config.iter_errors(config))  # never an error from deep inside
    assert all(line.startswith("pipelines") for line in errors)
    if not errors:
        Registry(config, environ={})


def test_check_prints_each_pipeline_in_process(tmp_path: Path) -> None:
    file = tmp_path / "r.json"
    file.write_text(json.dumps(USERS))
    table = rs.config.check(file)
    assert table.splitlines()[0] == "pipeline users.get"
    assert "users-api" in table  # the ref is shown as the layer's policy
    assert "on=(ConnectionError, TimeoutExceeded)" in table


def test_lookups_name_what_is_missing() -> None:
    reg = registry()
    with pytest.raises(KeyError, match=r"no pipeline 'users\.gets'.*did you mean 'users\.get'"):
        reg.get("users.gets")
    with pytest.raises(KeyError, match=r"no policy 'user-api'.*did you mean 'users-api'"):
        reg.policy("user-api")
    assert reg.names() == ["users.get", "users.list"]


def test_a_registry_pipeline_nests_in_another_pipeline() -> None:
    reg = registry({"pipelines": {"inner": {"layers": [{"fallback": {"value": "fallback"}}]}}})
    outer = rs.Pipeline([rs.Retry(1), reg.pipeline("inner")])
    assert outer.call(lambda: 1 / 0) == "fallback"
    reg.reload({"pipelines": {"inner": {"layers": [{"fallback": {"value": "reloaded"}}]}}})
    assert outer.call(lambda: 1 / 0) == "reloaded"


async def test_a_registry_pipeline_nests_in_another_async_pipeline() -> None:
    reg = registry({"pipelines": {"inner": {"layers": [{"fallback": {"value": "fallback"}}]}}})
    outer = rs.Pipeline([rs.Retry(1), reg.pipeline("inner")])

    async def fails() -> None:
        raise ConnectionError

    assert await outer.acall(fails) == "fallback"


def test_a_pipeline_dropped_by_a_reload_can_no_longer_be_called() -> None:
    reg = registry()
    reg.reload(
        {
            "pipelines": {"users.list": USERS["pipelines"]["users.list"]},
            "policies": USERS["policies"],
        }
    )
    with pytest.raises(RuntimeError, match=r"no configuration holds the pipeline 'users\.get'"):
        reg.pipeline("users.get").call(lambda: None)


def _layer(layer: dict[str, Any]) -> dict[str, Any]:
    return {"pipelines": {"p": {"layers": [layer]}}}


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ([], "the top level must be a table"),
        ({"pipelines": []}, "pipelines: must be a table of pipelines"),
        ({"policies": 3}, "policies: must be a table of named policies"),
        ({"pipelines": {"p": 3}}, "must be a table with 'layers'"),
        ({"pipelines": {"p": {"layer": []}}}, "unknown key (did you mean 'layers'?)"),
        ({"pipelines": {"p": {"layers": {}}}}, "must be a list of layers"),
        (_layer({"retry": {"backoff": {"exponentail": {}}}}), "did you mean 'exponential'"),
        (_layer({"retry": {"backoff": {"linear": {"x": 1}}}}), "unexpected keyword"),
        (_layer({"retry": {"budget": "b"}}), "no retry_budget policy 'b'"),
        (_layer({"retry": {"on": "ValueError"}}), "must be a dotted path"),
        (_layer({"fault_injection": "."}), "must be a dotted path"),
        (_layer({"retry": {"on": ".ValueError"}}), "must be a dotted path"),
        (_layer({"retry": {"on": "builtins..ValueError"}}), "must be a dotted path"),
        (_layer({"adaptive_limiter": {"algorithm": 3}}), "must be one of aimd"),
        (_layer({"retry": {"ref": "x"}}), "no policy 'x'"),
        (_layer({"retry_budget": 0.1}), "a retry budget is not a layer"),
        (
            {"policies": {"b": {"bulkhead": 2}}, **_layer({"retry": {"ref": "b"}})},
            "'b' is a bulkhead, not a retry",
        ),
        (_layer({"keyed": {"key": "h", "policy": {"keyed": {}}}}), "cannot hold another keyed"),
    ],
)
def test_structural_mistakes_are_reported(config: Any, words: str) -> None:
    errors = list(rs.config.iter_errors(config))
    assert any(words in line for line in errors), errors


def test_budgets_by_name_are_shared_and_inline_ones_are_not() -> None:
    config = {
        "policies": {"retries": {"retry_budget": {"ratio": 0.1}}},
        "pipelines": {
            "a": {"layers": [{"retry": {"budget": "retries"}}]},
            "b": {"layers": [{"retry": {"budget": "retries"}}]},
            "c": {"layers": [{"retry": {"budget": {"ratio": 0.3}}}]},
        },
    }
    reg = registry(config)
    a, b, c = (layers(reg, name)[0].budget for name in "abc")
    assert a is b
    assert a is reg.policy("retries")
    assert c.ratio == 0.3


def test_files_that_are_not_tables_are_refused(tmp_path: Path) -> None:
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="the top level must be a table"):
        Registry.from_file(listed, environ={})


def test_a_watched_file_that_breaks_keeps_the_old_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "live.toml"
    file.write_text("[policies.cap]\nbulkhead = { max_concurrent = 2 }\n")
    reg = Registry.from_file(file, environ={})
    with pytest.raises(ValueError, match="interval"):
        reg.watch(file, interval=0)
    stop = reg.watch(file, interval=0.01)
    try:
        file.write_text("[policies.cap]\nbulkhead = { max_concurrent = -5 }\n")
        logged = threading.Event()
        for _ in range(500):  # bounded: up to 5 s for the poller to try the file
            if "did not reload" in caplog.text:
                logged.set()
                break
            logged.wait(0.01)
        assert logged.is_set()
    finally:
        stop()
    assert reg.policy("cap").max_concurrent == 2
