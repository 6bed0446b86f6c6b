# The Docker API proxy without a registry: Debian's HAProxy 2.6. Its config (docker-proxy/haproxy.cfg,
# the allow-list) is mounted by compose at the path the official haproxy image uses.
ARG BASE=gpufleet/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY docker-proxy/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
