#!/usr/bin/env bash
# Builds the local cluster's container images without a registry or a Docker engine: each is
# an OCI image made with umoci from files of this machine, cached in $IMAGES_DIR under a hash
# of its inputs (rebuilt only when they change), and imported into the real node's containerd.
#
#   hack/images.sh build                  build what is missing; print the archives
#   hack/images.sh import SOCKET          import every image into the containerd at SOCKET
#   hack/images.sh import-operators SOCKET
#                                         the same for the operators' images, from their
#                                         release binaries (cargo build --release first)
#
# Images (each archive may carry several names):
#   pause    registry.k8s.io/pause:3.10 — the pod sandbox (hack/images/pause.c, static)
#   busybox  busybox:1 (docker.io/library/busybox:1) — a shell and the usual tools, for test pods
#   redis    Debian's redis-server, redis-sentinel and redis-cli (7.0.15) with busybox's shell
#            and tools, user 1000; tagged with every Redis image name our defaults and
#            examples use (redis:7.4, the seed's hub.iefcu.cn/public/redis:arm64-6.2.5), a
#            local-cluster convenience so that they run unchanged
#   adam-doc-1.0, adam-doc-1.1  the seed's adam-doc site stand-in: busybox httpd serving a page
#            that names its version on port 4000, user 65534, as the image
#            examples/adam-doc.yaml names (registry.example.com/adam/adam-doc:1.0) and a second
#            version for the rollout test
#   redis-operator, app-operator  the release binary with the shared libraries it loads, user
#            65532, as the charts expect: named as the charts' default image
#            (ghcr.io/operator-kit/<name>:<appVersion>); the Dockerfile stays the recipe
#            for users' registries
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.sh
source "$repo_root/hack/versions.sh"
IMAGES_DIR=${IMAGES_DIR:-$OPERATOR_KIT_CACHE/images}

log() { printf '[images] %s\n' "$*" >&2; }

# The names each image is imported under.
names_of() {
  case $1 in
    pause) echo registry.k8s.io/pause:3.10 ;;
    busybox) echo docker.io/library/busybox:1 ;;
    redis) echo docker.io/library/redis:7.4 hub.iefcu.cn/public/redis:arm64-6.2.5 ;;
    adam-doc-1.0) echo registry.example.com/adam/adam-doc:1.0 ;;
    adam-doc-1.1) echo registry.example.com/adam/adam-doc:1.1 ;;
    redis-operator | app-operator)
      echo "ghcr.io/operator-kit/$1:$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$repo_root/charts/$1/Chart.yaml")" ;;
  esac
}

# Fills the root file system $2 of image $1; prints its entrypoint and user, one per line.
populate_pause() {
  gcc -static -O2 -o "$1/pause" "$repo_root/hack/images/pause.c"
  printf '/pause\n65535:65535\n'
}

# Copies the shared libraries a binary loads (and the loader) into $1, at the same paths.
copy_libraries() {
  local root=$1 binary=$2 library
  for library in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'); do
    [ -e "$root$library" ] || cp --parents -L "$library" "$root"
  done
}

# Copies binaries with the shared libraries they load, at the same paths.
copy_with_libraries() {
  local root=$1 binary
  shift
  for binary in "$@"; do
    cp --parents -L "$binary" "$root"
    copy_libraries "$root" "$binary"
  done
}

populate_redis() {
  populate_busybox "$1" >/dev/null
  copy_with_libraries "$1" /usr/bin/redis-check-rdb /usr/bin/redis-cli
  # One binary, three names: Redis picks its mode by the name it is started as.
  mv "$1/usr/bin/redis-check-rdb" "$1/usr/bin/redis-server"
  ln -s redis-server "$1/usr/bin/redis-sentinel"
  ln -s redis-server "$1/usr/bin/redis-check-rdb"
  printf 'redis:x:1000:1000:redis:/data:/bin/sh\n' >>"$1/etc/passwd"
  printf 'redis:x:1000:\n' >>"$1/etc/group"
  mkdir -p "$1/data"
  chown 1000:1000 "$1/data"
  printf '/usr/bin/redis-server\n1000:1000\n'
}

# The release binary of an operator (built by cargo into $CARGO_TARGET_DIR).
operator_binary() {
  echo "${CARGO_TARGET_DIR:-$OPERATOR_KIT_CACHE/cargo-target}/release/$1"
}

