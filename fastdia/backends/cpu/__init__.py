"""The CPU backend: C kernels (csrc/, built on first use), the fused decode step, packed float linears, heap tuning."""
