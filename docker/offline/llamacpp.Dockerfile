# llama.cpp's OpenAI-compatible server, the third-party engine of the tests and examples/cpu-real-engine.yaml,
# without a registry: the binary built on the host from the sources PyPI's llama-cpp-python vendors
# (third_party/llama-server/build.sh; it needs only libc and libstdc++), and the tiny random-weight model
# (third_party/llama-server/tiny_gguf.py). /app/llama-server, as in the official ghcr.io/ggml-org/llama.cpp:server.
ARG BASE=gpufleet/debian:bookworm
FROM ${BASE}
COPY build/llama-server/llama-server /app/llama-server
COPY build/models/tiny-llama.gguf /models/tiny-llama.gguf
USER 65534:65534
EXPOSE 8000
ENTRYPOINT ["/app/llama-server"]
