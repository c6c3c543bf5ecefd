"""Scale-out with Ray Serve: the same OpenAI server app, one batching engine per replica.

Each replica builds `create_app(config)` itself (Serve's ingress builder runs on the replica, so no
engine, registry or thread is ever pickled) and loads its own engines; Ray's proxy spreads requests
over the replicas and its autoscaler adds replicas when they are busy.

Back-pressure: a replica's engine holds `max_batch` generating rows plus `max_queue` waiting requests
and refuses the next with a 429 in OpenAI's shape. Ray stops routing to a replica at
`max_ongoing_requests`, which is set a little *above* that (`OVERFLOW_ROOM` more), so overload
reaches an engine and is answered with that 429 rather than parked at Ray's proxy. Requests wait at
the proxy only while every replica also holds its overflow room (a few milliseconds: 429s are
quick). `max_queued_requests` bounds that wait; Ray then answers itself, in plain text (not OpenAI's
JSON), with the status set here to 429 + Retry-After where Ray allows it (its default is 503).

The module is named ray_app, not ray, so that `import ray` inside the package finds the library.
`ray` is imported only by the functions that need it: `fastdia serve --help` works without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module for its flags; fastapi and ray load only when serving
    from .app import ServerConfig

# Requests a replica admits beyond its engine's capacity: each gets the engine's own 429 at once.
OVERFLOW_ROOM = 4
# Autoscaling aims at this fraction of the batch in flight per replica: it adds a replica before the
# batch is full (queueing starts) and lets one go when the others could take its load.
TARGET_FRACTION = 0.75
REPLICA_HEADER = "X-Fastdia-Replica"
INSTALL_HINT = 'Ray Serve is not installed: pip install "fastdia[ray]" (or "ray[serve]>=2.47")'


def deployment_options(*, max_batch: int = 8, max_queue: int = 64, min_replicas: int = 1, max_replicas: int = 2,
                       target_ongoing_requests: float | None = None, max_queued_requests: int = -1,
                       num_cpus: float = 1.0, num_gpus: float = 0.0, drain_timeout: float = 30.0) -> dict:
    """The `@serve.deployment` options for replicas with this engine size (pure: testable without Ray)."""
    if min_replicas < 0 or max_replicas < max(1, min_replicas):
        raise ValueError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                         f"got {min_replicas} and {max_replicas}")
    target = target_ongoing_requests or max(1.0, round(max_batch * TARGET_FRACTION, 2))
    actor: dict = {"num_cpus": num_cpus}
    if num_gpus:
        actor["num_gpus"] = num_gpus
    return {
        "max_ongoing_requests": max_batch + max_queue + OVERFLOW_ROOM,
        "max_queued_requests": max_queued_requests,
        "autoscaling_config": {"min_replicas": min_replicas, "max_replicas": max_replicas,
                               "initial_replicas": max(1, min_replicas), "target_ongoing_requests": target},
        "ray_actor_options": actor,
        # Ray waits this long for open streams before stopping a replica; then the app drains its engines.
        "graceful_shutdown_timeout_s": drain_timeout + 5.0,
    }


def build_app(models: list[str], *, max_batch: int = 8, max_queue: int = 64, min_replicas: int = 1,
              max_replicas: int = 2, target_ongoing_requests: float | None = None, max_queued_requests: int = -1,
              num_cpus: float = 1.0, num_gpus: float = 0.0, device: str | None = None, dtype: str | None = None,
              timeout: float | None = None, voices_dir: str | None = None, api_key: str | None = None,
              drain_timeout: float = 30.0, max_chunk_seconds: float = 0.5, name: str = "fastdia"):
    """A bound Ray Serve application serving `models` with OpenAI's routes; run it with `serve.run(app)`.

    Args:
        models: model ids or presets, as for `fastdia serve --model`; every replica loads all of them.
        max_batch, max_queue: each replica's engine size (per model).
        min_replicas, max_replicas: the autoscaling range (equal: a fixed number of replicas).
        target_ongoing_requests: in-flight requests per replica the autoscaler aims at (default
            0.75 * max_batch).
        max_queued_requests: requests Ray's proxy may hold when every replica is at
            `max_ongoing_requests`; -1 (default): no limit (they wait for the engines' 429s).
        num_cpus, num_gpus: Ray resources per replica (`num_gpus=1` for a GPU each).
        Others: as `ServerConfig`.
    """
    try:
        from ray import serve
    except ImportError:
        from ..errors import FastDiaError

        raise FastDiaError(INSTALL_HINT) from None
    from .app import ServerConfig

    config = ServerConfig(models=list(models), device=device, dtype=dtype, max_batch=max_batch, max_queue=max_queue,
                          timeout=timeout, voices_dir=voices_dir, api_key=api_key, drain_timeout=drain_timeout,
                          max_chunk_seconds=max_chunk_seconds)
    if not config.models:
        raise ValueError("give at least one model to serve")
    options = deployment_options(max_batch=max_batch, max_queue=max_queue, min_replicas=min_replicas,
                                 max_replicas=max_replicas, target_ongoing_requests=target_ongoing_requests,
                                 max_queued_requests=max_queued_requests, num_cpus=num_cpus, num_gpus=num_gpus,
                                 drain_timeout=drain_timeout)
    backpressure = _backpressure_config()
    if backpressure is not None and max_queued_requests >= 0:
        options["backpressure_config"] = backpressure

    def build_replica_app():  # runs on each replica (Serve calls an ingress builder at replica start)
        return ReplicaApp(config)

    @serve.ingress(build_replica_app)
    class FastDiaReplica:
        """One replica: its own engines behind the server's routes."""

    return serve.deployment(FastDiaReplica, name=name, **options).bind()


def _backpressure_config():
    """Ray's proxy answers 429 + Retry-After (OpenAI clients back off) instead of 503 where Ray has the option."""
    try:
        from ray.serve.config import BackpressureConfig
    except ImportError:
        return None
    return BackpressureConfig(status_code=429, retry_after_s=1)


class ReplicaApp:
    """`create_app(config)` as a replica runs it (ASGI).

    Two differences from the plain server, both outside the app. The models load in the constructor
    (Ray's usual place for it), so a replica joins Ray's routing only once it can serve, and a model
    that fails to load fails the replica with its reason in `serve.status()` (a failed ASGI lifespan
    would only say "check the replica logs"). And every response names the replica in
    `X-Fastdia-Replica`, so load spreading can be seen.
    """

    def __init__(self, config: ServerConfig) -> None:
        from ..errors import FastDiaError
        from .app import create_app

        self.app = create_app(config)
        self.server = self.app.state.server
        self.replica = _replica_id().encode()
        self.server.load_all()
        if self.server.failures:
            self.server.shutdown()
            raise FastDiaError("; ".join(f"could not load model {m!r}: {e}" for m, e in self.server.failures.items()))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] == "http":
            return await self.app(scope, receive, self._tagged(send))
        await self.app(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        # The app's own lifespan would load the models again; its shutdown half (drain, stop) is this.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.server.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _tagged(self, send):
        async def send_tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REPLICA_HEADER.lower().encode(), self.replica)]}
            await send(message)

        return send_tagged


