"""Mutation testing of the state machines: does the suite catch a small change to the code?

    python tools/mutation.py                   # every module in MODULES
    python tools/mutation.py _throttle _slots  # some of them
    python tools/mutation.py --list _throttle  # the mutants, without running them
    python tools/mutation.py --jobs 2          # in parallel (default: the cores)
    python tools/mutation.py _slots --mutant '_slots:Slots.resize:0.0 [0.0 -> 1.0]'

For each module, one small change at a time (a mutant): a comparison turned
around, an arithmetic or boolean operator swapped, a number moved by one, a
``not`` dropped, a statement deleted. Each mutant runs the module's own tests,
with ``-x``, but only those that execute the mutated line (found once with
coverage contexts). A failing or hung test kills the mutant; a mutant every
test passes with *survives*: either the tests have a hole there, or the change
cannot be told apart (an *equivalent* mutant, listed with the reason in
``tools/mutation_equivalents.toml``). The score of a module is the killed
mutants over the non-equivalent ones.

The Lua scripts of the Redis-backed policies are mutated too: the string
constants of a module of `LUA_MODULES` (``_redis_lua``), token by token. A
comparison (``<``, ``<=``, ``>``, ``>=``, ``==``, ``~=``) turned around,
``+ - * /`` swapped, a number moved, ``and``/``or`` swapped, a ``not`` or a
unary ``-`` dropped, a one-line statement deleted. Their keys name the
constant and the Lua function (``_redis_lua:CIRCUIT.should_trip:...``);
``--list`` gives the line. Such a mutant runs the tests that ran a script
holding that constant (recorded with the coverage contexts). The mutated
constant goes into the module like any mutated code, so the backend
registers the mutated script; redis-py runs a script by its SHA1 and loads
it on ``NOSCRIPT``, so the mutated one, whose SHA1 differs, is the one the
server runs. Each child runs its own pytest session, so its own redis-server
(the session fixture of ``tests/conftest.py``).

How a mutant runs: the parent process imports pytest and the heavy test
dependencies, never `resilience`, and forks one child per mutant. The child
installs an import hook that gives the mutated module's compiled code to
`import resilience.<module>`, then runs pytest in-process. No file is
written, so mutants run in parallel over one checkout. A child that outlives
its time limit (a deadlock, an endless loop) is killed: that kills the
mutant too, and is counted apart as a hang.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import pathlib
import re
import signal
import sys
import time
import tomllib
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "resilience"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.toml"
RESULTS = ROOT / ".mutation"

#: The Redis stores' tests. Not test_redis_fleet.py: its workers are spawned processes,
#: which import `resilience` from disk, so they never run the mutant; they would add
#: minutes of real-time, load-sensitive runs to every mutant that survives.
_REDIS_TESTS = (
    "tests/test_redis.py",
    "tests/test_redis_faults.py",
    "tests/test_redis_models.py",
    "tests/test_redis_bulkhead_store.py",
    "tests/test_redis_throttle_store.py",
    "tests/test_redis_circuit_store.py",
    "tests/test_redis_backend.py",
)

#: Module -> its own tests (the ones a change to it should break).
MODULES: dict[str, tuple[str, ...]] = {
    "_circuit_store": ("tests/test_circuit_breaker.py", "tests/test_circuit_breaker_model.py"),
    "_throttle": ("tests/test_throttle.py", "tests/test_throttle_model.py"),
    "_slots": ("tests/test_bulkhead.py", "tests/test_adaptive.py", "tests/test_bulkhead_model.py"),
    "_bulkhead": ("tests/test_bulkhead.py", "tests/test_bulkhead_model.py"),
    "_waiters": (
        "tests/test_waiters.py",
        "tests/test_throttle.py",
        "tests/test_bulkhead.py",
        "tests/test_throttle_model.py",
        "tests/test_bulkhead_model.py",
    ),
    "_budget": (
        "tests/test_budget.py",
        "tests/test_budget_model.py",
        "tests/test_redis.py",
        "tests/test_redis_faults.py",
    ),
    "_retry": ("tests/test_retry.py", "tests/test_budget.py"),
    "_adaptive": ("tests/test_adaptive.py",),
    "_redis_circuit": _REDIS_TESTS,
    "_redis_throttle": _REDIS_TESTS,
    "_redis_bulkhead": _REDIS_TESTS,
    "_redis_budget": _REDIS_TESTS,
    "_redis_backend": _REDIS_TESTS,
    "_redis_lua": _REDIS_TESTS,
}

LUA_MODULES = frozenset({"_redis_lua"})
"""Modules whose module-level string constants are Lua scripts (or parts of them)."""

TARGET = 0.95
"""The least share of non-equivalent mutants a module's tests must kill."""


