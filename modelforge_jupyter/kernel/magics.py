"""IPython magics over the ``ModelForge`` API: ``%mf_predict``, ``%mf_bench``, ``%mf_models``, ``%mf_register``...

The extension's hooks (``%load_ext modelforge_jupyter`` calls ``load_ipython_extension``, ``%unload_ext`` the other)
and the door's public names. The kernel door is split by concern:

- ``model_magics``: ``ModelForgeMagics``, its settings (every setting of the core's table, ``%config
  ModelForgeMagics.<setting>``) and the magics, each docstring being the user's ``%mf_predict?`` help;
- ``arguments``: how a magic line and a ``%%mf_predict`` cell are read;
- ``refusals``: a refused request as one line on stderr, with the next step;
- ``bench_magic``: what ``%mf_bench`` does once its line is parsed;
- ``stats_magic`` and ``stats_view``: ``%mf_stats`` and its live dashboard;
- ``score_magic`` and ``score_view``: ``%mf_score`` and a scoring job's live progress bar;
- ``outputs`` and ``dashboard``: what the magics show.
"""

from __future__ import annotations

from typing import Any

from ..core.benchmark import BenchResult
from ..core.records import PredictionResult
from ..core.scoring import ScoreJob
from . import dashboard, outputs, score_view
from .arguments import parse_request  # noqa: F401  (public: the %%mf_predict cell's reading)
from .model_magics import ModelForgeMagics
from .score_magic import ScoreMagics
from .stats_magic import StatsMagics

__all__ = ["ModelForgeMagics", "ScoreMagics", "StatsMagics", "load_ipython_extension", "parse_request",
           "unload_ipython_extension"]


def _pretty_prediction(result: PredictionResult, p: Any, cycle: bool) -> None:
    p.text(outputs.prediction_text(result))


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics, the ``PredictionResult`` display formatters (HTML table, text table) and the
    ``BenchResult`` one (HTML table of every figure: the core's result does not know its door's rendering), and
    a ``ScoreJob``'s display (``score_view.show_job``: a live progress bar)."""
    ipython.register_magics(ModelForgeMagics)
    ipython.register_magics(StatsMagics)
    ipython.register_magics(ScoreMagics)
    ipython.display_formatter.ipython_display_formatter.for_type(ScoreJob, score_view.show_job)
    formatters = ipython.display_formatter.formatters
    formatters["text/html"].for_type(PredictionResult, outputs.prediction_html)
    formatters["text/plain"].for_type(PredictionResult, _pretty_prediction)
    formatters["text/html"].for_type(BenchResult, dashboard.bench_result_html)


def unload_ipython_extension(ipython: Any) -> None:
    """Close the magics' ``ModelForge`` and remove the magics and formatters (``%unload_ext``, ``%reload_ext``)."""
    manager = ipython.magics_manager
    for cls in (ModelForgeMagics, StatsMagics, ScoreMagics):
        magics = manager.registry.pop(cls.__name__, None)
        if magics is None:
            continue
        if isinstance(magics, ModelForgeMagics):
            magics.close()
        for kind, names in magics.magics.items():
            for name in names:
                manager.magics[kind].pop(name, None)
        if magics in ipython.configurables:
            ipython.configurables.remove(magics)
    ipython.display_formatter.ipython_display_formatter.pop(ScoreJob, None)
    for mime in ("text/html", "text/plain"):
        ipython.display_formatter.formatters[mime].pop(PredictionResult, None)
    ipython.display_formatter.formatters["text/html"].pop(BenchResult, None)
