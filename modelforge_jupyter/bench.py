"""``python -m modelforge_jupyter.bench``: the benchmark CLI at the path earlier READMEs gave; the command itself is
``modelforge_jupyter.cli.bench`` (same options, same code)."""

from .cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
