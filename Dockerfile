# gpufleet's Python image: the autoscaler sidecar and the inference replicas (online build).
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY autoscaler autoscaler
COPY inference inference
COPY traces traces
RUN pip install --no-cache-dir . && useradd -r -u 10001 gpufleet
ENV PYTHONUNBUFFERED=1
EXPOSE 8000 8181
CMD ["gpufleet", "up", "--docker"]
