"""`fastdia bench`: the subcommand's entry (the measurements are fastdia.bench's)."""

from __future__ import annotations



def add_bench(sub) -> None:
    from ..bench import runner as bench

    p = sub.add_parser("bench", help="measure decode speed, memory and quantization quality",
                       description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(p)
    p.set_defaults(func=bench.cmd_bench)
