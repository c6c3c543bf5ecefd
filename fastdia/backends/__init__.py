"""How a step runs: device/dtype resolution (device.py) and the CPU fast path (cpu/)."""
