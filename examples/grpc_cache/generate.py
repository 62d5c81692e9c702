"""Generate the cache service's Python code from cache.proto, with grpcio-tools.

The code is generated, not checked in: `load()` runs protoc when the
generated modules are missing or older than the proto (a stamp holds the
proto's hash and the tools' version), so the code always matches both the proto and the installed
protobuf runtime. ``python examples/grpc_cache/generate.py`` does it by hand.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import pathlib
import sys
from types import ModuleType

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE / "cache.proto"
OUT = HERE / "_generated"
STAMP = OUT / "proto.sha256"


def generate() -> None:
    """Run protoc on cache.proto into _generated/ (needs grpcio-tools)."""
    try:
        from grpc_tools import protoc
    except ImportError as error:
        raise SystemExit("grpcio-tools is needed: pip install grpcio-tools") from error
    OUT.mkdir(exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            str(PROTO),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    STAMP.write_text(_digest())


def _digest() -> str:
    """The proto's hash and the versions of the tools (new tools, new code)."""
    try:
        tools = importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        tools = "none"
    return f"{hashlib.sha256(PROTO.read_bytes()).hexdigest()} grpcio-tools {tools}"


def current() -> bool:
    """Whether the generated code is there and made from this proto."""
    return STAMP.exists() and STAMP.read_text() == _digest()


def load() -> tuple[ModuleType, ModuleType]:
    """The generated ``cache_pb2`` and ``cache_pb2_grpc`` modules, generating them if stale."""
    if not current():
        generate()
    if str(OUT) not in sys.path:
        sys.path.insert(0, str(OUT))  # the generated _grpc module imports cache_pb2 by name
    return importlib.import_module("cache_pb2"), importlib.import_module("cache_pb2_grpc")


if __name__ == "__main__":
    generate()
    print(f"generated {', '.join(sorted(path.name for path in OUT.glob('*.py')))} in {OUT}")
