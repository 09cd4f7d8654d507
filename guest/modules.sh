#!/usr/bin/env bash
# Prints, one per line and in load order, the module files (relative to the module root
# $1, e.g. .../lib/modules/6.1.0-57-amd64) needed to load the modules named after it.
# Dependencies come from each module's own `.modinfo` (`depends=`), so no depmod or
# modules.dep is needed on the host.
set -euo pipefail
root=$1; shift
declare -A path seen
while read -r name rel; do
  n=${name%.ko}; path[${n//-/_}]=$rel
done < <(find "$root" -name '*.ko' -printf '%f %P\n')
visit() {
  local n=${1//-/_}
  [[ -n ${seen[$n]:-} ]] && return
  seen[$n]=1
  local f=${path[$n]:-}
  [[ -n $f ]] || { echo "modules.sh: no module $1 under $root" >&2; exit 1; }
  local deps
  deps=$(tr '\0' '\n' < "$root/$f" | sed -n 's/^depends=//p' | tr ',' ' ')
  for d in $deps; do visit "$d"; done
  echo "$f"
}
for m in "$@"; do visit "$m"; done
