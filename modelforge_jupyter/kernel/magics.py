"""IPython magics over the ``ModelForge`` API: ``%mf_predict``, ``%mf_bench``, ``%mf_models``, ``%mf_register``...

Doors only: each magic parses its line (IPython ``magic_arguments``), calls the ``ModelForge`` API and renders the
answer. Settings come from the environment as everywhere else; ``%config ModelForgeMagics.<setting>`` overrides any
setting of the core's table (``settings.SETTINGS``).
A refused request (``ModelForgeError``, bad options, an expression that fails) prints one line to stderr, returns
None and changes nothing; that line ends with the next step when there is one (close names of a model that is not
registered, the ``%mf_update NAME PATH`` line for a name that is). What the magics show is built in ``outputs``.

Every magic line is read the same way: a ``# comment`` (a ``#`` outside a string literal, as Python reads it) is
dropped, the rest is split as a shell would (quotes group), options must be spelt in full (no argparse abbreviation:
``--vers 1`` is refused, not taken for ``--version 1``), and expressions are evaluated in the caller's scope: the
notebook's namespace, or a function's locals over it when the magic runs inside a function.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tokenize
from argparse import ArgumentTypeError
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, needs_local_scope, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split
from traitlets import CaselessStrEnum, Unicode, observe

from ..core.errors import InvalidInputError, ModelExistsError, ModelForgeError, ModelNotFoundError
from ..core.protocol import INPUT_DATA, USE_CACHE, VERSION, request_options, version_from_text
from ..core.benchmark import BenchResult, parse_batch_sizes
from ..core.records import PredictionResult
from ..core.settings import SETTINGS, SettingsTraits
from . import dashboard, outputs

REQUEST_KEYS = {INPUT_DATA, USE_CACHE, VERSION}  # a cell with other keys is the bare input data


def refuse_repeated_options(parser: Any, argv: list[str]) -> None:
    """Raise ``UsageError`` naming an option given more than once: argparse keeps the last one silently, so
    ``%mf_delete m --version 1 --version 2`` would delete version 2 without a word. No magic option repeats."""
    given: dict[str, tuple[Any, list[str]]] = {}  # option dest -> (its action, the values given: "" for a flag)
    pending: list[str] | None = None  # the values list awaiting the next token
    for token in argv:
        if pending is not None:  # the value of the option before, even if it looks like an option ("-1")
            pending.append(token)
            pending = None
            continue
        if token == "--":
            break
        name, eq, value = token.partition("=")
        action = parser._option_string_actions.get(name) if token.startswith("-") else None  # argparse's own table
        if action is None:
            continue
        values = given.setdefault(action.dest, (action, []))[1]
        if action.nargs == 0:
            values.append("")
        elif eq:
            values.append(value)
        else:
            pending = values
    for action, values in given.values():
        if len(values) > 1:
            shown = ", then ".join(repr(v) for v in values) if any(values) else f"{len(values)} times"
            raise UsageError(f"{'/'.join(action.option_strings)} is given more than once ({shown}): give it once")


class ExpressionError(Exception):
    """The user's expression failed to evaluate; ``str`` is already ``Type: message``."""


class Refusal:
    """What a refusal's hint needs to know: the model name and the path as the user typed them (set once parsed)."""

    model: str | None = None
    path: str | None = None


@contextlib.contextmanager
def one_line_errors(hint: Callable[[ModelForgeError, Refusal], str] | None = None) -> Iterator[Refusal]:
    """Print a refused request as one line on stderr (no traceback), ended by ``hint(err, refusal)`` when that
    names a next step; the magic then returns None."""
    refusal = Refusal()
    try:
        yield refusal
    except ExpressionError as err:
        print(err, file=sys.stderr)
    except (ModelForgeError, UsageError) as err:
        line = f"{type(err).__name__}: {err}"
        extra = hint(err, refusal) if hint is not None and isinstance(err, ModelForgeError) else ""
        print(f"{line}; {extra}" if extra else line, file=sys.stderr)


