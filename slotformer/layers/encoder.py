"""The Slot Transformer encoder: one shared embedding per slot, self-attention between slots.

Slot types (blueprint indices) are embedded with a learned null row for empty slots
(`BlueprintEmbedding`), positions with factorised row and column embeddings
(`SlotPositionalEncoding`): an unseen grid shape is made of known rows and columns.

Every slot of every time step becomes a token ``Linear(slot_features) + position``; a learned
CLS token is prepended, ``num_layers`` pre-LayerNorm attention blocks mix the tokens, and the
encoder returns the CLS token (a summary of the grid) and every slot's token.

Inactive (empty) slots are masked as *keys* only: every query (CLS, active and empty slots)
attends to CLS and the active slots, so empty slots still get a representation (the pointer
head scores them as GERMINATE targets) without leaking their features into anything else.
The CLS key is never masked, so an all-empty grid (the start of every episode) still has a
valid key in every attention row and gives finite outputs and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from slotformer.layers.heads import check_dropout
from slotformer.validation import check_positive_int, describe_shape, expect, validation_enabled

EMPTY_SLOT_INDEX = -1
"""Blueprint index that marks an empty slot."""


class BlueprintEmbedding(nn.Module):
    """Embed blueprint indices (``-1`` = empty slot) into ``embed_dim`` features.

    The table has ``num_blueprints + 1`` rows, initialised from N(0, 0.02); index ``-1``
    selects the last (``null_index == num_blueprints``) through a ``torch.where`` against a
    buffer: no host sync, compiles with ``fullgraph=True``. Indices are not checked here (the
    networks' boundary checks their range); an out-of-range index is an indexing error on CPU
    and a device-side assert on CUDA.

    Shapes:
        ``forward(blueprint_indices [...] int64) -> [..., embed_dim]``; valid indices are
        ``-1`` and ``0 .. num_blueprints - 1``.

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
        self.num_blueprints = check_positive_int("num_blueprints", num_blueprints)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.embedding = nn.Embedding(num_blueprints + 1, embed_dim)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=0.02)
        # A 0-dim tensor that moves with .to(device); not persistent (not learned state).
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


