# Shared by scripts/*.sh: installing missing Debian packages and configuring the build.
# Sourced, not run.

# Debian 12 packages the build needs (CUDA is optional and not from Debian: /usr/local/cuda).
INSTANTTENSOR_BUILD_PACKAGES=(cmake ninja-build g++ pkg-config libboost-json1.81-dev libcli11-dev
  libfmt-dev libxxhash-dev liburing-dev)
# Added for the test suite: doctest, Google Benchmark, clang with libFuzzer and the sanitizers.
INSTANTTENSOR_TEST_PACKAGES=(doctest-dev libbenchmark-dev clang libclang-rt-14-dev python3)

# ensure_packages PACKAGE...: installs those not installed yet (as root, or through sudo).
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# configure BUILD_DIR [CMAKE_ARGS...]: configures a Ninja build, picking up CUDA where installed.
configure() {
  local dir=$1; shift
  [ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
}
