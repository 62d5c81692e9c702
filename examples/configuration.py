"""Pipelines from a configuration file, and a live reload that keeps state.

    python examples/configuration.py

Loads examples/grpc_cache/resilience.toml (the cache service's client and
server pipelines), calls through the client's pipeline until its shared
breaker opens, then reloads a changed copy of the file: the breaker stays
open (its settings changed through update(), its state kept), the retry
is rebuilt with its new attempts, and an invalid file changes nothing.
"""

from __future__ import annotations

import pathlib
import tempfile

import grpc

import resilience as rs

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "grpc_cache" / "resilience.toml"


class Unavailable(grpc.RpcError):
    """What a sync gRPC stub raises when the server is away."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def get_from_a_dead_server(key: str) -> bytes:
    raise Unavailable()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        live = pathlib.Path(folder) / "resilience.toml"
        live.write_text(SOURCE.read_text())
        registry = rs.Registry.from_file(live, environ={})
        get = registry.pipeline("cache.Get")
        print(f"pipelines: {', '.join(registry.names())}")

        outcomes = []
        for _ in range(12):
            try:
                get.call(get_from_a_dead_server, "k")
            except rs.CircuitOpenError:
                outcomes.append("open")
            except grpc.RpcError:
                outcomes.append("unavailable")
        breaker = registry.policy("cache-server")
        print(
            f"12 calls to a dead server: {outcomes.count('unavailable')} failed, "
            f"{outcomes.count('open')} refused by the open breaker"
        )

        live.write_text(
            live.read_text()
            .replace("open_seconds = 1.0", "open_seconds = 5.0")
            .replace("attempts = 3", "attempts = 2")
        )
        registry.reload_from_file(live)
        print(
            f"after the reload: the same breaker? {registry.policy('cache-server') is breaker}; "
            f"state {breaker.state.name}; open_seconds {breaker.open_seconds:g}"
        )
        retry = registry.get("cache.Get").layers[0]
        print(f"the retry now makes {retry.attempts} attempts")

        live.write_text(live.read_text().replace("attempts = 2", "attempts = 0"))
        try:
            registry.reload_from_file(live)
        except rs.config.ConfigError as error:
            print(f"an invalid file is refused and changes nothing:\n  {error.errors[0]}")
        print(f"the retry still makes {registry.get('cache.Get').layers[0].attempts} attempts")


if __name__ == "__main__":
    main()
