"""What the Docker API proxy costs the autoscaler's own calls: through `gpufleet docker-proxy` vs straight
to the engine's socket, the same runtime code, on a real Docker engine.

    python -m benchmarks.docker_proxy [--n 30] [--replicas 4]

Needs a Docker engine and the offline images (`make offline-images`). It starts the proxy (the stack's
image, project `gfbench`) on a network of its own, and a client container beside it that times, N times
each way: `DockerRuntime.list()` with `--replicas` replica containers present (a list, then an inspect of
each, as the SDK does), and `create_container()` of one sim replica (its removal untimed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import textwrap

PROJECT = "gfbench"
CLIENT = textwrap.dedent("""
    import json, statistics, time, docker
    from autoscaler.config import DEFAULT_CONFIG, parse_config
    from autoscaler.loop.lifecycle import replica_spec
    from autoscaler.runtime.docker import DockerRuntime
    spec = replica_spec(parse_config(DEFAULT_CONFIG).pools[0], "warm", ("vslot0",))
    out = {}
    for how, url in (("proxy", "tcp://%(project)s-proxy:2375"), ("socket", "unix:///var/run/docker.sock")):
        client = docker.DockerClient(base_url=url)
        rt = DockerRuntime(client, "%(project)s", "%(project)s_backend", "gpufleet/app:latest")
        keep = [rt.create_container(spec) for _ in range(%(replicas)d)]
        lst, crt = [], []
        for _ in range(%(n)d):
            t = time.perf_counter(); rt.list(); lst.append(time.perf_counter() - t)
            t = time.perf_counter(); c = rt.create_container(spec); crt.append(time.perf_counter() - t)
            c.remove(force=True)
        for c in keep:
            c.remove(force=True)
        q = lambda xs: [round(1000 * statistics.median(xs), 1), round(1000 * sorted(xs)[int(0.95 * (len(xs) - 1))], 1)]
        out[how] = {"list_ms": q(lst), "create_ms": q(crt)}
    print(json.dumps(out))
""")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--replicas", type=int, default=4)
    args = ap.parse_args()
    for net, internal in ((f"{PROJECT}_backend", True), (f"{PROJECT}_docker-api", True)):
        sh("docker", "network", "create", *(["--internal"] if internal else []), net, check=False)
    sh("docker", "rm", "-f", f"{PROJECT}-proxy", check=False)
    try:
        sh("docker", "run", "-d", "--name", f"{PROJECT}-proxy", "--network", f"{PROJECT}_docker-api", "--user", "0:0",
           "-v", "/var/run/docker.sock:/var/run/docker.sock:ro", "-e", f"GPUFLEET_PROJECT={PROJECT}",
           "-e", "GPUFLEET_NETWORK=backend", "gpufleet/app:latest", "gpufleet", "docker-proxy")
        r = sh("docker", "run", "--rm", "--network", f"{PROJECT}_docker-api", "--user", "0:0",
               "-v", "/var/run/docker.sock:/var/run/docker.sock:ro", "gpufleet/app:latest", "sh", "-c",
               "sleep 2 && python -c \"$0\"", CLIENT % {"project": PROJECT, "n": args.n, "replicas": args.replicas},
               check=False)
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| call ({args.n} times) | straight to the socket: median / p95 (ms) | through the proxy | added |")
        print("| --- | --- | --- | --- |")
        for what, key in ((f"list, {args.replicas} replicas (list + an inspect each)", "list_ms"),
                          ("create a replica", "create_ms")):
            s, p = res["socket"][key], res["proxy"][key]
            print(f"| {what} | {s[0]} / {s[1]} | {p[0]} / {p[1]} | +{round(p[0] - s[0], 1)} ms median |")
    finally:
        sh("docker", "rm", "-f", f"{PROJECT}-proxy", check=False)
        for net in (f"{PROJECT}_backend", f"{PROJECT}_docker-api"):
            sh("docker", "network", "rm", net, check=False)


if __name__ == "__main__":
    main()
