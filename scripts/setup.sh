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

# postbox_build DIR [cmake args...]: configure (once) and build with 2 jobs;
# only the targets in POSTBOX_TARGETS when it is set (default: everything).
postbox_build() {
  local dir=$1
  shift
  cmake -S "$POSTBOX_ROOT" -B "$dir" "$@" >/dev/null
  local targets=()
  [ -n "${POSTBOX_TARGETS:-}" ] && read -r -a targets <<<"--target $POSTBOX_TARGETS"
  cmake --build "$dir" -j "${POSTBOX_JOBS:-2}" "${targets[@]}"
}