populate_operator() {
  local root=$1 name=$2 binary
  binary=$(operator_binary "$name")
  [ -x "$binary" ] || { log "error: $binary is missing: cargo build --release --bin $name"; exit 1; }
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
  cp "$binary" "$root/usr/local/bin/$name"
  copy_libraries "$root" "$binary"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf '/usr/local/bin/%s\n65532:65532\n' "$name"
}

populate_redis-operator() { populate_operator "$1" redis-operator; }
populate_app-operator() { populate_operator "$1" app-operator; }

populate_adam-doc() {
  local root=$1 version=$2
  populate_busybox "$root" >/dev/null
  mkdir -p "$root/www"
  printf '<!doctype html><title>adam-doc</title><p>adam-doc %s</p>\n' "$version" >"$root/www/index.html"
  printf '#!/bin/sh\nexec httpd -f -p 4000 -h /www\n' >"$root/bin/serve"
  chmod 755 "$root/bin/serve"
  printf '/bin/serve\n65534:65534\n'
}

populate_adam-doc-1.0() { populate_adam-doc "$1" 1.0; }
populate_adam-doc-1.1() { populate_adam-doc "$1" 1.1; }

populate_busybox() {
  mkdir -p "$1/bin" "$1/tmp" "$1/etc"
  cp /bin/busybox "$1/bin/busybox"
  # One link per applet, as `busybox --install -s` would make them.
  local applet
  for applet in $(/bin/busybox --list); do
    [ -e "$1/bin/$applet" ] || ln -s busybox "$1/bin/$applet"
  done
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
  printf '/bin/sh\n0:0\n'
}

# What an image is built from: this script, and the files its populate function copies.
inputs_hash() {
  {
    sha256sum "$repo_root/hack/images.sh"
    case $1 in
      pause) sha256sum "$repo_root/hack/images/pause.c"; gcc --version | head -n 1 ;;
      busybox | adam-doc-*) sha256sum /bin/busybox ;;
      redis) sha256sum /bin/busybox /usr/bin/redis-check-rdb /usr/bin/redis-cli ;;
      adam-doc-1.0) echo registry.example.com/adam/adam-doc:1.0 ;;
    adam-doc-1.1) echo registry.example.com/adam/adam-doc:1.1 ;;
    redis-operator | app-operator) sha256sum "$(operator_binary "$1")" ;;
    esac
  } | sha256sum | cut -c1-16
}

archive_of() { echo "$IMAGES_DIR/$1-$(inputs_hash "$1").tar"; }

build_image() {
  local name=$1 archive work entrypoint user
  archive=$(archive_of "$name")
  if [ -f "$archive" ]; then echo "$archive"; return; fi
  command -v umoci >/dev/null || { log "error: umoci is missing: run REAL_NODE=1 hack/install-deps.sh"; exit 1; }
  log "building $name"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$IMAGES_DIR"
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:$name"
  umoci unpack --image "$work/oci:$name" "$work/bundle" >/dev/null
  { read -r entrypoint; read -r user; } < <("populate_$name" "$work/bundle/rootfs")
  umoci repack --image "$work/oci:$name" "$work/bundle"
  umoci config --image "$work/oci:$name" --architecture amd64 --os linux \
    --config.entrypoint "$entrypoint" --config.user "$user" \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin
  tar -C "$work/oci" -cf "$archive.partial" .
  mv "$archive.partial" "$archive"
  echo "$archive"
}

images=(pause busybox redis adam-doc-1.0 adam-doc-1.1)

case ${1:-} in
  build)
    for image in "${images[@]}"; do build_image "$image"; done
    ;;
  import | import-operators)
    socket=${2:?usage: hack/images.sh import|import-operators SOCKET}
    selected=("${images[@]}")
    [ "$1" = import ] || selected=(redis-operator app-operator)
    for image in "${selected[@]}"; do
      archive=$(build_image "$image")
      # The archive's one tag is the image's short name, imported as
      # local.operator-kit.io/<name>:<name> (fully qualified, as the CRI plugin names images);
      # each name the cluster uses is then a tag of that image.
      ctr --address "$socket" --namespace k8s.io images import --base-name "local.operator-kit.io/$image" \
        "$archive" >/dev/null
      for name in $(names_of "$image"); do
        ctr --address "$socket" --namespace k8s.io images tag --force "local.operator-kit.io/$image:$image" "$name" >/dev/null
      done
    done
    ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
