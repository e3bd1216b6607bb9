"""Attention masks and position ids for left-padded batches."""

from __future__ import annotations

import torch


def causal_mask(attention_mask: torch.Tensor | None, B: int, P: int, device: torch.device) -> torch.Tensor:
    """Bool ``[B, 1, P, P]``: causal, padded keys hidden; every query may see itself (no empty rows)."""
    i = torch.arange(P, device=device)
    mask = (i[None, :] <= i[:, None])[None, None].expand(B, 1, P, P)
    if attention_mask is not None:
        real = attention_mask.bool()[:, None, None, :]
        mask = (mask & real) | torch.eye(P, dtype=torch.bool, device=device)[None, None]
    return mask


def default_position_ids(attention_mask: torch.Tensor | None, B: int, P: int, device: torch.device) -> torch.Tensor:
    """Positions counted over real tokens (left padding safe): ``[B, P]`` long."""
    if attention_mask is None:
        return torch.arange(P, device=device)[None].expand(B, P)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
