"""Mimi 24 kHz (Dia2's codec): model.py (the math), codec.py (the facade and its stateful streaming decoder)."""
