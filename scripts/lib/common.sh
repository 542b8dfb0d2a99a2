# Shared by scripts/*.sh: installing missing Debian packages and configuring the build, each
# saying in one line what it does and keeping the tools' own output in a log under build/, shown
# only when they fail. Sourced, not run.

# Debian 12 packages the build needs (CUDA is optional and not from Debian: /usr/local/cuda).
INSTANTTENSOR_BUILD_PACKAGES=(cmake ninja-build g++ pkg-config libboost-json1.81-dev libcli11-dev
  libfmt-dev libxxhash-dev liburing-dev libre2-dev libcurl4-openssl-dev libsodium-dev libssl-dev)
# Added for the test suite: doctest, Google Benchmark, clang with libFuzzer and the sanitizers,
# Python with venv and headers for the Python package, nginx and openssl for the remote tests' server.
INSTANTTENSOR_TEST_PACKAGES=(doctest-dev libbenchmark-dev clang libclang-rt-14-dev python3 python3-venv python3-dev
  nginx-light openssl)

# Ninja's progress lines, with the seconds the build has taken: [done/total elapsed].
export NINJA_STATUS="[%f/%t %es] "

# run_logged LOG COMMAND...: runs COMMAND with its output appended to LOG; on failure prints the
# end of LOG and exits.
run_logged() {
  local log=$1; shift
  if ! "$@" >>"$log" 2>&1; then
    echo "failed: $*; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

# ensure_packages PACKAGE...: installs those not installed yet (as root, or through sudo).
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=() log=build/apt.log
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  mkdir -p build
  : >"$log"
  echo "installing ${#missing[@]} Debian packages: ${missing[*]} (log: $log)" >&2
  echo "  updating the package lists" >&2
  run_logged "$log" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  echo "  downloading and installing" >&2
  run_logged "$log" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# configure BUILD_DIR [CMAKE_ARGS...]: configures a Ninja build, picking up CUDA where installed,
# and prints what the build found (liburing, libcurl, CUDA, NCCL).
configure() {
  local dir=$1; shift
  [ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
  mkdir -p "$dir"
  : >"$dir/configure.log"
  echo "configuring $dir (log: $dir/configure.log)" >&2
  run_logged "$dir/configure.log" cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@"
  sed -n 's/^-- instanttensor: /  /p' "$dir/configure.log" >&2
}

# ensure_python_env: a virtual environment at build/venv holding what python/requirements-test.txt
# lists (installed again only when that file changes; pip keeps its downloads in its own cache),
# then the instanttensor package built from this tree into it. Prints the venv's python.
ensure_python_env() {
  local venv=build/venv log=build/pip.log requirements=python/requirements-test.txt
  mkdir -p build
  : >"$log"
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating the Python environment $venv (log: $log)" >&2
    run_logged "$log" python3 -m venv "$venv"
  fi
  if ! cmp -s "$requirements" "$venv/installed-requirements.txt"; then
    echo "  installing the Python test requirements (torch is a few GB the first time)" >&2
    run_logged "$log" "$venv/bin/pip" install --upgrade-strategy only-if-needed -r "$requirements"
    cp "$requirements" "$venv/installed-requirements.txt"
  fi
  echo "  building the instanttensor Python package into $venv" >&2
  [ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
  run_logged "$log" "$venv/bin/pip" install --no-build-isolation --no-deps --force-reinstall .
}
