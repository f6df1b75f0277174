#!/usr/bin/env bash
# Keeps the shared cargo target folder from filling the disk: every build of a test binary
# leaves a new file in deps/ and never removes the old one, and on this machine that grew to
# 65 GB, until the real node's kubelet reported DiskPressure (nodefs.available < 2%) and
# refused to schedule the tests' pods. Removes the test and binary executables superseded by
# a newer build of the same name, and the incremental caches when less than 20 GiB is free.
# Libraries are kept: rebuilding them is what makes a cold build slow.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.sh
source "$repo_root/hack/versions.sh"
target=${CARGO_TARGET_DIR:-$OPERATOR_KIT_CACHE/cargo-target}
[ -d "$target" ] || exit 0
freed=0
for profile in debug release; do
  deps=$target/$profile/deps
  [ -d "$deps" ] || continue
  # Executables are the files without an extension; group them by name (without the hash).
  while IFS= read -r name; do
    # All but the newest of this name.
    while IFS= read -r stale; do
      freed=$((freed + $(stat -c %s "$stale")))
      rm -f "$stale"
    done < <(ls -t "$deps/$name"-* 2>/dev/null | grep -v '\.' | tail -n +2)
  done < <(find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -printf '%f\n' | sed 's/-[0-9a-f]\{16\}$//' | sort -u)
done
free_kib=$(df -Pk "$target" | awk 'NR == 2 {print $4}')
if [ "$free_kib" -lt $((20 * 1024 * 1024)) ]; then
  for profile in debug release; do
    if [ -d "$target/$profile/incremental" ]; then
      freed=$((freed + $(du -sb "$target/$profile/incremental" | cut -f1)))
      rm -rf "$target/$profile/incremental"
    fi
  done
fi
echo "[prune] removed $((freed / 1024 / 1024)) MiB of stale build output from $target; $(df -Ph "$target" | awk 'NR == 2 {print $4}') free" >&2
