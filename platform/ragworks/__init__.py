"""ragworks: raw corpus in, tuned, evaluated and served RAG stack out, on Ray."""

import os as _os

# Ray Data (2.60) splits the cluster among running datasets through a detached coordinator actor; a
# driver killed mid-stage keeps its share until its request expires (180 s by default), so a run resumed
# at once got half the CPUs and its writers none. Live drivers renew every 10 s; 30 s frees a dead one's
# share soon after. Read when ray.data is first imported, so it is set here, before any ragworks import.
_os.environ.setdefault("RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S", "30")

__version__ = "0.1.0"
