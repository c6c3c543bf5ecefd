"""The codecs' convolutions and Snake activations on CPU, applied from outside their models.

Why: torch's CPU convolution (oneDNN) is built for wide layers. The codecs' outer layers are
narrow and long (DAC's last blocks: 1-2 channels of the tiny codec, 96 of the real one, over tens
of thousands of samples; Mimi's last: 64 channels to 1), where oneDNN spends 150-800 us on a
convolution that is a few hundred thousand multiply-adds, and it picks its algorithm (and so its
rounding) by the batch's shape. Measured on one 0.5 s DAC window (2-vCPU Xeon, 2 threads):
the tiny codec 7.9-12.6 -> 3.4-3.6 ms, the full-size one 522-543 -> 487-491 ms
(benchmarks/codec_cpu.py).

So a stride-1 convolution here is, by its shape: a direct C loop (csrc/codec.c) when it has few
outputs or few terms (1 -> 1 channel, kernel 7, 33k samples: 21 against oneDNN's 357 us; 96 -> 1:
1.2 against 7.4 ms); one matrix product over its taps gathered into a matrix when that matrix is
small; else a sum over its taps of shifted products, `y += W[:, :, j] @ x[:, j d : j d + T]`
(BLAS reads the shifted views in place). A transposed one with kernel 2 x stride is one product
and an overlap-add of its two halves. Each batch item is computed alone,
so an item's output never depends on the batch it was decoded in. DAC's Snake goes through one C
pass (csrc/codec.c) instead of five torch operations with a temporary each.

Results equal torch's to float32 rounding, not bit for bit (other summation orders; the codecs
are checked against their references to that tolerance). Only float32 modules on the CPU are
routed; anything else (other devices, dtypes, groups, strides, padding modes) keeps torch's path.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

# Up to this many gathered input values (4 MB), a conv copies its shifted inputs into one matrix
# and makes one product; past it (wide layers, long windows) the copy costs more than the k
# separate products it saves.
IM2COL_LIMIT = 1 << 20


def _narrow(co: int, ci: int, k: int) -> bool:
    """Whether the C direct convolution beats the products: few outputs, or few terms in all.
    Timed on one Xeon core: 1 -> 1 channel, k 7, 33k samples 357 -> 21 us; 96 -> 1, k 7, 1225 us
    against 7421; but 64 -> 32, k 3, 5406 us against 1325 and 16 -> 16, k 7, 232 against 189."""
    return kernels.available() and (co <= 4 or co * ci * k <= 256)


def conv1d(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a stride-1, ungrouped, zero-padded conv, each item alone: the direct C loop
    for narrow layers, one product over the gathered taps for small inputs, else shifted products."""
    (k,), (d,), (p,) = conv.kernel_size, conv.dilation, conv.padding
    w, b = conv.weight, conv.bias
    length = x.shape[-1] + 2 * p - d * (k - 1)
    if length < 1:  # shorter than the kernel: torch's own error
        return F.conv1d(x, w, b, 1, p, d)
    x = F.pad(x, (p, p)) if p else x.contiguous()  # the gathers below assume rows of t values
    out = x.new_empty(x.shape[0], w.shape[0], length)
    ci, t = x.shape[1], x.shape[2]
    if _narrow(w.shape[0], ci, k):
        for i in range(x.shape[0]):
            kernels.conv1d_narrow(x[i], w, b, d, out=out[i])
        return out
    if ci * k * length <= IM2COL_LIMIT:
        # Narrow layers: the k shifted views gathered into one (Ci k, L) matrix, one product.
        flat = w.reshape(w.shape[0], ci * k)
        for i in range(x.shape[0]):
            cols = x[i].as_strided((ci, k, length), (t, d, 1)).reshape(ci * k, length)
            if b is None:
                torch.mm(flat, cols, out=out[i])
            else:
                torch.addmm(b[:, None], flat, cols, out=out[i])
        return out
    taps = [w[:, :, j] for j in range(k)]
    for i in range(x.shape[0]):
        xi, y = x[i], out[i]
        if b is not None:
            y.copy_(b[:, None].expand_as(y))
        else:
            y.zero_()
        for j, wj in enumerate(taps):
            y.addmm_(wj, xi[:, j * d: j * d + length])
    return out


