#!/usr/bin/env bash
# Runs one component of the local cluster and starts it again whenever it exits, as the kubelet
# restarts a crashed static pod of a real control plane. Components do exit on purpose: the
# scheduler, for one, exits when it finds its cache inconsistent, which an API server restart
# under it can cause. `hack/cluster.sh` stops a component by sending this supervisor SIGTERM; it
# passes the signal on and waits for the component to exit.
#
#   hack/supervise.sh PID_FILE BINARY [ARG...]   (PID_FILE receives the component's pid)
set -u
pid_file=$1
shift
component=
stop() {
  if [ -n "$component" ]; then
    kill -TERM "$component" 2>/dev/null
    wait "$component" 2>/dev/null
  fi
  exit 0
}
trap stop TERM INT
while :; do
  "$@" </dev/null &
  component=$!
  echo "$component" >"$pid_file"
  wait "$component"
  status=$?
  echo "[supervise] ${1##*/} exited with status $status; starting it again in 1 s" >&2
  sleep 1
done
