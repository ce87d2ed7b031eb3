#!/usr/bin/env bash
# Build (once) llama.cpp's native `llama-server` from the llama.cpp tree that the PyPI source
# package llama-cpp-python vendors, and cache it for the llama.cpp tests and benchmarks.
#
#   tests/llamacpp/build_server.sh            # prints the cache folder on its last line
#   tests/llamacpp/build_server.sh --check    # exit 0 if it is built, 1 if not (changes nothing)
#
# The cache folder ~/.cache/gpt-oss-harmony-groq/llama.cpp/<version>/ holds
#   bin/llama-server   the server (static, GGML_NATIVE=OFF: it may move to another x86-64 machine)
#   src/               the vendored llama.cpp tree (convert_hf_to_gguf.py, gguf-py) for the GGUF
#   .stamp             written last: a warm cache returns in well under a second
#
# LLAMACPP_PY_VERSION  llama-cpp-python version to fetch (default below)
# LLAMACPP_CACHE       cache root (default ~/.cache/gpt-oss-harmony-groq/llama.cpp)
# LLAMACPP_JOBS        parallel compile jobs (default 2)
# PIP                  pip command to download with (default: python3 -m pip)
#
# Needs cmake and a C++ compiler (Debian: apt-get install cmake build-essential); when run as
# root on Debian without them, installs them. Only PyPI is contacted (the web UI download is
# switched off); nothing of llama.cpp is ever written into the repository.
set -euo pipefail

version="${LLAMACPP_PY_VERSION:-0.3.36}"
cache_root="${LLAMACPP_CACHE:-$HOME/.cache/gpt-oss-harmony-groq/llama.cpp}"
jobs="${LLAMACPP_JOBS:-2}"
dest="$cache_root/$version"
stamp="$dest/.stamp"
want="llama-cpp-python==$version llama-server static native=off"

say() { echo "build_server: $*" >&2; }
die() { echo "build_server: ERROR: $*" >&2; exit 1; }

ready() { [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/bin/llama-server" ]]; }
[[ "${1:-}" == "--check" ]] && { ready; exit; }
if ready; then
    echo "$dest"
    exit 0
fi

if ! command -v cmake >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing cmake and build-essential with apt-get ..."
        # The suite's apt-get lock (tests/debian.py), and dpkg's own waited for, not failed on.
        apt_lock="${XDG_CACHE_HOME:-$HOME/.cache}/gpt-oss-harmony-groq/apt-get.lock"
        mkdir -p "$(dirname "$apt_lock")"
        apt=(flock "$apt_lock" apt-get -o DPkg::Lock::Timeout=600)
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q cmake build-essential >&2 \
            || { "${apt[@]}" update -q >&2 && DEBIAN_FRONTEND=noninteractive \
                 "${apt[@]}" install -y -q cmake build-essential >&2; } \
            || die "apt-get install cmake build-essential failed"
    else
        die "cmake and a C++ compiler are needed (Debian: apt-get install cmake build-essential)"
    fi
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$version"
flock 9  # one build at a time; a second caller waits and then finds the stamp
if ready; then
    echo "$dest"
    exit 0
fi

work="$cache_root/.build-$version"
rm -rf "$work" "$dest"
mkdir -p "$work/download"
started=$SECONDS

say "downloading the llama-cpp-python==$version source package from PyPI ..."
pip_cmd=(${PIP:-python3 -m pip})
"${pip_cmd[@]}" download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    --dest "$work/download" "llama-cpp-python==$version" >&2 \
    || die "pip download llama-cpp-python==$version failed"
sdist="$(ls "$work/download"/llama_cpp_python-*.tar.gz 2>/dev/null | head -n1)"
[[ -n "$sdist" ]] || die "no llama_cpp_python source archive in $work/download"
tar -xzf "$sdist" -C "$work"
src="$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp | head -n1)"
[[ -f "$src/CMakeLists.txt" ]] || die "no vendored llama.cpp tree in $sdist"

say "configuring llama.cpp (vendored in llama-cpp-python $version) ..."
cmake -S "$src" -B "$work/cmake" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF >"$work/cmake.log" 2>&1 \
    || { tail -n 40 "$work/cmake.log" >&2; die "cmake configure failed"; }

say "building llama-server with $jobs jobs (several minutes, once) ..."
cmake --build "$work/cmake" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; die "building llama-server failed"; }

mkdir -p "$dest/bin"
cp "$work/cmake/bin/llama-server" "$dest/bin/llama-server"
"$dest/bin/llama-server" --version >&2 2>&1 || die "the built llama-server does not run"
# What the GGUF conversion needs: the converter, its gguf-py package, and the templates.
mkdir -p "$dest/src"
cp "$src/convert_hf_to_gguf.py" "$dest/src/"
cp -r "$src/gguf-py" "$dest/src/"
cp -r "$src/models/templates" "$dest/src/templates"
[[ -d "$src/conversion" ]] && cp -r "$src/conversion" "$dest/src/"
rm -rf "$work"
echo "$want" >"$stamp"
say "ready: $dest/bin/llama-server ($((SECONDS - started)) s)"
echo "$dest"