def conv_transpose1d(conv: nn.ConvTranspose1d, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """`conv(x)` (without its bias if `bias` is False) for a transposed conv with kernel = 2 x
    stride, ungrouped or depthwise: one product per item, `z[c, j, t]` going to output sample
    `t * s + j`, so each output is the sum of two of them."""
    (k,), (s,), (p,) = conv.kernel_size, conv.stride, conv.padding
    w, b = conv.weight, (conv.bias if bias else None)  # (Ci, Co / groups, K)
    n, _, t = x.shape
    co = w.shape[1] * conv.groups
    depthwise = conv.groups > 1
    taps = w[:, 0, :, None] if depthwise else w.permute(1, 2, 0).reshape(co * k, -1)  # (C, K, 1) / (Co K, Ci)
    length = (t - 1) * s - 2 * p + k
    out = x.new_empty(n, co, length)
    for i in range(n):
        z = taps * x[i][:, None, :] if depthwise else (taps @ x[i]).view(co, k, t)
        z = z.transpose(1, 2)  # (Co, T, K)
        y = x.new_empty(co, t + 1, s)
        y[:, :t] = z[..., :s]
        y[:, t] = 0
        y[:, 1:] += z[..., s:]
        y = y.view(co, (t + 1) * s)[:, p: p + length]
        if b is None:
            out[i] = y
        else:
            torch.add(y, b[:, None], out=out[i])
    return out


def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A streaming transformer's projection of a few rows (a Mimi chunk: 12-48 positions) through
    fastdia's float GEMV kernel, which computes each row on its own (BLAS runs such thin products
    at a quarter of its rate); more rows than the kernel's pass keep torch's product."""
    x2 = x.reshape(-1, module.in_features)
    if x2.shape[0] > kernels.MAX_ROWS:
        return F.linear(x, module.weight, module.bias)
    y = kernels.float_gemv(x2, module.weight)
    if module.bias is not None:
        y += module.bias
    return y.view(*x.shape[:-1], module.out_features)


def snake(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Snake module (learnt `alpha` of shape (1, C, 1)) through the C pass."""
    return kernels.snake(x, module.alpha)


def _routable_conv(m: nn.Module) -> bool:
    if type(m) is nn.Conv1d:
        return (m.stride == (1,) and m.groups == 1 and m.padding_mode == "zeros"
                and not isinstance(m.padding, str))
    if type(m) is nn.ConvTranspose1d:
        depthwise = m.groups == m.in_channels == m.out_channels
        return ((m.groups == 1 or depthwise) and m.kernel_size[0] == 2 * m.stride[0] and m.dilation == (1,)
                and m.output_padding == (0,) and m.padding_mode == "zeros")
    return False


def _unbiased(self, x: torch.Tensor) -> torch.Tensor:
    return conv_transpose1d(self.conv, x, bias=False)


def _guarded(fast, original):
    """Run `fast(module, x)` for float32 CPU (B, C, T) inputs (linears: (..., in)) outside autograd
    and outside graph capture (ONNX export traces the codec: it gets the pure model), else the
    module's own forward."""
    dims = (2, 3, 4) if fast is linear else (3,)

    def forward(self, x, *rest, **kw):
        if rest or kw or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() not in dims or (
                torch.is_grad_enabled() and (x.requires_grad or any(q.requires_grad for q in self.parameters()))
        ) or torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return original(x, *rest, **kw)
        return fast(self, x)
    return forward


def accelerate_codec(model: nn.Module, snake_type: type | None = None, streamed_type: type | None = None,
                     linears: bool = False) -> int:
    """Route `model`'s eligible convolutions (its `snake_type` activations, where the kernels run,
    the `unbiased` method of its `streamed_type` modules, a streaming transposed conv's bias-free
    pass over `.conv`, and with `linears` its float32 nn.Linear layers) through this module's CPU
    paths; returns how many modules were routed. Weights are read at each call, so later weight
    loads still apply. Safe to call twice."""
    routed = 0
    snakes = snake_type is not None and kernels.available()
    for m in model.modules():
        if getattr(m, "_fastdia_routed", False):
            continue
        name = "forward"
        if _routable_conv(m):
            fast = conv1d if type(m) is nn.Conv1d else conv_transpose1d
        elif snakes and type(m) is snake_type:
            fast = snake
        elif streamed_type is not None and type(m) is streamed_type and _routable_conv(m.conv):
            fast, name = _unbiased, "unbiased"
        elif linears and type(m) is nn.Linear and m.weight.dtype == torch.float32 and kernels.available():
            fast = linear
        else:
            continue
        setattr(m, name, types.MethodType(_guarded(fast, getattr(m, name)), m))
        m._fastdia_routed = name
        routed += 1
    return routed


def restore(model: nn.Module) -> int:
    """Undo accelerate_codec: every routed module runs torch's own forward again (benchmarks
    compare both paths in one process). Returns how many modules were restored."""
    restored = 0
    for m in model.modules():
        name = m.__dict__.pop("_fastdia_routed", None)
        if name:
            m.__dict__.pop(name, None)
            restored += 1
    return restored


__all__ = ["accelerate_codec", "conv1d", "conv_transpose1d", "linear", "restore", "snake"]
