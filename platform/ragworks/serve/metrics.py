"""The app's Prometheus metrics: Ray's metrics export (`ray.util.metrics`), which every Ray node serves.

Each replica records into Ray's metrics (aggregated per node by Ray's metrics agent, what Ray's Grafana
dashboards and Serve's own `ray_serve_*` metrics use); `GET /metrics` on the app hands back the replica's
node's export, cut to ragworks's and Serve's families, so an operator scrapes one URL on one machine. On a
cluster, scrape every node's metrics port instead (Ray writes a Prometheus service-discovery file:
`/tmp/ray/prom_metrics_service_discovery.json`). Ray reports to its agent every few seconds
(`metrics_report_interval_ms`), so counts move that much after the requests; its gauges keep a value only
for a while after it was set, so each replica sets its gauges again every second (`repeat`).
"""

from __future__ import annotations

import functools
import threading
import time
import urllib.request

LATENCY_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
FAMILIES = ("ray_ragworks_", "ray_serve_")


def repeat(report, every_s: float = 1.0) -> None:
    """`report()` every `every_s`, from a thread, for the life of the replica."""
    def loop() -> None:
        while True:
            report()
            time.sleep(every_s)
    threading.Thread(target=loop, name="ragworks-metrics", daemon=True).start()


class ApiMetrics:
    """Requests by route and status, their latency, and the requests in flight, of one API replica."""

    def __init__(self, in_flight):
        """`in_flight()`: the requests the replica is answering now (its `Busy` count)."""
        from ray.util.metrics import Counter, Gauge, Histogram

        self.requests = Counter("ragworks_requests_total", "requests answered, by route and status",
                                tag_keys=("route", "status"))
        self.latency = Histogram("ragworks_request_seconds", "time to the answer (a stream: to its first byte)",
                                 boundaries=LATENCY_S, tag_keys=("route",))
        self.in_flight = Gauge("ragworks_requests_in_flight", "requests this API replica is answering")
        repeat(lambda: self.in_flight.set(in_flight()))

    def record(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(1, tags={"route": route, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route})


def measured(route: str):
    """A route method recorded in `self.metrics` (Serve's class ingress drops app middleware, so each
    route says so itself)."""
    from fastapi import HTTPException
    from fastapi.exceptions import RequestValidationError

    def wrap(method):
        @functools.wraps(method)
        async def route_method(self, *args, **kwargs):
            start, status = time.perf_counter(), 500
            try:
                out = await method(self, *args, **kwargs)
                status = getattr(out, "status_code", 200)
                return out
            except HTTPException as err:
                status = err.status_code
                raise
            except RequestValidationError:
                status = 422
                raise
            finally:
                self.metrics.record(route, status, time.perf_counter() - start)
        return route_method
    return wrap


def report_generator(stats, every_s: float = 1.0) -> None:
    """A generator replica's tokens and requests into Ray's metrics, from a thread, every `every_s`."""
    from ray.util.metrics import Counter, Gauge

    tokens = Counter("ragworks_generated_tokens_total", "tokens generated for live requests")
    running = Gauge("ragworks_generator_running", "chat requests generating on this replica")
    queued = Gauge("ragworks_generator_queued", "chat requests waiting for the next batch on this replica")

    sent = 0

    def report() -> None:
        nonlocal sent
        now = stats()
        if now["generated_tokens"] > sent:
            tokens.inc(now["generated_tokens"] - sent)
            sent = now["generated_tokens"]
        running.set(now["running"])
        queued.set(now["queued"])
    repeat(report, every_s)


class IndexMetrics:
    def __init__(self):
        from ray.util.metrics import Gauge

        self.version = Gauge("ragworks_index_version", "the table version a retriever replica searches")
        self.rows = Gauge("ragworks_index_rows", "rows of the table version a retriever replica searches")
        self.now: tuple[int, int] | None = None
        repeat(self.report)

    def record(self, version: int, rows: int) -> None:
        self.now = (version, rows)
        self.report()

    def report(self) -> None:
        if self.now is not None:
            self.version.set(self.now[0])
            self.rows.set(self.now[1])


def exposition() -> str:
    """This node's Ray metrics in Prometheus's text format, ragworks's and Serve's families only."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["NodeID"] == here)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    keep = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") else line
        if name.startswith(FAMILIES):
            keep.append(line)
    return "\n".join(keep) + "\n"
