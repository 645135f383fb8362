"""What a run prints: Ray Data's bars in a terminal; elsewhere (a file, a CI log) one line per running
dataset every few seconds (rows, rate, ETA) instead of Ray's INFO lines and multi-line progress blocks.

Ray Data keeps writing everything to its session log (logs/ray-data/ray-data.log) either way;
`--verbose` brings its console lines back.
"""

from __future__ import annotations

import logging
import time
from functools import partial

INTERVAL_S = 10.0
STAGE = {"name": ""}  # the stage running now (the runner sets it): each line says whose rows these are


def configure(console, verbose: bool = False) -> None:
    """Quiet Ray Data's console logging (its file log stays), and outside a terminal print `OneLine`s."""
    if verbose:
        return
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)
    if not console.is_terminal:
        from ray.data._internal.execution import streaming_executor

        streaming_executor.get_progress_manager = partial(_one_line_manager, console)


def _one_line_manager(console, ctx, dataset_id, topology, verbose_progress):
    from ray.data._internal.execution.operators.input_data_buffer import InputDataBuffer
    from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

    class OneLine(LoggingExecutionProgressManager):
        """Ray's own non-terminal progress manager (it keeps the counts), printing one line per interval."""

        started = time.monotonic()
        last = started

        def refresh(self):
            now = time.monotonic()
            if now - self.last < INTERVAL_S:
                return
            self.last = now
            # the furthest operator that has handed rows on: a sink hands on nothing until it is done
            moved = [(s.op, s.op.metrics.row_outputs_taken) for s in self._topology.values()
                     if not isinstance(s.op, InputDataBuffer) and s.op.metrics.row_outputs_taken]
            op, rows = moved[-1] if moved else (None, 0)
            total = (op.num_output_rows_total() if op is not None else None) or self._global_progress_metric.total
            rate = rows / max(now - self.started, 1e-9)
            eta = f", ETA {(total - rows) / rate:,.0f} s" if total and rate > 0 and total > rows else ""
            where = f" out of {op.name}" if op is not None else ""
            console.print(f"  {STAGE['name'] or 'ray data'}: {rows:,}{f'/{total:,}' if total else ''} rows{where}, "
                          f"{rate:,.1f}/s, {now - self.started:,.0f} s{eta}", highlight=False)

    return OneLine(dataset_id, topology, False, verbose_progress)
