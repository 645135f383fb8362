"""ragworks on a real multi-node Ray cluster: three nodes on 127.0.0.1 started by
`cluster/local.sh`, jobs submitted through the Jobs API, a worker node killed mid-run,
and the cluster manifests checked against Ray's own schemas. `local.sh down` stops the
cluster's own nodes only: another Ray on the machine (the suite's, someone's long job)
lives on, which the last test checks."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import write_jsonl
from fake_llm import FakeLLM

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_PORT = 8275  # not Ray's default 8265: a developer's own cluster may hold that
HEAD_PORT = 6395
ADDRESS = f"http://127.0.0.1:{DASHBOARD_PORT}"
CLUSTER_DIR = f"/tmp/rw-test-cluster-{os.getpid()}"  # the nodes' temp dirs and pids: this run's own
ENV = {**os.environ, "RAGWORKS_DASHBOARD_PORT": str(DASHBOARD_PORT), "RAGWORKS_HEAD_PORT": str(HEAD_PORT),
       "RAGWORKS_CLUSTER_DIR": CLUSTER_DIR,
       "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_ADDRESS": ADDRESS, "RAY_AUTH_MODE": "token"}


def cli(*args, timeout=600, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ragworks.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def submitted_id(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.search(r"submitted (ragworks-[\w.-]+-[0-9a-f]{8})", proc.stdout).group(1)


# ------------------------------------------------------------------ manifests
def kuberay_docs() -> dict[str, dict]:
    docs = {}
    for path in sorted((ROOT / "cluster" / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{path.name}:{doc['kind']}"] = doc
    return docs


def cluster_specs(docs: dict) -> dict[str, dict]:
    """The RayCluster spec inside each KubeRay resource."""
    out = {}
    for name, doc in docs.items():
        spec = doc["spec"]
        inner = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}
        if doc["kind"] in inner:
            out[name] = inner[doc["kind"]]
    return out


def test_cluster_manifests_are_valid():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.serve.schema import ServeDeploySchema

    from ragworks.config import JobSpec, apply_overrides
    from ragworks.serve.app import ServeOptions

    docs = kuberay_docs()
    assert {d["kind"] for d in docs.values()} >= {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim"}
    clusters = cluster_specs(docs)
    assert len(clusters) == 3
    for name, spec in clusters.items():
        assert docs[name]["apiVersion"] == "ray.io/v1", name
        assert spec["rayVersion"] == ray.__version__, f"{name}: the image must run the Ray the project is tested on"
        assert spec["enableInTreeAutoscaling"] is True, name
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0", name  # reached through the pod network only
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert "cpu-worker" in groups, name
        pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in groups.values()]
        for g in groups.values():
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (name, g["groupName"])
            # KubeRay passes rayStartParams.resources to `ray start --resources` as a quoted JSON string.
            resources = json.loads(json.loads(g["rayStartParams"]["resources"]))
            assert resources == {g["groupName"]: 1}, (name, g["groupName"])
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert ("nvidia.com/gpu" in limits) == (g["groupName"] == "gpu-worker"), (name, g["groupName"])
        if "gpu-worker" in groups:
            assert groups["gpu-worker"]["minReplicas"] == 0, f"{name}: GPU nodes scale from zero"
        for pod in pods:  # one shared workdir volume, mounted at the same path on every node
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
            assert claim[mounts["/mnt/ragworks"]] == "ragworks-workdir", name

    # RayJob: the entrypoint is a `ragworks run` of a spec in the repo, valid with its overrides.
    job = next(d for d in docs.values() if d["kind"] == "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["ragworks", "run"] and (ROOT / argv[2]).is_file()
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    data = apply_overrides(yaml.safe_load((ROOT / argv[2]).read_text()), sets, "rayjob")
    spec = JobSpec.model_validate(data)  # paths live on the cluster's volume: types and keys only here
    assert spec.corpus.source.path.startswith("/mnt/ragworks/")
    assert argv[argv.index("--workdir") + 1].startswith("/mnt/ragworks/")

    # RayService: Serve's own schema, and the app's arguments as the app reads them.
    service = next(d for d in docs.values() if d["kind"] == "RayService")
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    app = serve_config.applications[0]
    assert app.import_path == "ragworks.serve:build"
    assert ServeOptions(**app.args).workdir.startswith("/mnt/ragworks/")
    assert {d.name for d in app.deployments} == {"RagAPI", "Embedder", "Retriever", "Generator"}

    # Cluster launcher: Ray's own config schema, after Ray fills its defaults.
    launcher = yaml.safe_load((ROOT / "cluster" / "launcher.yaml").read_text())
    validate_config(prepare_config(launcher))
    types = launcher["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["cpu-worker"]["resources"] == {"cpu-worker": 1} and types["gpu-worker"]["min_workers"] == 0
    broken = yaml.safe_load((ROOT / "cluster" / "launcher.yaml").read_text())
    broken["available_node_types"]["gpu-worker"]["max_worker"] = 2  # a typo must not pass
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(broken))


# ------------------------------------------------------- a three-node cluster
@pytest.fixture(scope="module")
def local_cluster():
    import ray

    assert not ray.is_initialized(), "cluster tests must run before any test starts Ray in this process"
    up = subprocess.run(["bash", "cluster/local.sh", "up"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    from ragworks.submission import use_token_if_any

    use_token_if_any()  # local.sh's cluster asks every client for Ray's token, as `ragworks submit` sends it
    try:
        yield ADDRESS
    finally:
        subprocess.run(["bash", "cluster/local.sh", "down"], cwd=ROOT, env=ENV, capture_output=True, timeout=120)
        shutil.rmtree(CLUSTER_DIR, ignore_errors=True)


def alive_nodes(address: str) -> list:
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=address, detail=True) if n.state == "ALIVE"]


def test_local_cluster_has_three_nodes_and_a_loopback_dashboard(local_cluster):
    nodes = alive_nodes(local_cluster)
    assert len(nodes) == 3
    assert sorted(n.resources_total.get("cpu-worker", 0) for n in nodes) == [0, 1, 1]
    listening = [c.laddr for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port == DASHBOARD_PORT]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening


def metrics(workdir: Path) -> dict:
    report = json.loads((workdir / "evaluate" / "report.json").read_text())
    counts = {s: json.loads((workdir / s / "manifest.json").read_text())["outputs"]["counts"]
              for s in ("corpus", "index")}
    return {"report": report["metrics"], "counts": counts}


def test_submitted_quickstart_equals_a_local_run(local_cluster, tmp_path):
    from ray.util.state import list_tasks

    # The quickstart's corpus, index and evaluate stages (per-stage start-up costs dominate this small a run;
    # the other stages' own tests cover them, the LLM stage on this cluster with a node killed, below), with
    # the static embedder: what is checked here is where the work ran and that it ends as a local run ends,
    # and it loads in a second where sentence-transformers' import takes ten on each node's actor.
    sets = ["--set", "index.embedder=static"]
    for stage in ("synthesize", "filters", "negatives", "train_retriever", "rag_examples", "train_generator"):
        sets += ["--set", f"{stage}=null"]
    # The local run (an embedded Ray of its own) goes beside the submitted one: most of either is waiting.
    local = subprocess.Popen([sys.executable, "-m", "ragworks.cli", "run", "jobs/quickstart.yaml", "--workdir",
                              str(tmp_path / "local"), *sets], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        job_id = submitted_id(cli("submit", "jobs/quickstart.yaml", "--workdir", str(tmp_path / "cluster"), *sets))
        logs = cli("logs", job_id, "--follow")
        local_output = local.communicate(timeout=600)[0]
    finally:
        local.kill()
    assert local.returncode == 0, local_output[-4000:]
    assert logs.returncode == 0, logs.stdout[-3000:] + logs.stderr[-3000:]
    done = next(line for line in logs.stdout.splitlines() if line.startswith("done: workdir"))  # the driver's
    assert all(re.search(rf"\b{stage} [0-9.,]+ s\b", done) for stage in ("corpus", "index", "evaluate")), done
    assert f"job {job_id}: SUCCEEDED" in logs.stdout

    status = cli("status", job_id)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout and "evaluate" in status.stdout, status.stdout
    assert metrics(tmp_path / "cluster") == metrics(tmp_path / "local")
    # The work really spread over the cluster: tasks ran on more than one node.
    nodes = {t.node_id for t in list_tasks(address=local_cluster, limit=10_000, raise_on_missing_output=False)
             if t.node_id}
    assert len(nodes) >= 2, nodes


def test_a_bad_spec_fails_before_submission(local_cluster, tmp_path):
    bad = cli("submit", "jobs/quickstart.yaml", "--set", "synthesize.engine.bach_size=4")
    assert bad.returncode == 2 and "did you mean 'batch_size'" in bad.stdout
    assert "submitted" not in bad.stdout


def drivers_of(workdir: Path) -> list[psutil.Process]:
    """Processes on this machine (every node of the local cluster) running a job into `workdir`."""
    return [p for p in psutil.process_iter(["cmdline"]) if str(workdir) in " ".join(p.info["cmdline"] or [])]


def test_stop_ends_a_submitted_job(local_cluster, tmp_path):
    workdir = tmp_path / "wd"
    job_id = submitted_id(cli("submit", "jobs/quickstart.yaml", "--workdir", str(workdir)))
    stopped = cli("stop", job_id)  # while the job starts: the moment a stop could miss the driver
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stdout + stopped.stderr
    deadline = time.time() + 60
    while time.time() < deadline and "STOPPED" not in (status := cli("status", job_id)).stdout:
        time.sleep(1)
    assert "STOPPED" in status.stdout, status.stdout
    assert job_id in cli("status").stdout  # the job list
    # STOPPED means the driver is gone, not only the shell that started it: a driver left running holds
    # the cluster's CPUs and starves the next job
    deadline = time.time() + 10
    while time.time() < deadline and drivers_of(workdir):
        time.sleep(0.5)
    assert not drivers_of(workdir), [p.info["cmdline"] for p in drivers_of(workdir)]


def raylet_of(pid: int) -> psutil.Process:
    """The raylet that started a worker process: killing it takes its whole node down."""
    proc = psutil.Process(pid)
    while proc is not None and "raylet" not in proc.name():
        proc = proc.parent()
    assert proc is not None, f"no raylet above worker {pid}"
    return proc


def test_a_killed_worker_node_loses_no_row_and_duplicates_none(local_cluster, tmp_path):
    from ray.util.state import list_actors

    project = tmp_path / "project"
    docs = [{"_id": f"d{i}", "title": f"topic {i}", "text": f"document {i} is about subject {i} " * 6} for i in range(32)]
    write_jsonl(project / "corpus" / "corpus.jsonl", docs)
    spec = {
        "name": "killed-node",
        "corpus": {"source": {"path": "corpus"}, "chunking": {"max_tokens": None}},
        "index": {"concurrency": [1, 1], "embedder": "static"},  # the LLM stage is what this test is about
        "synthesize": {"per_chunk": 2, "engine": {
            "kind": "openai", "model": "fake", "batch_size": 2, "concurrency": [2, 2],
            # one engine actor per worker node: a node's death takes an actor and its in-flight rows with it
            "resources": {"cpu-worker": 0.6}}},
    }
    with FakeLLM(delay=0.2) as llm:
        spec["synthesize"]["engine"]["base_url"] = llm.url
        (project / "job.yaml").write_text(yaml.safe_dump(spec))
        workdir = tmp_path / "wd"
        job_id = submitted_id(cli("submit", "job.yaml", "--workdir", str(workdir), cwd=project))
        writing = workdir / "synthesize" / "_attempts"  # the run's rows as they stream; committed at the end
        deadline = time.time() + 240
        while time.time() < deadline and len(list(writing.rglob("*.parquet"))) < 4:
            time.sleep(0.2)
        assert list(writing.rglob("*.parquet")), "synthesize never wrote a file"
        engines = [a for a in list_actors(address=local_cluster, filters=[("state", "=", "ALIVE")], detail=True)
                   if "GenerateAndSink" in (a.repr_name or "") + (a.class_name or "")
                   or a.class_name == "_MapWorker"]
        assert engines, "no engine actor alive"
        victim = raylet_of(engines[0].pid)
        victim.send_signal(signal.SIGKILL)
        assert not (workdir / "synthesize" / "manifest.json").exists(), "synthesize finished before the kill"
        logs = cli("logs", job_id, "--follow")
        assert logs.returncode == 0, logs.stdout[-4000:] + logs.stderr[-3000:]
        requests = llm.requests

    assert len(alive_nodes(local_cluster)) == 2  # the node stayed dead; the job finished without it
    out = workdir / "synthesize" / "generated"
    rows = [r for f in sorted(out.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 2 * len(docs)  # every row once
    manifest = json.loads((workdir / "synthesize" / "manifest.json").read_text())
    assert manifest["outputs"]["counts"]["rows"] == 2 * len(docs) and manifest["outputs"]["counts"]["ok"] == 2 * len(docs)
    # the block the dead node's actor was generating is generated again; nothing else is (the actor wrote
    # every block it finished before the node died): at most one block of 2 beyond one request per key
    assert len(keys) <= requests <= len(keys) + 2


def test_down_stops_its_own_nodes_and_leaves_another_ray_alive(local_cluster, tmp_path):
    """Last in this module: it takes the module's cluster down (the fixture's own `down` then finds nothing)."""
    from conftest import free_port
    from ragworks import ray_processes

    other = Path(tempfile.mkdtemp(prefix="rw-other-"))  # not under tmp_path: Ray's socket paths must stay short
    port = free_port()
    started = subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--temp-dir", str(other), "--num-cpus", "1", "--include-dashboard", "false",
                              "--ray-client-server-port", str(free_port()), "--disable-usage-stats"],
                             env={**ENV, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    pids = str(tmp_path / "other-pids.json")
    ray_processes.record(pids, str(other))
    theirs = ray_processes.under(str(other))
    try:
        cluster = ray_processes.under(CLUSTER_DIR)
        assert len(cluster) >= 3 and theirs
        down = subprocess.run(["bash", "cluster/local.sh", "down"], cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(p.is_running() for p in cluster), "a node of the local cluster outlived `down`"
        assert all(p.is_running() for p in theirs), "`down` stopped a Ray it did not start"
        status = subprocess.run(["ray", "status", "--address", f"127.0.0.1:{port}"], capture_output=True,
                                text=True, timeout=60, env={**ENV, "RAY_AUTH_MODE": "disabled"})
        assert status.returncode == 0 and "1.0 CPU" in status.stdout, status.stdout + status.stderr
    finally:
        ray_processes.stop(pids)
        shutil.rmtree(other, ignore_errors=True)
