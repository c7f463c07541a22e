"""What ``%mf_bench`` does once its line is parsed: plan, show the dashboard (or a text table), measure, finish.

The measuring itself is the core's (``benchmark.plan_bench`` / ``run_bench``, shared with the CLI); this module turns
the magic's options into a plan and a budget, opens the server connection of ``--http`` (its V2 binary rows too
when the server has V2), and picks the view:
``dashboard.BenchDashboard`` in a widget frontend, ``dashboard.TextReport`` elsewhere (``ModelForgeMagics.widgets``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ..core.benchmark import (
    BATCH_SIZES,
    HTTP_PATHS,
    MAGIC_PATHS,
    V2_PATHS,
    BenchPlan,
    BenchResult,
    Budget,
    check_served,
    plan_bench,
    run_bench,
)
from ..core.batches import fixed_batch, parse_batch_sizes
from . import dashboard
from .arguments import evaluate


def options(magic: Any) -> Any:
    """Add ``%mf_bench``'s arguments and options to ``magic`` (a ``magic_arguments`` method)."""
    for option in reversed((
        argument("model", help="model name or id (its latest version is measured)"),
        argument("expr", nargs="*", help="the input (default: a sample built from the model's declared inputs)"),
        argument("--batch-sizes", default=None, metavar="B,B,...",
                 help="batch sizes (default 1,10,100,1000; with EXPR: its own batch), input resized along axis 0"),
        argument("--seconds", type=float, default=None, help="time per measured cell in s (default 0.5)"),
        argument("--iterations", type=int, default=None, help="exact calls per measured cell, instead of --seconds"),
        argument("--warmup", type=int, default=None, help="untimed calls before each cell (default 20; cold: 2)"),
        argument("--no-cache", action="store_true", help="do not measure cache hits"),
        argument("--http", action="store_true",
                 help="also measure POST modelforge/predict on the Jupyter server (cache off, cache hit)"),
        argument("--text", action="store_true", help="print a text table instead of the widget dashboard"),
    )):
        magic = option(magic)
    return magic


def bench(magics: Any, args: Any, local_ns: dict | None) -> BenchResult:
    """Run ``%mf_bench`` with the parsed ``args`` for ``magics`` (a ``ModelForgeMagics``: its ``forge``, shell and
    ``server_url`` / ``server_token`` / ``widgets`` traits). Raises ``UsageError`` for bad options,
    ``ModelForgeError`` for a refused model, input or server; returns the ``BenchResult``."""
    budget = bench_budget(args)
    batch_sizes = batch_sizes_option(args.batch_sizes)
    input_data = evaluate(magics.shell, " ".join(args.expr), local_ns) if args.expr else None
    paths = [p for p in MAGIC_PATHS + (HTTP_PATHS if args.http else ())
             if not (args.no_cache and p in ("api_hit", "http_hit"))]
    with contextlib.ExitStack() as stack:
        server = None
        if args.http:
            from ..core.client import connect

            server = stack.enter_context(connect(magics.server_url, magics.server_token))
            if server.has_v2:  # the V2 binary rows beside the JSON ones
                paths += [p for p in V2_PATHS if not (args.no_cache and p == "v2_hit")]
        mf = magics.forge
        plan = plan_bench(mf, args.model, batch_sizes, input_data, paths)
        if server is not None:
            check_served(server, plan.record)  # refuse before the dashboard shows
        in_kernel = type(magics.shell).__name__ == "ZMQInteractiveShell"
        widgets = not args.text and (magics.widgets == "on" or (magics.widgets == "auto" and in_kernel))
        view_args = (plan.record.name, plan.batch_sizes, plan.paths, plan.total)
        if widgets:
            view = dashboard.BenchDashboard(*view_args, notes=plan.notes,
                                            skipped=skipped_sizes(plan, batch_sizes, input_data is None))
        else:
            view = dashboard.TextReport(*view_args, in_kernel)
        view.show()
        try:
            result = run_bench(mf, plan, budget, view.update, server=server)
        except BaseException:
            view.fail()
            raise
        view.finish(result)
        if widgets:  # the dashboard and the outputs it left are the result's one display
            dashboard.mark_shown(magics.shell, result)
        return result


def batch_sizes_option(text: str | None) -> list[int] | None:
    """``--batch-sizes`` read by the core's rule (``benchmark.parse_batch_sizes``); None when not given."""
    try:
        return None if text is None else parse_batch_sizes(text)
    except ValueError as err:
        raise UsageError(f"--batch-sizes {err}") from None


def skipped_sizes(plan: BenchPlan, asked: list[int] | None, default: bool) -> dict[int, str]:
    """``{batch size: why}`` of the sizes asked for (or the default ones) that the model cannot take."""
    fixed = fixed_batch(plan.record.inputs)
    sizes = asked if asked is not None else (BATCH_SIZES if default else ())
    if fixed is None:
        return {}
    why = f"{plan.record.name} v{plan.record.version} takes batch {fixed[0]} only ({fixed[1]})"
    return {b: why for b in sizes if b not in plan.batch_sizes}


def bench_budget(args: Any) -> Budget:
    """The ``Budget`` of ``--seconds`` / ``--iterations`` / ``--warmup`` (defaults: ``Budget()``'s). Raises
    ``UsageError`` for both of the first two, or a value out of range."""
    if args.seconds is not None and args.iterations is not None:
        raise UsageError("give --seconds or --iterations, not both")
    if args.seconds is not None and args.seconds <= 0:
        raise UsageError(f"--seconds must be > 0, got {args.seconds}")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    defaults = Budget()
    return Budget(seconds=defaults.seconds if args.seconds is None else args.seconds, iterations=args.iterations,
                  warmup=defaults.warmup if args.warmup is None else args.warmup)
