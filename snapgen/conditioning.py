"""Text conditioning shared by training and sampling: prompts -> (hidden (B, L, D), mask (B, L)) through the on-disk
embedding cache, zeros as the null condition (Sec. 4), and the UNet's `net_fn(x, timestep, cond)` adapter."""

from __future__ import annotations

import functools

import torch

from . import flow


class LazyTextEncoder:
    """Loads the encoder only if the embedding cache misses (a GPU box can run on a carried cache alone)."""

    def __init__(self, name: str):
        self.name, self._encoder = name, None

    def encode(self, prompts: list[str]):
        if self._encoder is None:
            from .models.text import load_text_encoder

            self._encoder = load_text_encoder(self.name)
        return self._encoder.encode(prompts)


@functools.lru_cache(maxsize=4)
def text_encoder(name: str) -> LazyTextEncoder:
    """One lazy encoder per name and process: evals call the sampler once per batch of prompts."""
    return LazyTextEncoder(name)


class PromptConditioning:
    """Prompts encoded once (cached on disk), truncated to `length` tokens (default: the longest prompt's); zeros are
    the null condition."""

    def __init__(self, prompts: list[str], encoder_name: str, device: torch.device | str, length: int | None = None):
        from .data import text_embedding_cache

        # Each distinct prompt is encoded (and cached) once, keyed by the distinct prompts in first-seen order: a batch
        # of 500 class-conditional samples and one of 20, both cycling through the classes, hit the same entry (a GPU
        # box without the text encoder runs on a carried cache).
        position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        unique = list(position)
        rows = torch.as_tensor([position[p] for p in prompts], dtype=torch.long)
        emb = text_embedding_cache(unique, text_encoder(encoder_name))
        length = max(length or 0, int(emb["mask"].sum(1).max()))  # drop padding that no prompt uses
        self.hidden = emb["hidden"][rows, :length].to(device)  # (P, L, D)
        self.mask = emb["mask"][rows, :length].to(device)  # (P, L)
        self.dim = self.hidden.shape[-1]

    def __call__(self, prompt_idx: torch.Tensor, drop: torch.Tensor | None = None):
        """(B,) prompt indices [and (B,) bool drop] -> (hidden (B, L, D), mask (B, L))."""
        hidden, mask = self.hidden[prompt_idx], self.mask[prompt_idx]
        if drop is not None:
            hidden = torch.where(drop[:, None, None], torch.zeros_like(hidden), hidden)
            mask = torch.where(drop[:, None], torch.ones_like(mask), mask)
        return hidden, mask

    def null(self, n: int):
        return self(torch.zeros(n, dtype=torch.long, device=self.hidden.device),
                    torch.ones(n, dtype=torch.bool, device=self.hidden.device))


def unet_fn(net: torch.nn.Module) -> flow.NetFn:
    """Adapt the UNet to the objectives' `net_fn(x, timestep, cond)` with cond = (hidden, mask)."""
    return lambda x, timestep, cond: net(x, timestep, cond[0], cond[1])


__all__ = ["LazyTextEncoder", "text_encoder", "PromptConditioning", "unet_fn"]
