"""Pipelines as data: build them from TOML, JSON, YAML or dicts, share named policies, reload live.

::

    registry = rs.config.Registry.from_file("resilience.toml")

    @registry.pipeline("users.get")          # usable before any file is read
    async def get_user(uid): ...

    registry.reload_from_file("resilience.toml")   # validated first; state kept

The shape, in TOML::

    [pipelines."users.get"]
    layers = [
      { fallback = { value = { cached = true } } },
      { retry = { attempts = 3, on = ["httpx.ConnectError"],
                  backoff = { exponential = { initial = 0.1, maximum = 2.0 } } } },
      { circuit_breaker = { ref = "users-api" } },
      { timeout = 0.5 },
    ]

    [policies.users-api]
    circuit_breaker = { failure_ratio = 0.5, minimum_calls = 20, open_seconds = 30 }

A layer is a table of one key, the policy's kind, whose value is its
constructor's keywords (or a single value for its first argument, as in
``timeout = 0.5``), or ``{ ref = "name" }`` for a named policy of
``[policies]``, shared by every pipeline that names it. What is not plain data
is named: exceptions and functions by dotted path (``"httpx.ConnectError"``,
``"myapp.retry.is_transient"``), backoffs as ``{ exponential = { ... } }``,
a retry budget by the name of a ``retry_budget`` policy. See docs/configuration.md.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import json
import logging
import math
import os
import pathlib
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import backoff as _backoff
from ._adaptive import AIMD, AdaptiveLimiter, Gradient2, Vegas
from ._adaptive_throttler import AdaptiveThrottler
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._circuit_breaker import CircuitBreaker
from ._clock import Clock, validate_clock
from ._fallback import Fallback
from ._faults import FaultInjector
from ._hedge import Hedge, LatencyPercentile
from ._keyed import Keyed
from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._pipeline import Pipeline
from ._retry import Retry
from ._throttle import Throttle
from ._timeout import Timeout

__all__ = [
    "KINDS",
    "ConfigError",
    "Registry",
    "apply_environment",
    "check",
    "iter_errors",
    "read_file",
    "schema",
    "to_config",
]

logger = logging.getLogger("resilience")

KINDS: dict[str, type[Any]] = {
    "timeout": Timeout,
    "retry": Retry,
    "circuit_breaker": CircuitBreaker,
    "fallback": Fallback,
    "throttle": Throttle,
    "bulkhead": Bulkhead,
    "fault_injection": FaultInjector,
    "adaptive_limiter": AdaptiveLimiter,
    "adaptive_throttler": AdaptiveThrottler,
    "hedge": Hedge,
    "retry_budget": RetryBudget,
    "keyed": Keyed,
}
"""The kinds a configuration names, and the classes they build."""

_BACKOFFS: dict[str, Callable[..., Any]] = {
    "constant": _backoff.constant,
    "linear": _backoff.linear,
    "exponential": _backoff.exponential,
    "fibonacci": _backoff.fibonacci,
    "decorrelated": _backoff.decorrelated,
}
_ALGORITHMS: dict[str, type[Any]] = {"aimd": AIMD, "vegas": Vegas, "gradient2": Gradient2}
# Keywords whose values are named by dotted path: exceptions (or predicates) and functions.
_MATCHERS = {"on", "failure_on", "ignore", "drop_on", "refused_on"}
_FUNCTIONS = {
    "factory",
    "key_from_args",
    "on_result",
    "on_retry",
    "on_fallback",
    "on_hedge",
    "on_state_change",
    "on_outcome",
    "handler",
    "failure_result",
    "refused_result",
    "behaviour",
    "clock",
    "backend",
    "store",
}
_ENV_PREFIX = "RESILIENCE__"
_BAD: Any = object()  # a value that could not be converted (its error is noted)


class ConfigError(ValueError):
    """A configuration that cannot be built; ``errors`` lists each problem with its key path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        count = f"{len(errors)} problem{'s' if len(errors) != 1 else ''}"
        super().__init__(f"invalid resilience configuration ({count}):\n  " + "\n  ".join(errors))


