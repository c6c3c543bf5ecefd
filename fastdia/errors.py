"""Exceptions that fastdia raises for problems a user can fix.

Every error a user can cause (bad script, missing file, broken checkpoint, no network) is one of
these, with a message that says what is wrong and how to fix it. The CLI turns them into a one-line
message and exit status 2 instead of a traceback.
"""


class FastDiaError(Exception):
    """Base class for errors caused by input or environment rather than by a bug."""


class ScriptError(FastDiaError, ValueError):
    """The dialogue script cannot be used (empty, bad speaker tags, too long)."""


class CheckpointError(FastDiaError):
    """A checkpoint is missing tensors, has unexpected ones, wrong shapes or an unknown layout."""


class ModelNotFoundError(FastDiaError):
    """A model name is neither a preset, a local directory nor a reachable hub repository."""


class AudioError(FastDiaError, ValueError):
    """An audio file or waveform cannot be read, written or used."""


class GenerationError(FastDiaError, ValueError):
    """Generation options or prompts are invalid (e.g. a prompt that leaves no room to generate)."""


class VoiceError(FastDiaError, ValueError):
    """A saved voice cannot be stored or used (bad name, unknown voice, broken file, other codec)."""


class VoiceNotFoundError(VoiceError):
    """No saved voice has that name (the server's DELETE answers 404 for it)."""
