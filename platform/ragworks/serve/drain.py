"""Graceful shutdown of `ragworks serve`: refuse new requests, finish the ones in flight, then stop.

Serve stops every deployment of an application at once, so an ingress request
still in flight would find its embedder or generator gone. Instead the CLI,
on SIGTERM or SIGINT, raises a flag (a named actor) that the ingress replicas
read at most every `CHECK_S`; from then on they answer 503 "shutting down"
(with `Connection: close`), while the CLI waits for Serve's own count of each
replica's ongoing requests (streams included) to reach zero, bounded, and only
then shuts Serve down.
"""

from __future__ import annotations

import time

import ray

NAME, NAMESPACE = "ragworks-drain", "ragworks"
CHECK_S = 0.2


@ray.remote(num_cpus=0)
class DrainFlag:
    def __init__(self):
        self.on = False

    def raise_(self) -> None:
        self.on = True

    def is_on(self) -> bool:
        return self.on


def create_flag():
    """The flag, created by the process that will raise it (`ragworks serve`)."""
    return DrainFlag.options(name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()


class DrainWatch:
    """The ingress's view of the flag: no flag (an app started by `serve run`) is never draining."""

    def __init__(self):
        self.flag, self.on, self.checked = None, False, 0.0

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


def drain(flag, app: str = "rag", deployment: str = "RagAPI", timeout_s: float = 30.0) -> tuple[bool, float]:
    """(whether every in-flight request finished within `timeout_s`, seconds waited)."""
    start = time.monotonic()
    ray.get(flag.raise_.remote())
    time.sleep(2 * CHECK_S)  # every replica has read the flag: nothing new is admitted after this
    quiet = 0
    while time.monotonic() - start < timeout_s:
        quiet = quiet + 1 if ongoing(app, deployment) == 0 else 0
        if quiet >= 2:
            return True, time.monotonic() - start
        time.sleep(0.1)
    return False, time.monotonic() - start
