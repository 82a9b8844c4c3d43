# Shared by scripts/demo, scripts/test and scripts/bench: install what a fresh
# Debian 12 machine lacks, then configure and build one build directory.
# Sourced, not run.

POSTBOX_PACKAGES=(g++ cmake make pkg-config libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
                  libboost-program-options-dev catch2 python3 python3-zmq python3-msgpack)

postbox_install_packages() {
  local missing=()
  local pkg
  for pkg in "${POSTBOX_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "postbox: installing ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "postbox: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# postbox_build DIR [cmake args...]: configure (once) and build everything
# with 2 jobs.
postbox_build() {
  postbox_build_targets "$1" "" "${@:2}"
}

# postbox_build_targets DIR "TARGET..." [cmake args...]: the same, building
# only the targets named (all of them when the list is empty).
postbox_build_targets() {
  local dir=$1 targets=$2 target
  shift 2
  cmake -S "$POSTBOX_ROOT" -B "$dir" "$@" >/dev/null
  local only=()
  for target in $targets; do only+=(--target "$target"); done
  cmake --build "$dir" -j "${POSTBOX_JOBS:-2}" "${only[@]}"
}
