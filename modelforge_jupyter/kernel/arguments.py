"""How the magics read their line and cell: options, expressions and a ``%%mf_predict`` cell's JSON.

Every magic line is read the same way: a ``# comment`` (a ``#`` outside a string literal, as Python reads it) is
dropped, the rest is split as a shell would (quotes group), options must be spelt in full (no argparse abbreviation:
``--vers 1`` is refused, not taken for ``--version 1``) and given once, and expressions are evaluated in the caller's
scope: the notebook's namespace, or a function's locals over it when the magic runs inside a function. A line that
breaks a rule raises IPython's ``UsageError``; an expression that fails raises ``ExpressionError``.
"""

from __future__ import annotations

import io
import tokenize
from argparse import ArgumentTypeError
from typing import Any

import orjson
from IPython.core.error import UsageError
from IPython.utils.process import arg_split

from ..core.errors import InvalidInputError, ModelForgeError
from ..core.protocol import INPUT_DATA, USE_CACHE, VERSION, request_options, version_from_text

REQUEST_KEYS = {INPUT_DATA, USE_CACHE, VERSION}  # a cell with other keys is the bare input data


class ExpressionError(Exception):
    """The user's expression failed to evaluate; ``str`` is already ``Type: message``."""


def parse_line(magic: Any, line: str) -> Any:
    """The ``argparse.Namespace`` of ``line`` for ``magic`` (a method decorated with ``magic_arguments``): comment
    dropped, a trailing ``;`` (a silenced cell) too, no abbreviation, no option twice. Raises ``UsageError``."""
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


def unquote(token: str) -> str:
    """``token`` without the quotes around it, if any (a path argument given as ``'my model.onnx'``)."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


def evaluate(shell: Any, expr: str, local_ns: dict | None = None) -> Any:
    """``expr`` evaluated in the caller's scope (``local_ns`` from ``@needs_local_scope``): the notebook's namespace,
    or a function's locals over it (as globals, so a comprehension or lambda in ``expr`` sees them). Raises
    ``ExpressionError`` when it fails."""
    user_ns = shell.user_ns
    try:
        if local_ns is None or local_ns is user_ns:
            return shell.ev(expr)
        return eval(expr, {**user_ns, **local_ns})  # noqa: S307: the user's own expression, as shell.ev does
    except Exception as err:
        raise ExpressionError(f"{type(err).__name__}: {err} (evaluating {expr!r})") from None


def parse_request(body: str, use_cache: bool, version: int | None) -> tuple[Any, bool, int | None]:
    """(input_data, use_cache, version) of a ``%%mf_predict`` cell: a JSON request body or the bare input data.
    Raises ``InvalidInputError`` (400) when the cell is empty, is not JSON, or a request field is invalid."""
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