# -- reading ---------------------------------------------------------------------------------


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The configuration in a TOML, JSON or YAML file (by its suffix; YAML needs PyYAML)."""
    file = pathlib.Path(path)
    text = file.read_text(encoding="utf-8")
    suffix = file.suffix.lower()
    if suffix == ".toml":
        return tomllib.loads(text)
    if suffix == ".json":
        data = json.loads(text)
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError as error:
            raise ConfigError(
                [f"{file}: reading YAML needs PyYAML (pip install pyyaml)"]
            ) from error
        data = yaml.safe_load(text)
    else:
        raise ConfigError([f"{file}: unknown format {suffix!r}; use .toml, .json or .yaml"])
    if not isinstance(data, dict):
        raise ConfigError([f"{file}: the top level must be a table, got {type(data).__name__}"])
    return data


def apply_environment(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``config`` with single values overridden by ``RESILIENCE__`` environment variables.

    The naming rule: ``RESILIENCE__`` then the key path, its parts joined by
    ``__``, spelled as in the file (list indexes as numbers), for example
    ``RESILIENCE__policies__users-api__circuit_breaker__open_seconds=60`` or
    ``RESILIENCE__pipelines__users.get__layers__1__retry__attempts=5``. The
    value is read as JSON (``5``, ``0.5``, ``true``, ``["a"]``), or else taken
    as a string.
    """
    merged = copy.deepcopy(dict(config))
    for variable in sorted(environ):
        if not variable.startswith(_ENV_PREFIX):
            continue
        parts = variable[len(_ENV_PREFIX) :].split("__")
        raw = environ[variable]
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node: Any = merged
        for index, part in enumerate(parts[:-1]):
            key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
            if isinstance(node, list):
                if not isinstance(key, int) or key >= len(node):
                    raise ConfigError([f"{variable}: no item {part} at {'.'.join(parts[:index])}"])
                node = node[key]
            else:
                node = node.setdefault(key, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError([f"{variable}: {'.'.join(parts[:-1])} is not a table"])
    return merged


# -- building, with every error collected -------------------------------------------------------


def _path(*parts: Any) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            shown = text if text.replace("_", "").replace("-", "").isalnum() else f'"{text}"'
            out += ("." if out else "") + shown
    return out


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _import(dotted: object, where: str, errors: list[str]) -> Any:
    if (
        not isinstance(dotted, str)
        or not all(part.isidentifier() for part in dotted.split("."))
        or "." not in dotted
    ):
        errors.append(f"{where}: must be a dotted path such as 'module.name', got {dotted!r}")
        return None
    module_name, _, attribute = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError, TypeError) as error:
        errors.append(f"{where}: cannot import {dotted!r}: {error}")
        return None