class SlotPositionalEncoding(nn.Module):
    """Learned row and column embeddings, concatenated.

    Shapes:
        ``forward(row_ids [N], col_ids [N]) -> [N, embed_dim]``: int64 ids in
        ``[0, max_rows)`` and ``[0, max_cols)``; ``embed_dim`` is even (half rows, half columns).

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
        self.max_rows = check_positive_int("max_rows", max_rows)
        self.max_cols = check_positive_int("max_cols", max_cols)
        self.embed_dim = embed_dim
        self.row_embed = nn.Embedding(max_rows, embed_dim // 2)
        self.col_embed = nn.Embedding(max_cols, embed_dim // 2)
        # Small like GPT-2's position table: it must not drown the slot embedding at init.
        nn.init.normal_(self.row_embed.weight, std=0.02)
        nn.init.normal_(self.col_embed.weight, std=0.02)

    def forward(self, row_ids: Tensor, col_ids: Tensor) -> Tensor:
        """Encodings ``[N, embed_dim]`` of slots at ``(row_ids[k], col_ids[k])`` (ids not
        checked here: the network checks a grid once, when it first runs on it)."""
        return torch.cat([self.row_embed(row_ids), self.col_embed(col_ids)], dim=-1)  # [N, D]


@dataclass(frozen=True)
class EncoderIntermediates:
    """What the encoder computed on the way, returned when asked (``return_intermediates``).

    Attributes:
        attention: per block, first block first, the softmax attention weights
            ``[..., H, N+1, N+1]`` (rows = queries, columns = keys, CLS first, then the slots
            in input order; leading axes ``[M]`` from ``encode``, ``[B, T]`` from
            ``forward``). Each row sums to 1 over CLS and the active slots; the columns of
            inactive slots are exactly 0.

    Example:
        >>> enc = SlotTransformerEncoder(slot_dim=5, embed_dim=8, num_heads=2, num_layers=3)
        >>> feats, active = torch.randn(2, 4, 3, 5), torch.ones(2, 4, 3, dtype=torch.bool)
        >>> rows, cols = torch.zeros(3, dtype=torch.long), torch.arange(3)
        >>> _, _, found = enc(feats, active, rows, cols, return_intermediates=True)
        >>> len(found.attention), found.attention[0].shape
        (3, torch.Size([2, 4, 2, 4, 4]))
    """

    attention: tuple[Tensor, ...]


def checkpoint_in_chunks(
    fn: Callable[..., Any], inputs: tuple[Tensor, ...], chunk: int, *shared: Tensor
) -> Any:
    """``fn(*inputs, *shared)`` in chunks along dim 0 of ``inputs``, each chunk recomputed
    in backward instead of keeping its activations (``torch.utils.checkpoint``).

    ``fn`` returns a tensor or a tuple of tensors with the chunk's rows first; the chunks'
    outputs are concatenated. Activation memory is one chunk's plus inputs and outputs; the
    gradients equal ``fn``'s on the whole batch up to fp32 rounding (rows must be
    independent). ``shared`` tensors go whole to every chunk. Under ``torch.compile`` the
    batch is one chunk (the chunk count would depend on a symbolic size).

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> x = torch.randn(10, 3, requires_grad=True)
        >>> checkpoint_in_chunks(layer, (x,), 4).shape
        torch.Size([10, 2])
    """
    rows = inputs[0].shape[0]
    if torch.compiler.is_compiling() or rows <= chunk:
        return checkpoint(fn, *inputs, *shared, use_reentrant=False)
    parts = [
        checkpoint(fn, *piece, *shared, use_reentrant=False)
        for piece in zip(*(tensor.split(chunk) for tensor in inputs))
    ]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(outputs) for outputs in zip(*parts))
    return torch.cat(parts)


class SlotAttentionBlock(nn.Module):
    """One pre-LayerNorm block: ``x + attend(ln(x))``, then ``x + feed_forward(ln(x))``.

    ``dropout`` applies to the attention weights and both residual branches (training only);
    the feed-forward width is ``ff_mult * embed_dim``; ``embed_dim`` divides by ``num_heads``.

    Shapes:
        ``forward(x [M, S, D], key_bias [M, 1, 1, S])`` -> ``(x [M, S, D], weights)``:
        ``key_bias`` is 0 for keys to attend to, ``-inf`` for masked keys; ``weights`` is
        ``[M, H, S, S]`` (rows = queries) when ``return_attention``, else ``None``.

    Example:
        >>> block = SlotAttentionBlock(embed_dim=16, num_heads=2)
        >>> out, weights = block(torch.randn(5, 4, 16), torch.zeros(5, 1, 1, 4))
        >>> out.shape, weights is None
        (torch.Size([5, 4, 16]), True)
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float = 0.0, ff_mult: int = 4
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim}, "
                f"num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)  # fused: one matmul instead of three
        self.attn_out = nn.Linear(embed_dim, embed_dim)
        self.ff_norm = nn.LayerNorm(embed_dim)
        self.ff_in = nn.Linear(embed_dim, ff_mult * embed_dim)
        self.ff_out = nn.Linear(ff_mult * embed_dim, embed_dim)
        for linear in (self.qkv, self.attn_out, self.ff_in, self.ff_out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, x: Tensor, key_bias: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        M, S, D = x.shape
        # Tokens as 2-D [M*S, D]: each linear's output is a fresh tensor, so the residual
        # adds run in place on the branch outputs (one [M*S, D] allocation fewer each).
        x = x.reshape(M * S, D)
        attn, weights = self.attend(self.attn_norm(x), key_bias, S, return_attention)
        x = attn.add_(x)  # x + attend(ln(x))
        x = self.feed_forward(self.ff_norm(x)).add_(x)  # x + feed_forward(ln(x))
        return x.view(M, S, D), weights

    def attend(
        self, h: Tensor, key_bias: Tensor, tokens_per_step: int, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Multi-head self-attention within each step, the block's first residual branch.

        ``h [M*S, D]`` (normalised tokens, ``S = tokens_per_step`` per step), ``key_bias
        [M, 1, 1, S]`` -> ``(out [M*S, D], weights [M, H, S, S] or None)``; ``out`` is a
        fresh tensor the caller may add to in place.
        """
        S, D, H = tokens_per_step, h.shape[-1], self.num_heads
        dropout = self.dropout if self.training else 0.0
        # Fused projection split into strided views (SDPA takes any strides; split, unlike
        # unbind, backpropagates with one cat). view/transpose, not einops: cheaper at B=1.
        q, k, v = (
            part.view(-1, S, H, D // H).transpose(1, 2)  # [M, H, S, hd]
            for part in self.qkv(h).split(D, dim=-1)
        )
        weights: Tensor | None = None
        if return_attention:
            # Diagnostics only: materialise the [M, H, S, S] matrix that SDPA never builds.
            scores = (q @ k.transpose(-2, -1)) * (D // H) ** -0.5 + key_bias  # [M, H, S, S]
            weights = scores.softmax(dim=-1)
            attended = F.dropout(weights, dropout, True) if dropout > 0 else weights
            heads = attended @ v  # [M, H, S, hd]
        else:
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias, dropout_p=dropout)
        # SDPA lays its output out as [M, S, H, hd], so this reshape is a view.
        out = self.attn_out(heads.transpose(1, 2).reshape(-1, D))  # [M*S, D]
        return (F.dropout(out, dropout, True) if dropout > 0 else out), weights

    def feed_forward(self, h: Tensor) -> Tensor:
        """The position-wise MLP, the block's second residual branch: ``h [M*S, D]``
        (normalised tokens) -> ``[M*S, D]``, a fresh tensor the caller may add to in place."""
        dropout = self.dropout if self.training else 0.0
        hidden = self.ff_in(h)  # [M*S, ff_mult*D]
        # Exact GELU (on CPU faster than tanh's); in place without autograd, sparing the
        # block's largest allocation.
        hidden = F.gelu(hidden) if torch.is_grad_enabled() else torch.ops.aten.gelu_(hidden)
        out = self.ff_out(hidden)  # [M*S, D]
        return F.dropout(out, dropout, True) if dropout > 0 else out


class SlotTransformerEncoder(nn.Module):
    """Self-attention over slots with a CLS summary token.

    Args:
        slot_dim: features per slot (31 in the current layout, 39 in the older one).
        embed_dim: token width D (even, divisible by ``num_heads``); ``num_heads``: H.
        num_layers: number of :class:`SlotAttentionBlock` s.
        max_slots: largest slot count N accepted.
        dropout: dropout inside the blocks in training mode (policy networks pass 0.0).
        max_rows, max_cols: row ids lie in ``[0, max_rows)``, column ids in ``[0, max_cols)``.
        ff_mult: each block's feed-forward width is ``ff_mult * embed_dim``.

    Attributes:
        gradient_checkpointing: when True (training, grad enabled), run in chunks of time
            steps recomputed in backward: activation memory is one chunk's plus inputs and
            outputs, whatever ``B * T``; gradients are unchanged up to fp32 rounding.
        checkpoint_chunk_tokens: tokens (steps x (N + 1)) per chunk (default 4096).

    Shapes:
        ``forward(slot_features [B, T, N, slot_dim] float, slot_active_mask [B, T, N] bool
        (True = active), row_ids [N], col_ids [N])`` -> ``(cls_repr [B, T, D],
        slot_repr [B, T, N, D])``; with ``return_intermediates=True`` also an
        :class:`EncoderIntermediates` (attention ``[B, T, H, N+1, N+1]``, built only then,
        and the call is not checkpointed).

    Example:
        >>> enc = SlotTransformerEncoder(slot_dim=31, embed_dim=32, num_heads=4)
        >>> feats, active = torch.randn(2, 5, 3, 31), torch.tensor([True, False, True])
        >>> cls_repr, slot_repr = enc(feats, active.expand(2, 5, 3),
        ...                           torch.zeros(3, dtype=torch.long), torch.arange(3))
        >>> cls_repr.shape, slot_repr.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 5, 3, 32]))
    """

    gradient_checkpointing: bool
    checkpoint_chunk_tokens: int

    def __init__(
        self,
        slot_dim: int = 39,
        embed_dim: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        max_slots: int = 64,
        dropout: float = 0.1,
        max_rows: int = 8,
        max_cols: int = 8,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        sizes = {"ff_mult": ff_mult, "slot_dim": slot_dim, "embed_dim": embed_dim,
                 "num_heads": num_heads, "num_layers": num_layers, "max_slots": max_slots}
        for name, value in sizes.items():
            check_positive_int(name, value)
        check_dropout(dropout)
        self.slot_dim = slot_dim
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.max_slots = max_slots
        self.gradient_checkpointing = False
        self.checkpoint_chunk_tokens = 4096

        # One embedding shared by every slot: parameters do not grow with N.
        self.slot_embed = nn.Linear(slot_dim, embed_dim)
        self.pos_encoding = SlotPositionalEncoding(max_rows, max_cols, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            SlotAttentionBlock(embed_dim, num_heads, dropout, ff_mult) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(embed_dim)
        # The CLS key's additive bias (0 = always attended), on the module's device and dtype.
        self.register_buffer("cls_key_bias", torch.zeros(1, 1), persistent=False)
        self.cls_key_bias: Tensor

    @overload
    def forward(
        self, slot_features: Tensor, slot_active_mask: Tensor, row_ids: Tensor,
        col_ids: Tensor, *, return_intermediates: Literal[False] = False,
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def forward(
        self, slot_features: Tensor, slot_active_mask: Tensor, row_ids: Tensor,
        col_ids: Tensor, *, return_intermediates: Literal[True],
    ) -> tuple[Tensor, Tensor, EncoderIntermediates]: ...

    def forward(
        self, slot_features: Tensor, slot_active_mask: Tensor, row_ids: Tensor, col_ids: Tensor,
        *, return_intermediates: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, EncoderIntermediates]:
        """Encode slots; see the class docstring for shapes."""
        self._check_inputs(slot_features, slot_active_mask, row_ids, col_ids)
        B, T, N, S = slot_features.shape
        D = self.embed_dim
        M = B * T  # B and T merged: attention runs within one time step of one episode
        features = slot_features.reshape(M, N, S)
        active = slot_active_mask.reshape(M, N)
        position = self.pos_encoding(row_ids, col_ids)  # [N, D]
        if return_intermediates:
            cls_repr, slot_repr, found = self.encode(
                features, active, position, return_intermediates=True
            )
            attention = tuple(w.view(B, T, *w.shape[1:]) for w in found.attention)
            return cls_repr.view(B, T, D), slot_repr.view(B, T, N, D), EncoderIntermediates(
                attention)
        if self.recomputes():
            cls_repr, slot_repr = checkpoint_in_chunks(
                self.encode, (features, active), self.chunk_steps(N), position
            )
        else:
            cls_repr, slot_repr = self.encode(features, active, position)
        return cls_repr.view(B, T, D), slot_repr.view(B, T, N, D)

    def recomputes(self) -> bool:
        """Gradient checkpointing is on and this call builds a graph for backward."""
        return self.gradient_checkpointing and self.training and torch.is_grad_enabled()

    def chunk_steps(self, num_slots: int) -> int:
        """Steps per recomputed chunk: about ``checkpoint_chunk_tokens`` tokens of N + 1."""
        return max(1, self.checkpoint_chunk_tokens // (num_slots + 1))

    @overload
    def encode(
        self, features: Tensor, active: Tensor, position: Tensor, *,
        return_intermediates: Literal[False] = False,
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def encode(
        self, features: Tensor, active: Tensor, position: Tensor, *,
        return_intermediates: Literal[True],
    ) -> tuple[Tensor, Tensor, EncoderIntermediates]: ...

    def encode(
        self, features: Tensor, active: Tensor, position: Tensor, *,
        return_intermediates: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, EncoderIntermediates]:
        """The encoder on ``M`` independent steps, without input checks (the caller's
        boundary made them): ``features [M, N, slot_dim]``, ``active [M, N]`` bool,
        ``position [N, D]`` (from ``pos_encoding``) -> ``(cls [M, D], slots [M, N, D])``,
        after the final LayerNorm; with ``return_intermediates=True`` also an
        :class:`EncoderIntermediates` (attention ``[M, H, N+1, N+1]``)."""
        M, N, _ = features.shape
        D = self.embed_dim
        tokens = self.slot_embed(features) + position  # [M, N, D]
        x = torch.cat([self.cls_token.expand(M, 1, D), tokens], dim=1)  # [M, N+1, D]

        # Additive key mask built once for all blocks: 0 = attend, -inf = inactive slot
        # (float: SDPA would convert a bool mask again in every block).
        slot_key_bias = torch.where(active, 0.0, float("-inf"))  # [M, N]
        key_bias = torch.cat(
            [self.cls_key_bias.expand(M, 1), slot_key_bias.to(self.cls_key_bias.dtype)], dim=1
        ).view(M, 1, 1, N + 1)  # broadcast over heads and queries

        maps: list[Tensor] = []
        for block in self.blocks:
            x, weights = block(x, key_bias, return_intermediates)
            if weights is not None:
                maps.append(weights)
        x = self.final_norm(x)  # [M, N+1, D]
        # split (not indexing) so that backward is one cat rather than two zero-filled copies;
        # the slot part is a view that skips the CLS row by stride.
        cls_part, slot_part = x.split([1, N], dim=1)
        if return_intermediates:
            return cls_part.view(M, D), slot_part, EncoderIntermediates(tuple(maps))
        return cls_part.view(M, D), slot_part

    def _check_inputs(
        self, slot_features: Tensor, slot_active_mask: Tensor, row_ids: Tensor, col_ids: Tensor
    ) -> None:
        # Metadata checks, and the ids' range while validation is on.
        if slot_features.dim() != 4 or slot_features.shape[-1] != self.slot_dim:
            raise ValueError(
                f"slot_features must be [B, T, N, slot_dim={self.slot_dim}], got shape "
                f"{describe_shape(slot_features)}"
            )
        expect("slot_features", slot_features, floating=True)
        B, T, N, _ = slot_features.shape
        if N > self.max_slots:
            raise ValueError(
                f"slot_features has N={N} slots (shape {describe_shape(slot_features)}), more "
                f"than max_slots={self.max_slots}"
            )
        expect("slot_active_mask", slot_active_mask, dtype=torch.bool, shape=(B, T, N),
               hint=" ([B, T, N] of slot_features, True = active)")
        for name, ids in (("row_ids", row_ids), ("col_ids", col_ids)):
            expect(name, ids, shape=(N,), hint=" ([N], one id per slot of slot_features)")
        if validation_enabled():  # the ids' values: one host sync
            limits = (self.pos_encoding.max_rows, self.pos_encoding.max_cols)
            for name, ids, limit in zip(("row_ids", "col_ids"), (row_ids, col_ids), limits):
                bad = (ids < 0) | (ids >= limit)
                if bool(bad.any()):
                    index = int(bad.nonzero()[0, 0])
                    raise ValueError(
                        f"{name} must lie in [0, {limit}), got {int(ids[index])} at index {index}"
                    )
