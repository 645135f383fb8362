"""Ray's private names that ragworks uses (`ray_internals.py`) are all still there: a Ray upgrade that moves
one fails here, naming it and what it was for, not as a silent stage or a spinning core."""

import subprocess
from pathlib import Path

from ragworks import ray_internals

ROOT = Path(__file__).resolve().parents[1]


def test_ray_private_names_are_all_there():
    assert ray_internals.missing() == []


def test_only_ray_internals_reaches_into_ray_private_modules():
    found = subprocess.run(["grep", "-rnE", r"ray\.(data\._internal|_private)|\._topology", "platform/ragworks"],
                           cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    assert [line for line in found if not line.startswith("platform/ragworks/ray_internals.py")] == []
