"""Generate the sync shells from the async ones.

``src/resilience/_shells.py`` -> ``src/resilience/_shells_sync.py``::

    python tools/unasync.py          # write the sync module
    python tools/unasync.py --check  # exit 1 if it is not current (a test runs this)

The async shells are written by hand; their sync twins differ only by
``async def`` -> ``def``, ``await`` dropped, ``AsyncEndpoint`` ->
``Endpoint`` and the entry's ``cell[1]`` (the async chain) -> ``cell[0]``,
as httpcore's ``scripts/unasync.py`` does for its connections. The result
is formatted with ruff, so the file in the tree is exactly what this
script writes.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "resilience" / "_shells.py"
TARGET = ROOT / "src" / "resilience" / "_shells_sync.py"
FORMAT_AS = TARGET  # ruff takes its settings (line length...) from where the file lives

HEADER = '''"""The sync shells of the policies, generated from ``_shells.py``: do not edit.

Edit the async shells in ``_shells.py``, then run ``python tools/unasync.py``
(``tests/test_unasync.py`` fails while this file is not what it writes).
"""
'''

#: (pattern, replacement), applied in order to the code after the module docstring.
RULES: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\bawait ", ""),
    (r"\bAsyncEndpoint\b", "Endpoint"),
    (r"\bcell\[1\]", "cell[0]"),  # the entry's chain: [sync, async]
]


def generate() -> str:
    """The sync module, formatted."""
    source = SOURCE.read_text()
    docstring_end = source.index('"""', source.index('"""') + 3) + 3
    body = source[docstring_end:]
    for pattern, replacement in RULES:
        body = re.sub(pattern, replacement, body)
    return _format(HEADER + body)


def _format(text: str) -> str:
    """``text`` as ``ruff format`` leaves it (ruff reads the project's settings)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(FORMAT_AS), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that it is current")
    options = parser.parse_args()
    wanted = generate()
    current = TARGET.read_text() if TARGET.exists() else ""
    if options.check:
        if current == wanted:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), wanted.splitlines(), str(TARGET), "generated", lineterm=""
        )
        print("\n".join(diff))
        print(f"\n{TARGET.name} is not current: run python tools/unasync.py", file=sys.stderr)
        return 1
    if current != wanted:
        TARGET.write_text(wanted)
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
