#!/usr/bin/env bash
# Every image the stack needs, built with no registry (see DESIGN.md §8):
#   gpufleet/debian:bookworm  debootstrap + docker import
#   gpufleet/app:latest       Python from Debian, dependencies from a host-built wheelhouse
#   gpufleet/nginx:latest     Debian nginx + njs
#   gpufleet/prometheus:latest Debian prometheus
#   gpufleet/docker-proxy:latest Debian HAProxy (the Docker API allow-list)
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
docker build -q -t gpufleet/docker-proxy:latest -f docker/offline/docker-proxy.Dockerfile .
docker image ls --filter reference='gpufleet/*'
