"""The bench's roofline: MACs per weight format, in-cache kernel rates, the two bounds. No timing
is asserted; only that the numbers are consistent with the model and with each other."""

from __future__ import annotations

import warnings

import pytest
import torch

from fastdia import Dia2
from fastdia.bench import roofline
from fastdia.bench.dia1 import roofline_inputs
from fastdia.bench.dia2 import _step_modules_dia2, roofline_inputs_dia2, step_weight_bytes_dia2
from fastdia.dia1.checkpoint import load_model
from fastdia.quant.modules import Int4Linear, Int8Linear, RowSplitLinear


def _dia2(**options) -> Dia2:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dia2.from_pretrained("dia2-tiny-random", device="cpu", **options)


def test_projections_split_a_row_split_projection_by_format():
    first = Int4Linear.from_float(torch.randn(8, 64), group_size=32)
    rest = Int8Linear.from_float(torch.randn(16, 64))
    split = RowSplitLinear(first, rest)
    assert roofline.projections(split) == [first, rest]
    assert roofline.macs_by_format([split, split], rows=2) == {"int4": 2 * 2 * 8 * 64, "int8": 2 * 2 * 16 * 64}


@pytest.mark.parametrize("quantize", [None, "int8", "int4"])
def test_dia2_macs_count_every_stage_and_rates_cover_every_format(quantize):
    tts = _dia2(quantize=quantize)
    model = tts.model
    inputs = roofline_inputs_dia2(model, rows=2)
    dec, stages = _step_modules_dia2(model)
    assert len(stages) == len(model.depformer.schedule)
    expected = sum(2 * p.in_features * p.out_features for m in dec + [m for s in stages for m in s]
                   for p in roofline.projections(m))
    assert sum(inputs["macs_per_step"].values()) == expected
    assert set(inputs["kernel_rates"]) == set(inputs["macs_per_step"])
    if quantize is not None:
        assert quantize in inputs["macs_per_step"]
    for rate in inputs["kernel_rates"].values():
        assert rate["macs_per_s"] > 0 and rate["call_us"] > 0
    wb = step_weight_bytes_dia2(model)
    b = roofline.bound(wb["dram"], 30e9, inputs["macs_per_step"], inputs["kernel_rates"])
    assert b["memory_ms"] == pytest.approx(wb["dram"] / 30e9 * 1e3)
    assert b["compute_ms"] == pytest.approx(sum(b["compute_ms_by_format"].values()))
    assert b["bound_steps_per_s"] == pytest.approx(1e3 / max(b["memory_ms"], b["compute_ms"]))
    assert b["bound_no_overlap_steps_per_s"] < b["bound_steps_per_s"]
    assert b["limit"] in ("memory", "compute")


def test_dia1_roofline_inputs():
    loaded = load_model("tiny-random", torch.device("cpu"), torch.float32, quantize="int8")
    inputs = roofline_inputs(loaded.model, rows=4)
    assert set(inputs["macs_per_step"]) <= {"int8", "float32"} and "int8" in inputs["macs_per_step"]
    assert inputs["roofline_rows"] == 4
    assert all(r["macs_per_s"] > 0 for r in inputs["kernel_rates"].values())
