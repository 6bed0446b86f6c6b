# gpufleet's Python image: the autoscaler sidecar and the inference replicas (online build), run as nobody.
# nginx (Debian's, as the gateway image) is here for the autoscaler's `nginx -t` before each reload.
FROM python:3.11-slim-bookworm
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx libnginx-mod-http-js \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY autoscaler autoscaler
COPY inference inference
COPY traces traces
RUN pip install --no-cache-dir .
# mount points of the shared volumes, owned by their writer (a new volume takes this owner); nginx -t's
# temp paths (the root file system is read-only)
RUN mkdir -p /etc/nginx/gpufleet /run/gpufleet/prometheus /var/lib/gpufleet /var/lib/gpufleet-admin \
        /var/lib/gpufleet-replica-secrets /var/lib/gpufleet-grafana \
        /var/run/gpufleet-nginx/tmp/body /var/run/gpufleet-nginx/tmp/proxy /var/run/gpufleet-nginx/tmp/fastcgi \
        /var/run/gpufleet-nginx/tmp/uwsgi /var/run/gpufleet-nginx/tmp/scgi \
    && chown -R 65534:65534 /etc/nginx/gpufleet /run/gpufleet /var/lib/gpufleet /var/lib/gpufleet-admin \
        /var/lib/gpufleet-replica-secrets /var/lib/gpufleet-grafana \
        /var/run/gpufleet-nginx \
    && chmod 0700 /var/lib/gpufleet /var/lib/gpufleet-admin
ENV PYTHONUNBUFFERED=1
USER 65534:65534
EXPOSE 8000 8181
CMD ["gpufleet", "up", "--docker"]
