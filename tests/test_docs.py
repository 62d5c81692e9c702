"""Run the code of every documentation page and check the output the page shows.

Every ```` ```python ```` block of ``docs/*.md`` and of ``README.md`` runs here,
one test per page, so that a page cannot drift from the library. A page
follows these conventions:

* **One namespace per page.** The python blocks of a page run in order, in
  one namespace, as if the page were one script: a block may use what an
  earlier block defined.
* **Shown output is checked.** A ```` ```text ```` block that comes right
  after a python block (blank lines between them allowed, nothing else) is
  that block's output: what the block prints to stdout must equal it, trailing
  whitespace and trailing blank lines aside. A text block anywhere else (a
  signature, a diagram) is not checked, so put a sentence between a python
  block and a text block that is not its output.
* **Ellipsis.** ``...`` in an expected line matches any run of characters
  within that line, like doctest's ELLIPSIS, for output that really varies
  (an address, a timing). Use it sparingly: a seed or a ``FakeClock`` is
  better, since the reader sees the ``...``.
* **Skipping a block.** A block that cannot run (a fragment, or code that
  changes the whole process, such as installing the global OpenTelemetry
  providers) is marked by an HTML comment on the line above its fence, which
  the rendered page does not show::

      <!-- docs-test: skip: why it cannot run -->

  The reason is required. A skipped block may not show output (nothing would
  check it), and a ``docs-test`` comment that is not above a python block, or
  that says anything but ``skip: <reason>``, is an error, so that a typo
  cannot switch a check off unseen.
* **Module files.** A block whose first line is a comment naming a file,
  ``# users.py``, is that module of the reader's project: it runs as a module
  of that name, which later blocks of the page import (``import users``).
* **Pytest tests.** Functions named ``test_*`` that a page defines are also
  run by pytest, with the library's plugin and its fixtures: the page's
  module files and each block that defines tests are written out as a small
  project, and every test in it must pass.

Nothing is patched: a snippet runs as a reader would run it, so a page that
waits for real (the real-time examples of docs/timeout.md, a 10 ms backoff)
waits here too. Keep such waits to a few milliseconds and prefer a
``FakeClock`` on pages about time; ``PAGE_BUDGET`` catches a page that waits
for longer (computing for longer is fine). Snippets must not touch the
network, but for one thing: a page that names ``REDIS_URL`` runs with that
variable set to a redis-server the tests start on 127.0.0.1
(tests/conftest.py).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import io
import logging
import re
import sys
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
DIRECTIVE = re.compile(r"<!--\s*docs-test:(?P<body>.*?)-->")
SKIP = re.compile(r"^\s*skip:\s*(?P<reason>\S.*?)\s*$")
MODULE_FILE = re.compile(r"^#\s*(?P<name>[A-Za-z_]\w*)\.py\s*$")

#: Seconds a page's blocks may spend waiting (wall-clock time not spent computing)
#: together: far more than the real-time examples need, far less than a snippet that
#: really waits.
PAGE_BUDGET = 3.0

#: How pytest runs the tests a page defines (warnings are errors, as here).
PYTEST_ARGS = (
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:hypothesispytest",  # nothing there uses it, and importing it takes a second
    "-W",
    "error",
    "-o",
    "asyncio_mode=auto",
    "-o",
    "asyncio_default_fixture_loop_scope=function",
)


class DocsError(Exception):
    """A page breaks the conventions above."""


@dataclasses.dataclass(frozen=True)
class Fence:
    lang: str
    start: int  # line number of the opening fence, from 1
    end: int  # line number of the closing fence
    code: str


@dataclasses.dataclass(frozen=True)
class Snippet:
    line: int  # line number of the first line of code
    code: str
    expected: str | None  # the text block right after it, if any
    expected_line: int | None
    skip: str | None  # why it does not run, if it does not
    module: str | None  # the module it is, for a block that starts with "# name.py"

    def tests(self) -> list[str]:
        """The names of the pytest tests this block defines."""
        return [
            node.name
            for node in ast.parse(self.code).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test")
        ]


def label(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def fences(text: str, where: str) -> list[Fence]:
    """The fenced blocks of a Markdown text, in order (indented ones dedented)."""
    lines = text.splitlines()
    found: list[Fence] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        lang = info.split()[0].strip("{}.").lower() if info else ""
        body: list[str] = []
        for j in range(i + 1, len(lines)):
            closing = FENCE.match(lines[j])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[j].removeprefix(indent))
        else:
            raise DocsError(f"{where}:{i + 1}: a code fence that is never closed")
        found.append(Fence(lang, i + 1, j + 1, "".join(line + "\n" for line in body)))
        i = j + 1
    return found


def snippets(path: Path) -> list[Snippet]:
    """The python blocks of a page, each with its expected output and marks."""
    where = label(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks = fences(text, where)
    by_start = {block.start: block for block in blocks}
    inside = {n for block in blocks for n in range(block.start, block.end + 1)}

    def first_after(n: int, step: int) -> int:
        """The first line that is not blank, from line ``n`` on in direction ``step``."""
        while 1 <= n <= len(lines) and not lines[n - 1].strip():
            n += step
        return n

    reasons: dict[int, str] = {}
    for n, line in enumerate(lines, start=1):
        if n in inside:
            continue
        for directive in DIRECTIVE.finditer(line):
            skip = SKIP.match(directive["body"])
            if not skip:
                raise DocsError(
                    f"{where}:{n}: {directive[0]!r}: a docs-test directive must read "
                    "<!-- docs-test: skip: <why the block cannot run> -->"
                )
            reasons[n] = skip["reason"]

    out: list[Snippet] = []
    for block in blocks:
        if block.lang != "python":
            continue
        reason = reasons.pop(first_after(block.start - 1, -1), None)
        after = by_start.get(first_after(block.end + 1, +1))
        expected = after if after is not None and after.lang == "text" else None
        if reason is not None and expected is not None:
            raise DocsError(
                f"{where}:{expected.start}: shows the output of a skipped block, which "
                "nothing checks; make the block run, or drop the output"
            )
        first_line = block.code.partition("\n")[0]
        module = MODULE_FILE.match(first_line)
        out.append(
            Snippet(
                line=block.start + 1,
                code=block.code,
                expected=expected.code if expected else None,
                expected_line=expected.start if expected else None,
                skip=reason,
                module=module["name"] if module else None,
            )
        )
    for n in reasons:
        raise DocsError(f"{where}:{n}: a docs-test directive that is not above a python block")
    return out


def normalize(text: str) -> list[str]:
    """The lines of an output, without trailing whitespace or trailing blank lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def line_matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is ``expected``, where each ``...`` stands for any characters."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def output_matches(expected: str, actual: str) -> bool:
    want, got = normalize(expected), normalize(actual)
    return len(want) == len(got) and all(map(line_matches, want, got))


