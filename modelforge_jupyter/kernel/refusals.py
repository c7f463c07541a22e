"""How a magic shows a refused request: one line on stderr, ended by the next step when there is one.

A refusal (``ModelForgeError``, IPython's ``UsageError`` for bad options, ``ExpressionError`` for an expression that
fails) prints ``Type: message`` and no traceback; the magic returns None and changes nothing. The next step is in
magic syntax (the HTTP message stays free of it): close names of a model that is not registered, the exact
``%mf_register`` / ``%mf_update`` line for a file given with a name that is new / already registered.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from IPython.core.error import UsageError

from ..core.errors import ModelExistsError, ModelForgeError, ModelNotFoundError
from .arguments import ExpressionError


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


def next_step(err: ModelForgeError, refusal: Refusal, models: Callable[[], Sequence[Any]]) -> str:
    """The next step after ``err``, or "": the exact ``%mf_update`` line for a name already registered, close names
    (or the ``%mf_register`` line) for a model that is not. ``models()`` lists the registry's records; when it fails
    (the registry is down) the refusal stands alone."""
    if isinstance(err, ModelExistsError) and refusal.model and refusal.path:
        return f"to add this file as its next version: %mf_update {refusal.model} {refusal.path}"
    if not isinstance(err, ModelNotFoundError) or not refusal.model:
        return ""
    try:
        records = models()
    except ModelForgeError:
        return ""
    if any(refusal.model in (r.name, r.id) for r in records):
        return ""  # the model is there (a missing version: the message lists the versions)
    names = [r.name for r in records]
    if refusal.path and not close_names(refusal.model, names):  # %mf_update of a new name
        return f"to register it: %mf_register {refusal.model} {refusal.path}"
    return not_registered_hint(refusal.model, names)


def close_names(typed: str, names: Sequence[str]) -> list[str]:
    """Up to 3 registered names like ``typed`` (``difflib.get_close_matches``, similarity >= 0.6), best first."""
    return difflib.get_close_matches(typed, names, n=3, cutoff=0.6)


def not_registered_hint(typed: str, names: Sequence[str]) -> str:
    """The next step after ``model 'X' is not registered``: close names, then where the list is."""
    close = close_names(typed, names)
    if close:
        return f"did you mean {' or '.join(close)}? %mf_models lists the registered models"
    if names:
        return "%mf_models lists the registered models"
    return "no model is registered yet: %mf_register NAME PATH adds one"