def strip_comment(line: str) -> str:
    """``line`` without its ``# comment``: from the first ``#`` Python's tokenizer reads as a comment, so a ``#``
    inside a string literal (``{"a#b": 1}``, ``'/tmp/a#b.onnx'``) stays; an unquoted path with ``#`` must be quoted."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.COMMENT:
                return line[: tok.start[1]]
            if tok.type == tokenize.NEWLINE:
                break
    except (tokenize.TokenError, SyntaxError):  # an unclosed bracket or string: no comment before it
        pass
    return line


def version_arg(text: str) -> int:
    """argparse type of ``--version``: the core's rule for a version given as text (``protocol.version_from_text``)."""
    try:
        return version_from_text(text)
    except ModelForgeError as err:
        raise ArgumentTypeError(str(err)) from None


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


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
    def _parse(self, magic: Any, line: str) -> Any:
        line = strip_comment(line).rstrip().removesuffix(";")  # "%mf_bench iris;" as in a silenced cell
        try:
            argv = arg_split(line)
        except ValueError as err:
            raise UsageError(f"cannot split {line!r}: {err}") from None
        parser = magic.parser  # MagicArgumentParser: errors raise UsageError
        parser.allow_abbrev = False  # a misspelt or shortened option is refused, never guessed
        args = parser.parse_intermixed_args(argv)
        refuse_repeated_options(parser, argv)
        return args

    def _eval(self, expr: str, local_ns: dict | None = None) -> Any:
        """``expr`` evaluated in the caller's scope (``local_ns`` from ``@needs_local_scope``): the notebook's
        namespace, or a function's locals over it (as globals, so a comprehension or lambda in ``expr`` sees them)."""
        user_ns = self.shell.user_ns
        try:
            if local_ns is None or local_ns is user_ns:
                return self.shell.ev(expr)
            return eval(expr, {**user_ns, **local_ns})  # noqa: S307: the user's own expression, as shell.ev does
        except Exception as err:
            raise ExpressionError(f"{type(err).__name__}: {err} (evaluating {expr!r})") from None

    def _store(self, name: str | None, value: Any) -> None:
        if name is not None:
            self.shell.user_ns[name] = value

    def _hint(self, err: ModelForgeError, refusal: Refusal) -> str:
        """The next step after a refusal, in magic syntax (the HTTP message stays free of it): close names of a
        model that is not registered, or the exact ``%mf_update`` line for a name that already is."""
        if isinstance(err, ModelExistsError) and refusal.model and refusal.path:
            return f"to add this file as its next version: %mf_update {refusal.model} {refusal.path}"
        if not isinstance(err, ModelNotFoundError) or not refusal.model:
            return ""
        try:
            records = self.forge.models()
        except ModelForgeError:  # the registry is down: the refusal alone
            return ""
        if any(refusal.model in (r.name, r.id) for r in records):
            return ""  # the model is there (a missing version: the message lists the versions)
        names = [r.name for r in records]
        if refusal.path and not outputs.close_names(refusal.model, names):  # %mf_update of a new name
            return f"to register it: %mf_register {refusal.model} {refusal.path}"
        return outputs.not_registered_hint(refusal.model, names)

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
            args = self._parse(self.mf_predict, line)
            refusal.model = args.model
            if args.output is not None and not args.output.isidentifier():
                raise UsageError(f"-o takes a variable name, got {args.output!r}")
            use_cache, version = not args.no_cache, args.version
            if cell is None:
                if not args.expr:
                    raise UsageError("give the input: %mf_predict MODEL EXPR, or the cell form %%mf_predict MODEL")
                input_data = self._eval(" ".join(args.expr), local_ns)
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
    @argument("model", help="model name or id (its latest version is measured)")
    @argument("expr", nargs="*", help="the input (default: a sample built from the model's declared inputs)")
    @argument("--batch-sizes", default=None, metavar="B,B,...",
              help="batch sizes (default 1,10,100,1000; with EXPR: its own batch), input resized along axis 0")
    @argument("--seconds", type=float, default=None, help="time per measured cell in s (default 0.5)")
    @argument("--iterations", type=int, default=None, help="exact calls per measured cell, instead of --seconds")
    @argument("--warmup", type=int, default=None, help="untimed calls before each cell (default 20; cold: 2)")
    @argument("--no-cache", action="store_true", help="do not measure cache hits")
    @argument("--http", action="store_true",
              help="also measure POST modelforge/predict on the Jupyter server (cache off, cache hit)")
    @argument("--text", action="store_true", help="print a text table instead of the widget dashboard")
    def mf_bench(self, line: str, local_ns: dict | None = None):
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
        from ..core.benchmark import HTTP_PATHS, MAGIC_PATHS, check_served, plan_bench, run_bench

        with one_line_errors(self._hint) as refusal, contextlib.ExitStack() as stack:
            args = self._parse(self.mf_bench, line)
            refusal.model = args.model
            budget = bench_budget(args)
            batch_sizes = batch_sizes_option(args.batch_sizes)
            input_data = self._eval(" ".join(args.expr), local_ns) if args.expr else None
            paths = [p for p in MAGIC_PATHS + (HTTP_PATHS if args.http else ())
                     if not (args.no_cache and p in ("api_hit", "http_hit"))]
            server = None
            if args.http:
                from ..core.client import connect

                server = stack.enter_context(connect(self.server_url, self.server_token))
            mf = self.forge
            plan = plan_bench(mf, args.model, batch_sizes, input_data, paths)
            if server is not None:
                check_served(server, plan.record)  # refuse before the dashboard shows
            in_kernel = type(self.shell).__name__ == "ZMQInteractiveShell"
            widgets = not args.text and (self.widgets == "on" or (self.widgets == "auto" and in_kernel))
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
                dashboard.mark_shown(self.shell, result)
            return result

    @line_magic
    def mf_models(self, line: str) -> outputs.ModelsTable | None:
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
            return outputs.ModelsTable(self.forge.models())

    @line_magic
    @magic_arguments()
    @argument("name", help="the new model's name")
    @argument("path", help="path of the ONNX file (quote it if it has spaces)")
    def mf_register(self, line: str) -> None:
        """Register an ONNX file as version 1 of a new model.

        Example::

            %mf_register iris modelforge_jupyter/sample_models/iris.onnx
        """
        with one_line_errors(self._hint) as refusal:
            args = self._parse(self.mf_register, line)
            refusal.model, refusal.path = args.name, args.path
            rec = self.forge.register(args.name, _unquote(args.path))
            print("\n".join([f"✓ registered {rec.name} v{rec.version}", *outputs.signature_lines(rec)]))

    @line_magic
    @magic_arguments()
    @argument("name", help="a registered model's name")
    @argument("path", help="path of the new ONNX file (quote it if it has spaces)")
    def mf_update(self, line: str) -> None:
        """Add a version of a registered model (the same bytes as its latest version add none).

        Example::

            %mf_update iris modelforge_jupyter/sample_models/iris_v2.onnx
        """
        with one_line_errors(self._hint) as refusal:
            args = self._parse(self.mf_update, line)
            refusal.model, refusal.path = args.name, args.path
            before = self.forge.get(args.name)
            rec = self.forge.update(args.name, _unquote(args.path))
            if rec.version == before.version:
                print(f"{rec.name} unchanged: v{rec.version} already has these bytes")
            else:
                versions = ", ".join(map(str, rec.versions))
                print("\n".join([f"✓ updated {rec.name} to v{rec.version} (versions {versions})",
                                 *outputs.signature_lines(rec)]))

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
            args = self._parse(self.mf_delete, line)
            refusal.model = args.name
            rec = self.forge.delete(args.name, args.version)
            what = "all versions" if args.version is None else f"v{args.version}"
            print(f"✓ deleted {rec.name} ({what}, id {rec.id})")


