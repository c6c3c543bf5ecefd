"""Audio codecs: DAC 44.1 kHz (Dia-1)."""

from .dac import DAC, DACConfig

__all__ = ["DAC", "DACConfig"]
