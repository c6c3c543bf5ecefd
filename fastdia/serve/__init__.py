"""The HTTP server (`fastdia serve`): OpenAI-compatible speech API over continuously batched engines."""