@contextlib.contextmanager
def sandbox() -> Iterator[None]:
    """Put back the logging set-up and the warning filters a page may change.

    The root logger's handlers (pytest's own, here) are set aside while the
    page runs, so that a page's ``logging.basicConfig`` works as it would in
    a script.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    saved = {
        logger: (logger.level, logger.handlers[:], logger.propagate, logger.disabled)
        for logger in loggers
        if isinstance(logger, logging.Logger)
    }
    root = logging.getLogger()
    root.handlers.clear()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for logger in logging.Logger.manager.loggerDict.values():
            if isinstance(logger, logging.Logger) and logger not in saved:
                logger.setLevel(logging.NOTSET)
                logger.handlers.clear()
        for logger, (level, handlers, propagate, disabled) in saved.items():
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate, logger.disabled = propagate, disabled


def run_page(path: Path) -> list[str]:
    """Run a page's blocks in order; return a diff for each output that differs."""
    where = label(path)
    page = types.ModuleType("docs_page_" + re.sub(r"\W", "_", path.stem))
    page.__file__ = str(path)
    # The modules the page defines, in sys.modules while it runs (dataclasses and
    # pickle look classes' modules up there), with what they shadow.
    shadowed: dict[str, types.ModuleType | None] = {page.__name__: None}
    sys.modules[page.__name__] = page
    stdout = io.StringIO()
    problems: list[str] = []
    try:
        with sandbox(), contextlib.redirect_stdout(stdout):
            for snippet in snippets(path):
                if snippet.skip is not None:
                    continue
                target = page
                if snippet.module is not None:
                    target = types.ModuleType(snippet.module)
                    target.__file__ = str(path)
                    shadowed.setdefault(snippet.module, sys.modules.get(snippet.module))
                    sys.modules[snippet.module] = target
                start = stdout.tell()
                try:
                    # Newlines first, so that tracebacks show the page's line numbers.
                    code = compile("\n" * (snippet.line - 1) + snippet.code, str(path), "exec")
                    exec(code, target.__dict__)
                except Exception as exc:
                    raise AssertionError(
                        f"{where}: the block at line {snippet.line} raised {exc!r}; "
                        f"it printed:\n{stdout.getvalue()[start:]}"
                    ) from exc
                printed = stdout.getvalue()[start:]
                if snippet.expected is not None and not output_matches(snippet.expected, printed):
                    diff = difflib.unified_diff(
                        normalize(snippet.expected),
                        normalize(printed),
                        f"{where}:{snippet.expected_line} (shown)",
                        f"{where}:{snippet.line} (printed)",
                        lineterm="",
                    )
                    problems.append("\n".join(diff))
    finally:
        for name, module in shadowed.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    return problems


def project(path: Path) -> tuple[dict[str, str], int]:
    """A page's pytest tests as files (its module files too), and how many tests."""
    files: dict[str, str] = {}
    count = 0
    stem = re.sub(r"\W", "_", path.stem)
    for snippet in snippets(path):
        if snippet.skip is not None:
            continue
        if snippet.module is not None:
            files[snippet.module] = snippet.code
        elif tests := snippet.tests():
            files[f"test_{stem}_{snippet.line:04}"] = snippet.code  # in the page's order
            count += len(tests)
    return files, count


