"""fastdia: fast, dependable inference for Nari Labs' Dia dialogue text-to-speech models."""

from .dia1.api import Dia
from .dia2.api import Dia2
from .dia1.options import GenerationConfig
from .loader import load
from .speech import Speech, SpeechChunk, VoicePrompt

__all__ = ["Dia", "Dia2", "GenerationConfig", "Speech", "SpeechChunk", "VoicePrompt", "load"]
__version__ = "0.2.0"