def _replica_id() -> str:
    try:
        from ray import serve

        ctx = serve.get_replica_context()
        rid = getattr(getattr(ctx, "replica_id", None), "unique_id", None) or getattr(ctx, "replica_tag", None)
        if rid:
            return str(rid)
    except Exception:  # outside a replica (tests of the app itself): the process is the replica
        pass
    return f"pid-{os.getpid()}"


# --- `fastdia serve --ray` -------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The --ray flags of `fastdia serve` (the others are shared with the plain server)."""
    g = p.add_argument_group("Ray Serve (scale-out: one engine per replica)")
    g.add_argument("--ray", action="store_true",
                   help="serve through a local Ray Serve cluster, one batching engine per replica "
                        '(needs pip install "fastdia[ray]")')
    g.add_argument("--replicas", type=int, default=None, metavar="N", help="a fixed number of replicas")
    g.add_argument("--min-replicas", type=int, default=1, metavar="N",
                   help="autoscaling minimum (default: %(default)s)")
    g.add_argument("--max-replicas", type=int, default=2, metavar="N",
                   help="autoscaling maximum (default: %(default)s)")
    g.add_argument("--target-ongoing", type=float, default=None, metavar="N",
                   help="in-flight requests per replica the autoscaler aims at (default: 0.75 x --max-batch)")
    g.add_argument("--max-queued", type=int, default=-1, metavar="N",
                   help="requests Ray's proxy may hold when every replica is full; past it Ray answers 429 "
                        "itself (default: no limit; the engines answer 429)")
    g.add_argument("--replica-cpus", type=float, default=1.0, metavar="CPUS",
                   help="CPUs reserved per replica (default: %(default)s)")
    g.add_argument("--replica-gpus", type=float, default=None, metavar="GPUS",
                   help="GPUs per replica (default: 1 when serving on CUDA, else 0)")
    g.add_argument("--ray-cpus", type=int, default=None, metavar="CPUS",
                   help="CPUs the local Ray cluster may use (default: all of this machine's)")


