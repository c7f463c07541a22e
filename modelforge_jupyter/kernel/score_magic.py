"""``%mf_score``: batch scoring from a notebook line. The job is the core's (``ModelForge.score``); the magic reads
its line, finds the data (a variable, or a Parquet path) and returns the job, which shows as a live progress bar
(``score_view``)."""

from __future__ import annotations

import os
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class, needs_local_scope, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from ..core.scoring import DEFAULT_CHUNK_ROWS, ScoreJob
from .arguments import ExpressionError, evaluate, parse_line, unquote, version_arg
from .refusals import next_step, one_line_errors


def data_of(shell: Any, text: str, local_ns: dict | None) -> Any:
    """The data ``text`` names: a Python expression in the caller's scope (a variable, ``X[:1000]``), else a path
    to a Parquet file or directory (quoted if it has spaces). Raises ``UsageError`` naming both readings."""
    path = unquote(text)
    try:
        value = evaluate(shell, text, local_ns)
    except ExpressionError as err:
        if os.path.exists(path):
            return path
        raise UsageError(f"{text!r} is neither a variable or expression ({err}) nor an existing path") from None
    return value


@magics_class
class ScoreMagics(Magics):
    """``%mf_score``, with the ``ModelForge`` of the ``ModelForgeMagics`` loaded beside it (same settings)."""

    @property
    def forge(self) -> Any:
        """The ``ModelForgeMagics``' ModelForge."""
        return self.shell.magics_manager.registry["ModelForgeMagics"].forge

    @line_magic
    @needs_local_scope
    @no_var_expand
    @magic_arguments()
    @argument("model", help="model name or id")
    @argument("data", nargs="+", help="a variable or expression (array, DataFrame), or a Parquet file or directory")
    @argument("-o", "--output", metavar="DIR", default=None,
              help="write the outputs there as Parquet (a part per chunk and manifest.json) instead of gathering them")
    @argument("--version", type=version_arg, default=None, help="model version (default: the latest, pinned now)")
    @argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help=f"rows per chunk (default {DEFAULT_CHUNK_ROWS})")
    @argument("--workers", type=int, default=None, help="local worker processes without a broker (default: one per CPU)")
    @argument("--wait", action="store_true", help="block until the job is over")
    def mf_score(self, line: str, local_ns: dict | None = None) -> ScoreJob | None:
        """Score a data set in chunks on worker processes and return the job at once (``ModelForge.score``).

        DATA is a variable or expression (a numpy array, a pandas DataFrame: columns named after the inputs, or all
        of them into a single input), or a Parquet file or directory (``./name`` for a path that is also a
        variable's name). The version is pinned when the job starts. Without ``CELERY_BROKER_URL`` the chunks run in
        local processes (``--workers``), else on the Celery workers. The job shows as a live progress bar with
        rows/s and ETA; ``job.result()`` gives the outputs in row order (``-o DIR``: Parquet files there and
        their manifest), ``job.errors()`` the rows that failed and why, ``job.cancel()`` stops it.

        Examples::

            job = %mf_score rf X
            job = %mf_score rf data/rows/ -o data/scored --chunk-rows 50000
            out = job.result()["probabilities"]
        """
        with one_line_errors(lambda err, refusal: next_step(err, refusal, self.forge.models)) as refusal:
            args = parse_line(self.mf_score, line)
            refusal.model = args.model
            if args.chunk_rows < 1:
                raise UsageError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
            if args.workers is not None and args.workers < 1:
                raise UsageError(f"--workers must be >= 1, got {args.workers}")
            data = data_of(self.shell, " ".join(args.data), local_ns)
            job = self.forge.score(args.model, data, version=args.version, chunk_rows=args.chunk_rows,
                                   output=args.output, workers=args.workers)
            if args.wait:
                job.wait()
            return job
        return None
