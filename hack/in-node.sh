#!/usr/bin/env bash
# Runs a command as a process of real node I of the local cluster (hack/node.sh): in the node's
# cgroups in the freezer, pids and cpuacct hierarchies (what a freeze stops, what a power loss
# kills, where the node's CPU time is counted) and in its network namespace — only that one:
# the mounts stay the machine's, as containerd and the kubelet must see each other's.
#
#   hack/in-node.sh I COMMAND [ARG...]
set -eu
node=$1
shift
for hierarchy in freezer pids cpuacct; do
  echo $$ >"/sys/fs/cgroup/$hierarchy/operator-kit/node-$node/daemons/cgroup.procs"
done
exec nsenter --net="/run/netns/okit-node-$node" -- "$@"
