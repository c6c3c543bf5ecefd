"""Mimi's split residual vector quantizer (semantic codebook + acoustic residual codebooks):
codes <-> latent frames. Parameter names are transformers' `quantizer.*` keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MimiEuclideanCodebook(nn.Module):
    """Codebook stored as EMA statistics: entry = embed_sum / max(cluster_usage, 1e-5)."""

    def __init__(self, config) -> None:  # a MimiConfig
        super().__init__()
        self.register_buffer("initialized", torch.ones(1))
        self.register_buffer("cluster_usage", torch.ones(config.codebook_size))
        self.register_buffer("embed_sum", torch.zeros(config.codebook_size, config.codebook_dim))

    @property
    def embed(self) -> torch.Tensor:  # (N, d)
        return self.embed_sum / self.cluster_usage.clamp(min=1e-5)[:, None]

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, d, T) -> (B, T)
        b, d, t = x.shape
        flat = x.transpose(1, 2).reshape(1, b * t, d).float()
        # cdist in float32 like transformers, so near-ties resolve to the same index.
        dist = torch.cdist(flat, self.embed[None].float(), p=2)[0]
        return dist.argmin(dim=-1).view(b, t)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, d, T)
        # Only the looked-up entries are divided (the same division per element, so the same
        # bits as indexing `embed`): a streaming chunk reads a few rows of a 2048-row table, and
        # building the whole table took 14 ms of each ~100 ms chunk of the full-size codec.
        usage = F.embedding(codes, self.cluster_usage[:, None]).clamp(min=1e-5)
        return (F.embedding(codes, self.embed_sum) / usage).transpose(1, 2)


class MimiVectorQuantization(nn.Module):
    """One RVQ stage (a wrapper so names read `layers.i.codebook.*`)."""

    def __init__(self, config) -> None:  # a MimiConfig
        super().__init__()
        self.codebook = MimiEuclideanCodebook(config)


class MimiResidualVectorQuantizer(nn.Module):
    """Residual stages in a projected space (1x1 convs in and out when its width differs)."""

    def __init__(self, config, n_stages: int) -> None:  # a MimiConfig
        super().__init__()
        self.layers = nn.ModuleList(MimiVectorQuantization(config) for _ in range(n_stages))
        self.input_proj = self.output_proj = None
        width = config.vector_quantization_hidden_dimension
        if width != config.hidden_size:
            self.input_proj = nn.Conv1d(config.hidden_size, width, 1, bias=False)
            self.output_proj = nn.Conv1d(width, config.hidden_size, 1, bias=False)

    def encode(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, T) -> (B, n, T)
        residual = z if self.input_proj is None else self.input_proj(z)
        codes = []
        for stage in self.layers:
            idx = stage.codebook.encode(residual)
            residual = residual - stage.codebook.decode(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, n, T) -> (B, D, T)
        z = self.layers[0].codebook.decode(codes[:, 0])
        for i in range(1, codes.shape[1]):
            z = z + self.layers[i].codebook.decode(codes[:, i])
        return z if self.output_proj is None else self.output_proj(z)


class MimiSplitResidualVectorQuantizer(nn.Module):
    """Semantic stages and acoustic stages, each an RVQ of the *same* latent; decode sums both."""

    def __init__(self, config) -> None:  # a MimiConfig
        super().__init__()
        self.n_semantic = config.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = MimiResidualVectorQuantizer(config, config.num_semantic_quantizers)
        self.acoustic_residual_vector_quantizer = MimiResidualVectorQuantizer(
            config, config.num_quantizers - config.num_semantic_quantizers
        )

    def codebooks(self) -> list[MimiEuclideanCodebook]:
        """All codebooks in code order (semantic first)."""
        stages = [*self.semantic_residual_vector_quantizer.layers, *self.acoustic_residual_vector_quantizer.layers]
        return [s.codebook for s in stages]

    def encode(self, z: torch.Tensor) -> torch.Tensor:  # (B, D, T) -> (B, n_q, T)
        semantic = self.semantic_residual_vector_quantizer.encode(z)
        acoustic = self.acoustic_residual_vector_quantizer.encode(z)
        return torch.cat([semantic, acoustic], dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, n_q, T) -> (B, D, T)
        z = self.semantic_residual_vector_quantizer.decode(codes[:, : self.n_semantic])
        if codes.shape[1] > self.n_semantic:
            z = z + self.acoustic_residual_vector_quantizer.decode(codes[:, self.n_semantic:])
        return z
