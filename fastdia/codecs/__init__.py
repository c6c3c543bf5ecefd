"""Audio codecs: DAC 44.1 kHz (Dia-1)."""

from .dac.codec import DAC, DACConfig

__all__ = ["DAC", "DACConfig"]
