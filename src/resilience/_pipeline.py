"""`Pipeline`: layers stacked in an explicit order, composed once at build time."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ._middleware import AsyncEndpoint, Endpoint, Middleware, terminal
from ._validate import optional_name

__all__ = ["Pipeline", "PipelineBuilder", "PipelineOrderWarning"]


class PipelineOrderWarning(UserWarning):
    """`PipelineBuilder.build()` found an order of layers that is almost always a mistake.

    Silence one pipeline with ``warnings.catch_warnings()`` or all of them with
    ``warnings.filterwarnings("ignore", category=resilience.PipelineOrderWarning)``.
    """


class Pipeline(Middleware):
    """Layers applied in the order they were added: the first added is the outermost.

    Build one with `Pipeline.builder`. A pipeline is itself a middleware: it
    decorates sync and async functions, has `call` and `acall`, and can be
    added to another pipeline as one layer.
    """

    kind = "pipeline"
    _read_only = frozenset({"layers", "name"})

    def __init__(self, layers: Iterable[Middleware] = (), *, name: str | None = None) -> None:
        self.name = optional_name(name)
        try:
            self.layers: tuple[Middleware, ...] = tuple(layers)
        except TypeError:
            raise TypeError(
                f"layers must be an iterable of resilience.Middleware, got {type(layers).__name__}"
            ) from None
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Middleware):
                raise TypeError(
                    f"layers[{index}] must be a resilience.Middleware, got {type(layer).__name__}"
                )
        self._sync_chain = self.wrap(terminal)
        self._async_chain = self.awrap(terminal)

    @staticmethod
    def builder(name: str | None = None) -> PipelineBuilder:
        """Start a pipeline; ``name`` shows in the call context, errors and telemetry."""
        return PipelineBuilder(name)

    def wrap(self, next: Endpoint, /) -> Endpoint:
        endpoint = next
        for layer in reversed(self.layers):
            endpoint = layer.wrap(endpoint)
        return endpoint

    def awrap(self, next: AsyncEndpoint, /) -> AsyncEndpoint:
        endpoint = next
        for layer in reversed(self.layers):
            endpoint = layer.awrap(endpoint)
        return endpoint

    def subscribe(self, listener: Callable[[Any], object], /) -> Callable[[], None]:
        """Listen to the events of every layer, nested pipelines included."""
        stops = [layer.subscribe(listener) for layer in self.layers]
        stops.append(super().subscribe(listener))

        def unsubscribe() -> None:
            for stop in stops:
                stop()

        return unsubscribe

    def describe(self) -> dict[str, Any]:
        """The pipeline's name and its ordered layers (outermost first) with their settings."""
        return {
            "type": type(self).__name__,
            "kind": self.kind,
            "name": self.name,
            "layers": [layer.describe() for layer in self.layers],
        }

    def __repr__(self) -> str:
        inner = " > ".join(repr(layer) for layer in self.layers) or "(no layers)"
        label = f"{self.name!r}: " if self.name else ""
        return f"Pipeline({label}{inner})"


class PipelineBuilder:
    """Collects layers for a `Pipeline`; ``add`` returns the builder so calls chain."""

    def __init__(self, name: str | None = None) -> None:
        self._name = optional_name(name)
        self._layers: list[Middleware] = []

    def add(self, layer: Middleware, /) -> PipelineBuilder:
        """Add ``layer`` inside the ones added before it."""
        if not isinstance(layer, Middleware):
            raise TypeError(
                f"add() takes a resilience.Middleware (Retry, Timeout, a Pipeline, or your "
                f"own subclass), got {type(layer).__name__}"
            )
        self._layers.append(layer)
        return self

    def build(self) -> Pipeline:
        """Compose the chain once and return the pipeline; warns on suspicious orders."""
        pipeline = Pipeline(self._layers, name=self._name)
        for reason in order_problems(pipeline.layers):
            label = f"pipeline {self._name!r}" if self._name else "pipeline"
            warnings.warn(f"{label}: {reason}", PipelineOrderWarning, stacklevel=2)
        return pipeline


def _flatten(layers: Iterable[Middleware]) -> list[Middleware]:
    flat: list[Middleware] = []
    for layer in layers:
        if isinstance(layer, Pipeline):
            flat.extend(_flatten(layer.layers))
        else:
            flat.append(layer)
    return flat


def order_problems(layers: Iterable[Middleware]) -> list[str]:
    """Reasons why this order of layers (outermost first) is probably a mistake.

    Each rule is documented, with its trade-off, in docs/ordering.md.
    """
    flat = _flatten(layers)
    kinds = [layer.kind for layer in flat]
    problems: list[str] = []

    def first(kind: str) -> int | None:
        return kinds.index(kind) if kind in kinds else None

    breaker, retry = first("circuit_breaker"), first("retry")
    if breaker is not None and retry is not None and breaker < retry:
        problems.append(
            "the CircuitBreaker is outside the Retry, so the breaker sees one outcome per "
            "call and none of the retries, and keeps retrying into a failing service; "
            "add the Retry before (outside) the CircuitBreaker"
        )
    if kinds.count("retry") > 1:
        counts = [getattr(layer, "attempts", None) for layer in flat if layer.kind == "retry"]
        shown = " x ".join("?" if n is None else str(n) for n in counts)
        total = math.prod(n for n in counts if isinstance(n, int))
        worst = f" = {total} calls" if all(isinstance(n, int) for n in counts) else ""
        problems.append(
            f"{len(counts)} Retry layers are nested, so their attempts multiply "
            f"({shown} attempts{worst}); use one Retry"
        )
    for index, kind in enumerate(kinds):
        if kind == "fault_injection" and any(k != "fault_injection" for k in kinds[index + 1 :]):
            problems.append(
                "a FaultInjector is not innermost, so layers inside it never see its "
                "faults; add it last, next to the call"
            )
            break
    for index, kind in enumerate(kinds):
        if kind == "fallback" and any(k != "fallback" for k in kinds[:index]):
            problems.append(
                "a Fallback is not outermost, so the layers outside it never see the "
                "failures it hides; add it first"
            )
            break
    return problems