def cmd_serve_ray(args: argparse.Namespace) -> int:
    """Start a local Ray, run the app on --host/--port until Ctrl-C or SIGTERM, then shut both down."""
    from ..errors import FastDiaError

    try:
        import ray
        from ray import serve
    except ImportError:
        raise FastDiaError(INSTALL_HINT) from None
    low, high = (args.replicas, args.replicas) if args.replicas is not None else (args.min_replicas,
                                                                                   args.max_replicas)
    if low < 1 or high < low:
        raise FastDiaError(f"replicas must satisfy 1 <= --min-replicas <= --max-replicas, got {low} and {high}")
    gpus = args.replica_gpus if args.replica_gpus is not None else _default_gpus(args.device)
    app = build_app(args.model, max_batch=args.max_batch, max_queue=args.max_queue, min_replicas=low,
                    max_replicas=high, target_ongoing_requests=args.target_ongoing,
                    max_queued_requests=args.max_queued, num_cpus=args.replica_cpus, num_gpus=gpus,
                    device=args.device, dtype=args.dtype, timeout=args.timeout, voices_dir=args.voices_dir,
                    api_key=args.api_key or os.environ.get("FASTDIA_API_KEY") or None,
                    drain_timeout=args.drain_timeout, max_chunk_seconds=args.max_chunk_seconds)
    print(f"fastdia serve: starting Ray Serve ({low}-{high} replicas of {', '.join(args.model)})", file=sys.stderr,
          flush=True)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=args.log_level == "debug",
             configure_logging=False)
    # SIGTERM ends the program as Ctrl-C does, through the same shutdown (set after ray.init, which sets its own).
    # SIGINT explicitly too: a process started in the background of a script inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt for it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="fastdia", route_prefix="/")  # returns once every replica has loaded its models
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"fastdia serve: listening on http://{host}:{args.port} through Ray Serve; Ctrl-C to stop",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("fastdia serve: stopping (draining replicas)", file=sys.stderr, flush=True)
    except RuntimeError as exc:  # a replica that cannot start (a model that fails to load) fails the deploy
        raise FastDiaError(f"Ray Serve could not start the app: {_deploy_failure(serve) or exc}") from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print("fastdia serve: stopped", file=sys.stderr)
    return 0


def _deploy_failure(serve) -> str | None:
    """Why the deployment failed, from Serve's status (its exception names only the deployment)."""
    try:
        app = serve.status().applications["fastdia"]
        messages = [d.message for d in app.deployments.values() if d.message] or [app.message]
    except Exception:
        return None
    text = "\n".join(m for m in messages if m)
    # The message ends with the replica's traceback; its last line is the reason.
    return text.strip().splitlines()[-1] if text.strip() else None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _default_gpus(device: str | None) -> float:
    if device and device.startswith("cuda"):
        return 1.0
    if device in (None, "auto"):
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    return 0.0
