"""The engine's steps read nothing back from the device beyond a fixed budget (issue: a GPU-ready
step). A read (`.item()`, `.tolist()`, `bool(tensor)`, `.cpu()`, `.numpy()`, `int(tensor)`, ...)
stalls a GPU until every queued kernel has run, so a step that made one per member would cost a
round trip per member. These tests count the reads made during batched steps on the generic torch
path (the one a GPU runs; fastdia's CPU kernels read CPU tensors freely and are switched off here):

* Dia-1 `SlotBatch.step`: none; the host learns positions and finished rows from one `poll()`
  read, which the server makes every few steps (`fastdia.serve.runners.POLL_EVERY`).
* Dia2 `Dia2SlotBatch.step`: one per step, the sampled actions the text state machines read.
"""

from __future__ import annotations

import warnings

import torch
from torch.overrides import TorchFunctionMode

import fastdia
from fastdia.dia1.options import GenerationConfig
from fastdia.dia1.slots import SlotBatch
from fastdia.dia2.slots import Dia2SlotBatch
from fastdia.text import tokenize

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.cpu, torch.Tensor.numpy,
         torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.__len__}


class CountReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _load(model: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fastdia.load(model, device="cpu")


def test_dia1_slot_steps_read_nothing_back():
    tts = _load("tiny-random")
    g = tts._generator
    g.decode, g.top_ids = tts.model.decoder, None  # the generic torch path
    batch = SlotBatch(g, 8, 200)
    for i in range(6):
        gen = GenerationConfig(max_tokens=150, seed=i, temperature=0.6 + 0.1 * i, top_p=0.9)
        batch.join(tokenize(f"[S1] Member {i} speaks. [S2] Fine."), None, gen)
    with torch.inference_mode():
        batch.step()  # the first step of a row count prepares its views
        with CountReads() as mode:
            for _ in range(20):
                batch.step()
        assert mode.reads == [], mode.reads
        with CountReads() as mode:
            batch.poll()
        assert len(mode.reads) == 1, mode.reads


def test_dia2_slot_steps_read_the_actions_only():
    tts = _load("dia2-tiny-random")
    g = tts._generator
    model = tts.model
    g.transformer, g.stage, g.frame, g._c_pick = model.transformer, model.depformer.stage, None, None
    batch = Dia2SlotBatch(g, 8, 400)
    for i in range(6):
        gen = tts.generation_config(seed=i, max_steps=80, temperature=0.7 + 0.1 * i)
        batch.join(gen, None, entries=tts._entries(f"[S1] Member {i} speaks. [S2] Fine, thanks."))
    with torch.inference_mode():
        for _ in range(g.dep_from + 2):  # past the decoder-only steps: every step runs the depformer
            batch.step()
        with CountReads() as mode:
            for _ in range(10):
                batch.step()
    assert all(m is not None and not m.finished for m in batch.members[:6])
    assert mode.reads == ["tolist"] * 10, mode.reads


def test_the_count_sees_reads():
    """The counter itself: a step with a read in it is seen (so an empty count means none)."""
    x = torch.ones(3)
    with CountReads() as mode:
        bool(x.sum() > 0)
        x.tolist()
        int(x[0])
    assert len(mode.reads) >= 3, mode.reads
