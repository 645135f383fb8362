#!/usr/bin/env bash
# A three-node Ray cluster on this machine (127.0.0.1 only), to try `ragworks submit`
# and multi-node behaviour without a cloud:
#
#   cluster/local.sh up       # head + two workers; Jobs API and dashboard on http://127.0.0.1:8265
#   ragworks submit jobs/quickstart.yaml --follow
#   cluster/local.sh status   # nodes and resources (ray status)
#   cluster/local.sh down     # stops these three nodes, and nothing else
#
# Nodes advertise the same custom resources as the KubeRay groups in this folder
# (`cpu-worker` on the data workers), so a spec that pins a stage with
# `resources: {cpu-worker: 0.01}` behaves here as on Kubernetes. Every node shares
# this machine's disk, so any local workdir is "storage every node sees".
#
# Settings (environment): RAGWORKS_HEAD_PORT (6390), RAGWORKS_DASHBOARD_PORT (8265),
# RAGWORKS_HEAD_CPUS (1), RAGWORKS_WORKER_CPUS (1), RAGWORKS_OBJECT_STORE_MB (300 per node),
# RAGWORKS_CLUSTER_DIR (/tmp/rw-cluster: the nodes' temp dirs and the pids `down` stops).
#
# `down` stops the processes `up` recorded, never `ray stop`: that stops every Ray of this
# user on the machine, other people's long jobs and test clusters included.
set -euo pipefail

PORT=${RAGWORKS_HEAD_PORT:-6390}
DASHBOARD=${RAGWORKS_DASHBOARD_PORT:-8265}
HEAD_CPUS=${RAGWORKS_HEAD_CPUS:-1}
WORKER_CPUS=${RAGWORKS_WORKER_CPUS:-1}
STORE=$(( ${RAGWORKS_OBJECT_STORE_MB:-300} * 1024 * 1024 ))
HEAD=127.0.0.1:$PORT
DIR=${RAGWORKS_CLUSTER_DIR:-/tmp/rw-cluster}
PIDS=$DIR/pids.json
record() {  # $1: the node's temp dir
  python -m ragworks.ray_processes record "$PIDS" "$1" >/dev/null
}
# Ray turns token authentication on for a head started where a token exists (~/.ray/auth_token);
# every node and client of this cluster then needs it, so ask for it explicitly.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

worker() {  # $1: worker number
  # Own agent ports and own temp dir on a shared host: nodes that shared one would delete each
  # other's copy of a job's working_dir when their runtime-env agents clean up.
  ray start --address "$HEAD" --node-ip-address 127.0.0.1 --num-cpus "$WORKER_CPUS" \
    --temp-dir "$DIR/worker-$1" \
    --object-store-memory "$STORE" --resources "{\"cpu-worker\": 1, \"worker-$1\": 1}" \
    --dashboard-agent-listen-port $(( 52365 + $1 )) --metrics-export-port $(( 8090 + $1 )) --disable-usage-stats
  record "$DIR/worker-$1"
}

case "${1:-}" in
  up)
    if [ -s "$PIDS" ]; then
      echo "a cluster of $0 is up already ($PIDS): cluster/local.sh down first" >&2
      exit 1
    fi
    ray start --head --node-ip-address 127.0.0.1 --port "$PORT" --temp-dir "$DIR/head" \
      --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD" --include-dashboard true \
      --ray-client-server-port $(( PORT + 1 )) --num-cpus "$HEAD_CPUS" --object-store-memory "$STORE" \
      --resources '{"head": 1}' --metrics-export-port 8090 --disable-usage-stats
    record "$DIR/head"
    worker 1
    worker 2
    # Ready when the head sees all three nodes.
    for _ in $(seq 60); do
      n=$(python -c "import ray; ray.init(address='$HEAD', logging_level='ERROR'); print(sum(x['Alive'] for x in ray.nodes()))" 2>/dev/null || echo 0)
      [ "$n" -ge 3 ] && break
      sleep 1
    done
    echo "ray cluster up: 3 nodes, head $HEAD, Jobs API and dashboard http://127.0.0.1:$DASHBOARD"
    echo "  ragworks submit jobs/quickstart.yaml --address http://127.0.0.1:$DASHBOARD --follow"
    ;;
  down)
    python -m ragworks.ray_processes stop "$PIDS"
    ;;
  status)
    ray status --address "$HEAD"
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
