"""The codecs' CPU paths (fastdia.backends.cpu.codec_ops): convolutions as shifted products and
DAC's Snake in C, against torch's own operations to float32 rounding, each batch item equal to
itself decoded alone, and the routing that puts them under the DAC and Mimi models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdia.backends.cpu import codec_ops, kernels
from fastdia.backends.cpu.features import cpu_features
from fastdia.codecs.dac.codec import DAC
from fastdia.codecs.dac.model import Snake1d
from fastdia.codecs.mimi.codec import Mimi

BUILDS = cpu_features().kernel_variants if kernels.available() else []
needs_kernels = pytest.mark.skipif(not BUILDS, reason=f"fastdia's kernels are off here: {kernels.unavailable_reason()}")


def _torch_snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    a = alpha.reshape(1, -1, 1)
    return x + (a + 1e-9).reciprocal() * torch.sin(a * x).pow(2)


@needs_kernels
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 3000.0])
def test_snake_matches_torch_to_rounding_and_every_build_agrees(scale):
    g = torch.Generator().manual_seed(1)
    # 3 x 5 rows of 10007 samples: rows split into pieces, a masked tail, several channels
    x = torch.randn(3, 5, 10007, generator=g) * scale
    alpha = torch.rand(5, generator=g) * 3 + 0.05
    exact = _torch_snake(x.double(), alpha.double())
    results = {}
    for name in BUILDS:
        with kernels.use_variant(name):
            results[name] = kernels.snake(x, alpha)
    first = next(iter(results.values()))
    for name, got in results.items():
        assert torch.equal(got, first), f"{name} differs from {BUILDS[0]}"
    ours = (first.double() - exact).abs().max().item()
    theirs = (_torch_snake(x, alpha).double() - exact).abs().max().item()
    assert ours <= 2 * theirs + 1e-7 * scale, (ours, theirs)


@needs_kernels
def test_snake_special_values():
    x = torch.tensor([[[0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e30, -1e-30, 3e7, 1.5]]])
    got = kernels.snake(x, torch.tensor([1.0]))
    want = _torch_snake(x, torch.tensor([1.0]))
    assert torch.isnan(got[0, 0, 2:5]).all()
    assert torch.equal(got[0, 0, :2], want[0, 0, :2]) and got[0, 0, 6] == want[0, 0, 6]
    # huge arguments: some sine squared in [0, 1], never a runaway polynomial
    assert (got[0, 0, 5:8] - x[0, 0, 5:8]).abs().max() <= 1.0
    assert torch.allclose(got[0, 0, 8], want[0, 0, 8], rtol=1e-6)
    with pytest.raises(ValueError):
        kernels.snake(x.double(), torch.tensor([1.0]))
    with pytest.raises(ValueError):
        kernels.snake(x, torch.tensor([1.0, 2.0]))


@needs_kernels
@pytest.mark.parametrize("ci,co,k,d,t", [(1, 1, 7, 1, 33000), (2, 2, 7, 9, 1661), (4, 8, 3, 1, 70), (96, 1, 7, 1, 5000),
                                        (3, 5, 7, 3, 19), (1, 3, 1, 1, 1)])
def test_narrow_conv_matches_torch_and_every_build_agrees(ci, co, k, d, t):
    g = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(ci, t + d * (k - 1), generator=g), torch.randn(co, ci, k, generator=g),
               torch.randn(co, generator=g))
    results = {}
    for name in BUILDS:
        with kernels.use_variant(name):
            results[name] = kernels.conv1d_narrow(x, w, b, d)
    first = next(iter(results.values()))
    for name, got in results.items():
        assert torch.equal(got, first), f"{name} differs from {BUILDS[0]}"
    torch.testing.assert_close(first, F.conv1d(x[None], w, b, dilation=d)[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kernels.conv1d_narrow(x, w, None, d), F.conv1d(x[None], w, None, dilation=d)[0],
                               rtol=1e-5, atol=1e-4)
    out = torch.full((co, t), float("nan"))
    assert kernels.conv1d_narrow(x, w, b, d, out=out) is out and torch.equal(out, first)
    with pytest.raises(ValueError):
        kernels.conv1d_narrow(x, w, b, d, out=torch.empty(co, t + 1))
    with pytest.raises(ValueError):
        kernels.conv1d_narrow(x[:, :1], w, b, d + 1) if k > 1 else kernels.conv1d_narrow(x.double(), w, b, d)


CONVS = [  # in, out, kernel, dilation, padding, length, batch, bias
    (1, 1, 7, 1, 3, 33000, 1, True),    # the tiny DAC's last layers: the C direct conv
    (16, 16, 7, 1, 3, 3000, 2, True),   # narrow and short: gathered into one product
    (2, 2, 7, 9, 27, 1600, 3, True),
    (96, 96, 7, 3, 9, 2200, 2, True),   # wide: k shifted products
    (8, 4, 3, 1, 0, 100, 2, False),
    (64, 1, 3, 1, 0, 11522, 1, True),
    (4, 4, 1, 1, 0, 50, 2, True),
]


@pytest.mark.parametrize("ci,co,k,d,p,t,b,bias", CONVS)
def test_conv1d_matches_torch_and_each_item_equals_itself_alone(ci, co, k, d, p, t, b, bias):
    torch.manual_seed(0)
    conv = nn.Conv1d(ci, co, k, dilation=d, padding=p, bias=bias).requires_grad_(False)
    x = torch.randn(b, ci, t)
    got = codec_ops.conv1d(conv, x)
    torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-5)
    alone = torch.cat([codec_ops.conv1d(conv, x[i: i + 1]) for i in range(b)])
    assert torch.equal(alone, got)
    strided = torch.randn(b, t, ci).transpose(1, 2)  # not contiguous
    torch.testing.assert_close(codec_ops.conv1d(conv, strided), conv(strided), rtol=1e-5, atol=1e-5)


def test_conv1d_shorter_than_its_kernel_raises_torchs_error():
    conv = nn.Conv1d(2, 2, 7).requires_grad_(False)
    with pytest.raises(RuntimeError):
        codec_ops.conv1d(conv, torch.randn(1, 2, 3))


@pytest.mark.parametrize("ci,co,s,p,t,b,groups", [(16, 8, 8, 4, 70, 2, 1), (4, 2, 2, 1, 1600, 1, 1),
                                                  (64, 32, 4, 0, 30, 3, 1), (32, 32, 2, 0, 6, 2, 32)])
def test_conv_transpose1d_matches_torch(ci, co, s, p, t, b, groups):
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(ci, co, 2 * s, s, padding=p, groups=groups).requires_grad_(False)
    x = torch.randn(b, ci, t)
    got = codec_ops.conv_transpose1d(conv, x)
    torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-5)
    unbiased = F.conv_transpose1d(x, conv.weight, None, s, p, groups=groups)
    torch.testing.assert_close(codec_ops.conv_transpose1d(conv, x, bias=False), unbiased, rtol=1e-5, atol=1e-5)
    alone = torch.cat([codec_ops.conv_transpose1d(conv, x[i: i + 1]) for i in range(b)])
    assert torch.equal(alone, got)


def test_routing_leaves_other_convs_dtypes_and_autograd_to_torch():
    model = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 4, stride=2),
                          nn.Conv1d(4, 4, 3, groups=2), nn.ConvTranspose1d(4, 4, 3, 2),
                          nn.ConvTranspose1d(4, 2, 4, 2))
    assert codec_ops.accelerate_codec(model) == 2  # the stride-1 conv and the kernel-2s transposed one
    assert codec_ops.accelerate_codec(model) == 0  # routing twice routes nothing more
    assert codec_ops.restore(model) == 2 and codec_ops.accelerate_codec(model) == 2
    x = torch.randn(1, 4, 20, requires_grad=True)
    y = model[0](x)  # parameters and input need gradients: torch's path, which keeps them
    y.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        for dtype in (torch.float64, torch.bfloat16):
            m = model[0].to(dtype)
            torch.testing.assert_close(m(x.detach().to(dtype)),
                                       F.conv1d(x.detach().to(dtype), m.weight, m.bias, padding=1))


def test_dac_and_mimi_on_cpu_are_routed():
    dac = DAC.from_pretrained("tiny-random")
    routed = [m for m in dac.model.modules() if getattr(m, "_fastdia_routed", False)]
    assert any(isinstance(m, nn.Conv1d) for m in routed) and any(isinstance(m, nn.ConvTranspose1d) for m in routed)
    assert any(isinstance(m, Snake1d) for m in routed) == bool(BUILDS)
    mimi = Mimi.from_pretrained("mimi-tiny-random")
    # the streaming decoder's transposed convs too (their bias-free pass), the depthwise upsample included
    assert {getattr(m, "_fastdia_routed", None) for m in mimi.model.modules()} >= {"forward", "unbiased"}
    assert getattr(mimi.model.upsample, "_fastdia_routed", None) == "unbiased"


def test_mimi_stream_routed_and_torch_agree_to_rounding():
    mimi = Mimi.from_pretrained("mimi-tiny-random")
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 2048, size=(n, mimi.n_codebooks)) for n in (3, 6, 1, 6)]

    def run():
        s = mimi.stream()
        return np.concatenate([s.push(c) for c in chunks] + [s.finish()])
    ours = run()
    codec_ops.restore(mimi.model)
    theirs = run()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_mimi_codebook_lookup_is_the_tables_bits():
    mimi = Mimi.from_pretrained("mimi-tiny-random")
    book = mimi.model.quantizer.codebooks()[3]
    g = torch.Generator().manual_seed(0)
    book.cluster_usage.copy_(torch.rand(book.cluster_usage.shape, generator=g) * 3)
    book.cluster_usage[:7] = 0.0  # clamped to 1e-5
    codes = torch.randint(0, book.cluster_usage.numel(), (2, 40), generator=g)
    codes[0, :7] = torch.arange(7)
    want = F.embedding(codes, book.embed).transpose(1, 2)
    assert torch.equal(book.decode(codes), want)


def test_dac_window_decode_is_batch_invariant():
    dac = DAC.from_pretrained("tiny-random")
    codes = np.random.default_rng(0).integers(0, 1024, size=(2, 60, 9))
    one = [dac.decode_tensor(torch.from_numpy(c).T[None]) for c in codes]
    both = dac.decode_tensor(torch.from_numpy(codes).transpose(1, 2))
    for i in range(2):
        assert torch.equal(both[i], one[i][0])


def test_ramp_chunk_and_a_growing_dac_stream():
    from fastdia.audio import ramp_chunk

    sizes, done = [], 0
    for _ in range(6):
        sizes.append(ramp_chunk(done, 43, 172))
        done += sizes[-1]
    assert sizes == [43, 43, 86, 172, 172, 172]
    dac = DAC.from_pretrained("tiny-random")
    codes = np.random.default_rng(1).integers(0, 1024, size=(700, 9))
    fixed, grown = dac.stream(43), dac.stream(43, 172)
    a = [p for i in range(0, 700, 25) for p in fixed.push(codes[i: i + 25])] + fixed.finish()
    b = [p for i in range(0, 700, 25) for p in grown.push(codes[i: i + 25])] + grown.finish()
    assert [len(p) // 512 for p in b[:5]] == [43, 43, 86, 172, 172]
    np.testing.assert_allclose(np.concatenate(b), np.concatenate(a), atol=1e-5)
    with pytest.raises(Exception):
        dac.stream(43, 0)


@needs_kernels
def test_linear_route_matches_torch_row_by_row():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48).requires_grad_(False)
    x = torch.randn(3, 12, 64)
    got = codec_ops.linear(lin, x)
    torch.testing.assert_close(got, lin(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(codec_ops.linear(lin, x[1:2]), got[1:2])  # each row alone
    long = torch.randn(2, 70, 64)  # past one kernel pass: torch's product
    assert torch.equal(codec_ops.linear(lin, long), F.linear(long, lin.weight, lin.bias))
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).double())
    assert codec_ops.accelerate_codec(model) == 0 and codec_ops.accelerate_codec(model, linears=True) == 1


def test_info_says_what_the_codecs_run_on():
    from fastdia.backends.cpu.report import cpu_report, report_lines

    report = cpu_report()
    assert ("fastdia's C" in report["codecs"]) == bool(BUILDS)
    assert any(line.startswith("codecs ") for line in report_lines(report))
