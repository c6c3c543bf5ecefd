"""fastdia's CPU kernels are compiled when the package is built (setup.py, kernel_build.py), so
`pip install` and `pip wheel` ship them and the first `say` compiles nothing; without a compiler
the build says so in one line and installs the torch path."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fastdia.backends.cpu import kernel_build, kernels
from fastdia.backends.cpu.features import cpu_features

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_compiler_the_build_says_so_once_and_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lines = []
    assert kernel_build.build_prebuilt(tmp_path / "out", log=lines.append) == []
    assert len(lines) == 1 and "no C compiler" in lines[0] and "torch" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_failing_compiler_leaves_that_variant_to_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exits 1 whatever it is asked
    lines = []
    assert kernel_build.build_prebuilt(tmp_path / "out", log=lines.append) == []
    assert len(lines) == len(kernel_build.VARIANTS) and all("failed" in ln for ln in lines)


def test_a_stale_or_missing_stamp_is_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_build, "PREBUILT_DIR", tmp_path)
    source = kernel_build.source_text()
    lib = tmp_path / kernel_build.library_name("avx512")
    lib.write_bytes(b"not a library")
    assert kernel_build.prebuilt("avx512", source) is None  # no stamp
    lib.with_suffix(".sha256").write_text("0" * 16 + "\n")
    assert kernel_build.prebuilt("avx512", source) is None  # built from other sources
    lib.with_suffix(".sha256").write_text(kernel_build.digest(source, "avx512") + "\n")
    assert kernel_build.prebuilt("avx512", source) == lib


@pytest.mark.skipif(kernel_build.find_compiler() is None, reason="no C compiler here")
def test_pip_wheel_carries_every_variant_and_they_load(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=600)
    wheel = next(tmp_path.glob("fastdia-*.whl"))
    # compiled code: a platform wheel, for any Python 3 (the libraries are not Python extensions)
    assert "-py3-none-" in wheel.name and not wheel.name.endswith("-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        # the sources ship too: an installed package checks its libraries' digests against them
        for name in kernel_build.SOURCES:
            assert f"fastdia/backends/cpu/csrc/{name}" in names, name
        source = kernel_build.source_text()
        for variant in kernel_build.VARIANTS:
            lib = f"fastdia/backends/cpu/prebuilt/{kernel_build.library_name(variant)}"
            assert lib in names and lib.replace(".so", ".sha256") in names
            stamp = z.read(lib.replace(".so", ".sha256")).decode().strip()
            assert stamp == kernel_build.digest(source, variant)
            z.extract(lib, tmp_path)
    features = cpu_features()
    # Every build this CPU can run loads and has the kernels' entry points.
    for variant in features.kernel_variants:
        lib = ctypes.CDLL(str(tmp_path / "fastdia/backends/cpu/prebuilt" / kernel_build.library_name(variant)))
        assert lib.fd_q8_gemv and lib.fd_cfg_pick_rows and lib.fd_top_ids


def test_this_install_loads_its_prebuilt_kernels_without_compiling():
    """The install (`pip install -e .`, as the README says) built the kernels: where this CPU runs
    them, the library in use is the installed one, not one compiled at first use."""
    if not kernels.available():
        pytest.skip(f"fastdia's CPU kernels are off here: {kernels.unavailable_reason()}")
    if kernel_build.find_compiler() is None:
        pytest.skip("no C compiler: nothing was built at install")
    assert Path(kernels._lib._name).parent == kernel_build.PREBUILT_DIR, kernels._lib._name
