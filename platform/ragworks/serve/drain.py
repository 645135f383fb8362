"""Graceful shutdown of `ragworks serve`: refuse new requests, finish the ones in flight, then stop.

Serve stops every deployment of an application at once, so an ingress request
still in flight would find its embedder or generator gone. Instead the CLI,
on SIGTERM or SIGINT, raises a flag (a named actor) that the ingress replicas
read at most every `CHECK_S`; from then on they answer 503 "shutting down"
(with `Connection: close`; `/healthz` too, so a load balancer stops sending),
while the CLI waits, bounded, until Serve's own count of each replica's ongoing
requests (streams included) is zero and no request has been refused for
`QUIET_S`, and only then shuts Serve down.

The quiet period is there because Serve's proxy keeps its socket open until it
is killed: a request that reaches it after the drain ends is cut, not refused.
Sampling the in-flight count alone ended a drain in a gap of a burst of refused
requests (the SIGTERM test: 6 of 200 requests cut); clients told to go away stop
within a second, and a load balancer within its health-check interval.
"""

from __future__ import annotations

import time

import ray

NAME, NAMESPACE = "ragworks-drain", "ragworks"
CHECK_S = 0.2
QUIET_S = 1.0


@ray.remote(num_cpus=0)
class DrainFlag:
    def __init__(self):
        self.on, self.last = False, time.monotonic()

    def raise_(self) -> None:
        self.on, self.last = True, time.monotonic()

    def is_on(self) -> bool:
        return self.on

    def refused(self) -> None:
        self.last = time.monotonic()

    def quiet_s(self) -> float:
        """Seconds since the flag went up or a replica last refused a request, by this actor's clock."""
        return time.monotonic() - self.last


def create_flag():
    """The flag, created by the process that will raise it (`ragworks serve`)."""
    return DrainFlag.options(name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()


class DrainWatch:
    """The ingress's view of the flag: no flag (an app started by `serve run`) is never draining."""

    def __init__(self):
        self.flag, self.on, self.checked, self.told = None, False, 0.0, 0.0

    async def draining(self) -> bool:
        now = time.monotonic()
        if self.on or now - self.checked < CHECK_S:
            return self.on
        self.checked = now
        try:
            self.flag = self.flag or ray.get_actor(NAME, namespace=NAMESPACE)
            self.on = await self.flag.is_on.remote()
        except (ValueError, ray.exceptions.RayActorError):  # no flag: not under `ragworks serve`
            self.flag = None
        return self.on

    def refused(self) -> None:
        """A request was refused: the drain's quiet period starts again (told at most every CHECK_S / 2, a
        message that is not waited for)."""
        now = time.monotonic()
        if self.flag is not None and now - self.told >= CHECK_S / 2:
            self.told = now
            self.flag.refused.remote()


def ongoing(app: str, deployment: str) -> int:
    """Requests the deployment's replicas are handling now, by Serve's own count."""
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and f"{app}#{deployment}#" in a["name"]]
    counts = []
    for a in replicas:
        try:
            counts.append(ray.get(ray.get_actor(a["name"], namespace="serve").get_num_ongoing_requests.remote(),
                                  timeout=5))
        except (ray.exceptions.RayError, ValueError):
            continue  # a replica gone is a replica with nothing in flight
    return sum(counts)


def drain(flag, app: str = "rag", deployment: str = "RagAPI", timeout_s: float = 30.0,
          quiet_s: float = QUIET_S) -> tuple[bool, float]:
    """(whether every request in flight finished within `timeout_s`, seconds waited). Refusals that go on for
    all of `timeout_s` (a client that ignores the 503s) end the wait too, once nothing is in flight."""
    start = time.monotonic()
    ray.get(flag.raise_.remote())
    time.sleep(2 * CHECK_S)  # every replica has read the flag: nothing new is admitted after this
    idle = False
    while time.monotonic() - start < timeout_s:
        idle = ongoing(app, deployment) == 0
        if idle and ray.get(flag.quiet_s.remote()) >= quiet_s:
            break
        time.sleep(0.1)
    return idle, time.monotonic() - start
