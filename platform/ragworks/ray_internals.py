"""Every private name of Ray that ragworks uses, here and nowhere else, with what it is for.

Ray Data has no public hook for a progress line per dataset or for a callback on each scheduling step, and
`ray._private` holds the token check `ray job` makes. Such names move between Ray releases without notice:
`missing()` lists those this Ray lacks, and `tests/test_ray_internals.py` fails naming them, so an upgrade
says what broke instead of a stage printing nothing or spinning a core.
"""

from __future__ import annotations

import importlib
import inspect
import os

# (module, attribute, what ragworks does with it)
NAMES = [
    ("ray.data._internal.execution.streaming_executor", "get_progress_manager",
     "replaced by progress.py: one progress line per dataset outside a terminal, none in a training worker"),
    ("ray.data._internal.progress.base_progress", "NoopExecutionProgressManager",
     "the progress manager of a training worker's datasets (progress.quiet_train_worker)"),
    ("ray.data._internal.progress.logging_progress", "LoggingExecutionProgressManager",
     "the base of progress.py's one-line manager: it keeps the counts"),
    ("ray.data._internal.execution.operators.input_data_buffer", "InputDataBuffer",
     "the input operator, which the progress line skips"),
    ("ray.data._internal.execution.execution_callback", "ExecutionCallback",
     "runtime.IdleBackoff: a scheduling step with no task running sleeps instead of spinning"),
    ("ray.train.v2._internal.execution.controller.placement_group_cleaner", "PlacementGroupCleaner",
     "its logger (CLEANER_LOGGER) is set to ERROR in an embedded Ray's workers (quiet_worker)"),
    ("ray.train.v2._internal.execution.context", "TrainContext",
     "its per-report INFO line, quieted in a training worker (quiet_train_reports)"),
    ("ray.data._internal.logging", "DEFAULT_CONFIG",
     "Ray Data's logging config, copied with its console at WARNING for an embedded Ray's workers "
     "(quiet_data_workers): a training run's split coordinator prints no INFO line per dataset"),
    ("ray._private.ray_logging", "global_worker_stdstream_dispatcher",
     "the driver's printer of worker output, wrapped to drop Ray's ACTOR_ARGS_NOTICE (drop_actor_args_notice)"),
    ("ray._private.authentication.authentication_token_setup", "maybe_enable_token_auth_if_token_available",
     "submission.use_token_if_any: send Ray's token as `ray job` does (absent before token auth: skipped)"),
]
OPTIONAL = {"maybe_enable_token_auth_if_token_available"}
# Ray's logger for token authentication: a new local Ray turns it on by default and says so at WARNING, on
# every start; ragworks keeps the default (a token) and not the line
TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
# attributes read off Ray's objects: (module, class, attribute as its source sets it)
ATTRIBUTES = [
    ("ray.data._internal.execution.streaming_executor", "StreamingExecutor", "self._topology"),
    ("ray.data._internal.progress.logging_progress", "LoggingExecutionProgressManager", "self._topology"),
    ("ray.data._internal.progress.logging_progress", "LoggingExecutionProgressManager",
     "self._global_progress_metric"),
    ("ray.data._internal.execution.execution_callback", "ExecutionCallback", "def on_execution_step"),
    ("ray._private.ray_logging", "WorkerStandardStreamDispatcher", "self.handlers"),
    ("ray._private.ray_logging", "WorkerStandardStreamDispatcher", "self._lock"),
    ("ray.data._internal.execution.interfaces.physical_operator", "PhysicalOperator", "def get_active_tasks"),
    ("ray.data._internal.execution.interfaces.physical_operator", "PhysicalOperator", "def num_output_rows_total"),
    ("ray.data._internal.execution.interfaces.op_runtime_metrics", "OpRuntimeMetrics", "row_outputs_taken"),
]
PROGRESS_MANAGER_ARGS = ["ctx", "dataset_id", "topology", "verbose_progress"]


def name(module: str, attribute: str):
    return getattr(importlib.import_module(module), attribute)


def noop_progress_manager():
    return name("ray.data._internal.progress.base_progress", "NoopExecutionProgressManager")


def logging_progress_manager():
    return name("ray.data._internal.progress.logging_progress", "LoggingExecutionProgressManager")


def set_progress_manager(factory) -> None:
    """`factory(ctx, dataset_id, topology, verbose_progress)` makes every later dataset's progress manager."""
    importlib.import_module("ray.data._internal.execution.streaming_executor").get_progress_manager = factory


def input_buffer():
    return name("ray.data._internal.execution.operators.input_data_buffer", "InputDataBuffer")


def execution_callback():
    return name("ray.data._internal.execution.execution_callback", "ExecutionCallback")


def topology(executor_or_manager) -> dict:
    """The operators of a running dataset and their states, from its executor or progress manager."""
    return getattr(executor_or_manager, "_topology", None) or {}


def progress_total(manager) -> int | None:
    return manager._global_progress_metric.total


def token_setup():
    """Ray's token check, or None for a Ray without token authentication."""
    try:
        return name("ray._private.authentication.authentication_token_setup",
                    "maybe_enable_token_auth_if_token_available")
    except (ImportError, AttributeError):
        return None