# -- the mutants -------------------------------------------------------------------------------

SWAP_COMPARE: dict[type, list[type]] = {
    ast.Lt: [ast.LtE, ast.Gt],
    ast.LtE: [ast.Lt, ast.GtE],
    ast.Gt: [ast.GtE, ast.Lt],
    ast.GtE: [ast.Gt, ast.LtE],
    ast.Eq: [ast.NotEq],
    ast.NotEq: [ast.Eq],
    ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is],
    ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
}
SWAP_BINOP: dict[type, list[type]] = {
    ast.Add: [ast.Sub],
    ast.Sub: [ast.Add],
    ast.Mult: [ast.Div],
    ast.Div: [ast.Mult],
    ast.FloorDiv: [ast.Div],
    ast.Mod: [ast.FloorDiv],
    ast.LShift: [ast.RShift],
    ast.RShift: [ast.LShift],
    ast.BitOr: [ast.BitAnd],
    ast.BitAnd: [ast.BitOr],
    ast.BitXor: [ast.BitOr],
}
SYMBOL = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
    ast.And: "and",
    ast.Or: "or",
}


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One small change to a module, found by its position among the module's nodes."""

    module: str
    index: int
    """The mutated node's place in `ast.walk` order, with ``variant`` the change made to it."""
    variant: int
    line: int
    function: str
    description: str
    last_line: int = 0
    """The last line of the mutated expression (coverage may report any line of it)."""
    lua: bool = False
    """A change to a Lua script: ``index`` is its string constant, ``variant`` the change."""

    @property
    def key(self) -> str:
        """A name that survives unrelated edits of the module (for the equivalents list)."""
        return f"{self.module}:{self.function}:{self.description}"


