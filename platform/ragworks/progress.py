"""What a run prints: Ray Data's bars in a terminal; elsewhere (a file, a CI log) a few lines per running
dataset (rows, rate, ETA: once it has run FIRST_S, then each time its run time doubles, at least every
MAX_INTERVAL_S) instead of Ray's INFO lines and multi-line progress blocks. A dataset done within FIRST_S
prints nothing; an hour-long one about a dozen lines.

Ray Data keeps writing everything to its session log (logs/ray-data/ray-data.log) either way;
`--verbose` brings its console lines back.
"""

from __future__ import annotations

import logging
import time
from functools import partial

FIRST_S, MAX_INTERVAL_S = 30.0, 300.0
STAGE = {"name": "", "verbose": False}  # the stage running now (the runner sets it): each line says whose rows
# these are; and whether --verbose asked for Ray's own lines


def train_log_level() -> str:
    """Ray Train's console level: its INFO lines (worker groups, every checkpoint) only with --verbose; the stage
    prints its own table of checkpoints."""
    return "INFO" if STAGE["verbose"] else "WARNING"


def configure(console, verbose: bool = False) -> None:
    """Quiet Ray Data's console logging (its file log stays), and outside a terminal print `OneLine`s."""
    STAGE["verbose"] = verbose
    if verbose:
        return
    quiet_console()
    if not console.is_terminal:
        from ray.data import DataContext

        from .ray_internals import quiet_data_workers, set_progress_manager

        quiet_data_workers()
        set_progress_manager(partial(_one_line_manager, console))
        # Ray Train hands this context to its workers and split coordinators: no bars from their datasets
        # either (`quiet_train_worker` does the rest); the driver's lines above report the stage.
        DataContext.get_current().enable_progress_bars = False


def quiet_console() -> None:
    """Ray Data's INFO lines off the console; its log files keep them."""
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)


def quiet_train_worker() -> None:
    """In a Ray Train worker of a run printing to a file: its datasets (the val slice, the train shard) print
    nothing, not even Ray's note that their bars are off; no INFO line per checkpoint saved or reported."""
    from ray.data import DataContext

    from .ray_internals import noop_progress_manager, quiet_train_reports, set_progress_manager

    if DataContext.get_current().enable_progress_bars:
        return  # a terminal, or --verbose
    quiet_console()
    quiet_train_reports()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)  # "Loading" / "Saving model to" a checkpoint
    noop = noop_progress_manager()
    set_progress_manager(lambda ctx, dataset_id, topology, verbose: noop(dataset_id, topology, False, verbose))


def _one_line_manager(console, ctx, dataset_id, topology, verbose_progress):
    from .ray_internals import input_buffer, logging_progress_manager, progress_total
    from .ray_internals import topology as operators

    InputDataBuffer = input_buffer()

    class OneLine(logging_progress_manager()):
        """Ray's own non-terminal progress manager (it keeps the counts), printing one line per interval."""

        started = time.monotonic()
        due = started + FIRST_S

        def refresh(self):
            now = time.monotonic()
            if now < self.due:
                return
            self.due = now + min(now - self.started, MAX_INTERVAL_S)
            # the furthest operator that has handed rows on: a sink hands on nothing until it is done
            moved = [(s.op, s.op.metrics.row_outputs_taken) for s in operators(self).values()
                     if not isinstance(s.op, InputDataBuffer) and s.op.metrics.row_outputs_taken]
            op, rows = moved[-1] if moved else (None, 0)
            if not rows:
                return  # nothing handed on yet: no line to say so
            total = (op.num_output_rows_total() if op is not None else None) or progress_total(self)
            rate = rows / max(now - self.started, 1e-9)
            eta = f", ETA {(total - rows) / rate:,.0f} s" if total and rate > 0 and total > rows else ""
            where = f" out of {op.name}" if op is not None else ""
            console.print(f"  {STAGE['name'] or 'ray data'}: {rows:,}{f'/{total:,}' if total else ''} rows{where}, "
                          f"{rate:,.1f}/s, {now - self.started:,.0f} s{eta}", highlight=False, soft_wrap=True)

    return OneLine(dataset_id, topology, False, verbose_progress)


def table(title: str, *columns, **kwargs):
    """A stage's summary table: a rule under the header and no outer border, two lines fewer in a log."""
    from rich import box
    from rich.table import Table

    return Table(*columns, title=title, box=box.SIMPLE_HEAD, show_edge=False, **kwargs)