def has_python(path: Path) -> bool:
    try:
        blocks = fences(path.read_text("utf-8"), label(path))
    except DocsError:
        return True  # its test reports the error
    return any(block.lang == "python" for block in blocks)


@pytest.mark.parametrize("page", [label(path) for path in PAGES if has_python(path)])
def test_page(page: str, request: pytest.FixtureRequest) -> None:
    """The page's blocks run, print what the page shows, and its pytest tests pass."""
    path = ROOT / page
    if "REDIS_URL" in path.read_text(encoding="utf-8"):
        # A page about the Redis backend runs against a real redis-server of the tests
        # (127.0.0.1, a free port): the snippets read its URL from the environment.
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("monkeypatch").setenv("REDIS_URL", url)
    started, computed = time.perf_counter(), time.process_time()
    problems = run_page(path)
    # Time spent computing is fine (the simulator's page runs a dozen simulations);
    # time spent waiting is what the budget catches.
    waited = (time.perf_counter() - started) - (time.process_time() - computed)
    assert not problems, f"{page} shows output its code does not print:\n" + "\n\n".join(problems)
    assert waited < PAGE_BUDGET, f"{page} waited {waited:.1f}s: a snippet waits for real"

    files, count = project(path)
    if count:
        pytester: pytest.Pytester = request.getfixturevalue("pytester")
        pytester.makepyfile(**files)
        result = pytester.runpytest_inprocess(*PYTEST_ARGS)
        assert result.parseoutcomes() == {"passed": count}, (
            f"the pytest tests of {page} do not all pass:\n" + "\n".join(result.outlines)
        )


# -- the conventions themselves ---------------------------------------------------


def write_page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


PAGE = """\
# A page

```python
greeting = "hello"
print(greeting)
```

```text
{shown}
```

Prose, then a signature that is not output:

```text
f(x) -> y
```

```python
print(greeting.upper(), id(greeting))
```
```text
HELLO ...
```
"""


def test_a_page_that_prints_what_it_shows_passes(tmp_path: Path) -> None:
    path = write_page(tmp_path, PAGE.format(shown="hello"))
    assert [s.expected for s in snippets(path)] == ["hello\n", "HELLO ...\n"]
    assert run_page(path) == []


def test_a_page_that_shows_other_output_fails_with_a_diff(tmp_path: Path) -> None:
    path = write_page(tmp_path, PAGE.format(shown="bonjour"))
    (problem,) = run_page(path)
    assert "-bonjour\n+hello" in problem
    assert "page.md:8 (shown)" in problem


def test_a_block_that_raises_names_the_page_and_line(tmp_path: Path) -> None:
    path = write_page(tmp_path, "```python\nprint('before')\n1 / 0\n```\n")
    with pytest.raises(AssertionError, match=r"page.md: the block at line 2 raised") as caught:
        run_page(path)
    assert "before" in str(caught.value)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        ("a b", "a b  \n\n", True),
        ("a b", "a c", False),
        ("a\nb", "a", False),
        ("took ...s", "took 0.25s", True),
        ("took ...s", "took 0.25s!", False),
        ("...", "anything at all", True),
        ("a...", "a\nb", False),  # within one line only
    ],
)
def test_output_matching(expected: str, actual: str, matches: bool) -> None:
    assert output_matches(expected, actual) is matches


def test_a_skipped_block_does_not_run(tmp_path: Path) -> None:
    path = write_page(
        tmp_path,
        "<!-- docs-test: skip: a fragment -->\n\n```python\nawait fetch()\n```\n",
    )
    assert [s.skip for s in snippets(path)] == ["a fragment"]
    assert run_page(path) == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- docs-test: skip -->\n```python\npass\n```\n", "a docs-test directive must read"),
        (
            "<!-- docs-test: skp: typo -->\n```python\npass\n```\n",
            "a docs-test directive must read",
        ),
        ("<!-- docs-test: skip: why -->\n\nProse.\n\n```python\npass\n```\n", "not above"),
        (
            "<!-- docs-test: skip: why -->\n```python\nprint(1)\n```\n```text\n1\n```\n",
            "shows the output of a skipped block",
        ),
        ("```python\npass\n", "never closed"),
    ],
)
def test_a_page_that_breaks_the_conventions_is_an_error(
    tmp_path: Path, text: str, error: str
) -> None:
    with pytest.raises(DocsError, match=error):
        snippets(write_page(tmp_path, text))


def test_a_module_file_block_is_importable_by_later_blocks(tmp_path: Path) -> None:
    path = write_page(
        tmp_path,
        "```python\n# shop_docs_example.py\nPRICE = 3\n```\n\n"
        "```python\nimport shop_docs_example\n\n"
        "def test_price():\n    assert shop_docs_example.PRICE == 3\n\n"
        "print(shop_docs_example.PRICE)\n```\n\n```text\n3\n```\n",
    )
    assert run_page(path) == []
    assert "shop_docs_example" not in sys.modules
    files, count = project(path)
    assert sorted(files) == ["shop_docs_example", "test_page_0007"]
    assert count == 1
