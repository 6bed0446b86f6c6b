# The gateway without a registry: Debian's nginx 1.22 + njs 0.7.9.
ARG BASE=gpufleet/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx libnginx-mod-http-js \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
COPY nginx/nginx.conf /etc/nginx/nginx.conf
RUN mkdir -p /var/run/gpufleet-nginx/tmp/body /var/run/gpufleet-nginx/tmp/proxy /var/run/gpufleet-nginx/tmp/fastcgi /var/run/gpufleet-nginx/tmp/uwsgi /var/run/gpufleet-nginx/tmp/scgi
COPY nginx/initial/ /etc/nginx/gpufleet/
COPY autoscaler/templates/gateway.js /etc/nginx/gpufleet/gateway.js
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
