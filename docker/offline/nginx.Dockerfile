# The gateway without a registry: Debian's nginx 1.22 + njs 0.7.9.
ARG BASE=gpufleet/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx libnginx-mod-http-js \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
RUN mkdir -p /var/run/gpufleet-nginx/tmp/body /var/run/gpufleet-nginx/tmp/proxy /var/run/gpufleet-nginx/tmp/fastcgi /var/run/gpufleet-nginx/tmp/uwsgi /var/run/gpufleet-nginx/tmp/scgi
COPY nginx/initial/ /etc/nginx/gpufleet/
COPY autoscaler/templates/gateway.js /etc/nginx/gpufleet/gateway.js
# nginx.conf lives in the volume the autoscaler renders into (from fleet.yaml's gateway settings);
# the copy here, rendered with the defaults, seeds a new volume and an old one without it.
COPY nginx/nginx.conf /etc/nginx/gpufleet/nginx.conf
COPY nginx/nginx.conf /usr/share/gpufleet/nginx.conf
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["sh", "-c", "[ -f /etc/nginx/gpufleet/nginx.conf ] || cp /usr/share/gpufleet/nginx.conf /etc/nginx/gpufleet/; exec nginx -c /etc/nginx/gpufleet/nginx.conf -g 'daemon off;'"]
