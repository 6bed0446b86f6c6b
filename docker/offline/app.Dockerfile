# gpufleet's Python image without a registry: Debian base from debootstrap, Python from
# Debian packages, dependencies from the host-built wheelhouse (no PyPI from inside).
# The autoscaler and the replicas both run it, as nobody. nginx (the gateway's own Debian packages)
# is here for the autoscaler's `nginx -t` of each rendered config before it signals the gateway.
ARG BASE=gpufleet/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv \
        nginx libnginx-mod-http-js \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY build/wheelhouse /wheels
RUN pip install --no-index --find-links /wheels /wheels/gpufleet-*.whl && rm -rf /wheels
# mount points of the shared volumes, owned by the user that writes them (a new volume takes this owner),
# and nginx -t's temp paths (the root file system is read-only)
RUN mkdir -p /etc/nginx/gpufleet /run/gpufleet/prometheus /var/lib/gpufleet /var/lib/gpufleet-admin \
        /var/lib/gpufleet-replica-secrets /var/lib/gpufleet-grafana \
        /var/run/gpufleet-nginx/tmp/body /var/run/gpufleet-nginx/tmp/proxy /var/run/gpufleet-nginx/tmp/fastcgi \
        /var/run/gpufleet-nginx/tmp/uwsgi /var/run/gpufleet-nginx/tmp/scgi \
    && chown -R 65534:65534 /etc/nginx/gpufleet /run/gpufleet /var/lib/gpufleet /var/lib/gpufleet-admin \
        /var/lib/gpufleet-replica-secrets /var/lib/gpufleet-grafana \
        /var/run/gpufleet-nginx \
    && chmod 0700 /var/lib/gpufleet /var/lib/gpufleet-admin
WORKDIR /app
COPY traces traces
USER 65534:65534
EXPOSE 8000 8181
CMD ["gpufleet", "up", "--docker"]
