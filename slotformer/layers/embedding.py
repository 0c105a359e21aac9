"""Learned embedding of per-slot blueprint indices, with a null row for empty slots.

An observation carries one blueprint index per slot: ``0 .. num_blueprints - 1`` for a
slot holding a seed of that blueprint, ``-1`` for an empty slot. ``-1`` is mapped to an
extra learned "null" row (the last row) rather than to a zero vector, so the network can
learn what "empty" looks like and the pointer head can still tell empty slots apart by
position.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EMPTY_SLOT_INDEX = -1
"""Blueprint index that marks an empty slot."""



class BlueprintEmbedding(nn.Module):
    """Embed blueprint indices (``-1`` = empty slot) into ``embed_dim`` features.

    The table has ``num_blueprints + 1`` rows, all initialised from N(0, 0.02); index
    ``-1`` selects the last row (``null_index == num_blueprints``). The remap is a
    ``torch.where`` against a non-persistent buffer, so ``forward`` has no host sync and
    no value-dependent Python branch (it compiles with ``fullgraph=True``), and the buffer
    follows the module across ``.to(device)``.

    Indices are not checked here: the networks' boundary checks them (their range while
    validation is on). An out-of-range index is an indexing error on CPU and a device-side
    assert on CUDA.

    Args:
        num_blueprints: number of real blueprints (valid indices ``0 .. num_blueprints-1``).
        embed_dim: size of each embedding vector.

    Shapes:
        blueprint_indices: ``[...]`` int64 (any leading shape, e.g. ``[B, T, N]``).
        returns: ``[..., embed_dim]``.

    Example:
        >>> emb = BlueprintEmbedding(num_blueprints=13, embed_dim=4)
        >>> out = emb(torch.tensor([[0, 12, -1]]))
        >>> out.shape
        torch.Size([1, 3, 4])
        >>> torch.equal(out[0, 2], emb.embedding.weight[13])
        True
    """

    null_index_buffer: Tensor

    def __init__(self, num_blueprints: int = 13, embed_dim: int = 4) -> None:
        super().__init__()
        for name, size in (("num_blueprints", num_blueprints), ("embed_dim", embed_dim)):
            if size < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        self.num_blueprints = num_blueprints
        self.embed_dim = embed_dim
        self.embedding = nn.Embedding(num_blueprints + 1, embed_dim)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=0.02)
        # A 0-dim tensor rather than a Python int: torch.where then needs no scalar
        # materialisation, and the buffer moves with .to(device). Non-persistent because
        # it is derived from num_blueprints, not learned state.
        self.register_buffer(
            "null_index_buffer", torch.tensor(num_blueprints, dtype=torch.int64), persistent=False
        )

    @property
    def null_index(self) -> int:
        """Row of the embedding table used for empty slots (index ``-1``)."""
        return self.num_blueprints

    def forward(self, blueprint_indices: Tensor) -> Tensor:
        """Look up embeddings; ``-1`` maps to the null row. ``[...] -> [..., embed_dim]``."""
        table_indices = torch.where(
            blueprint_indices == EMPTY_SLOT_INDEX, self.null_index_buffer, blueprint_indices
        )  # [...]
        return self.embedding(table_indices)  # [..., embed_dim]

    def extra_repr(self) -> str:
        return f"num_blueprints={self.num_blueprints}, embed_dim={self.embed_dim}, null_index={self.null_index}"
