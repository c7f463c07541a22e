"""``modelforge``: the command line. Each subcommand is a door, imported only when it is named.

    modelforge serve [--token T] [--workers N] [--port P] ...   # ModelForge's HTTP routes outside Jupyter
    modelforge demo [--no-server] ...                             # the same as modelforge-demo
    modelforge bench ...                                          # ModelForge against raw ONNX Runtime
"""

from __future__ import annotations

import sys

COMMANDS = {"serve": "the HTTP routes outside Jupyter, in N processes", "demo": "the demo (modelforge-demo)",
            "bench": "ModelForge against raw ONNX Runtime"}


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand ``argv[0]`` (serve, demo, bench) with the rest of ``argv``; returns its exit status (2 and
    the usage for an unknown or missing subcommand, 0 for ``--help``)."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    if command == "serve":
        from ..serve.server import main as run
    elif command == "demo":
        from .demo import main as run
    elif command == "bench":
        from .bench import main as run
    else:
        usage = "usage: modelforge {serve,demo,bench} [options]; modelforge COMMAND --help for its options\n"
        print(usage + "".join(f"  {name:6} {what}\n" for name, what in COMMANDS.items()), end="",
              file=sys.stdout if command in ("-h", "--help") else sys.stderr)
        return 0 if command in ("-h", "--help") else 2
    return run(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