class _Builder:
    """Turns one configuration into policies and pipelines, collecting errors as it goes."""

    def __init__(self, config: Any, clock: Any = None) -> None:
        self.config = config
        self.clock = clock
        """Given to every policy that takes ``clock=`` (a simulation's virtual clock)."""
        self.errors: list[str] = []
        self.specs: dict[str, tuple[str, Any]] = {}
        """Named policies: name -> (kind, parameters as configured)."""
        self.budgets: dict[str, RetryBudget] = {}

    def fail(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # -- the top level --

    def read(self) -> tuple[dict[str, tuple[str, Any]], dict[str, list[Any]]]:
        config = self.config
        if not isinstance(config, Mapping):
            self.fail("(top)", f"must be a table, got {type(config).__name__}")
            return {}, {}
        for key in config:
            if key not in ("pipelines", "policies"):
                self.fail(_path(key), "unknown key" + _suggest(key, ("pipelines", "policies")))
        policies = config.get("policies", {})
        pipelines = config.get("pipelines", {})
        if not isinstance(policies, Mapping):
            self.fail("policies", "must be a table of named policies")
            policies = {}
        if not isinstance(pipelines, Mapping):
            self.fail("pipelines", "must be a table of pipelines")
            pipelines = {}
        for name, body in policies.items():
            parsed = self._one_kind(body, _path("policies", name))
            if parsed is not None:
                self.specs[name] = parsed
        layers: dict[str, list[Any]] = {}
        for name, body in pipelines.items():
            where = _path("pipelines", name)
            if not isinstance(body, Mapping):
                self.fail(where, "must be a table with 'layers'")
                continue
            for key in body:
                if key != "layers":
                    self.fail(
                        _path("pipelines", name, key), "unknown key" + _suggest(key, ["layers"])
                    )
            items = body.get("layers", [])
            if not isinstance(items, list):
                self.fail(_path("pipelines", name, "layers"), "must be a list of layers")
                continue
            layers[name] = []
            for index, item in enumerate(items):
                at = f"{where}.layers[{index}]"
                if isinstance(item, Mapping) and set(item) == {"ref"}:
                    item = {"ref": item["ref"]}
                parsed = self._one_kind(item, at, allow_ref=True)
                if parsed is not None:
                    layers[name].append(parsed)
        return self.specs, layers

    def _one_kind(self, body: Any, where: str, allow_ref: bool = False) -> tuple[str, Any] | None:
        if not isinstance(body, Mapping) or len(body) != 1:
            self.fail(where, f"must be a table of one key, the policy's kind ({', '.join(KINDS)})")
            return None
        ((kind, params),) = body.items()
        if kind not in KINDS:
            self.fail(f"{where}.{kind}", "unknown kind" + _suggest(kind, KINDS))
            return None
        if allow_ref and kind == "retry_budget":
            self.fail(
                f"{where}.{kind}",
                "a retry budget is not a layer: name it in [policies] and give its name to a "
                "retry's or a hedge's budget",
            )
            return None
        if allow_ref and isinstance(params, Mapping) and "ref" in params:
            extra = set(params) - {"ref"}
            if extra:
                self.fail(f"{where}.{kind}", f"a ref takes no other keys, got {sorted(extra)}")
            ref = params["ref"]
            if ref not in self.specs:
                self.fail(
                    f"{where}.{kind}.ref", f"no policy {ref!r}" + _suggest(str(ref), self.specs)
                )
                return None
            if self.specs[ref][0] != kind:
                self.fail(f"{where}.{kind}.ref", f"{ref!r} is a {self.specs[ref][0]}, not a {kind}")
                return None
            return kind, {"ref": ref}
        return kind, params

    # -- one policy --

    def build(self, kind: str, params: Any, where: str) -> Any:
        """The policy ``kind`` with ``params``, or None when it cannot be built (errors noted)."""
        if kind == "keyed" and isinstance(params, Mapping) and "policy" in params:
            return self._keyed(params, where)
        cls = KINDS[kind]
        signature = inspect.signature(cls.__init__)
        names = [name for name in signature.parameters if name != "self"]
        if not isinstance(params, Mapping):
            params = {names[0]: params}
        kwargs: dict[str, Any] = {}
        before = len(self.errors)
        for key, value in params.items():
            at = f"{where}.{kind}.{key}"
            if key not in names:
                self.fail(at, "unknown key" + _suggest(key, names))
                continue
            errors = len(self.errors)
            converted = self._value(kind, key, value, at)
            kwargs[key] = _BAD if len(self.errors) > errors else converted
        failed = len(self.errors) > before
        if self.clock is not None and "clock" in names:
            kwargs["clock"] = self.clock
        try:
            made = cls(**{key: value for key, value in kwargs.items() if value is not _BAD})
        except (TypeError, ValueError) as error:
            message = str(error)
            named = next((key for key in kwargs if message.startswith(f"{key} ")), None)
            if named is not None:
                self.fail(f"{where}.{kind}.{named}", message[len(named) + 1 :])
            else:
                self.fail(f"{where}.{kind}", message)
            return None
        return None if failed else made

    def _keyed(self, params: Mapping[str, Any], where: str) -> Any:
        """A `Keyed` whose ``policy`` is a layer table, made anew for each key."""
        template = params["policy"]
        at = f"{where}.keyed.policy"
        parsed = self._one_kind(template, at)
        if parsed is None:
            return None
        kind, body = parsed
        if kind == "keyed":
            self.fail(at, "a keyed policy cannot hold another keyed policy")
            return None
        if self.build(kind, body, at) is None:  # checked once, here
            return None
        specs = dict(self.specs)

        def factory(key: Any) -> Any:
            builder = _Builder(self.config, self.clock)
            builder.specs = specs
            return builder.build(kind, body, at)

        rest = {name: value for name, value in params.items() if name != "policy"}
        return self.build("keyed", {**rest, "factory": factory}, where)

    def _value(self, kind: str, key: str, value: Any, where: str) -> Any:
        if key == "factory" and callable(value):
            return value
        errors = self.errors
        if key in _MATCHERS:
            items = value if isinstance(value, list) else [value]
            found = [_import(item, where, errors) for item in items]
            if isinstance(value, list):
                return tuple(found)
            return found[0]
        if key in _FUNCTIONS:
            return None if value is None else _import(value, where, errors)
        if key == "backoff" or (key == "open_seconds" and isinstance(value, Mapping)):
            return self._backoff(value, where)
        if key == "budget":
            return self._budget(value, where)
        if key == "algorithm":
            return self._algorithm(value, where)
        if key == "delay" and kind == "hedge" and isinstance(value, Mapping):
            return self._named_call({"percentile": LatencyPercentile}, value, where)
        if key == "error" and kind == "fault_injection" and isinstance(value, str):
            return _import(value, where, errors)
        return value

    def _named_call(self, table: Mapping[str, Callable[..., Any]], value: Any, where: str) -> Any:
        if isinstance(value, str):
            value = {value: {}}
        if not isinstance(value, Mapping) or len(value) != 1:
            self.fail(where, f"must be one of {', '.join(table)} with its parameters")
            return None
        ((name, params),) = value.items()
        if name not in table:
            choices = ", ".join(table)
            self.fail(f"{where}.{name}", f"unknown; one of {choices}" + _suggest(name, table))
            return None
        if not isinstance(params, Mapping):
            params = {"percentile" if name == "percentile" else "initial": params}
        try:
            return table[name](**params)
        except (TypeError, ValueError) as error:
            self.fail(f"{where}.{name}", str(error))
            return None

    def _backoff(self, value: Any, where: str) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and "." in value:
            return _import(value, where, self.errors)
        return self._named_call(_BACKOFFS, value, where)

    def _algorithm(self, value: Any, where: str) -> Any:
        return self._named_call(_ALGORITHMS, value, where)

    def _budget(self, value: Any, where: str) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            spec = self.specs.get(value)
            if spec is None or spec[0] != "retry_budget":
                budgets = [name for name, (kind, _) in self.specs.items() if kind == "retry_budget"]
                self.fail(where, f"no retry_budget policy {value!r}" + _suggest(value, budgets))
                return None
            if value not in self.budgets:
                made = self.build("retry_budget", spec[1], _path("policies", value))
                if made is None:
                    return None
                self.budgets[value] = made
            return self.budgets[value]
        return self.build("retry_budget", value, where)


# -- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """A validated configuration: its named policies and its pipelines' layers, as data."""

    config: dict[str, Any]
    policies: dict[str, tuple[str, Any]]
    pipelines: dict[str, list[tuple[str, Any]]]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(
        b, sort_keys=True, default=repr
    )


def _updatable(policy: Middleware | RetryBudget) -> set[str]:
    """The settings ``policy.update()`` can change at run time."""
    update = getattr(policy, "update", None)
    if update is None:
        return set()
    if isinstance(policy, CircuitBreaker):
        from ._circuit_breaker import _THRESHOLDS

        return set(_THRESHOLDS)
    return {name for name in inspect.signature(update).parameters if name not in ("self",)}


class _Slot(Middleware):
    """A registry's pipeline by name: calls go through whatever it holds now.

    A call reads the current chain once, when it starts, so a reload never
    changes the chain of a call already running.
    """

    kind = "pipeline"

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name
        self.target: Pipeline | None = None
        self._wrapped: dict[tuple[int, Any, bool], Any] = {}

    def _current(self) -> Pipeline:
        target = self.target
        if target is None:
            raise RuntimeError(
                f"no configuration holds the pipeline {self.name!r} yet: load one "
                "(Registry.from_file, load, reload) before calling it"
            )
        return target

    def settings(self) -> dict[str, Any]:
        target = self.target
        return {} if target is None else {"layers": target.describe()["layers"]}

    def wrap(self, next: Endpoint, /) -> Endpoint:
        slot = self

        def through(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            target = slot._current()
            chain = target._chains()[0] if next is terminal else slot._chain(target, next, False)
            return chain(fn, args, kwargs)

        return through

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        slot = self

        async def through(
            fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            target = slot._current()
            chain = target._chains()[1] if next is terminal else slot._chain(target, next, True)
            return await chain(fn, args, kwargs)

        return through

    def _chain(self, target: Pipeline, next: Any, is_async: bool) -> Any:
        key = (id(target), next, is_async)
        chain = self._wrapped.get(key)
        if chain is None:
            chain = target.awrap(next) if is_async else target.wrap(next)
            self._wrapped = {k: v for k, v in self._wrapped.items() if k[0] == id(target)}
            self._wrapped[key] = chain
        return chain


class Registry:
    """Named pipelines and policies built from configuration, reloadable while calls run.

    ``environ`` (``os.environ`` by default; ``{}`` to ignore it) supplies
    the ``RESILIENCE__`` overrides of `apply_environment`. ``clock`` is
    given to every policy that takes one (the simulator's virtual clock, or
    a test's `resilience.testing.FakeClock`); configuration cannot name one.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._clock = None if clock is None else validate_clock(clock)
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._policies: dict[str, Any] = {}
        self._layers: dict[tuple[str, int, str], Any] = {}
        self._plan: _Plan | None = None
        self._watch: threading.Event | None = None
        if config is not None:
            self.load(config)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> Registry:
        """A registry loaded from a TOML, JSON or YAML file."""
        return cls(read_file(path), environ=environ, clock=clock)

    @classmethod
    def from_dict(
        cls,
        config: Mapping[str, Any],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> Registry:
        return cls(config, environ=environ, clock=clock)

    # -- what users call --

    def pipeline(self, name: str) -> _Slot:
        """The pipeline ``name``: a layer to decorate with, ``call`` or ``acall`` through.

        It may be asked for before any configuration is loaded (at import
        time); calls made before then raise `RuntimeError`.
        """
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = _Slot(self, name)
            return slot

    def get(self, name: str) -> Pipeline:
        """The pipeline ``name`` holds now (a reload replaces it; `pipeline` follows reloads)."""
        slot = self._slots.get(name)
        if slot is None or slot.target is None:
            raise KeyError(f"no pipeline {name!r}" + _suggest(name, self.names()))
        return slot.target

    def policy(self, name: str) -> Any:
        """The named policy ``name`` of ``[policies]``: the one object every pipeline shares."""
        try:
            return self._policies[name]
        except KeyError:
            raise KeyError(f"no policy {name!r}" + _suggest(name, self._policies)) from None

    def names(self) -> list[str]:
        """The pipelines the loaded configuration defines."""
        plan = self._plan
        return [] if plan is None else list(plan.pipelines)

    # -- loading and reloading --

    def load(self, config: Mapping[str, Any]) -> None:
        """Validate ``config`` and swap it in (the same as `reload`)."""
        self.reload(config)

    def reload_from_file(self, path: str | os.PathLike[str]) -> None:
        self.reload(read_file(path))

    def validate(self, config: Mapping[str, Any]) -> _Plan:
        """Check ``config`` whole; raise `ConfigError` listing every problem, or return its plan."""
        if not isinstance(config, Mapping):
            raise ConfigError(
                [f"(top): the top level must be a table, got {type(config).__name__}"]
            )
        merged = apply_environment(config, self._environ)
        builder = _Builder(merged, self._clock)
        policies, pipelines = builder.read()
        for name, (kind, params) in policies.items():
            builder.build(kind, params, _path("policies", name))
        for name, layers in pipelines.items():
            for index, (kind, params) in enumerate(layers):
                if isinstance(params, Mapping) and "ref" in params:
                    continue
                builder.build(kind, params, f"{_path('pipelines', name)}.layers[{index}]")
        if builder.errors:
            raise ConfigError(sorted(set(builder.errors)))
        return _Plan(merged, dict(policies), {k: list(v) for k, v in pipelines.items()})

    def reload(self, config: Mapping[str, Any]) -> None:
        """Validate ``config``, then swap it in atomically, keeping the state of what stayed.

        A stateful policy whose settings did not change is kept as it is (an
        open breaker stays open, a throttle keeps its tokens, a bulkhead its
        calls in flight); one whose changed settings its ``update()`` takes is
        updated in place; any other is made anew. Calls already running
        finish on the chain they started with. An invalid configuration
        raises `ConfigError` and changes nothing.
        """
        plan = self.validate(config)
        with self._lock:
            old = self._plan
            builder = _Builder(plan.config, self._clock)
            builder.specs = dict(plan.policies)
            policies: dict[str, Any] = {}
            # Budgets first: the retries and hedges that name one get that very object.
            ordered = sorted(plan.policies.items(), key=lambda item: item[1][0] != "retry_budget")
            for name, (kind, params) in ordered:
                policies[name] = self._keep(
                    old.policies.get(name) if old else None,
                    self._policies.get(name),
                    kind,
                    params,
                    _path("policies", name),
                    builder,
                )
                if kind == "retry_budget":
                    builder.budgets[name] = policies[name]
            layers: dict[tuple[str, int, str], Any] = {}
            pipelines: dict[str, Pipeline] = {}
            for name, specs in plan.pipelines.items():
                made = []
                for index, (kind, params) in enumerate(specs):
                    if isinstance(params, Mapping) and "ref" in params:
                        made.append(policies[params["ref"]])
                        continue
                    key = (name, index, kind)
                    before = old.pipelines.get(name) if old else None
                    previous = before[index] if before and index < len(before) else None
                    layer = self._keep(
                        previous,
                        self._layers.get(key),
                        kind,
                        params,
                        f"{_path('pipelines', name)}.layers[{index}]",
                        builder,
                    )
                    layers[key] = layer
                    made.append(layer)
                pipelines[name] = Pipeline(made, name=name)
            if builder.errors:  # cannot happen after validate(); kept as a guard
                raise ConfigError(builder.errors)
            self._policies, self._layers, self._plan = policies, layers, plan
            for name, pipeline in pipelines.items():
                self.pipeline_slot_locked(name).target = pipeline
            for name, slot in self._slots.items():
                if name not in pipelines:
                    slot.target = None

    def pipeline_slot_locked(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = _Slot(self, name)
        return slot

    @staticmethod
    def _keep(
        previous: tuple[str, Any] | None,
        existing: Any,
        kind: str,
        params: Any,
        where: str,
        builder: _Builder,
    ) -> Any:
        """The object for ``kind``/``params``: the existing one kept, updated, or a new one."""
        if existing is not None and previous is not None and previous[0] == kind:
            named = params.get("budget") if isinstance(params, Mapping) else None
            if isinstance(named, str) and getattr(existing, "budget", None) is not (
                builder.budgets.get(named)
            ):
                return builder.build(kind, params, where)  # its budget was made anew
            if _same(previous[1], params):
                return existing
            old_params = previous[1] if isinstance(previous[1], Mapping) else {}
            new_params = params if isinstance(params, Mapping) else {}
            changed = {
                k
                for k in set(old_params) | set(new_params)
                if not _same(old_params.get(k), new_params.get(k))
            }
            if (
                changed
                and changed <= _updatable(existing)
                and all(k in new_params for k in changed)
            ):
                fresh = builder.build(kind, params, where)  # checks and converts the values
                try:
                    existing.update(**{k: getattr(fresh, k, new_params[k]) for k in changed})
                except (TypeError, ValueError, AttributeError):
                    logger.warning("resilience: %s could not be updated in place; replaced", where)
                    return fresh
                return existing
        return builder.build(kind, params, where)

    # -- watching a file --

    def watch(self, path: str | os.PathLike[str], *, interval: float = 1.0) -> Callable[[], None]:
        """Reload ``path`` whenever it changes (polled every ``interval`` s); returns a stop.

        A file that fails to load or validate is logged and leaves the
        registry as it was.
        """
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValueError(f"interval must be a number of seconds > 0, got {interval!r}")
        file = pathlib.Path(path)
        stop = threading.Event()

        def seen() -> tuple[float, int] | None:
            try:
                status = file.stat()
            except OSError:
                return None
            return status.st_mtime, status.st_size

        last = seen()

        def poll() -> None:
            nonlocal last
            while not stop.wait(interval):
                now = seen()
                if now is None or now == last:
                    continue
                last = now
                try:
                    self.reload_from_file(file)
                    logger.info("resilience: reloaded %s", file)
                except Exception:
                    logger.exception(
                        "resilience: %s did not reload; the old configuration stays", file
                    )

        threading.Thread(target=poll, name=f"resilience-watch-{file.name}", daemon=True).start()
        return stop.set


# -- describe() to configuration, a schema, and the check command --------------------------------


def _dotted(value: Any) -> str:
    module = getattr(value, "__module__", None)
    name = getattr(value, "__qualname__", None)
    if not module or not name or "<" in name:
        raise ValueError(f"{value!r} has no importable dotted path (a lambda or a local function)")
    if module.startswith("resilience._"):
        module = "resilience"
    if module == "builtins":
        module = "builtins"
    return f"{module}.{name}"


def _to_value(key: str, value: Any) -> Any:
    if key in _MATCHERS:
        if isinstance(value, tuple):
            return [_dotted(item) for item in value]
        return _dotted(value)
    if isinstance(value, _backoff.Backoff):
        return _backoff_config(value)
    if isinstance(value, RetryBudget):
        return {"ratio": value.ratio, "min_per_second": value.min_per_second, "ttl": value.ttl}
    if isinstance(value, AIMD | Vegas | Gradient2):
        name = next(key for key, cls in _ALGORITHMS.items() if type(value) is cls)
        names = [p for p in inspect.signature(type(value).__init__).parameters if p != "self"]
        plain = (int, float, str, bool)
        found = {p: getattr(value, p, None) for p in names}
        return {name: {p: v for p, v in found.items() if isinstance(v, plain)}}
    if isinstance(value, LatencyPercentile):
        return {"percentile": {"percentile": value.percentile, "window": value.window}}
    if callable(value) and not isinstance(value, type):
        return _dotted(value)
    if isinstance(value, type):
        return _dotted(value)
    if isinstance(value, float) and math.isinf(value):
        raise ValueError(f"{key}: an infinite value has no configuration")
    return value


def _backoff_config(value: Any) -> dict[str, Any]:
    text = repr(value)
    name = text.split("(", 1)[0]
    if name not in _BACKOFFS:
        raise ValueError(f"the backoff {text} has no configuration form")
    params: dict[str, Any] = {}
    for attribute, key in (
        ("value", "delay"),
        ("initial", "initial"),
        ("step", "step"),
        ("base", "base"),
        ("maximum", "maximum"),
        ("jitter", "jitter"),
    ):
        if hasattr(value, attribute):
            item = getattr(value, attribute)
            if item is None or (isinstance(item, float) and math.isinf(item)):
                continue
            params[key] = item
    return {name: params}


def to_config(policy: Middleware | RetryBudget) -> dict[str, Any]:
    """A policy or pipeline as configuration: the inverse of what `Registry` builds.

    A `Pipeline` becomes ``{"layers": [...]}``; a policy ``{kind: {settings}}``.
    Functions and exceptions must be importable by dotted path (not lambdas).
    """
    if isinstance(policy, Pipeline):
        return {"layers": [to_config(layer) for layer in policy.layers]}
    kind = next((k for k, cls in KINDS.items() if type(policy) is cls), None)
    if kind is None:
        raise ValueError(f"{type(policy).__name__} has no configuration kind")
    if isinstance(policy, RetryBudget):
        settings: dict[str, Any] = {
            "ratio": policy.ratio,
            "min_per_second": policy.min_per_second,
            "ttl": policy.ttl,
        }
    else:
        settings = policy.settings()
    body = {key: _to_value(key, value) for key, value in settings.items()}
    if getattr(policy, "name", None):
        body["name"] = policy.name
    return {kind: body}


def schema() -> dict[str, Any]:
    """A JSON Schema of the configuration, for editors (``python -m resilience schema``)."""
    kinds: dict[str, Any] = {}
    for kind, cls in KINDS.items():
        parameters = [
            p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"
        ]
        properties = {p.name: _json_type(p) for p in parameters}
        kinds[kind] = {"type": "object", "properties": properties, "additionalProperties": False}
    layer = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            kind: {
                "anyOf": [
                    body,
                    {
                        "type": "object",
                        "properties": {"ref": {"type": "string"}},
                        "required": ["ref"],
                        "additionalProperties": False,
                    },
                    {"type": ["number", "string", "boolean"]},
                ]
            }
            for kind, body in kinds.items()
        },
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "resilience configuration",
        "type": "object",
        "properties": {
            "policies": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "properties": kinds,
                    "additionalProperties": False,
                },
            },
            "pipelines": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"layers": {"type": "array", "items": layer}},
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    }


def _json_type(parameter: inspect.Parameter) -> dict[str, Any]:
    name = parameter.name
    if name in _MATCHERS:
        return {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    if name in _FUNCTIONS:
        return {"type": ["string", "null"], "description": "a dotted path"}
    annotation = str(parameter.annotation)
    if name in ("backoff", "algorithm", "delay", "budget", "open_seconds"):
        return {"type": ["number", "string", "object", "null"]}
    types = []
    if "int" in annotation:
        types.append("integer")
    if "float" in annotation or "timedelta" in annotation:
        types.append("number")
    if "bool" in annotation:
        types.append("boolean")
    if "str" in annotation or "Literal" in annotation:
        types.append("string")
    if "None" in annotation:
        types.append("null")
    return {"type": sorted(set(types))} if types else {}


def _shown(value: Any) -> str:
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return str(value.__qualname__)
    if isinstance(value, tuple):
        return "(" + ", ".join(_shown(item) for item in value) + ")"
    return repr(value)


def check(path: str | os.PathLike[str]) -> str:
    """Validate a configuration file and describe each pipeline's layers as a table."""
    registry = Registry.from_file(path)
    plan = registry._plan
    assert plan is not None
    lines: list[str] = []
    for name in registry.names():
        lines.append(f"pipeline {name}")
        lines.append(f"  {'#':<3}{'kind':<20}{'policy':<18}settings")
        specs = plan.pipelines[name]
        for index, layer in enumerate(registry.pipeline(name)._current().layers):
            described = layer.describe()
            settings = ", ".join(
                f"{key}={_shown(value)}"
                for key, value in described.items()
                if key not in ("type", "kind", "name") and value is not None
            )
            params = specs[index][1]
            ref = params.get("ref") if isinstance(params, Mapping) else None
            shown = ref or described.get("name") or "-"
            lines.append(f"  {index:<3}{described['kind']:<20}{shown:<18}{settings}")
    return "\n".join(lines)


def iter_errors(config: Mapping[str, Any]) -> Iterator[str]:
    """Every problem of ``config`` with its key path (none when it is valid)."""
    try:
        Registry(environ={}).validate(config)
    except ConfigError as error:
        yield from error.errors
