#!/usr/bin/env bash
# Builds the local cluster's container images without a registry or a Docker engine: each is
# an OCI image made with umoci from files of this machine, cached in $IMAGES_DIR under a hash
# of its inputs (rebuilt only when they change), and imported into the real node's containerd.
#
#   hack/images.sh build                  build what is missing; print the archives
#   hack/images.sh import SOCKET          import every image into the containerd at SOCKET
#
# Images (each archive may carry several names):
#   pause    registry.k8s.io/pause:3.10 — the pod sandbox (hack/images/pause.c, static)
#   busybox  busybox:1 (docker.io/library/busybox:1) — a shell and the usual tools, for test pods
#   redis    Debian's redis-server, redis-sentinel and redis-cli (7.0.15) with busybox's shell
#            and tools, user 1000; tagged with every Redis image name our defaults and
#            examples use (redis:7.4, the seed's hub.iefcu.cn/public/redis:arm64-6.2.5), a
#            local-cluster convenience so that they run unchanged
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
  esac
}

# Fills the root file system $2 of image $1; prints its entrypoint and user, one per line.
populate_pause() {
  gcc -static -O2 -o "$1/pause" "$repo_root/hack/images/pause.c"
  printf '/pause\n65535:65535\n'
}

# Copies binaries with the shared libraries they load (and the loader), at the same paths.
copy_with_libraries() {
  local root=$1 binary library
  shift
  for binary in "$@"; do
    cp --parents -L "$binary" "$root"
    for library in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'); do
      [ -e "$root$library" ] || cp --parents -L "$library" "$root"
    done
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
      busybox) sha256sum /bin/busybox ;;
      redis) sha256sum /bin/busybox /usr/bin/redis-check-rdb /usr/bin/redis-cli ;;
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

images=(pause busybox redis)

case ${1:-} in
  build)
    for image in "${images[@]}"; do build_image "$image"; done
    ;;
  import)
    socket=${2:?usage: hack/images.sh import SOCKET}
    for image in "${images[@]}"; do
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
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
