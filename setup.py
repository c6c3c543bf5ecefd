"""The package build compiles fastdia's CPU kernels (the C in fastdia/backends/cpu/csrc) so that
`pip install` and `pip wheel` ship them: fastdia/backends/cpu/kernel_build.py, run on its own (the
build needs no torch). Everything else about the package is in pyproject.toml.

Plain setuptools, because the kernels are not a Python extension: they are shared objects that
fastdia loads with ctypes, one per ISA variant, chosen at run time by the CPU's features. A small
build_py step that calls the system compiler is all that needs; a machine without a compiler
gets a one-line notice and the pure-torch path (or a compile at first use once one appears).
"""

import runpy
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "fastdia" / "backends" / "cpu"


class BuildWithKernels(build_py):
    def run(self):
        super().run()
        build = runpy.run_path(str(KERNELS / "kernel_build.py"))
        if getattr(self, "editable_mode", False):  # an editable install runs from the checkout
            out = KERNELS / "prebuilt"
        else:
            out = Path(self.build_lib) / "fastdia" / "backends" / "cpu" / "prebuilt"
        build["build_prebuilt"](out, KERNELS / "csrc", log=lambda line: print(line, flush=True))


class BinaryDistribution(Distribution):
    """The wheel holds compiled code: tag it for this platform, not py3-none-any."""

    def has_ext_modules(self):
        return True


commands = {"build_py": BuildWithKernels}
try:  # setuptools >= 70.1 has bdist_wheel itself
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # older setuptools: the wheel package's
    from wheel.bdist_wheel import bdist_wheel


class PlatformWheel(bdist_wheel):
    """The libraries are loaded with ctypes, not imported: any Python 3 on this platform can use
    them, so the wheel is py3-none-<platform>, not tied to one CPython ABI."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


commands["bdist_wheel"] = PlatformWheel

setup(cmdclass=commands, distclass=BinaryDistribution)