def _skipped(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Nodes not worth mutating: docstrings, logging, messages, __slots__, asserts."""
    current: ast.AST | None = node
    while current is not None:
        if isinstance(current, ast.Assert | ast.JoinedStr | ast.Raise):
            return True
        if isinstance(current, ast.Assign | ast.AnnAssign):
            targets = current.targets if isinstance(current, ast.Assign) else [current.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if names & {"__slots__", "__all__", "logger"}:
                return True
        if isinstance(current, ast.Call):
            func = current.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in ("logger", "logging", "warnings")
            ):
                return True
        if isinstance(current, ast.Expr) and isinstance(current.value, ast.Constant):
            return True  # a docstring
        current = parents.get(current)
    return False


def _function_of(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    names: list[str] = []
    current = parents.get(node)
    while current is not None:
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(current.name)
        current = parents.get(current)
    return ".".join(reversed(names)) or "<module>"


def _variants(node: ast.AST, source: str) -> list[str]:
    """Descriptions of the changes this node takes (their order is the variant number)."""
    out: list[str] = []
    segment = (ast.get_source_segment(source, node) or "").replace("\n", " ")
    segment = " ".join(segment.split())[:60]
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in SWAP_COMPARE.get(type(op), []):
                out.append(f"{segment} [{i}: {SYMBOL[type(op)]} -> {SYMBOL[new]}]")
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        for new in SWAP_BINOP.get(type(node.op), []):
            out.append(f"{segment} [{SYMBOL[type(node.op)]} -> {SYMBOL[new]}]")
        if isinstance(node, ast.AugAssign):
            out.append(f"{segment} [delete the statement]")
    elif isinstance(node, ast.BoolOp):
        new_op = "or" if isinstance(node.op, ast.And) else "and"
        out.append(f"{segment} [{SYMBOL[type(node.op)]} -> {new_op}]")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        out.append(f"{segment} [drop {'not' if isinstance(node.op, ast.Not) else '-'}]")
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            out.append(f"{segment} [{value} -> {not value}]")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(f"{segment} [{value!r} -> {value + 1!r}]")
            if value != 0:
                out.append(f"{segment} [{value!r} -> 0]")
    elif isinstance(node, ast.If | ast.While):
        out.append(f"if/while {segment[:40]} [negate the test]")
    elif isinstance(node, ast.Expr | ast.Assign | ast.Return) and not (
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    ):
        out.append(f"{segment} [delete the statement]")
    return out


def _apply(node: ast.AST, variant: int, description: str) -> ast.AST | None:
    """Change ``node`` in place as ``description`` says; None: delete the statement."""
    if "[delete the statement]" in description:
        return None
    if isinstance(node, ast.Compare):
        choices = [
            (i, new) for i, op in enumerate(node.ops) for new in SWAP_COMPARE.get(type(op), [])
        ]
        i, new = choices[variant]
        node.ops[i] = new()
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        node.op = SWAP_BINOP[type(node.op)][variant]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        return node.operand
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            node.value = not value
        else:
            node.value = value + 1 if variant == 0 else 0
    elif isinstance(node, ast.If | ast.While):
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    return node


def mutants(module: str) -> list[Mutant]:
    source = (PACKAGE / f"{module}.py").read_text()
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    annotations = _annotation_nodes(tree)
    out: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        if node in annotations or _skipped(node, parents):
            continue
        name = _lua_constant(module, node, parents)
        if name:
            assert isinstance(node, ast.Constant)
            assert isinstance(node.value, str)
            for variant, change in enumerate(lua_changes(node.value)):
                function = f"{name}.{change.function}" if change.function else name
                line = node.lineno + change.line
                out.append(
                    Mutant(module, index, variant, line, function, change.description, line, True)
                )
            continue
        if "pragma: no mutate" in _line(source, node):
            continue
        span = node.test if isinstance(node, ast.If | ast.While) else node
        line = getattr(node, "lineno", 0)
        last = getattr(span, "end_lineno", None) or line
        for variant, description in enumerate(_variants(node, source)):
            function = _function_of(node, parents)
            out.append(Mutant(module, index, variant, line, function, description, last))
    return _numbered(out)


def _annotation_nodes(tree: ast.AST) -> set[ast.AST]:
    """Nodes inside type annotations (never evaluated: ``from __future__ import annotations``)
    and decorators (``frozen=True`` and the like: shape, not behaviour)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            roots.extend(node.decorator_list)  # @dataclass(frozen=True, slots=True) and such
        annotation = getattr(node, "annotation", None)  # AnnAssign, and arg
        if isinstance(node, ast.AnnAssign | ast.arg) and annotation is not None:
            roots.append(annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
    return {inner for root in roots for inner in ast.walk(root)}


def _line(source: str, node: ast.AST) -> str:
    line = getattr(node, "lineno", None)
    return source.splitlines()[line - 1] if line else ""


def _numbered(found: list[Mutant]) -> list[Mutant]:
    """Make keys unique: the n-th identical description in a function gets #n."""
    seen: dict[str, int] = {}
    out = []
    for mutant in found:
        count = seen.get(mutant.key, 0)
        seen[mutant.key] = count + 1
        if count:
            mutant = dataclasses.replace(mutant, description=f"{mutant.description} #{count + 1}")
        out.append(mutant)
    return out


def mutated_code(mutant: Mutant) -> Any:
    """The compiled code of the module with one change."""
    path = PACKAGE / f"{mutant.module}.py"
    tree = ast.parse(path.read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    nodes = list(ast.walk(tree))
    if mutant.index >= len(nodes):  # pragma: no cover - the module changed under us
        raise LookupError(mutant)
    node = nodes[mutant.index]
    if mutant.lua:
        text = node.value if isinstance(node, ast.Constant) else None
        changes = lua_changes(text) if isinstance(text, str) else []
        change = changes[mutant.variant] if mutant.variant < len(changes) else None
        if change is None or change.description != re.sub(r" #\d+$", "", mutant.description):
            raise LookupError(mutant)  # the script changed since the mutants were listed
        assert isinstance(node, ast.Constant)
        assert isinstance(text, str)
        node.value = change.applied(text)
        return compile(tree, str(path), "exec")
    description = re.sub(r" #\d+$", "", mutant.description)  # the excerpt may hold a " #"
    replacement = _apply(node, mutant.variant, description)
    if replacement is not node:
        _replace(parents[node], node, replacement)
    ast.fix_missing_locations(tree)
    return compile(tree, str(path), "exec")


def _replace(parent: ast.AST, old: ast.AST, new: ast.AST | None) -> None:
    for field, value in ast.iter_fields(parent):
        if isinstance(value, list) and old in value:
            position = value.index(old)
            if new is None:
                value[position] = ast.Pass()
                ast.copy_location(value[position], old)
            else:
                value[position] = new
            return
        if value is old:
            setattr(parent, field, new if new is not None else ast.Constant(None))
            return
    raise LookupError(old)  # pragma: no cover


# -- the Lua mutants ---------------------------------------------------------------------------

LUA_SWAP: dict[str, list[str]] = {
    "<": ["<=", ">"],
    "<=": ["<", ">="],
    ">": [">=", "<"],
    ">=": [">", "<="],
    "==": ["~="],
    "~=": ["=="],
    "+": ["-"],
    "-": ["+"],
    "*": ["/"],
    "/": ["*"],
    "and": ["or"],
    "or": ["and"],
}
_LUA_TOKEN = re.compile(
    r"""
      (?P<comment>--\[\[.*?\]\]|--[^\n]*)
    | (?P<string>'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"|\[\[.*?\]\])
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
    | (?P<name>[A-Za-z_]\w*)
    | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|[-+*/%^\#<>=(){}\[\];:,.])
    | (?P<space>\s+)
    """,
    re.VERBOSE | re.DOTALL,
)
#: After these tokens a ``-`` is unary (a negative number), not a subtraction.
_LUA_BEFORE_UNARY = frozenset(
    {"", "(", "{", "[", ",", "=", "==", "~=", "<", "<=", ">", ">=", "+", "-", "*", "/", "%"}
    | {"^", "..", "#", ";", "return", "and", "or", "not", "then", "do", "else", "elseif"}
    | {"until", "in"}
)
#: A line starting with one of these is not a whole statement that could be deleted.
_LUA_NOT_STATEMENT = frozenset(
    {"local", "if", "elseif", "else", "end", "for", "while", "repeat", "until", "return"}
    | {"function", "do", "then", "and", "or"}
)


@dataclasses.dataclass(frozen=True)
class LuaChange:
    """One change to a Lua text: ``text[start:end]`` becomes ``new``."""

    start: int
    end: int
    new: str
    line: int
    """The line of the change, counted from 0 in the text."""
    function: str
    """The Lua function it is in ("" at the script's top level)."""
    description: str

    def applied(self, text: str) -> str:
        return text[: self.start] + self.new + text[self.end :]


def _lua_constant(module: str, node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    """The name of the module-level constant ``node`` is a Lua text of ("": not one)."""
    if module not in LUA_MODULES or not isinstance(node, ast.Constant):
        return ""
    if not isinstance(node.value, str):
        return ""
    current = parents.get(node)
    while isinstance(current, ast.BinOp):  # CIRCUIT = _NOW + _HELPERS + r"""..."""
        current = parents.get(current)
    if isinstance(current, ast.Assign) and isinstance(parents.get(current), ast.Module):
        targets = [t.id for t in current.targets if isinstance(t, ast.Name)]
        return targets[0] if targets else ""
    return ""


def lua_changes(text: str) -> list[LuaChange]:
    """The mutants of one Lua text, in a stable order (a mutant's variant is its place)."""
    tokens = [
        (m.lastgroup or "", m.group(), m.start())
        for m in _LUA_TOKEN.finditer(text)
        if m.lastgroup not in ("space", "comment")
    ]
    functions = _lua_functions(tokens)
    lines = text.split("\n")
    out: list[LuaChange] = []
    previous = ""
    for i, (kind, value, start) in enumerate(tokens):
        end = start + len(value)
        changes: list[tuple[int, str, str]] = []  # (end, new text, what the key shows)
        if (kind == "op" or value in ("and", "or")) and value in LUA_SWAP:
            if value == "-" and previous in _LUA_BEFORE_UNARY:
                changes.append((end, "", "drop -"))
            else:
                changes.extend((end, new, f"{value} -> {new}") for new in LUA_SWAP[value])
        elif kind == "name" and value == "not":
            following = tokens[i + 1][2] if i + 1 < len(tokens) else end
            changes.append((following, "", "drop not"))
        elif kind == "number":
            number = float(value)
            moved = repr(int(number) + 1 if value.isdigit() else number + 1)
            changes.append((end, moved, f"{value} -> {moved}"))
            if number != 0:
                changes.append((end, "0", f"{value} -> 0"))
        line = text.count("\n", 0, start)
        for stop, new, shown in changes:
            where = _lua_excerpt(lines[line], start - (text.rfind("\n", 0, start) + 1))
            description = f"{where} [{shown}]"
            out.append(LuaChange(start, stop, new, line, functions[i], description))
        previous = value if kind in ("op", "name") else "x"
    offset = 0
    for line, code in enumerate(lines):
        statement = code.split("--")[0].strip()
        if _lua_statement(statement):
            begin = offset + code.index(statement)
            function = next(
                (f for (_, _, at), f in zip(tokens, functions, strict=True) if at >= begin), ""
            )
            description = f"{statement[:60]} [delete the statement]"
            out.append(LuaChange(begin, begin + len(statement), "", line, function, description))
        offset += len(code) + 1
    return out


def _lua_functions(tokens: list[tuple[str, str, int]]) -> list[str]:
    """For each token, the innermost Lua function it is in ("" at the top level)."""
    blocks: list[str] = []  # the open blocks: a function's name, or "" for another block
    out = []
    for i, (kind, value, _) in enumerate(tokens):
        if kind == "name" and value == "function":
            following = tokens[i + 1] if i + 1 < len(tokens) else ("", "", 0)
            blocks.append(following[1] if following[0] == "name" else "<function>")
        elif kind == "name" and value in ("if", "do", "repeat"):
            blocks.append("")
        elif kind == "name" and value in ("end", "until") and blocks:
            blocks.pop()
        out.append(next((b for b in reversed(blocks) if b), ""))
    return out


def _lua_excerpt(code: str, column: int) -> str:
    """The line of a change, without its comment; 60 characters around the change at most."""
    comment = code.find("--")
    if comment > column:
        code = code[:comment]
    stripped = code.strip()
    column -= len(code) - len(code.lstrip())
    begin = max(0, min(column - 25, len(stripped) - 60))
    return stripped[begin : begin + 60]


def _lua_statement(code: str) -> bool:
    """Whether a line (without its comment) is one whole statement that can be deleted."""
    words = code.replace("(", " ").split()
    if not words or words[0] in _LUA_NOT_STATEMENT or code.endswith(("then", "do")):
        return False
    if code.endswith((",", "+", "..", "=")):
        return False  # the first part of a statement over several lines
    return all(code.count(a) == code.count(b) for a, b in ("()", "{}", "[]"))


# -- running -------------------------------------------------------------------------------------


class _Hook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Gives `resilience.<module>` the mutated code."""

    def __init__(self, name: str, code: Any) -> None:
        self.name = name
        self.code = code

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        origin = str(PACKAGE / f"{fullname.rsplit('.', 1)[1]}.py")
        return importlib.util.spec_from_loader(fullname, self, origin=origin)

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        module.__file__ = str(PACKAGE / f"{self.name.rsplit('.', 1)[1]}.py")
        exec(self.code, module.__dict__)


def _run_child(
    tests: list[str],
    code: Any,
    module: str,
    quiet: bool = True,
    plugins: tuple[Any, ...] = (),
    log: pathlib.Path | None = None,
) -> int:
    """In a forked child: run pytest on ``tests``, with ``code`` as the module if given.

    Its output goes to ``log`` if given, else nowhere (``quiet``) or to the terminal.
    """
    os.setpgid(0, 0)  # its own group: a hang is killed with the servers its tests started
    if code is not None:
        sys.meta_path.insert(0, _Hook(f"resilience.{module}", code))
    import pytest
    from hypothesis import Phase, settings

    # A failing example is enough to kill a mutant: shrinking it (minutes, for the models
    # on a real redis-server) would only turn kills into hangs. Loaded before the test
    # modules are, so their own settings(...) start from it.
    settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
    settings.load_profile("mutation")

    # --assert=plain: pytest's assert rewriting would import `resilience` (a plugin's
    # package) through its own hook, before ours.
    args = [*tests, "-x", "-q", "-p", "no:cacheprovider", "--assert=plain", "--no-header"]
    if log is not None or quiet:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        sink = os.open(log, flags, 0o644) if log is not None else os.open(os.devnull, os.O_WRONLY)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
    return int(pytest.main(args, plugins=list(plugins)))


def run_forked(
    tests: list[str], code: Any, module: str, limit: float, log: pathlib.Path | None = None
) -> tuple[str, float]:
    """``("killed" | "survived" | "hang", seconds)`` for one run of the tests in a child."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            status = _run_child(tests, code, module, log=log)
        except BaseException:
            status = 3
        os._exit(status)
    deadline = started + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            seconds = time.monotonic() - started
            return ("survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"), seconds
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", limit
        time.sleep(0.02)


def coverage_map(module: str, tests: tuple[str, ...]) -> dict[int, set[str]]:
    """Line -> the tests that run it (an empty set: every test of the module may)."""
    out_file = RESULTS / f"{module}.contexts.json"
    pid = os.fork()
    if pid == 0:
        import coverage

        cov = coverage.Coverage(
            data_file=None,
            include=[str(PACKAGE / f"{module}.py")],
            branch=False,
        )
        cov.set_option("run:dynamic_context", "test_function")
        recorder = _ScriptRecorder() if module in LUA_MODULES else None
        cov.start()
        try:
            plugins = (recorder,) if recorder else ()
            log = RESULTS / f"{module}.coverage.log"
            status = _run_child(list(tests), None, module, plugins=plugins, log=log)
        finally:
            cov.stop()
        if status != 0:  # a map of a run cut short would let mutants survive untested
            os._exit(1)
        if recorder is not None:
            scripts = {text: sorted(tests) for text, tests in recorder.runs.items()}
            (RESULTS / f"{module}.scripts.json").write_text(json.dumps(scripts))
        data = cov.get_data()
        path = str(PACKAGE / f"{module}.py")
        by_line = data.contexts_by_lineno(path)
        out_file.write_text(json.dumps({str(k): sorted(v) for k, v in by_line.items()}))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        log = RESULTS / f"{module}.coverage.log"
        raise SystemExit(f"{module}: its tests failed in the coverage run (flaky?): see {log}")
    raw = json.loads(out_file.read_text())
    files = {pathlib.Path(t).stem: t for t in tests}
    at_import = _import_lines(module)
    result: dict[int, set[str]] = {}
    for line, contexts in raw.items():
        selected: set[str] = set()
        if int(line) in at_import:
            # Run when the module is imported, which a module imported on first use (as
            # the Redis stores are) does in whichever test uses it first: every test runs.
            result[int(line)] = selected
            continue
        for context in contexts:
            if not context:
                # Run outside a test function's frame (at import, or in a task the test
                # started): any test may run it, so every test of the module runs.
                selected = set()
                break
            module_name, _, function = context.rpartition(".")
            stem = module_name.rsplit(".", 1)[-1]
            if stem in files:
                selected.add(f"{files[stem]}::{function.split('.')[0]}")
        result[int(line)] = selected
    return result


def _import_lines(module: str) -> set[int]:
    """The lines of the module outside any function body: the ones its import runs."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(range(node.body[0].lineno, (node.end_lineno or 0) + 1))
    return set(range(1, (getattr(tree.body[-1], "end_lineno", 0) or 0) + 1)) - inside


class _ScriptRecorder:
    """A pytest plugin that records the tests that run each Lua script (its text).

    It wraps redis-py's `Script` and `AsyncScript` calls, through which the
    backend runs every script; a test is named as coverage names it
    (``file::function``, without parameters).
    """

    def __init__(self) -> None:
        from redis.commands.core import AsyncScript, Script

        self.runs: dict[str, set[str]] = {}
        self.test = ""
        for cls in (Script, AsyncScript):
            cls.__call__ = self._recording(cls.__call__)  # type: ignore[method-assign]

    def _recording(self, call: Any) -> Any:
        def recorded(script: Any, *args: Any, **kwargs: Any) -> Any:
            if self.test:
                text = script.script
                text = text.decode() if isinstance(text, bytes) else text
                self.runs.setdefault(text, set()).add(self.test)
            return call(script, *args, **kwargs)

        return recorded

    def pytest_runtest_protocol(self, item: Any) -> None:
        self.test = item.nodeid.split("[")[0]


def _lua_tests(mutant: Mutant, scripts: dict[str, list[str]]) -> list[str]:
    """The tests that ran a script holding the Lua text ``mutant`` changes."""
    tree = ast.parse((PACKAGE / f"{mutant.module}.py").read_text())
    node = list(ast.walk(tree))[mutant.index]
    assert isinstance(node, ast.Constant)
    assert isinstance(node.value, str)
    return sorted({test for text, tests in scripts.items() if node.value in text for test in tests})


def load_equivalents() -> dict[str, str]:
    if not EQUIVALENTS.exists():
        return {}
    data = tomllib.loads(EQUIVALENTS.read_text())
    return {entry["mutant"]: entry["why"] for entry in data.get("equivalent", [])}


def run_module(
    module: str, jobs: int, verbose: bool, only: set[str] | None = None
) -> dict[str, Any]:
    tests = tuple(t for t in MODULES[module] if (ROOT / t).exists())
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / f"{module}.baseline.log"
    baseline, seconds = run_forked(list(tests), None, module, 600, log=log)
    if baseline != "survived":
        raise SystemExit(f"{module}: its tests fail without any mutant ({baseline}): see {log}")
    limit = max(20.0, 4 * seconds)
    lines = coverage_map(module, tests)
    scripts_file = RESULTS / f"{module}.scripts.json"
    scripts = json.loads(scripts_file.read_text()) if module in LUA_MODULES else {}
    equivalents = load_equivalents()
    found = mutants(module)
    if only is not None:
        found = [m for m in found if m.key in only]
    outcome: dict[str, str] = {}
    queue: list[tuple[Mutant, list[str]]] = []
    for mutant in found:
        if mutant.lua:
            selected = _lua_tests(mutant, scripts)
            if selected:
                queue.append((mutant, selected))
            else:
                outcome[mutant.key] = "survived"  # no test runs this script
            continue
        span = [
            lines[n]
            for n in range(mutant.line, max(mutant.line, mutant.last_line) + 1)
            if n in lines
        ]
        if not span:
            outcome[mutant.key] = "survived"  # no test runs this line
            continue
        selected = sorted(set().union(*span)) if all(span) else list(tests)
        queue.append((mutant, selected))
    running: dict[int, tuple[Mutant, float]] = {}
    pending = list(queue)
    total = len(pending)
    done = 0
    while pending or running:
        while pending and len(running) < jobs:
            mutant, selected = pending.pop(0)
            try:
                code = mutated_code(mutant)
            except LookupError:
                message = f"{module} changed during the run ({mutant.key}): run it again"
                raise SystemExit(message) from None
            pid = os.fork()
            if pid == 0:
                try:
                    status = _run_child(selected, code, module)
                except BaseException:
                    status = 3
                os._exit(status)
            running[pid] = (mutant, time.monotonic())
        finished = []
        for pid, (mutant, started) in running.items():
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                code_ = os.waitstatus_to_exitcode(status)
                outcome[mutant.key] = "survived" if code_ == 0 else "killed"
                finished.append(pid)
            elif time.monotonic() - started > limit:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                outcome[mutant.key] = "hang"
                finished.append(pid)
        for pid in finished:
            mutant, _ = running.pop(pid)
            done += 1
            if verbose:
                print(f"  [{done}/{total}] {outcome[mutant.key]:8s} {mutant.key}", flush=True)
        if not finished:
            time.sleep(0.02)
    equivalent = {key for key in outcome if key in equivalents}
    survivors = sorted(k for k, v in outcome.items() if v == "survived" and k not in equivalent)
    killed = sum(1 for k, v in outcome.items() if v in ("killed", "hang") and k not in equivalent)
    hangs = sum(1 for v in outcome.values() if v == "hang")
    counted = len(outcome) - len(equivalent)
    wrongly_equivalent = sorted(k for k in equivalent if outcome[k] != "survived")
    result = {
        "module": module,
        "mutants": len(outcome),
        "killed": killed,
        "hangs": hangs,
        "equivalent": len(equivalent),
        "survived": survivors,
        "score": killed / counted if counted else 1.0,
        "equivalent_but_killed": wrongly_equivalent,
        "seconds_baseline": seconds,
    }
    if only is None:  # a partial run does not replace the full one's record
        (RESULTS / f"{module}.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"default: {', '.join(MODULES)}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run again only the mutants that survived the last run (a quick check of new tests)",
    )
    parser.add_argument(
        "--mutant",
        action="append",
        metavar="KEY",
        help="run only this mutant (as --list or a report names it; repeatable)",
    )
    options = parser.parse_args()
    # Every child draws the same hypothesis examples: a mutant's fate must not depend on luck.
    os.environ.setdefault("RESILIENCE_HYPOTHESIS_SEED", "20261204")
    modules = options.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules: {', '.join(unknown)} (known: {', '.join(MODULES)})")
    if options.list:
        for module in modules:
            for mutant in mutants(module):
                print(f"{mutant.line:5d} {mutant.key}")
        return 0
    # Import what every child needs once, in the parent, before forking.
    import asyncio  # noqa: F401
    import concurrent.futures  # noqa: F401

    import hypothesis  # noqa: F401
    import pytest  # noqa: F401
    import pytest_asyncio  # noqa: F401

    assert "resilience" not in sys.modules, "the parent must not import resilience"
    results = []
    for module in modules:
        started = time.monotonic()
        only = None
        if options.survivors:
            previous = json.loads((RESULTS / f"{module}.json").read_text())
            only = set(previous["survived"])
        if options.mutant:
            only = (only or set()) | set(options.mutant)
        result = run_module(module, options.jobs, options.verbose, only)
        result["seconds"] = time.monotonic() - started
        results.append(result)
        print(_summary(result), flush=True)
    print()
    print("| module | mutants | killed | hangs | equivalent | survived | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    failed = False
    for r in results:
        ok = r["score"] >= TARGET and not r["equivalent_but_killed"]
        failed |= not ok
        mark = "" if ok else " (below)"
        print(
            f"| `{r['module']}.py` | {r['mutants']} | {r['killed']} | {r['hangs']} | "
            f"{r['equivalent']} | {len(r['survived'])} | {r['score']:.1%}{mark} |"
        )
    return 1 if failed else 0


def _summary(result: dict[str, Any]) -> str:
    lines = [
        f"{result['module']}: {result['score']:.1%} killed of {result['mutants']} mutants "
        f"({result['equivalent']} equivalent, {result['hangs']} hangs) in {result['seconds']:.0f} s"
    ]
    for key in result["survived"]:
        lines.append(f"  survived: {key}")
    for key in result["equivalent_but_killed"]:
        lines.append(f"  listed as equivalent but killed: {key}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
