# gpufleet's Python image without a registry: Debian base from debootstrap, Python from
# Debian packages, dependencies from the host-built wheelhouse (no PyPI from inside).
ARG BASE=gpufleet/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY build/wheelhouse /wheels
RUN pip install --no-index --find-links /wheels /wheels/gpufleet-*.whl && rm -rf /wheels
WORKDIR /app
COPY traces traces
EXPOSE 8000 8181
CMD ["gpufleet", "up", "--docker"]
