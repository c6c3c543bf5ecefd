"""fastdia: fast, dependable inference for Nari Labs' Dia dialogue text-to-speech models."""

from .api import Dia
from .api_dia2 import Dia2
from .generation.options import GenerationConfig
from .loader import load
from .speech import Speech, SpeechChunk, VoicePrompt

__all__ = ["Dia", "Dia2", "GenerationConfig", "Speech", "SpeechChunk", "VoicePrompt", "load"]
__version__ = "0.1.0"
