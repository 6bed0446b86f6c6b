"""Write the gateway image's files from the templates: `python nginx/render.py` (a test checks they match)."""

from pathlib import Path

from autoscaler.gateway.nginx import docker_nginx_conf
from autoscaler.gateway.render import render_gateway

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    (HERE / "nginx.conf").write_text(docker_nginx_conf())
    for name, text in render_gateway([], activator=True).items():
        (HERE / "initial" / name).write_text(text)