def quiet_token_notice() -> None:
    """No WARNING line that a new local Ray uses token authentication, Ray's default (errors still show)."""
    import logging

    logging.getLogger(TOKEN_LOGGER).setLevel(logging.ERROR)


# Ray Train's placement-group cleaner asks the State API once a second whether the trainer still lives; an
# embedded Ray starts without the dashboard that serves that API, so it warned every second of training
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
# deprecation notices raised inside libraries, not by ragworks's calls: Ray Train's own DatasetManager, and a
# transformers property something in loading or generation reads
LIBRARY_DEPRECATIONS = (r"`ExecutionOptions\.exclude_resources` is deprecated",
                        r"`is_gradient_checkpointing` is deprecated")


def quiet_worker() -> None:
    """Every worker process of an embedded Ray (its `worker_process_setup_hook`): no cleaner warning, no
    library deprecation notice; other warnings and every error still reach the driver."""
    import logging
    import warnings

    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)
    # Ray Train's placement-group cleaner asks the State API with no address: with a second Ray on the machine
    # (another job, a test suite) that is "Found multiple active Ray instances" and a traceback. Name this one.
    try:
        import ray

        if ray.is_initialized():
            os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - a quieter log is not worth failing a worker's start
        pass


# Ray's notice, once per process, that an actor's constructor arguments sit in the object store: Ray Data's
# pools and Ray Train's controller always put them there (ray-project/ray#53727); nothing ragworks passes
ACTOR_ARGS_NOTICE = "has constructor arguments in the object store and max_restarts > 0"
# Ray Data's notice that progress bars are off, which ragworks turned off on purpose (a run printing to a file)
DROPPED_DATA_NOTICES = ("Progress bars disabled.",)


class DroppedDataNotices:
    """A logging filter for Ray Data's console in an embedded Ray's workers (quiet_data_workers)."""

    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith(DROPPED_DATA_NOTICES)


def drop_actor_args_notice() -> None:
    """After ray.init: worker output the driver prints, less Ray's ACTOR_ARGS_NOTICE lines (the worker's log
    file keeps them; every other line, errors included, is printed as before). The driver's own copy comes
    from Ray's C++ log, which no Python filter reaches."""
    dispatcher = name("ray._private.ray_logging", "global_worker_stdstream_dispatcher")

    def without_notice(handler):
        def printed(data: dict) -> None:
            lines = [line for line in data.get("lines", []) if ACTOR_ARGS_NOTICE not in line]
            if lines:
                handler({**data, "lines": lines})
        return printed

    with dispatcher._lock:
        dispatcher.handlers = [(n, without_notice(h) if n == "ray_print_logs" else h) for n, h in dispatcher.handlers]


def quiet_data_workers() -> None:
    """Before an embedded Ray starts, for a run printing to a file: its workers' Ray Data loggers (a training
    run's split coordinators: "Starting execution of Dataset ...", its plan, "execution finished") keep
    everything in the session's ray-data.log and print only warnings, through Ray Data's own
    RAY_DATA_LOGGING_CONFIG (a copy of its default config)."""
    import copy
    import hashlib
    import tempfile

    import yaml

    if os.environ.get("RAY_DATA_LOGGING_CONFIG"):
        return  # the user's own
    config = copy.deepcopy(name("ray.data._internal.logging", "DEFAULT_CONFIG"))
    config["handlers"]["console"]["level"] = "WARNING"
    config.setdefault("filters", {})["ragworks_dropped"] = {"()": f"{__name__}.DroppedDataNotices"}
    config["handlers"]["console"].setdefault("filters", []).append("ragworks_dropped")
    text = yaml.safe_dump(config)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"ragworks-ray-data-logging-{digest}.yaml")
    if not os.path.exists(path):  # one file per config, shared by every run on the machine
        with open(f"{path}.{os.getpid()}", "w") as f:
            f.write(text)
        os.replace(f"{path}.{os.getpid()}", path)
    os.environ["RAY_DATA_LOGGING_CONFIG"] = path


def quiet_train_reports() -> None:
    """A Ray Train worker's INFO line per reported result: its logger is named by its file's path
    (`logging.getLogger(__file__)`), so Ray Train's own LoggingConfig does not reach it."""
    import importlib.util
    import logging

    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


WORKER_SETUP = {"worker_process_setup_hook": "ragworks.ray_internals.quiet_worker"}


def missing() -> list[str]:
    """What of the above this Ray lacks, each as 'module.name: what it is for'."""
    gone = []
    for module, attribute, why in NAMES:
        try:
            name(module, attribute)
        except (ImportError, AttributeError):
            if attribute not in OPTIONAL:
                gone.append(f"{module}.{attribute}: {why}")
    for module, cls, attribute in ATTRIBUTES:
        try:
            source = "".join(inspect.getsource(c) for c in name(module, cls).__mro__ if c.__module__.startswith("ray"))
        except (ImportError, AttributeError):
            continue  # reported above
        if attribute not in source:
            gone.append(f"{module}.{cls}: no {attribute} any more")
    try:
        args = list(inspect.signature(name("ray.data._internal.execution.streaming_executor",
                                           "get_progress_manager")).parameters)
        if args != PROGRESS_MANAGER_ARGS:
            gone.append(f"get_progress_manager takes {args}, not {PROGRESS_MANAGER_ARGS}")
    except (ImportError, AttributeError):
        pass
    return gone
