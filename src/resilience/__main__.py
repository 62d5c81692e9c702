"""``python -m resilience``: the chaos demo, and the configuration's schema and check.

- ``python -m resilience demo [--help]``: the chaos demo (see `resilience.demo`);
- ``python -m resilience simulate [--help]``: run pipelines against a modelled service in
  virtual time, compare them and sweep their parameters (see `resilience.simulate`);
- ``python -m resilience schema``: the JSON Schema of configuration files, for editors;
- ``python -m resilience check FILE``: validate a configuration file and print each
  pipeline's layers (exit status 1 with every problem listed when it is invalid).
"""

from __future__ import annotations

import json
import sys

USAGE = "usage: python -m resilience {demo [--help] | simulate [--help] | schema | check FILE}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from .demo import main as demo

        return demo(rest)
    if command == "simulate":
        from .simulate import main as simulate

        return simulate(rest)
    if command == "schema" and not rest:
        from .config import schema

        print(json.dumps(schema(), indent=2, sort_keys=True))
        return 0
    if command == "check" and len(rest) == 1:
        from .config import ConfigError, check

        try:
            print(check(rest[0]))
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 1
        except OSError as error:
            print(f"cannot read {rest[0]}: {error}", file=sys.stderr)
            return 1
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
