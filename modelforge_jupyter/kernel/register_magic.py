"""What ``%mf_register`` and ``%mf_update`` do once their line is parsed: find the model (a variable of the notebook,
else a path), evaluate ``--sample``, call the API and print the new version's signature (and conversion), then show
its preparation (``--quantize``, ``--outputs``, measured unless ``--no-measure``) as a table (``preparation``).

A MODEL argument that names a variable of the caller's scope is that object (a fitted estimator, ONNX bytes, an
``onnx.ModelProto``, a path string); otherwise it is a path. A name that is both a variable and an existing file is
refused, asking for ``./name`` to mean the file.
"""

from __future__ import annotations

import os
from typing import Any

from IPython.core.error import UsageError

from IPython.core.magic_arguments import argument
from IPython.display import display

from . import model_list
from .arguments import evaluate, unquote
from .preparation import PreparationTable


def preparation_options(magic: Any) -> Any:
    """Add ``%mf_register`` / ``%mf_update``'s preparation options to ``magic`` (a ``magic_arguments`` method):
    ``--quantize MODE``, ``--outputs A,B`` and ``--no-measure`` (``core.prepare``)."""
    for option in (
        argument("--no-measure", action="store_true", help="with --quantize / --outputs: skip p50 latency at batch 1 "
                 "and 1000 before and after"),
        argument("--outputs", metavar="A,B", default=None, help="keep only these outputs (names separated by commas)"),
        argument("--quantize", metavar="MODE", default=None,
                 help="'dynamic': int8 MatMul/Gemm weights, checked on --sample"),
    ):
        magic = option(magic)
    return magic


def model_argument(shell: Any, text: str, local_ns: dict | None) -> tuple[Any, bool]:
    """(the model MODEL names, whether it is a variable): the variable's value when ``text`` names one in the caller's
    scope (``local_ns`` over the notebook's namespace), else ``text`` unquoted as a path. Raises ``UsageError`` when
    ``text`` is both a variable and an existing file."""
    path = unquote(text)
    scopes = [ns for ns in (local_ns, shell.user_ns) if ns is not None]
    if not text.isidentifier() or not any(text in ns for ns in scopes):
        return path, False
    if os.path.exists(text):
        raise UsageError(f"{text!r} is both a variable and a file here: write ./{text} for the file, or rename the "
                         "variable")
    return next(ns[text] for ns in scopes if text in ns), True


def register(magics: Any, args: Any, refusal: Any, local_ns: dict | None, update: bool) -> None:
    """Run ``%mf_register`` (``update`` False) or ``%mf_update`` with the parsed ``args`` (``name``, ``model``,
    ``sample``, ``zipmap``, ``quantize``, ``outputs``, ``no_measure``) for ``magics`` (a ``ModelForgeMagics``), print
    the outcome and display the preparation table (latency measured when a step is asked, unless ``no_measure``). ``refusal`` gets the name, and the path for a file (for the
    next-step hint). Raises ``UsageError`` for a bad line, ``ExpressionError`` for a ``--sample`` that fails,
    ``ModelForgeError`` for a refused model (a bad ``--quantize`` / ``--outputs`` value included)."""
    model, is_variable = model_argument(magics.shell, args.model, local_ns)
    refusal.model, refusal.path = args.name, None if is_variable else args.model
    sample = evaluate(magics.shell, args.sample, local_ns) if args.sample is not None else None
    forge = magics.forge
    steps = args.quantize is not None or args.outputs is not None  # measured by default when there is an "after"
    options = dict(sample=sample, zipmap=args.zipmap, quantize=args.quantize, outputs=args.outputs,
                   measure=steps and not args.no_measure)
    if not update:
        rec = forge.register(args.name, model, **options)
        print("\n".join([f"✓ registered {rec.name} v{rec.version}", *record_lines(rec)]))
    else:
        before = forge.get(args.name)
        rec = forge.update(args.name, model, **options)
        if rec.version == before.version:
            print(f"{rec.name} unchanged: v{rec.version} already has these bytes")
            return
        versions = ", ".join(map(str, rec.versions))
        print("\n".join([f"✓ updated {rec.name} to v{rec.version} (versions {versions})", *record_lines(rec)]))
    if rec.preparation:
        display(PreparationTable(rec.preparation))


def record_lines(rec: Any) -> list[str]:
    """The lines under a register/update line: the signature, then for a converted version
    ``  converted by skl2onnx 1.20.0 from sklearn.pipeline.Pipeline; verified on 50 rows: max abs error 3.1e-05,
    max rel error 1.2e-07 (float32 rtol 0.0001, atol 0.0001)``."""
    lines = model_list.signature_lines(rec)
    c = rec.conversion
    if c:
        tol = ", ".join(f"{dtype} rtol {t['rtol']:g}, atol {t['atol']:g}" for dtype, t in c["tolerance"].items())
        lines.append(f"  converted by {c['converter']} {c['converter_version']} from {c['source']}; verified on "
                     f"{c['sample_rows']} rows: max abs error {c['max_abs_error']:.2g}, max rel error "
                     f"{c['max_rel_error']:.2g}" + (f" ({tol})" if tol else " (labels only, exact)"))
    return lines
