# The gateway without a registry: Debian's nginx 1.22 + njs 0.7.9, run as www-data (port 8080 needs no
# capability); its pid file and temp files go to a tmpfs (/var/run/gpufleet-nginx), the root is read-only.
ARG BASE=gpufleet/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx libnginx-mod-http-js \
    prometheus-nginx-exporter \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
COPY nginx/initial/ /etc/nginx/gpufleet/
COPY autoscaler/templates/gateway.js /etc/nginx/gpufleet/gateway.js
# nginx.conf lives in the volume the autoscaler renders into (from fleet.yaml's gateway settings);
# the copy here, rendered with the defaults, seeds a new volume and an old one without it.
COPY nginx/nginx.conf /etc/nginx/gpufleet/nginx.conf
COPY nginx/nginx.conf /usr/share/gpufleet/nginx.conf
COPY nginx/start.sh /usr/local/bin/gpufleet-nginx
USER www-data
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["/usr/local/bin/gpufleet-nginx"]
