"""`fastdia serve`: run the HTTP server with uvicorn until Ctrl-C, then drain and stop."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="MODEL",
                   help="a model to serve: hub id, local directory or preset (tiny-random, dia2-tiny-random, ...); "
                        "repeat to serve several. The first also answers OpenAI names such as tts-1")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $FASTDIA_API_KEY; none: open)")
    p.add_argument("--max-batch", type=int, default=8, help="requests generated together per model (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting per model before new ones get 429 (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None, help="seconds a request may take at most (default: none)")
    p.add_argument("--codec-batch", type=int, default=None, metavar="N",
                   help="Dia-1 audio windows the DAC decodes at once, across requests (default: 1 on CPU, where "
                        "batches were measured slower, 8 on CUDA)")
    p.add_argument("--max-chunk-seconds", type=float, default=0.5, metavar="S",
                   help="above 0.5, a response's audio comes in pieces of 0.5 s, then each as long as all the audio "
                        "before it, up to S seconds: fewer, longer codec windows (more throughput), but a listener "
                        "playing along is fed in time only while generation runs well above real time (up to 1.75x "
                        "for S = 2); default %(default)s: every piece 0.5 s")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on Ctrl-C, seconds to let running requests finish (default: %(default)s)")
    p.add_argument("--voices-dir", metavar="DIR", default=None,
                   help="saved voices' folder, shared with `fastdia voice` (default: $FASTDIA_VOICES_DIR, else the "
                        "XDG data dir)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16 (default: auto)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log level; access lines are at info (default: %(default)s)")
    from ..serve.ray_app import add_arguments as add_ray_arguments

    add_ray_arguments(p)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import FastDiaError

    if args.codec_batch is not None and args.codec_batch < 1:
        raise FastDiaError("--codec-batch must be at least 1")
    if not 0.5 <= args.max_chunk_seconds <= 60:
        raise FastDiaError(f"--max-chunk-seconds must be between 0.5 and 60, got {args.max_chunk_seconds:g}")
    for name in ("max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise FastDiaError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.port < 65536:
        raise FastDiaError(f"--port must be 1-65535, got {args.port}")
    _check_models(args.model)
    api_key = args.api_key or os.environ.get("FASTDIA_API_KEY") or None
    if not api_key and not _loopback(args.host):
        print(f"fastdia serve: warning: listening on {args.host} with no API key: anyone who can reach this port can "
              "use it; set --api-key or FASTDIA_API_KEY", file=sys.stderr, flush=True)
    if getattr(args, "ray", False):
        from ..serve.ray_app import cmd_serve_ray

        return cmd_serve_ray(args)
    import uvicorn

    from ..serve.app import MAX_BODY_BYTES, ServerConfig, create_app

    _check_port(args.host, args.port)
    _QuietServer = _quiet_server_class()

    _setup_logging(args.log_level)
    failed: list[str] = []
    holder: dict = {}

    def on_load_failure(model: str, exc: BaseException) -> None:
        # A server missing a model it was asked for is not what the user wants: stop, say why.
        failed.append(f"could not load model {model!r}: {exc}")
        if "server" in holder:
            holder["server"].should_exit = True

    config = ServerConfig(models=args.model, device=args.device, dtype=args.dtype, max_batch=args.max_batch,
                          max_queue=args.max_queue, timeout=args.timeout, voices_dir=args.voices_dir,
                          codec_batch=args.codec_batch, max_chunk_seconds=args.max_chunk_seconds, api_key=api_key,
                          drain_timeout=args.drain_timeout, on_load_failure=on_load_failure)
    app = create_app(config)
    # The drain happens before uvicorn's own shutdown starts (see _quiet_server_class); what is left
    # for uvicorn is to let the error events already ended requests send leave.
    server = _QuietServer(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5, ws="auto",
                                           ws_max_size=MAX_BODY_BYTES))
    server.app_server = app.state.server
    logging.getLogger("uvicorn.error").addFilter(_cut_stream_filter)
    holder["server"] = server
    threading.Thread(target=_announce, args=(server, args), daemon=True).start()
    try:
        server.run()  # Ctrl-C or SIGTERM: drain (503s), finish or end open requests, stop
    except SystemExit:  # uvicorn's way to say it could not bind (the port taken since _check_port)
        pass
    if failed:
        raise FastDiaError(failed[0])
    if not server.started:
        raise FastDiaError(f"could not listen on {args.host}:{args.port} (in use, or not an address of this machine)")
    print("fastdia serve: stopped", file=sys.stderr)
    return 0


def _check_models(models: list[str]) -> None:
    """Names that cannot be a model fail before the server listens (loading itself is in the background)."""
    from ..dia1.config import PRESETS
    from ..dia2.config import DIA2_PRESETS
    from ..hub import check_source

    for model in models:
        check_source(model, set(PRESETS) | set(DIA2_PRESETS))


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Bind the address as uvicorn will (SO_REUSEADDR) and let it go: a taken port or a foreign
    address is one clear error before any model starts loading."""
    import errno
    import socket

    from ..errors import FastDiaError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise FastDiaError(f"--host {host!r} is not an address this machine can listen on ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            hint = " (another server is using it: choose another --port)" if exc.errno == errno.EADDRINUSE else ""
            raise FastDiaError(f"could not listen on {host}:{port}: {exc.strerror or exc}{hint}") from None


def _quiet_server_class():
    import contextlib

    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn re-raises Ctrl-C/SIGTERM after its graceful shutdown, so that embedding programs see it;
        here the shutdown *is* the program's end, and the re-raise would only print a traceback.

        The first SIGTERM/SIGINT drains before uvicorn stops listening: new requests get 503 with
        Retry-After (and /health says draining, so a load balancer moves on) while the running ones
        finish; at --drain-timeout those still running end with an error event; then uvicorn stops.
        A second signal cuts the drain short."""

        app_server = None
        _drain: threading.Thread | None = None

        def handle_exit(self, sig, frame) -> None:
            if self.app_server is None or not self.started:
                return super().handle_exit(sig, frame)
            if self._drain is None:
                print("fastdia serve: draining (new requests get 503); signal again to stop at once",
                      file=sys.stderr, flush=True)
                self._captured_signals.append(sig)
                self._drain = threading.Thread(target=self._drain_then_exit, name="fastdia-drain", daemon=True)
                self._drain.start()
                return
            self.app_server.cut_drain()
            super().handle_exit(sig, frame)

        def _drain_then_exit(self) -> None:
            try:
                self.app_server.shutdown()
            finally:
                self.should_exit = True

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    getattr(self, "_captured_signals", []).clear()

    return QuietServer


def _announce(server, args: argparse.Namespace) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        host = f"[{args.host}]" if ":" in args.host else args.host
        key = " (API key required)" if (args.api_key or os.environ.get("FASTDIA_API_KEY")) else ""
        print(f"fastdia serve: listening on http://{host}:{args.port}{key}; models loading: "
              f"{', '.join(args.model)} (GET /health); Ctrl-C to stop", file=sys.stderr, flush=True)


def _cut_stream_filter(record: logging.LogRecord) -> bool:
    # fastdia ends a streamed response whose request failed after its headers left by returning with
    # the body unfinished (serve.openai_errors.StreamCut); uvicorn then closes the connection and says
    # so, while the request's access line already holds its id, status and reason.
    return record.getMessage() != "ASGI callable returned without completing response."


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("fastdia.access", "fastdia.serve", "fastdia.cpu"):
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        logger.addHandler(handler)
        logger.propagate = False


def add_serve(sub) -> None:
    from .serve import add_arguments, cmd_serve

    p = sub.add_parser("serve", help="run an OpenAI-compatible speech server (HTTP + WebSocket)",
                       description="Serve models over HTTP: OpenAI's /v1/audio/speech, saved voices, /health, "
                                   "/metrics and a live-text WebSocket, with continuous batching.")
    add_arguments(p)
    p.set_defaults(func=cmd_serve)
