"""OpenAI-compatible inference replica with vLLM-named metrics."""
