"""What both families' models and loops share: layers, the static KV cache, sampling, the delay pattern."""
