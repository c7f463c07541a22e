"""``ModelForgeMagics``: the magics' class, its settings and the magics themselves.

Doors only: each magic parses its line (``arguments``), calls the ``ModelForge`` API and renders the answer (built
in ``outputs``; ``%mf_bench``'s run is ``bench_magic``'s). A refused request prints one line (``refusals``). Settings
come from the environment as everywhere else; ``%config ModelForgeMagics.<setting>`` overrides any setting of the
core's table (``settings.SETTINGS``), and the ``ModelForge`` is rebuilt with it.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, needs_local_scope, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import CaselessStrEnum, Unicode, observe

from ..core.benchmark import BenchResult
from ..core.errors import ModelForgeError
from ..core.records import PredictionResult
from ..core.settings import SETTINGS, SettingsTraits
from . import bench_magic, model_list, register_magic
from .arguments import evaluate, parse_line, parse_request, strip_comment, version_arg
from .refusals import Refusal, next_step, one_line_errors


@magics_class
class ModelForgeMagics(Magics, SettingsTraits):
    """The ModelForge magics and their settings (``%config ModelForgeMagics`` lists them).

    Every setting of the core's table is a trait (``SettingsTraits``), e.g. ``%config
    ModelForgeMagics.max_output_bytes = 1 << 20``; one left at None comes from the environment (``DATABASE_URL``,
    ``REDIS_URL``, ``MODELFORGE_CACHE_DIR``...), as for every other ModelForge process. The ``ModelForge`` is built
    on first use and rebuilt after a setting changes.
    """

    server_url = Unicode(
        None, allow_none=True, config=True,
        help="URL of the Jupyter server (its base_url included) for %mf_bench --http and kernel.client.connect(); "
        "None: env MODELFORGE_URL, else the server this kernel runs under (JPY_PARENT_PID).",
    )
    server_token = Unicode(
        None, allow_none=True, config=True,
        help="Token of that server; None: env MODELFORGE_TOKEN with a configured URL, else the found server's own.",
    )
    widgets = CaselessStrEnum(
        ["auto", "on", "off"], "auto", config=True,
        help="%mf_bench display: 'on' the ipywidgets dashboard, 'off' a text table, 'auto' the dashboard in a "
        "kernel (ZMQInteractiveShell) and text elsewhere (terminal IPython).",
    )

    _forge = None

    @property
    def forge(self):
        """The ``ModelForge`` these magics use: environment settings, overridden by the traits that are set."""
        if self._forge is None:
            from ..core.api import ModelForge

            try:
                self._forge = ModelForge(**self.configured_settings())
            except ValueError as err:  # a setting out of range (env MODELFORGE_*): one line, as other refusals
                raise ModelForgeError(f"cannot start ModelForge: {err}") from None
        return self._forge

    @observe(*(s.name for s in SETTINGS))
    def _settings_changed(self, change: dict) -> None:
        self.close()

    def close(self) -> None:
        """Close the ``ModelForge`` (database pool, cache client, sessions); the next magic builds a new one."""
        forge, self._forge = self._forge, None
        if forge is not None:
            forge.close()

    # -- helpers -------------------------------------------------------------------------------------------------
    def _store(self, name: str | None, value: Any) -> None:
        if name is not None:
            self.shell.user_ns[name] = value

    def _hint(self, err: ModelForgeError, refusal: Refusal) -> str:
        """The next step after a refusal (``refusals.next_step``), from this registry's models."""
        return next_step(err, refusal, lambda: self.forge.models())

    # -- magics --------------------------------------------------------------------------------------------------
    @line_cell_magic
    @needs_local_scope
    @no_var_expand
    @magic_arguments()
    @argument("model", help="model name or id")
    @argument("expr", nargs="*", help="the input, a Python expression (line form only)")
    @argument("--no-cache", action="store_true", help="skip the prediction cache (use_cache=False)")
    @argument("--version", type=version_arg, default=None,
              help="model version, a whole number >= 1 (default: the latest)")
    @argument("-o", "--output", metavar="NAME", default=None, help="also store the PredictionResult in NAME")
    def mf_predict(self, line: str, cell: str | None = None, local_ns: dict | None = None) -> PredictionResult | None:
        """Run a registered model on an input and return the ``PredictionResult``.

        Line form: EXPR is evaluated in the notebook's namespace: a numpy array, nested lists, a dict
        {input name: value}, or a pandas DataFrame for a single-input model; batches go along axis 0.
        Cell form: the cell is a JSON body as in the HTTP API, ``{"input_data": ..., "use_cache": ...,
        "version": ...}`` or just the input data. The result shows as ``iris v1 · 21.6 ms · cache miss`` over a
        table of the outputs (labels first, probabilities with three decimals); the ids are in small print.
        Inside a function, EXPR sees the function's locals. A ``# comment`` ends the line.

        Examples::

            r = %mf_predict iris X[:5]
            %mf_predict iris [[5.1, 3.5, 1.4, 0.2]] --no-cache --version 1

            %%mf_predict iris -o r
            {"input_data": {"float_input": [[5.1, 3.5, 1.4, 0.2]]}, "use_cache": false}
        """
        with one_line_errors(self._hint) as refusal:
            args = parse_line(self.mf_predict, line)
            refusal.model = args.model
            if args.output is not None and not args.output.isidentifier():
                raise UsageError(f"-o takes a variable name, got {args.output!r}")
            use_cache, version = not args.no_cache, args.version
            if cell is None:
                if not args.expr:
                    raise UsageError("give the input: %mf_predict MODEL EXPR, or the cell form %%mf_predict MODEL")
                input_data = evaluate(self.shell, " ".join(args.expr), local_ns)
            else:
                if args.expr:
                    raise UsageError("the cell body is the input: give only MODEL and options on the %%mf_predict line")
                input_data, use_cache, version = parse_request(cell, use_cache, version)
            result = self.forge.predict(args.model, input_data, use_cache=use_cache, version=version)
            self._store(args.output, result)
            return result

    @line_magic
    @needs_local_scope
    @no_var_expand
    @magic_arguments()
    @bench_magic.options
    def mf_bench(self, line: str, local_ns: dict | None = None) -> BenchResult | None:
        """Measure a model in this kernel beside raw ONNX Runtime; return a ``BenchResult``.

        For each batch size: cold (the first predict after the session is unloaded, model load included), warm
        (cache off) and cache-hit latency (p50/p95/p99 ms) and throughput (predictions/s), each beside raw
        onnxruntime on the same model, input and SessionOptions, with its ratio to raw. In a widget frontend it
        shows a dashboard (a progress bar naming the cell measured, elapsed time and ETA; a table of one row per path
        and one column per batch size, p50 by default, p95, p99 or predictions/s at a click), then leaves the plot and
        a table of every figure as ordinary outputs (what a saved or exported notebook shows); elsewhere a text
        table. The returned result is not shown a second time. The same code as ``python -m modelforge_jupyter.cli.bench``.

        A model whose inputs fix axis 0 (``[1, 4]``) takes that batch only: other batch sizes are skipped with a
        note saying why, and by default its own batch is measured. Inside a function, EXPR sees its locals.

        ``--http`` adds the same model through the Jupyter server's ``POST modelforge/predict`` (keep-alive HTTP,
        ``"use_cache": false`` and a cache hit). The server is ``%config ModelForgeMagics.server_url`` /
        ``server_token``, else env ``MODELFORGE_URL`` / ``MODELFORGE_TOKEN``, else the server this kernel runs under;
        it must share this kernel's registry.

        Examples::

            res = %mf_bench iris
            %mf_bench iris X --batch-sizes 1,64 --iterations 200 --no-cache
            %mf_bench iris --http --seconds 0.2
            res.table          # pandas DataFrame: model, batch, path, p50_ms, p95_ms, p99_ms, ...
        """
        with one_line_errors(self._hint) as refusal:
            args = parse_line(self.mf_bench, line)
            refusal.model = args.model
            return bench_magic.bench(self, args, local_ns)

    @line_magic
    def mf_models(self, line: str) -> model_list.ModelsTable | None:
        """Show the registry: name, versions, inputs, outputs (name and kind), size, when updated, short id.

        Hover a cell for the full id, the input names and the exact time; ``.to_df()`` gives every field in full.

        Example::

            %mf_models
            t = %mf_models
            t.to_df()            # pandas DataFrame: every field in full
        """
        with one_line_errors():
            if strip_comment(line).strip():
                raise UsageError("%mf_models takes no arguments")
            return model_list.ModelsTable(self.forge.models())

    @line_magic
    @needs_local_scope
    @magic_arguments()
    @argument("name", help="the new model's name")
    @argument("model", help="an ONNX file's path (quote it if it has spaces), or a variable: a fitted model, ONNX bytes")
    @argument("--sample", metavar="EXPR", default=None,
              help="rows of a fitted model's input (numpy array, DataFrame); for a file, the input it warms up on")
    @argument("--zipmap", action="store_true", help="a converted classifier's probabilities as {class: p} maps")
    @register_magic.preparation_options
    def mf_register(self, line: str, local_ns: dict | None = None) -> None:
        """Register an ONNX file, or a fitted model converted and verified on ``--sample``, as version 1 of a model.

        MODEL naming a variable is that object (write ``./name`` for a file of the same name); otherwise a path.
        ``--quantize dynamic`` and ``--outputs a,b`` prepare it for serving (``ModelForge.register``; for a file
        ``--sample`` is an input as ``%mf_predict`` takes it, also its warm-up input); a table shows size, agreement
        and p50 ms at batch 1 and 1000 before and after each step (unless ``--no-measure``).

        Examples::

            %mf_register iris modelforge_jupyter/sample_models/iris.onnx
            %mf_register churn pipe --sample X_test[:100]
            %mf_register digits mlp --sample X_test --quantize dynamic --outputs label
        """
        with one_line_errors(self._hint) as refusal:
            register_magic.register(self, parse_line(self.mf_register, line), refusal, local_ns, update=False)

    @line_magic
    @needs_local_scope
    @magic_arguments()
    @argument("name", help="a registered model's name")
    @argument("model", help="the new ONNX file's path, or a variable: a fitted model, ONNX bytes")
    @argument("--sample", metavar="EXPR", default=None,
              help="rows of a fitted model's input (numpy array, DataFrame); for a file, the input it warms up on")
    @argument("--zipmap", action="store_true", help="a converted classifier's probabilities as {class: p} maps")
    @register_magic.preparation_options
    def mf_update(self, line: str, local_ns: dict | None = None) -> None:
        """Add a version of a model from a file or a fitted model (the same bytes as its latest add none), prepared as
        ``%mf_register`` does (``--quantize``, ``--outputs``, ``--no-measure``).

        Examples::

            %mf_update iris modelforge_jupyter/sample_models/iris_v2.onnx
            %mf_update churn pipe --sample X_test[:100]
        """
        with one_line_errors(self._hint) as refusal:
            register_magic.register(self, parse_line(self.mf_update, line), refusal, local_ns, update=True)

    @line_magic
    @magic_arguments()
    @argument("name", help="model name or id")
    @argument("--version", type=version_arg, default=None, help="delete only this version, a whole number >= 1")
    def mf_delete(self, line: str) -> None:
        """Delete a model (every version), or one version of it (``--version N``, N a whole number >= 1).

        A bad or misspelt option (``--version 0``, ``--versoin 1``, ``--vers 1``) deletes nothing.

        Example::

            %mf_delete iris --version 1
        """
        with one_line_errors(self._hint) as refusal:
            args = parse_line(self.mf_delete, line)
            refusal.model = args.name
            rec = self.forge.delete(args.name, args.version)
            what = "all versions" if args.version is None else f"v{args.version}"
            print(f"✓ deleted {rec.name} ({what}, id {rec.id})")
