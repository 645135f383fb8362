"""Stop the Ray you started, and only that one.

`ray stop` (with or without `--force`) stops every Ray process of the user on the
machine: on a shared host it takes down other people's clusters and jobs. Every
process of a Ray node names its temp dir on its command line (`--temp-dir`,
`--session-dir`, `--log_dir` under it), so a node started with a temp dir of its
own can be found by it: `record` writes the pids (and start times, so a reused
pid is never touched) of the processes under one temp dir to a file right after
`ray start`, and `stop` ends those and their children, SIGTERM first as `ray
stop` does, SIGKILL for what is left after a grace period.

    python -m ragworks.ray_processes record PIDFILE TEMP_DIR
    python -m ragworks.ray_processes stop PIDFILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil

GRACE_S = 10.0


def under(temp_dir: str) -> list[psutil.Process]:
    """The processes whose command line names `temp_dir` (a node's gcs_server, raylet, dashboard, monitors)."""
    root = str(Path(temp_dir).resolve())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(root in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def record(pidfile: str, temp_dir: str) -> int:
    """Add the processes under `temp_dir` to `pidfile`; the number recorded."""
    path = Path(pidfile)
    known = json.loads(path.read_text()) if path.exists() else []
    pids = {p["pid"] for p in known}
    for proc in under(temp_dir):
        if proc.pid not in pids:
            known.append({"pid": proc.pid, "started": proc.create_time()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known))
    return len(known)


def _alive(entries: list[dict]) -> list[psutil.Process]:
    procs = []
    for entry in entries:
        try:
            proc = psutil.Process(entry["pid"])
            if abs(proc.create_time() - entry["started"]) < 1e-3:  # the same process, not a reused pid
                procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    return procs


def terminate(procs: list[psutil.Process], grace_s: float = GRACE_S) -> int:
    """SIGTERM `procs` and their children, SIGKILL what is left after `grace_s`; the number stopped."""
    everything = set(procs)
    for proc in procs:
        try:
            everything.update(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    for proc in everything:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(list(everything), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    return len(everything)


def stop(pidfile: str, grace_s: float = GRACE_S) -> int:
    """Stop the processes `pidfile` recorded (and their children); the file goes. The number stopped."""
    path = Path(pidfile)
    if not path.exists():
        return 0
    stopped = terminate(_alive(json.loads(path.read_text())), grace_s)
    path.unlink()
    return stopped


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "record":
        print(f"recorded {record(argv[1], argv[2])} Ray processes in {argv[1]}")
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        print(f"stopped {stop(argv[1])} Ray processes recorded in {argv[1]}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
