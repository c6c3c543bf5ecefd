"""DAC 44.1 kHz (Dia-1's codec): model.py (the math), weights.py (both checkpoint layouts), codec.py
(the facade and its exact streaming decoder)."""