def parse_request(body: str, use_cache: bool, version: int | None) -> tuple[Any, bool, int | None]:
    """(input_data, use_cache, version) of a ``%%mf_predict`` cell: a JSON request body or the bare input data."""
    if not body.strip():
        raise InvalidInputError("the cell is empty: give the input data as JSON")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InvalidInputError(f"the cell is not valid JSON: {err}") from None
    if not (isinstance(data, dict) and INPUT_DATA in data and set(data) <= REQUEST_KEYS):
        return data, use_cache, version
    use_cache, version = request_options(data, use_cache, version)  # the wire format's rules (InvalidInputError)
    return data[INPUT_DATA], use_cache, version


def batch_sizes_option(text: str | None) -> list[int] | None:
    """``--batch-sizes`` read by the core's rule (``benchmark.parse_batch_sizes``); None when not given."""
    try:
        return None if text is None else parse_batch_sizes(text)
    except ValueError as err:
        raise UsageError(f"--batch-sizes {err}") from None


def skipped_sizes(plan: Any, asked: list[int] | None, default: bool) -> dict[int, str]:
    """``{batch size: why}`` of the sizes asked for (or the default ones) that the model cannot take."""
    from ..core.benchmark import BATCH_SIZES, fixed_batch

    fixed = fixed_batch(plan.record.inputs)
    sizes = asked if asked is not None else (BATCH_SIZES if default else ())
    if fixed is None:
        return {}
    why = f"{plan.record.name} v{plan.record.version} takes batch {fixed[0]} only ({fixed[1]})"
    return {b: why for b in sizes if b not in plan.batch_sizes}


def bench_budget(args: Any):
    from ..core.benchmark import Budget

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


def _pretty_prediction(result: PredictionResult, p: Any, cycle: bool) -> None:
    p.text(outputs.prediction_text(result))


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics, the ``PredictionResult`` display formatters (HTML table, text table) and the
    ``BenchResult`` one (HTML table of every figure: the core's result does not know its door's rendering)."""
    ipython.register_magics(ModelForgeMagics)
    formatters = ipython.display_formatter.formatters
    formatters["text/html"].for_type(PredictionResult, outputs.prediction_html)
    formatters["text/plain"].for_type(PredictionResult, _pretty_prediction)
    formatters["text/html"].for_type(BenchResult, dashboard.bench_result_html)


def unload_ipython_extension(ipython: Any) -> None:
    """Close the magics' ``ModelForge`` and remove the magics and formatters (``%unload_ext``, ``%reload_ext``)."""
    manager = ipython.magics_manager
    magics = manager.registry.pop(ModelForgeMagics.__name__, None)
    if magics is not None:
        magics.close()
        for kind, names in magics.magics.items():
            for name in names:
                manager.magics[kind].pop(name, None)
        if magics in ipython.configurables:
            ipython.configurables.remove(magics)
    for mime in ("text/html", "text/plain"):
        ipython.display_formatter.formatters[mime].pop(PredictionResult, None)
    ipython.display_formatter.formatters["text/html"].pop(BenchResult, None)
