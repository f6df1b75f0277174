#!/usr/bin/env bash
# Builds the upstream binaries of the local test cluster from their official Go modules:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (k8s.io/kubernetes),
# etcd, kwok and helm; for the real node (target `node`), kubelet and kube-proxy. Each tool
# group is its own Go module under tools/ so that their dependency graphs never meet. A tool is rebuilt only when its binary is missing or reports
# another version. Usage: hack/build-binaries.sh [kubernetes|node|local_provisioner|etcd|kwok|helm ...]
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.sh
source "$repo_root/hack/versions.sh"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf '[build-binaries] %s\n' "$*" >&2; }

# True when "$1 $2" prints $3. The output is captured whole: with pipefail, `| grep -q`
# would fail whenever grep's early exit kills the binary with SIGPIPE.
reports_version() {
  local binary=$1 flag=$2 expected=$3 output
  [ -x "$binary" ] || return 1
  # shellcheck disable=SC2086 # $flag may hold a subcommand and a flag
  output=$("$binary" $flag 2>/dev/null) || return 1
  [[ $output == *"$expected"* ]]
}

# Makes tools/k8s replace every staging module of k8s.io/kubernetes with its published
# release. The list is read from k8s.io/kubernetes's own go.mod, never copied by hand, so a
# version bump that adds a staging module needs no edit here.
sync_kubernetes_replaces() {
  local module_dir=$repo_root/tools/k8s staging_version upstream_go_mod staging_modules module
  staging_version=0.${KUBERNETES_VERSION#1.}
  upstream_go_mod=$(cd "$module_dir" && go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" |
    sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$upstream_go_mod" ] || { log "failed to download k8s.io/kubernetes@v$KUBERNETES_VERSION"; exit 1; }
  staging_modules=$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$upstream_go_mod")
  [ -n "$staging_modules" ] || { log "no staging modules found in $upstream_go_mod"; exit 1; }
  local edits=()
  for module in $staging_modules; do edits+=("-replace=$module=$module@v$staging_version"); done
  (cd "$module_dir" && go mod edit "${edits[@]}" -require="k8s.io/kubernetes@v$KUBERNETES_VERSION")
}

# Builds the given k8s.io/kubernetes commands into $KUBERNETES_BIN_DIR/bin unless each one
# there already reports the pinned version.
build_kubernetes_commands() {
  local binary_dir=$KUBERNETES_BIN_DIR/bin commands=("$@")
  local all_present=true command
  for command in "${commands[@]}"; do
    if [ "$command" = kubectl ]; then
      reports_version "$binary_dir/kubectl" "version --client" "v$KUBERNETES_VERSION" || all_present=false
    else
      reports_version "$binary_dir/$command" --version "v$KUBERNETES_VERSION" || all_present=false
    fi
  done
  if $all_present; then log "${commands[*]} v$KUBERNETES_VERSION already built in $binary_dir"; return; fi
  log "building ${commands[*]} v$KUBERNETES_VERSION into $binary_dir"
  sync_kubernetes_replaces
  local minor=${KUBERNETES_VERSION#1.}; minor=${minor%%.*}
  local base=k8s.io/component-base/version client=k8s.io/client-go/pkg/version
  local ldflags="-s -w"
  local package
  for package in $base $client; do
    ldflags+=" -X $package.gitVersion=v$KUBERNETES_VERSION -X $package.gitMajor=1 -X $package.gitMinor=$minor"
    ldflags+=" -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$binary_dir"
  local packages=()
  for command in "${commands[@]}"; do packages+=("k8s.io/kubernetes/cmd/$command"); done
  (cd "$repo_root/tools/k8s" && go build -trimpath -ldflags "$ldflags" -o "$binary_dir/" "${packages[@]}")
}

build_kubernetes() { build_kubernetes_commands kube-apiserver kube-controller-manager kube-scheduler kubectl; }

# The real node's agents (REAL_NODE=1 hack/cluster.sh up): kubelet and kube-proxy, and its
# cluster DNS, CoreDNS (tools/coredns: only the plugins it uses).
build_node() {
  build_kubernetes_commands kubelet kube-proxy
  # CoreDNS's module lists plugins we leave out; tidy drops their requirements.
  tidy=1 build_go_module coredns "$COREDNS_VERSION" "$COREDNS_BIN_DIR/bin" github.com/coredns/coredns . \
    -version "CoreDNS-$COREDNS_VERSION"
}

# One upstream tool from its Go module, in tools/<name>:
#   [tidy=1] build_go_module NAME VERSION BINARY_DIR MODULE PACKAGE VERSION_FLAG VERSION_TEXT [LDFLAGS]
# builds PACKAGE (of tools/NAME, requiring MODULE@vVERSION) into BINARY_DIR/NAME, unless the
# binary there already prints VERSION_TEXT for VERSION_FLAG. LDFLAGS are added to "-s -w".
build_go_module() {
  local name=$1 version=$2 binary_dir=$3 module=$4 package=$5 version_flag=$6 version_text=$7
  local ldflags="-s -w${8:+ $8}"
  if reports_version "$binary_dir/$name" "$version_flag" "$version_text"; then
    log "$name v$version already built in $binary_dir"; return
  fi
  log "building $name v$version into $binary_dir"
  mkdir -p "$binary_dir"
  (
    cd "$repo_root/tools/$name"
    go mod edit -require="$module@v$version"
    [ -z "${tidy:-}" ] || go mod tidy
    go build -trimpath -ldflags "$ldflags" -o "$binary_dir/$name" "$package"
  )
}

build_etcd() {
  build_go_module etcd "$ETCD_VERSION" "$ETCD_BIN_DIR/bin" go.etcd.io/etcd/server/v3 . \
    --version "etcd Version: $ETCD_VERSION"
}

build_kwok() {
  build_go_module kwok "$KWOK_VERSION" "$KWOK_BIN_DIR/bin" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok \
    --version "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION"
}

build_helm() {
  local minor=${KUBERNETES_VERSION#1.}; minor=${minor%%.*}
  build_go_module helm "$HELM_VERSION" "$HELM_BIN_DIR/bin" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm \
    version "v$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
}

# Our own provisioner (tools/k8s/cmd/local-provisioner) shares the kubernetes module, so its
# client-go packages come from the build cache; it is rebuilt when its source is newer.
build_local_provisioner() {
  local binary=$LOCAL_PROVISIONER_BIN_DIR/bin/local-provisioner source_dir=$repo_root/tools/k8s
  if [ -x "$binary" ] && [ -z "$(find "$source_dir/cmd/local-provisioner" "$source_dir/go.mod" "$source_dir/go.sum" -newer "$binary" -print -quit)" ]; then
    log "local-provisioner is up to date in ${binary%/*}"; return
  fi
  mkdir -p "${binary%/*}"
  (cd "$source_dir" && go build -trimpath -ldflags "-s -w" -o "$binary" ./cmd/local-provisioner)
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kubernetes node local_provisioner etcd kwok helm)
for target in "${targets[@]}"; do
  case $target in
    kubernetes | node | local_provisioner | etcd | kwok | helm) start=$SECONDS; "build_$target"; log "$target done in $((SECONDS - start)) s" ;;
    *) log "unknown target ${target@Q} (expected kubernetes, node, local_provisioner, etcd, kwok or helm)"; exit 2 ;;
  esac
done
