#!/usr/bin/env bash
# Installs the system packages the scripts and tests need, from Debian, when they are missing.
# Go, Rust and gcc come with the machine; everything else is installed here.
set -euo pipefail
needed=()
command -v openssl >/dev/null || needed+=(openssl)
command -v curl >/dev/null || needed+=(curl)
command -v ss >/dev/null || needed+=(iproute2)
command -v bc >/dev/null || needed+=(bc)
# Real Redis processes for the data-plane tests of redis-operator.
command -v redis-server >/dev/null || needed+=(redis-server)
command -v redis-cli >/dev/null || needed+=(redis-tools)
command -v redis-sentinel >/dev/null || needed+=(redis-sentinel)
# The real node of the local cluster (hack/cluster.sh up with REAL_NODE=1): a CRI runtime and
# its OCI runtime, the CNI plugins, and what the local images are built from (umoci; busybox
# for the shells and tools of the test images).
if [ "${REAL_NODE:-0}" = 1 ] || [ "${REAL_NODES:-0}" -gt 0 ]; then
  command -v containerd >/dev/null || needed+=(containerd)
  command -v runc >/dev/null || needed+=(runc)
  [ -x /usr/lib/cni/bridge ] || needed+=(containernetworking-plugins)
  command -v umoci >/dev/null || needed+=(umoci)
  [ -x /bin/busybox ] || needed+=(busybox-static)
  command -v nft >/dev/null || needed+=(nftables)
  command -v conntrack >/dev/null || needed+=(conntrack)
fi
if [ ${#needed[@]} -gt 0 ]; then
  echo "[install-deps] installing ${needed[*]}" >&2
  sudo_prefix=()
  [ "$(id -u)" -eq 0 ] || sudo_prefix=(sudo)
  "${sudo_prefix[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_prefix[@]}" apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "[install-deps] error: go is missing (Go 1.26 is required)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "[install-deps] error: cargo is missing (Rust 1.89 or newer is required)" >&2; exit 1; }
