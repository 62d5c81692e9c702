"""Development sessions: `nox` runs tests, lint, typecheck, examples and docs."""

from __future__ import annotations

import os
import pathlib
import shutil

import nox

nox.options.sessions = [
    "tests",
    "tests_other_pythons",
    "lint",
    "typecheck",
    "examples",
    "docs",
    "wheel",
    "bench_smoke",
]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = pathlib.Path(__file__).parent
PYTHON = None  # the interpreter nox runs on (Python >= 3.11)
OTHER_PYTHONS = ["3.12", "3.13"]  # the suite runs on these too (3.11 is PYTHON in CI)


def _pyenv_pythons() -> None:
    """Put pyenv's other Pythons on PATH: its shims answer only for the versions it has set."""
    root = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))
    found = []
    for version in OTHER_PYTHONS:
        candidates = sorted(root.glob(f"versions/{version}.*/bin/python{version}"))
        if candidates and shutil.which(f"python{version}") != str(candidates[-1]):
            found.append(str(candidates[-1].parent))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_pyenv_pythons()


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage."""
    session.install("-e", ".[tests]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report")


@nox.session(python=OTHER_PYTHONS)
def tests_other_pythons(session: nox.Session) -> None:
    """The test suite on the other supported Pythons (no coverage: it is measured once)."""
    session.install("-e", ".[tests]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python=PYTHON, default=False)
def mutation(session: nox.Session) -> None:
    """Mutation testing of the state machines (tools/mutation.py): hours on 2 cores.

    `nox -s mutation -- _throttle` runs one module; `-- --survivors` only the last survivors.
    The Redis stores (`_redis_*`, their Lua scripts too) need redis-server on PATH: without
    it their tests would be skipped and every mutant would survive, so the session stops.
    """
    modules = [arg for arg in session.posargs if arg.startswith("_")]  # they all start so
    redis_wanted = not modules or any(m.startswith("_redis") for m in modules)
    if redis_wanted and shutil.which("redis-server") is None:
        session.error(
            "the _redis_* modules need redis-server on PATH (apt-get install redis-server)"
        )
    session.install("-e", ".[tests]")  # the tests extra has the redis client
    session.run("python", "tools/mutation.py", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, for the whole tree."""
    session.install("ruff==0.17.6")  # the same as the tests extra: one formatting
    session.run("ruff", "check", ".")
    session.run(
        "ruff", "format", "--check", "src", "tests", "examples", "bench", "tools", "noxfile.py"
    )


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the typing API file."""
    session.install("-e", ".[redis,httpx,grpc,trio]", "types-grpcio", "mypy>=1.11", "pytest>=8")
    session.run("mypy", "--strict")


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every script in examples/ (and each example folder's main.py); fail if any fails."""
    session.install("-e", ".[examples]")
    scripts = [*(ROOT / "examples").glob("*.py"), *(ROOT / "examples").glob("*/main.py")]
    for script in sorted(scripts):
        session.log(f"running {script.name}")
        session.run("python", str(script))


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """A strict mkdocs build: any warning fails it."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", str(ROOT / ".site"))


@nox.session(python=PYTHON)
def wheel(session: nox.Session) -> None:
    """Build the wheel, install it in a fresh venv with nothing else, and run the demo from it."""
    session.install("build")
    tmp = pathlib.Path(session.create_tmp())
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    (wheel_file,) = dist.glob("*.whl")
    venv = tmp / "fresh"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("python", "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "-q", str(wheel_file), external=True)
    session.run(
        python, "-c", "import resilience, sys; print(resilience.__version__)", external=True
    )
    session.run(
        python,
        "-m",
        "resilience",
        "demo",
        "--duration",
        "1",
        "--clients",
        "8",
        "--quiet",
        external=True,
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Happy-path overhead beside peers; writes docs/benchmarks.md (--quick: short run)."""
    session.install("-e", ".[bench]")
    session.run("python", "bench/run.py", *session.posargs)
    session.run("python", "bench/suite.py", *session.posargs)
    session.run("python", "bench/throttle_accuracy.py")
    session.run("python", "bench/redis_bench.py", *session.posargs)  # needs redis-server
    session.run("python", "bench/integrations_bench.py", *session.posargs)
    session.run("python", "bench/keyed_bench.py", *session.posargs)
    session.run("python", "bench/hedge_bench.py", *session.posargs)
    session.run("python", "bench/simulate_bench.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """The benchmarks in their short mode, so that they keep working (writes nothing).

    Figures from a short run on a shared CI machine are noise: the targets are
    printed but only judged by the full `nox -s bench`.
    """
    session.install("-e", ".[bench]")
    session.run("python", "bench/run.py", "--quick")
    session.run("python", "bench/suite.py", "--quick")
    session.run("python", "bench/redis_bench.py", "--quick")
    session.run("python", "bench/integrations_bench.py", "--quick")
    session.run("python", "bench/keyed_bench.py", "--quick")
    session.run("python", "bench/hedge_bench.py", "--quick")
    session.run("python", "bench/simulate_bench.py", "--quick")
