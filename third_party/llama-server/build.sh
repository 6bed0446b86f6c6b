#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-server), built offline from the sources PyPI's
# llama-cpp-python sdist vendors (vendor/llama.cpp): the third-party engine the tests and
# examples/cpu-real-engine.yaml run. CPU only, portable (no -march=native), statically linked
# against ggml/llama, no OpenSSL/OpenMP, so the one binary runs on this host and in the
# Debian bookworm image the offline build makes. About 7 minutes on 2 cores; cached.
#   third_party/llama-server/build.sh            -> build/llama-server/llama-server
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
out=build/llama-server
cache=${GPUFLEET_CACHE_DIR:-${HOME}/.cache/gpufleet}/llama-server-$version
stamp="llama-cpp-python $version"
if [ -x "$out/llama-server" ] && [ "$(cat "$out/VERSION" 2>/dev/null)" = "$stamp" ]; then
  echo "llama-server: $out/llama-server ($stamp) is built"; exit 0
fi
mkdir -p "$out"
if [ -x "$cache/llama-server" ]; then
  cp "$cache/llama-server" "$out/llama-server" && echo "$stamp" > "$out/VERSION"
  echo "llama-server: from the cache $cache"; exit 0
fi
for tool in cmake g++ make; do
  command -v "$tool" >/dev/null || { echo "llama-server: needs $tool: apt-get install cmake g++ make"; exit 1; }
done
py=${PYTHON:-python3}
src=$(mktemp -d /tmp/llama-server-src.XXXX)
trap 'rm -rf "$src"' EXIT
echo "llama-server: fetching the llama-cpp-python $version sdist (its vendored llama.cpp)"
"$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$src"
tar -C "$src" -xzf "$src"/llama_cpp_python-"$version".tar.gz
tree="$src/llama_cpp_python-$version/vendor/llama.cpp"
echo "llama-server: building (a few minutes)"
t=$(date +%s)
cmake -S "$tree" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >"$src/cmake.log" 2>&1 || { tail -30 "$src/cmake.log"; exit 1; }
cmake --build "$src/build" --target llama-server -j"$(nproc)" >"$src/build.log" 2>&1 || { tail -40 "$src/build.log"; exit 1; }
install -m 0755 "$src/build/bin/llama-server" "$out/llama-server"
echo "$stamp" > "$out/VERSION"
mkdir -p "$cache" && cp "$out/llama-server" "$cache/llama-server"
echo "llama-server: built in $(( $(date +%s) - t ))s: $out/llama-server"
