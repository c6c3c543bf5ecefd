"""`fastdia voice add/list/show/remove`: saved voices."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_voice_add(args: argparse.Namespace) -> int:
    from ..audio import read_audio
    from ..errors import VoiceError
    from ..text import validate_script
    from ..voices import VoiceStore

    # Name, transcript and audio are checked before the codec loads, so a typo costs no download.
    store = VoiceStore(args.voices_dir)
    if store.exists(args.name) and not args.force:
        raise VoiceError(f"voice {args.name!r} exists; use --force to replace it")
    validate_script(args.text, what="voice transcript")
    wave, rate = read_audio(args.audio)
    if len(wave) / rate > 15:
        print(f"note: {args.audio} is {len(wave) / rate:.1f} s long; 5-10 s clones best, and a long prompt "
              "leaves less room to generate", file=sys.stderr)

    from ..backends.device import resolve_device
    from ..codecs import DAC
    from ..codecs.dac.model import DEFAULT_MODEL
    from ..dia1.config import PRESETS

    source = args.codec or ("tiny-random" if args.model in PRESETS else DEFAULT_MODEL)
    device = resolve_device(args.device)
    # Dia loads its codec with this dtype rule, and codec ids differ between dtypes.
    codec = DAC.from_pretrained(source, device=device, dtype="auto" if device.type == "cuda" else "float32")
    from ..audio import resample, to_mono
    from ..voices import AUDIO_RATE

    voice = store.add(args.name, codec.encode(wave, rate), args.text, codec.codec_id, codec.sample_rate,
                      source=args.audio, force=args.force, hop_length=codec.hop_length,
                      audio=resample(to_mono(wave), rate, AUDIO_RATE))
    print(f"saved voice {voice.name!r} ({voice.seconds:.1f} s, {len(voice.codes)} frames) to {store.path(voice.name)}")
    return 0


def _voice_info(voice, store) -> dict:
    info = {"name": voice.name, "path": str(store.path(voice.name)), "seconds": voice.seconds,
            "frames": len(voice.codes), "codebooks": voice.codes.shape[1], "codec": voice.codec,
            "sample_rate": voice.sample_rate}
    info.update((k, v) for k, v in voice.metadata.items() if k not in info)
    info["text"] = voice.text
    return info


def cmd_voice_list(args: argparse.Namespace) -> int:
    from ..voices import ADD_HINT, VoiceStore

    store = VoiceStore(args.voices_dir)
    broken: list = []
    voices = store.list(broken)
    for exc in broken:
        print(f"fastdia: warning: skipped {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps([_voice_info(v, store) for v in voices], indent=2, ensure_ascii=False))
        return 0
    if not voices:
        print(f"no saved voices in {store.directory}; add one with: {ADD_HINT}")
        return 0
    width = max(4, *(len(v.name) for v in voices))
    print(f"{'NAME':<{width}}  SECONDS  {'CODEC':<20}  TRANSCRIPT")
    for v in voices:
        text = " ".join(v.text.split())
        text = text if len(text) <= 60 else text[:57] + "..."
        print(f"{v.name:<{width}}  {v.seconds:7.1f}  {v.codec:<20}  {text}")
    return 0


def cmd_voice_show(args: argparse.Namespace) -> int:
    from ..voices import VoiceStore

    store = VoiceStore(args.voices_dir)
    info = _voice_info(store.get(args.name), store)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    for key, value in info.items():
        print(f"{'transcript' if key == 'text' else key:<15}{value}")
    return 0


def cmd_voice_remove(args: argparse.Namespace) -> int:
    from ..voices import VoiceStore

    path = VoiceStore(args.voices_dir).remove(args.name)
    print(f"removed voice {args.name!r} ({path})")
    return 0


def add_voice(sub) -> None:
    p = sub.add_parser("voice", help="save voices to clone (audio + transcript) once, reuse them by name",
                       description="Saved voices: an audio clip encoded once with its exact transcript.")
    actions = p.add_subparsers(dest="voice_command", metavar="ACTION")
    actions.required = True
    dir_help = ("folder of saved voices (default: $FASTDIA_VOICES_DIR, else $XDG_DATA_HOME/fastdia/voices, "
                "else ~/.local/share/fastdia/voices)")

    a = actions.add_parser("add", help="encode an audio clip and save it with its transcript",
                           description="Encode AUDIO with the model's codec and save it, with its transcript, as NAME.")
    a.add_argument("name", metavar="NAME", help="1-64 letters, digits, '.', '_' or '-', e.g. alice")
    a.add_argument("audio", metavar="AUDIO", help="the voice, alone: wav, flac, ogg or mp3; 5-10 s clones best")
    a.add_argument("--text", required=True, metavar="TRANSCRIPT",
                   help='exactly the words spoken in AUDIO, with speaker tags: "[S1] Hello there."')
    a.add_argument("--force", action="store_true", help="replace a saved voice of the same name")
    a.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    a.add_argument("--model", default="nari-labs/Dia-1.6B-0626",
                   help="the model the voice is for; presets use their own codec (default: %(default)s)")
    a.add_argument("--codec", default=None,
                   help="DAC codec: hub id, directory or file (default: descript/dac_44khz; presets use their own)")
    a.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)")
    a.set_defaults(func=cmd_voice_add)

    q = actions.add_parser("list", help="list saved voices")
    q.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_voice_list)

    q = actions.add_parser("show", help="show a saved voice's details and transcript")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_voice_show)

    q = actions.add_parser("remove", help="delete a saved voice")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    q.set_defaults(func=cmd_voice_remove)
