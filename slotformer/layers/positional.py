"""Factorised grid positional encoding for slots.

A slot at ``(row, col)`` gets ``[row_embed[row] ‖ col_embed[col]]``. Rows and columns are
learned separately, so a grid shape never seen in training (say 3 x 5 after training on
1 x 3 and 4 x 4) is still made of known rows and known columns.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SlotPositionalEncoding(nn.Module):
    """Learned row and column embeddings, concatenated.

    Args:
        max_rows: number of distinct row ids; valid ids are ``0 .. max_rows - 1``.
        max_cols: number of distinct column ids; valid ids are ``0 .. max_cols - 1``.
        embed_dim: output width; must be even (half for the row, half for the column).

    Shapes:
        ``forward(row_ids [N], col_ids [N]) -> [N, embed_dim]`` (integer ids).

    Example:
        >>> pos = SlotPositionalEncoding(max_rows=2, max_cols=3, embed_dim=8)
        >>> pos(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])).shape
        torch.Size([3, 8])
    """

    def __init__(self, max_rows: int = 8, max_cols: int = 8, embed_dim: int = 64) -> None:
        super().__init__()
        if embed_dim <= 0 or embed_dim % 2 != 0:
            raise ValueError(
                f"embed_dim must be a positive even number (half rows, half columns), "
                f"got embed_dim={embed_dim}"
            )
        if max_rows < 1 or max_cols < 1:
            raise ValueError(
                f"max_rows and max_cols must be >= 1, got max_rows={max_rows}, max_cols={max_cols}"
            )
        self.max_rows = max_rows
        self.max_cols = max_cols
        self.embed_dim = embed_dim
        self.row_embed = nn.Embedding(max_rows, embed_dim // 2)
        self.col_embed = nn.Embedding(max_cols, embed_dim // 2)
        # Small like GPT-2's position table: the encoding is added to a unit-scale slot
        # embedding and should not drown it at initialisation.
        nn.init.normal_(self.row_embed.weight, std=0.02)
        nn.init.normal_(self.col_embed.weight, std=0.02)

    def forward(self, row_ids: Tensor, col_ids: Tensor) -> Tensor:
        """Positional encodings ``[N, embed_dim]`` for slots at ``(row_ids[k], col_ids[k])``,
        int64 ids in ``[0, max_rows)`` and ``[0, max_cols)`` (not checked here: the network
        checks a grid once, when it first runs on it)."""
        return torch.cat([self.row_embed(row_ids), self.col_embed(col_ids)], dim=-1)  # [N, D]
