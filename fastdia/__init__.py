"""fastdia: fast, dependable inference for Nari Labs' Dia dialogue text-to-speech models."""

from .api import Dia
from .generation.options import GenerationConfig
from .speech import Speech

__all__ = ["Dia", "GenerationConfig", "Speech"]
__version__ = "0.1.0"
