#!/usr/bin/env bash
# Every image the stack needs, built with no registry (see DESIGN.md §8):
#   gpufleet/debian:bookworm  debootstrap + docker import
#   gpufleet/app:latest       Python from Debian, dependencies from a host-built wheelhouse
#   gpufleet/nginx:latest     Debian nginx + njs
#   gpufleet/prometheus:latest Debian prometheus
#   gpufleet/llamacpp:latest  llama.cpp's server (built on the host, cached) + the tiny test model
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
docker/offline/build-base.sh gpufleet/debian:bookworm
py=${PYTHON:-.venv/bin/python}
rm -rf build/wheelhouse && mkdir -p build/wheelhouse
echo "wheelhouse (on the host: PyPI is not reachable from inside a build)"
"$py" -m pip wheel -q -w build/wheelhouse .
docker build -q -t gpufleet/app:latest -f docker/offline/app.Dockerfile .
docker build -q -t gpufleet/nginx:latest -f docker/offline/nginx.Dockerfile .
docker build -q -t gpufleet/prometheus:latest -f docker/offline/prometheus.Dockerfile .
# the third-party engine: llama-server built once on the host (about 8 minutes, then cached), a tiny model
PYTHON="$py" third_party/llama-server/build.sh
"$py" third_party/llama-server/tiny_gguf.py build/models/tiny-llama.gguf >/dev/null
docker build -q -t gpufleet/llamacpp:latest -f docker/offline/llamacpp.Dockerfile .
docker image ls --filter reference='gpufleet/*'
