"""Command-line doors: ``python -m modelforge_jupyter.cli.demo`` (``modelforge-demo``) and
``python -m modelforge_jupyter.cli.bench``."""
