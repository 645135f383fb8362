"""Ray's autoscaler adds the nodes a stage declares and removes them when idle.

Ray's own fake multi-node provider (`ray.cluster_utils.AutoscalingCluster`) launches
"cloud" nodes as local processes, so the real autoscaler decides when to scale. Its head
gets a port and temp dir of its own and is stopped by its pids: AutoscalingCluster's own
start and shutdown run `ray stop --force`, which would stop every Ray on the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from ray.cluster_utils import AutoscalingCluster

from conftest import free_port, write_jsonl
from ragworks import ray_processes
from fake_llm import FakeLLM

ROOT = Path(__file__).resolve().parents[1]


class LocalAutoscalingCluster(AutoscalingCluster):
    """AutoscalingCluster starts from the fake provider's example.yaml, which Ray's wheel does not ship; this
    is that file's content, with the head and worker types filled in as AutoscalingCluster does."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = {
            "cluster_name": "fake_multinode", "max_workers": 8, "head_node_type": "ray.head.default",
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "available_node_types": {**worker_node_types, "ray.head.default": {
                "resources": head_resources, "node_config": {}, "max_workers": 0}},
            "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1, "docker": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [],
        }
        config.update(config_kwargs)
        return config

    def start(self):
        """AutoscalingCluster.start without its `ray stop --force`, on a port and temp dir of its own."""
        self.temp_dir = tempfile.mkdtemp(prefix="rw-autoscale-")
        self.address = f"127.0.0.1:{free_port()}"
        self._config["provider"]["gcs_address"] = self.address  # the fake provider's nodes join this head
        config = Path(self.temp_dir) / "autoscaling.json"
        config.write_text(json.dumps(self._config))
        cmd = ["ray", "start", "--head", f"--autoscaling-config={config}", "--node-ip-address", "127.0.0.1",
               "--port", self.address.rsplit(":", 1)[1], "--temp-dir", self.temp_dir, "--include-dashboard", "false",
               "--ray-client-server-port", str(free_port()), "--disable-usage-stats",
               f"--num-cpus={self._head_resources.pop('CPU')}"]
        # no token: the suite's clients do not send Ray's token (a head started where ~/.ray/auth_token exists
        # requires it by default)
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        subprocess.check_call(cmd, env=env, stdout=subprocess.DEVNULL)
        ray_processes.record(self.pids, self.temp_dir)

    @property
    def pids(self) -> str:
        return str(Path(self.temp_dir) / "pids.json")

    def shutdown(self):
        """The head's processes and, as their children, the nodes the autoscaler started: nothing else."""
        ray_processes.stop(self.pids)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def autoscaling_cluster():
    import ray

    assert not ray.is_initialized(), "autoscaling tests must run before any test starts Ray in this process"
    cluster = LocalAutoscalingCluster(
        head_resources={"CPU": 2},
        worker_node_types={"synth-worker": {"resources": {"CPU": 1, "synth": 1, "object_store_memory": 200 * 2**20},
                                            "node_config": {}, "min_workers": 0, "max_workers": 2}},
        # Long enough that a node is never taken away between two of a stage's tasks (at 6 s, Ray Data's
        # Parquet footer reader once landed on a node the autoscaler was removing), short for a test.
        idle_timeout_minutes=0.5)
    cluster.start()
    try:
        ray.init(address=cluster.address, logging_level="ERROR")
        yield ray, cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def synth_nodes(ray) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("synth"))


def test_synthesize_scales_its_worker_type_from_zero_and_back(autoscaling_cluster, tmp_path):
    ray, address = autoscaling_cluster
    assert synth_nodes(ray) == 0  # min_workers 0: nothing runs until a stage asks
    docs = [{"_id": f"d{i}", "title": f"topic {i}", "text": f"document {i} is about subject {i} " * 5} for i in range(24)]
    write_jsonl(tmp_path / "corpus" / "corpus.jsonl", docs)
    with FakeLLM(delay=0.1) as llm:
        spec = {
            "corpus": {"source": {"path": str(tmp_path / "corpus")}, "chunking": {"max_tokens": None}},
            "index": {"concurrency": [1, 1], "embedder": "static"},  # loads in a second; scaling is under test
            # Engine actors need a `synth` resource that only the synth-worker type has.
            "synthesize": {"per_chunk": 2, "engine": {"kind": "openai", "base_url": llm.url, "model": "fake",
                                                      "batch_size": 4, "concurrency": [1, 2],
                                                      "resources": {"synth": 1}}},
        }
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
        workdir = tmp_path / "wd"
        env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "ragworks.cli", "run", str(tmp_path / "job.yaml"),
                                 "--workdir", str(workdir), "--address", address], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        most = 0
        deadline = time.time() + 420
        while proc.poll() is None and time.time() < deadline:
            most = max(most, synth_nodes(ray))
            time.sleep(0.5)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output[-4000:]
    assert 1 <= most <= 2, most  # scaled up for the stage, within the type's max_workers

    rows = [r for f in sorted((workdir / "synthesize" / "generated").rglob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    assert len({r["key"] for r in rows}) == len(rows) == 2 * len(docs)

    deadline = time.time() + 180  # idle_timeout_minutes 0.5: idle synth workers go away
    while synth_nodes(ray) and time.time() < deadline:
        time.sleep(1)
    assert synth_nodes(ray) == 0, "idle synth workers were not removed"
