"""``%mf_stats``: what the Jupyter server and this kernel are serving, live. The readings are the core's
(``live_stats``); what the magic shows is ``stats_view``'s."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import magic_arguments

from . import stats_view
from .arguments import parse_line
from .refusals import one_line_errors


@magics_class
class StatsMagics(Magics):
    """``%mf_stats``, with the ``ModelForgeMagics`` loaded beside it: its ModelForge, its server and widget traits."""

    @property
    def settings(self) -> Any:
        """The ``ModelForgeMagics`` (its ``forge``, ``server_url``, ``server_token``, ``widgets``)."""
        return self.shell.magics_manager.registry["ModelForgeMagics"]

    @line_magic
    @magic_arguments()
    @stats_view.options
    def mf_stats(self, line: str) -> stats_view.StatsDashboard | None:
        """Show live what is served: requests/s, p50/p99 latency split into queue / compute / cache, the cache hit
        ratio and loaded sessions, for the Jupyter server this kernel runs under (its ``/metrics``) and for this
        kernel's own predictions, each reading over the last ``--interval`` seconds.

        In a widget frontend a dashboard refreshes (a plot and a line per source) until its Stop button, ``.stop()``
        on the returned object, or ``--seconds``; the cell returns at once. Elsewhere (or ``--text``) a line per
        source is printed every interval for ``--seconds`` (default 10). The server is found as for ``%mf_bench
        --http`` (``%config ModelForgeMagics.server_url``, env ``MODELFORGE_URL``, else the server this kernel runs
        under); without one only the kernel is shown.

        Examples::

            %mf_stats
            dash = %mf_stats iris --interval 2
            dash.stop()
            %mf_stats iris --text --seconds 5
        """
        magics = self.settings
        with one_line_errors(magics._hint) as refusal:
            refusal.model = (args := parse_line(self.mf_stats, line)).model
            return stats_view.run(magics, args)
