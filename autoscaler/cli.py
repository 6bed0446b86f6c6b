"""The `gpufleet` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoscaler.config import ConfigError, FleetConfig, load_config
from autoscaler.logs import FORMATS, setup_logging

if TYPE_CHECKING:  # imported where used: the CLI starts without them
    from autoscaler.scaletest.scenario import Scenario


def _up(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    token = os.environ.get("GPUFLEET_ADMIN_TOKEN")
    if token:
        cfg = cfg.model_copy(update={"admin": cfg.admin.model_copy(update={"token": token})})
    if args.docker:
        from autoscaler.docker_stack import run_docker

        asyncio.run(run_docker(cfg))
        return 0
    if not args.local:
        print("gpufleet up: say --local (host processes) or --docker (inside the compose stack; "
              "start that with `docker compose up -d`)", file=sys.stderr)
        return 2
    from autoscaler.local_stack import run_local

    asyncio.run(run_local(cfg, args.run_dir))
    return 0


ADMIN_TOKEN_FILE = Path("run/admin-token")  # the local stack's, in its default run dir
API_KEY_FILE = Path("run/api-keys.default-key")
# inside the compose stack's autoscaler (`docker compose exec autoscaler gpufleet gpus`)
DOCKER_ADMIN_TOKEN_FILE = Path(os.environ.get("GPUFLEET_ADMIN_DIR", "/var/lib/gpufleet-admin")) / "admin-token"


def _secret_default(env: str, *paths: Path) -> str | None:
    """A client's credential: the environment, else the first file there is (the local stack's in ./run)."""
    if os.environ.get(env):
        return os.environ[env]
    for path in paths:
        try:
            return path.read_text().strip() or None
        except OSError:
            continue
    return None


def _keys(args: argparse.Namespace) -> int:
    import yaml

    from autoscaler.gateway.access import KeysError, KeysFile, hash_key, load_keys, new_key, write_private

    path: Path = args.file
    if args.action == "list":
        try:
            keys = load_keys(path)
        except KeysError as e:
            print(f"gpufleet keys: {e}", file=sys.stderr)
            return 2
        for k in keys:
            print(f"{k.name:20s} tier={k.tier:10s} models={','.join(k.models)} "
                  f"rate={k.requests_per_s:g}/s burst={k.burst} concurrent={k.concurrent}")
        return 0
    if not args.name:
        print("gpufleet keys new: name the key, e.g. `gpufleet keys new alice`", file=sys.stderr)
        return 2
    doc = yaml.safe_load(path.read_text()) if path.exists() else None
    doc = doc if isinstance(doc, dict) else {"keys": []}
    key = new_key()
    entry = {"name": args.name, "sha256": hash_key(key), "tier": args.tier, "models": args.models.split(","),
             "requests_per_s": args.requests_per_s, "burst": args.burst, "concurrent": args.concurrent}
    doc["keys"] = [*(doc.get("keys") or []), entry]
    try:
        KeysFile.model_validate(doc)
    except ValueError as e:
        print(f"gpufleet keys: not added: {e}", file=sys.stderr)
        return 2
    write_private(path, yaml.safe_dump(doc, sort_keys=False))
    print(f"added key {args.name!r} to {path} (only its SHA-256 is stored; a running gateway picks it up "
          f"within a second). The key, shown once:\n{key}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpufleet")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _schema(args: argparse.Namespace) -> int:
    from autoscaler.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def _validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{args.config or 'built-in default'}: OK, pools: "
          + ", ".join(f"{p.name} ({p.model})" for p in cfg.pools))
    for p in cfg.pools:
        e = p.engine_spec
        if e.name == "sim":
            continue
        missing = e.missing_signals()
        print(f"  pool {p.name}: engine {e.name}" + (f", image {e.image}" if e.image else "")
              + f"; ready when GET {e.ready_path} answers 200 (within {e.start_timeout_s:g} s)"
              + (f"; exports no metric for {', '.join(missing)}" if missing else "")
              + ("; sleeps (vLLM sleep mode)" if e.sleep else ""))
    if len(cfg.pools) > 1 or cfg.routing.rules or any(p.aliases or p.fallback for p in cfg.pools):
        for p in sorted(cfg.pools, key=lambda p: -p.priority):  # what a user of several pools wants to see
            parts = [f"priority {p.priority}", f"{p.min_replicas}-{p.max_replicas} x {p.gpus_per_replica} GPU"]
            if p.aliases:
                parts.append("aliases " + ", ".join(p.aliases))
            if p.fallback:
                when = "no replica" + (f" or {p.saturation.waiting_per_replica:g} waiting/replica"
                                       if p.saturation else "")
                parts.append(f"falls back ({when}) to " + ", ".join(
                    f.pool + (f" (max_tokens {f.max_tokens})" if f.max_tokens else "") for f in p.fallback))
            print(f"  pool {p.name}: " + "; ".join(parts))
        for r in cfg.routing.rules:
            m = r.match
            conds = [f"{k} {', '.join(v)}" for k, v in (("models", m.models), ("tiers", m.tiers)) if v]
            conds += [f"header {h}={v}" for h, v in m.headers.items()]
            conds += [f"prompt > {m.prompt_tokens_over} tokens"] if m.prompt_tokens_over is not None else []
            conds += [f"prompt < {m.prompt_tokens_under} tokens"] if m.prompt_tokens_under is not None else []
            print(f"  rule {r.name}: {' and '.join(conds)} -> pool {r.pool}")
    return 0


def _gpus(args: argparse.Namespace) -> int:
    import httpx

    from autoscaler.gpus.allocator import Request, allocate
    from autoscaler.gpus.topology import (
        LinkKind,
        TopologyParseError,
        format_ranges,
        load_topology_file,
        render_matrix,
        topology_from_json,
    )

    holders: dict[str, str] = {}
    note = None
    if args.topology:
        try:
            topo = load_topology_file(args.topology)
        except TopologyParseError as e:
            print(f"gpufleet gpus: {e}", file=sys.stderr)
            return 2
    else:
        url = args.admin.rstrip("/") + "/gpus"
        from autoscaler.scaletest.loadgen import bearer

        headers = bearer(args.token or _secret_default("GPUFLEET_ADMIN_TOKEN", ADMIN_TOKEN_FILE,
                                                        DOCKER_ADMIN_TOKEN_FILE))
        try:
            data = httpx.get(url, headers=headers, timeout=5).raise_for_status().json()
        except httpx.HTTPError as e:
            print(f"gpufleet gpus: no live fleet at {args.admin} ({e}); start one with `gpufleet up --local`, "
                  "or pass --topology FILE (the text of `nvidia-smi topo -m`)", file=sys.stderr)
            return 1
        topo = topology_from_json(data["topology"])
        holders = data["holders"]
        note = data.get("note")
    for gid in args.used or []:
        holders.setdefault(gid, "(--used)")
    print(f"source: {topo.source}" + (f" ({note})" if note else ""))
    print(render_matrix(topo, holders))
    if args.place is None:
        return 0
    used = {g.index for g in topo.gpus if g.id in holders}
    req = Request(k=args.place, model=args.model, min_memory_mb=args.min_memory,
                  min_link=LinkKind[args.min_link] if args.min_link else None)
    a = allocate(topo, req, used)
    print()
    if a is None:
        free = topo.n - len(used | set(topo.cordoned))
        print(f"a {args.place}-GPU replica does not fit: no set of {args.place} free GPUs meets the constraints "
              f"({free} free)")
        return 3
    ids = ", ".join(topo.gpus[i].id for i in a.gpus)
    cores: set[int] = set()
    for i in a.gpus:
        cores.update(topo.gpus[i].cpus)
    print(f"a {args.place}-GPU replica would get: {ids}")
    print(f"  weakest link: {a.weakest or 'n/a (one GPU)'}   NUMA: {format_ranges(a.numa_nodes) or '-'}   "
          f"cores: {format_ranges(tuple(sorted(cores))) or '-'}")
    return 0


def _scale_test(args: argparse.Namespace) -> int:
    import importlib.util

    from autoscaler.scaletest.runner import NoStack, Run, execute, format_any, write_report
    from autoscaler.scaletest.scenario import load_scenario

    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        # say so now, not after the run: the timeline is drawn at the end
        print("gpufleet scale-test: the timeline PNG needs matplotlib: `make install` (or pip install "
              "'gpufleet[report]'); or run with --no-plot", file=sys.stderr)
        return 2
    sc, base = load_scenario(args.scenario)
    if args.duration is not None:
        sc = sc.model_copy(update={"duration_s": args.duration})
    # read only here, not for every command: the environment, else the files the local stack made
    token = args.token or _secret_default("GPUFLEET_ADMIN_TOKEN", ADMIN_TOKEN_FILE)
    key = args.api_key or _secret_default("GPUFLEET_API_KEY", API_KEY_FILE)
    run = Run(sc, args.url.rstrip("/"), args.admin.rstrip("/"), token, api_key=key)
    try:
        summary = asyncio.run(execute(run, base))
    except NoStack as e:
        print(f"gpufleet scale-test: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("reports") / f"{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    write_report(run, summary, out, plot=not args.no_plot)
    print(format_any(summary))
    print(f"report: {out}/report.json" + ("" if args.no_plot else f"  {out}/timeline*.png"))
    return 0 if summary["slo_met"] else 1


def _dashboards(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("gpufleet dashboards: drawing needs matplotlib: `make install` (or pip install 'gpufleet[report]')",
              file=sys.stderr)
        return 2
    from autoscaler.dashboards.render import Prometheus, PrometheusError, Window, load_dashboards, render_png

    try:
        dashes = load_dashboards(args.dashboards)
    except FileNotFoundError as e:
        print(f"gpufleet dashboards: {e}", file=sys.stderr)
        return 2
    prom = Prometheus(args.prometheus)
    end = args.end if args.end is not None else time.time()
    start = end - args.since
    w = Window(start, end, step=max(args.since / 400, 1.0), scrape_s=prom.scrape_interval())
    empty = 0
    try:
        for d in dashes:
            name = d["uid"].removeprefix("gpufleet-")
            out = args.png / f"{name}.png"
            panels = render_png(prom, d, w, out, pool=args.pool)
            missing = [p.title for p in panels if p.empty or p.errors]
            empty += len(missing)
            print(f"{out}: {len(panels)} panels" + (f"; no data: {', '.join(missing)}" if missing else ""))
    except PrometheusError as e:
        print(f"gpufleet dashboards: {e}", file=sys.stderr)
        return 1
    return 0 if not empty else 3


def _trace_scenario(path: Path, cfg: FleetConfig, args: argparse.Namespace) -> tuple[Scenario, Path]:
    """A trace file given as is: replay it whole, at its own times, lengths capped to the model's context."""
    from autoscaler.scaletest.scenario import Scenario
    from autoscaler.scaletest.traces import load_trace
    from autoscaler.sim.run import pool_profile

    pool = cfg.pool(args.pool) if args.pool else cfg.pools[0]
    ctx = pool_profile(pool).max_model_len
    reqs = load_trace(path)
    if not reqs:
        raise ConfigError(f"{path}: no requests in the trace")
    out_cap = min(1000, ctx // 4)
    sc = Scenario.model_validate({
        "name": path.stem, "description": f"the trace {path.name}, replayed whole",
        "duration_s": min(7200.0, reqs[-1].t + 1.0), "profile": {"type": "trace", "path": path.resolve()},
        "max_prompt_tokens": ctx - out_cap, "max_output_tokens": out_cap, "max_in_flight": 4096,
        "slo": {"ttft_p95_s": args.slo_ttft, "e2e_p95_s": args.slo_e2e}})
    return sc, path.resolve().parent


def _can_plot(cmd: str, no_plot: bool) -> bool:
    """Draw the PNGs unless asked not to; without matplotlib (a wheel installed without the `report` extra), say
    so and write the rest of the report."""
    import importlib.util

    if no_plot:
        return False
    if importlib.util.find_spec("matplotlib") is None:
        print(f"gpufleet {cmd}: no PNG: matplotlib is not installed (pip install 'gpufleet[report]'); the report "
              "is written without it", file=sys.stderr)
        return False
    return True


def _simulate(args: argparse.Namespace) -> int:
    import json

    from autoscaler.scaletest.report import format_summary, summarize
    from autoscaler.scaletest.runner import Run, write_report
    from autoscaler.scaletest.scenario import arrivals, load_scenario
    from autoscaler.sim.compare import compare, format_markdown, format_table, plot_compare, public
    from autoscaler.sim.run import simulate

    cfg = load_config(args.config)
    if Path(args.scenario).suffix in (".csv", ".jsonl") and Path(args.scenario).is_file():
        sc, base = _trace_scenario(Path(args.scenario), cfg, args)
    else:
        sc, base = load_scenario(args.scenario)
    if args.duration is not None:
        sc = sc.model_copy(update={"duration_s": args.duration})
    if args.pool is not None and args.pool not in {p.name for p in cfg.pools}:
        raise ConfigError(f"--pool {args.pool!r}: no such pool (pools: {', '.join(p.name for p in cfg.pools)})")
    out = args.out or Path("reports") / f"sim-{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.plot = _can_plot("simulate", args.no_plot)
    if sc.streams:
        return _simulate_streams(cfg, sc, base, out, args)
    arr = arrivals(sc, base)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        def progress(line: str) -> None:
            print(f"  {line}", file=sys.stderr, flush=True)

        res = compare(cfg, sc, arr, pool=args.pool, phases=args.phases, workers=args.workers,
                      only=args.systems.split(",") if args.systems else None, progress=progress)
        table = format_table(res)
        print(table)
        (out / "summary.txt").write_text(table + "\n")
        doc = json.dumps(public(res), indent=1)
        (out / "comparison.json").write_text(doc)
        (out / "comparison.md").write_text(format_markdown(res) + "\n")
        if args.json:
            args.json.write_text(doc)
        if args.plot:
            plot_compare(out / "compare.png", res, arr, f"gpufleet simulate --compare: {sc.name}")
        print(f"report: {out}/comparison.json" + (f"  {out}/compare.png" if args.plot else ""))
        return 0
    sim = simulate(cfg, arr, pool=args.pool, duration_s=sc.duration_s)
    extra = {"model": cfg.pool(sim.pool).model, "started_at": 0.0, "scheduled": len(arr), "simulated": True,
             "sim_wall_s": round(sim.wall_s, 3)}
    summary = summarize(sc, sim.results, sim.timeline, 0.0, sim.end_s, sim.pool, extra)
    run = Run(sc, "simulated", "simulated", timeline=sim.timeline, results=sim.results)
    write_report(run, summary, out, plot=args.plot)
    print(format_summary(summary))
    print(f"simulated {len(arr)} requests in {sim.wall_s:.2f} s; report: {out}/report.json"
          + (f"  {out}/timeline.png" if args.plot else ""))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if summary["slo_met"] else 1


def _simulate_streams(cfg: Any, sc: Any, base: Path, out: Path, args: argparse.Namespace) -> int:
    """A scenario of several models through the simulated fleet: each stream to the pool serving its model."""
    import json

    from autoscaler.scaletest.report import summarize
    from autoscaler.scaletest.runner import Run, format_any, streams_summary, write_report
    from autoscaler.scaletest.scenario import arrivals
    from autoscaler.sim.run import simulate

    if args.compare:
        raise ConfigError(f"scenario {sc.name}: --compare runs one pool's traffic against the baselines; "
                          "a scenario of several streams runs without it")
    routes = cfg.routing_table()["routes"]
    subs = [sc.stream(i) for i in range(len(sc.streams))]
    missing = [s.model for s in subs if s.model not in routes]
    if missing:
        raise ConfigError(f"scenario {sc.name}: no pool serves {', '.join(missing)} (models: {', '.join(routes)})")
    by_pool = {routes[s.model]: arrivals(s, base) for s in subs}
    sim = simulate(cfg, [], by_pool=by_pool, duration_s=sc.duration_s)
    streams = {}
    for s in subs:
        pool = routes[s.model]
        mine = [r for r in sim.results if r.pool == pool]
        streams[pool] = summarize(s, mine, sim.timeline, 0.0, sim.end_s, pool,
                                  {"model": s.model, "started_at": 0.0, "scheduled": len(by_pool[pool]),
                                   "simulated": True})
    summary = streams_summary(sc.name, 0.0, streams) | {"sim_wall_s": round(sim.wall_s, 3)}
    write_report(Run(sc, "simulated", "simulated", timeline=sim.timeline, results=sim.results), summary, out,
                 plot=args.plot)
    print(format_any(summary))
    print(f"simulated {summary['requests']} requests in {sim.wall_s:.2f} s; report: {out}/report.json"
          + (f"  {out}/timeline-*.png" if args.plot else ""))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if summary["slo_met"] else 1


def _docker_proxy(args: argparse.Namespace) -> int:
    from autoscaler.docker_proxy import serve

    asyncio.run(serve(args.host, args.port, args.socket))
    return 0


def _nvml_agent(args: argparse.Namespace) -> int:
    from autoscaler.gpus.nvml_agent import serve

    serve(args.host, args.port)
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    from autoscaler.gpucheck import check

    return check(engine=args.engine, model_path=args.model_path, executable=args.executable,
                 timeout_s=args.timeout)


def _status(args: argparse.Namespace) -> int:
    import json

    import httpx

    from autoscaler.scaletest.loadgen import bearer
    from autoscaler.status import FleetStatus
    from autoscaler.status_cli import format_status, problems

    headers = bearer(args.token or _secret_default("GPUFLEET_ADMIN_TOKEN", ADMIN_TOKEN_FILE, DOCKER_ADMIN_TOKEN_FILE))
    try:
        r = httpx.get(args.admin.rstrip("/") + "/status", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        print(f"gpufleet status: no live fleet at {args.admin} ({e}); start one with `gpufleet up --local`, or "
              "pass --admin URL", file=sys.stderr)
        return 1
    if r.status_code in (401, 403):
        print(f"gpufleet status: {args.admin} refused the admin token ({r.status_code}); pass --token, set "
              "$GPUFLEET_ADMIN_TOKEN, or run where run/admin-token is", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"gpufleet status: {args.admin}/status answered {r.status_code}: {r.text[:200]}", file=sys.stderr)
        return 1
    st = FleetStatus.model_validate(r.json())
    now = time.time()
    if args.json:
        print(json.dumps(r.json(), indent=1))
    else:
        print(format_status(st, now, events=args.events))
    return 4 if problems(st, now) else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpufleet", description="Elastic LLM serving on one GPU host.")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--version", action="version", version=f"gpufleet {_version()}")
    ap.add_argument("--log-format", choices=FORMATS, default=os.environ.get("GPUFLEET_LOG_FORMAT") or "text",
                    help="text (default), or json: one object a line (time, level, logger, msg, a controller "
                         "event's fields under `event`) for log pipelines; also $GPUFLEET_LOG_FORMAT")
    sub = ap.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="start the stack in the foreground")
    up.add_argument("--local", action="store_true", help="replicas, nginx and Prometheus as host processes")
    up.add_argument("--docker", action="store_true", help="run as the compose stack's autoscaler sidecar")
    up.add_argument("--config", type=Path, default=os.environ.get("GPUFLEET_CONFIG") or None,
                    help="fleet.yaml (default: $GPUFLEET_CONFIG, else one CPU sim pool)")
    up.add_argument("--run-dir", type=Path, default=Path("run"),
                    help="state, generated configs and logs (default ./run)")
    up.set_defaults(func=_up)

    ks = sub.add_parser("keys", help="the gateway's API keys: `keys new NAME` adds one, `keys list` shows them")
    ks.add_argument("action", choices=["new", "list"])
    ks.add_argument("name", nargs="?", default=None, help="new: the key's name (lower-case, digits, - _)")
    ks.add_argument("--file", type=Path, default=Path(os.environ.get("GPUFLEET_KEYS_FILE", "run/api-keys.yaml")),
                    help="the keys file (default: $GPUFLEET_KEYS_FILE, else run/api-keys.yaml; in the compose "
                         "stack /var/lib/gpufleet/api-keys.yaml)")
    ks.add_argument("--tier", default="default")
    ks.add_argument("--models", default="*", help="comma-separated model names this key may use (default: all)")
    ks.add_argument("--requests-per-s", type=float, default=20)
    ks.add_argument("--burst", type=int, default=40)
    ks.add_argument("--concurrent", type=int, default=16)
    ks.set_defaults(func=_keys)

    val = sub.add_parser("validate", help="check a fleet.yaml and exit")
    val.add_argument("config", type=Path, nargs="?", default=None)
    val.set_defaults(func=_validate)
    sc = sub.add_parser("schema", help="fleet.yaml's JSON Schema, for editors (`gpufleet schema > fleet.schema.json`)")
    sc.set_defaults(func=_schema)
    ss = sub.add_parser("status", help="the live fleet: pools, replicas by role, decisions, last events; exit 4 "
                                       "when it is not healthy")
    ss.add_argument("--json", action="store_true", help="the admin API's /status document as is")
    ss.add_argument("--events", type=int, default=10, help="how many of the last events to show (default 10)")
    ss.add_argument("--admin", default="http://127.0.0.1:8181", help="the live autoscaler's admin API")
    ss.add_argument("--token", default=None, help="admin token (default: $GPUFLEET_ADMIN_TOKEN, else "
                    "run/admin-token, which the local stack makes)")
    ss.set_defaults(func=_status)
    gp = sub.add_parser("gpus", help="GPU topology, NUMA affinity and holders; --place K for a what-if")
    gp.add_argument("--topology", type=Path, help="a file with the output of `nvidia-smi topo -m`")
    gp.add_argument("--admin", default="http://127.0.0.1:8181", help="the live autoscaler's admin API")
    gp.add_argument("--token", default=None, help="admin token (default: $GPUFLEET_ADMIN_TOKEN, else "
                    "run/admin-token, which the local stack makes)")
    gp.add_argument("--place", type=int, metavar="K", help="which GPUs a K-GPU replica would get")
    gp.add_argument("--model", default=None, help="GPU model the replica needs (substring, e.g. H100)")
    gp.add_argument("--min-memory", type=int, default=0, metavar="MIB")
    gp.add_argument("--min-link", choices=["NVLINK", "PIX", "PXB", "PHB", "NODE", "SYS"], default=None)
    gp.add_argument("--used", nargs="*", metavar="GPU_ID", help="treat these GPUs as held (what-if)")
    gp.set_defaults(func=_gpus)
    st = sub.add_parser("scale-test", help="drive real traffic through a running stack and report")
    st.add_argument("scenario", nargs="?", default="default", help="a scenario YAML file or a shipped name")
    st.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    st.add_argument("--admin", default="http://127.0.0.1:8181", help="the autoscaler's admin API")
    st.add_argument("--token", default=None, help="admin token (default: $GPUFLEET_ADMIN_TOKEN, else "
                    "run/admin-token, which the local stack makes)")
    st.add_argument("--api-key", default=None,
                    help="the gateway's API key (default: $GPUFLEET_API_KEY, else run/api-keys.default-key)")
    st.add_argument("--out", type=Path, default=None, help="report folder (default reports/<scenario>-<time>)")
    st.add_argument("--duration", type=float, default=None, help="override the scenario's duration (s)")
    st.add_argument("--no-plot", action="store_true", help="no timeline.png (no matplotlib needed)")
    st.set_defaults(func=_scale_test)
    db = sub.add_parser("dashboards", help="draw the Grafana dashboards' panels from Prometheus into PNGs "
                        "(for the offline stack, which has no Grafana)")
    db.add_argument("--png", type=Path, required=True, metavar="DIR", help="write DIR/<dashboard>.png")
    db.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus' URL")
    db.add_argument("--since", type=float, default=1800, metavar="S", help="the time range: the last S seconds")
    db.add_argument("--end", type=float, default=None, help="the range's end (unix time; default now)")
    db.add_argument("--pool", default=".*", help="the dashboards' $pool (a regex; default all)")
    db.add_argument("--dashboards", type=Path, default=None, help="the dashboards' JSON (default grafana/dashboards)")
    db.set_defaults(func=_dashboards)
    sm = sub.add_parser("simulate", help="replay a scenario or trace through a simulated fleet "
                        "(the real reconcile on simulated time); --compare runs the baselines too")
    sm.add_argument("scenario", nargs="?", default="default",
                    help="a scenario YAML file, a shipped scenario's name, or a trace file (Azure CSV, Mooncake JSONL)")
    sm.add_argument("--slo-ttft", type=float, default=2.0, help="for a trace file: the TTFT SLO (s)")
    sm.add_argument("--slo-e2e", type=float, default=30.0, help="for a trace file: the end-to-end SLO (s)")
    sm.add_argument("--config", type=Path, default=os.environ.get("GPUFLEET_CONFIG") or None,
                    help="fleet.yaml (default: $GPUFLEET_CONFIG, else the built-in one-pool fleet)")
    sm.add_argument("--pool", default=None, help="the pool the traffic goes to (default: the first)")
    sm.add_argument("--compare", action="store_true",
                    help="every system at the cheapest setting of its knob that meets the SLO on every phase: "
                         "gpufleet as configured and tuned, oracle static, Kubernetes HPA, KEDA, Knative KPA, "
                         "AIBrix APA; and the lower bound from the work alone")
    sm.add_argument("--phases", type=int, default=5,
                    help="with --compare: the arrivals at this many offsets (0, 6.2, 12.4 ... s); a setting meets "
                         "the SLO only if it does on each (default 5)")
    sm.add_argument("--workers", type=int, default=None, help="with --compare: processes (default: cores)")
    sm.add_argument("--systems", default=None,
                    help="with --compare: only these, comma-separated (gpufleet, gpufleet-tuned, oracle-static, "
                         "hpa, keda, knative, aibrix)")
    sm.add_argument("--json", type=Path, default=None, help="write the summary (or the comparison) as JSON here")
    sm.add_argument("--out", type=Path, default=None, help="report folder (default reports/sim-<scenario>-<time>)")
    sm.add_argument("--duration", type=float, default=None, help="override the scenario's duration (s)")
    sm.add_argument("--no-plot", action="store_true", help="no PNG (no matplotlib needed)")
    sm.set_defaults(func=_simulate)
    dp = sub.add_parser("docker-proxy", help="the compose stack's Docker API proxy (the only holder of the socket)")
    dp.add_argument("--host", default="0.0.0.0")
    dp.add_argument("--port", type=int, default=2375)
    dp.add_argument("--socket", default="/var/run/docker.sock")
    dp.set_defaults(func=_docker_proxy)
    gc = sub.add_parser("gpu-check", help="on an NVIDIA host: NVML, placement on its topology, telemetry, and one "
                        "real replica on a placed GPU (exit 3: no GPU)")
    gc.add_argument("--engine", choices=["auto", "vllm", "sglang", "tgi", "llamacpp", "none"], default="auto")
    gc.add_argument("--model-path", default=None, help="the model the engine loads (vLLM: a local path or an id)")
    gc.add_argument("--executable", default=None, help="the engine's program (default: the preset's)")
    gc.add_argument("--timeout", type=float, default=600, help="seconds for the replica to become ready")
    gc.set_defaults(func=_gpu_check)
    na = sub.add_parser("nvml-agent", help="NVML over HTTP, in the compose stack's GPU helper container")
    na.add_argument("--host", default="0.0.0.0")
    na.add_argument("--port", type=int, default=8185)
    na.set_defaults(func=_nvml_agent)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.verbose)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"gpufleet: bad config, not starting:\n{e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"gpufleet: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
