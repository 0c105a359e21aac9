"""The Slot Transformer actor-critic: per-slot encoder, self-attention, CLS, LSTM, pointer head.

```
base [B,T,23] ─► global encoder ─► g [B,T,D] ─────────────────────┐
slots [B,T,N,S] ‖ blueprint emb ─► SlotTransformerEncoder ─► cls [B,T,D], slot_repr [B,T,N,D]
                       [g ‖ cls] ─► ResidualLSTM ─► temporal [B,T,H]
temporal ─► categorical heads         temporal ⊗ slot_repr ─► pointer ─► slot logits [B,T,N]
temporal (‖ one_hot(op)) ─► V(s), Q(s, op)    slot_repr ─► contributions [B,T,N]
```
Parameters do not depend on N, and the same weights run on any grid up to ``max_slots``
slots and ``max_grid_size`` rows/columns (pass ``slot_config=`` per call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, overload

import torch
from torch import Tensor, nn

from slotformer.actions import ActionSpace
from slotformer.config import SlotConfig
from slotformer.layers.encoder import (
    BlueprintEmbedding,
    EncoderIntermediates,
    SlotTransformerEncoder,
    checkpoint_in_chunks,
)
from slotformer.layers.heads import categorical_head, contribution_mlp, value_head
from slotformer.layers.lstm import ResidualLSTM
from slotformer.networks.configs import ActorCriticConfig, with_contract_arguments
from slotformer.networks.core import ActorCriticCore, TrunkOutput, init_actor_critic_weights
from slotformer.networks.inputs import PolicyInputs, SlotContext
from slotformer.networks.results import TrunkIntermediates
from slotformer.telemetry import (
    AttentionStats,
    TelemetryHook,
    TelemetryHookHandle,
    TelemetryHooks,
    compute_attention_stats,
)


class PointerHead(nn.Module):
    """Scores every slot against the temporal state: scaled dot-product cross-attention.

    ``query = Linear(H, D)(temporal) / sqrt(D)``, ``keys = Linear(D, D, bias=False)(slot_repr)``,
    ``logits = query . keys``. Computed as ``(query @ W_key) . slot_repr``, the same product
    in another order: the key projection then runs once per step instead of once per slot,
    and no ``[B, T, N, D]`` key tensor is built or saved for backward (at N = 50 that was
    26 MB per 32 x 64 minibatch). Scaling the query before the product keeps the logits in
    range in fp16/bf16. No slot is masked here: which slots are valid comes from the
    caller's masks (GERMINATE targets empty slots).

    Args:
        temporal_dim: H, the recurrent core's width.
        slot_dim: D, the slot representation's width.

    Shapes:
        ``temporal [B, T, H]``, ``slot_repr [B, T, N, D]`` -> ``logits [B, T, N]``.

    Example:
        >>> head = PointerHead(temporal_dim=8, slot_dim=4)
        >>> head(torch.zeros(2, 3, 8), torch.zeros(2, 3, 5, 4)).shape
        torch.Size([2, 3, 5])
    """

    def __init__(self, temporal_dim: int, slot_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(temporal_dim, slot_dim)
        # No key bias: it adds ``query . bias`` to every slot's logit alike, which the softmax
        # cancels, so its gradient would be zero (rounding noise only) and it would never learn.
        self.key = nn.Linear(slot_dim, slot_dim, bias=False)
        self.scale = 1.0 / math.sqrt(slot_dim)

    def forward(self, temporal: Tensor, slot_repr: Tensor) -> Tensor:
        query = self.query(temporal) * self.scale  # [B, T, D]
        # q . (W k_n) = (W^T q) . k_n: project the query, not every slot (no key bias).
        query_in_slot_space = query @ self.key.weight  # [B, T, D]
        return torch.einsum("btd,btnd->btn", query_in_slot_space, slot_repr)  # [B, T, N]

    @property
    def output_layer(self) -> nn.Linear:
        """The layer whose init sets the initial logit scale (for small-gain init)."""
        return self.key


@dataclass(frozen=True)
class TransformerConfig(ActorCriticConfig):
    """The Slot Transformer's hyper-parameters (and `ActorCriticConfig`'s shared ones).

    Args:
        embed_dim: D, the slot token width.
        lstm_hidden_dim: H (default 128).
        transformer_layers: attention blocks.
        transformer_heads: attention heads.
        head_hidden: width of the action and value heads (default 128; the plan had 256,
            which learned no better on Slot Garden over ten seeds and trained about 1.3x
            slower, docs/training.md).
        encoder_dropout: dropout inside the encoder in train mode. The default 0.0 keeps the
            policy and value path deterministic; a non-zero value makes it stochastic.
        max_slots: largest N the encoder accepts.
        max_grid_size: rows and columns the positional encoding knows.
        contribution_hidden: width of the per-slot contribution predictor
            (``D -> h -> h/2 -> 1``). It runs on every slot token, so at large N its width
            is a large share of the update's cost: 64 by default (it used to be
            ``head_hidden``, 256, about 45% of the N = 50 update step).
        contribution_dropout: dropout in the contribution predictor in train mode (default
            0.0; it used to be 0.1, whose random masks on ``[B, T, N, h]`` cost a
            quarter of the N = 50 update step).
        transformer_ff_mult: feed-forward width of each block, in multiples of
            ``embed_dim`` (default 2; 4, the usual transformer width, learned no better,
            with 128-wide heads).

    Example:
        >>> config = TransformerConfig(embed_dim=32, lstm_hidden_dim=64)
        >>> SlotTransformerActorCritic(config=config).config.state_dim  # 23 + 3 * 31
        116
    """

    lstm_hidden_dim: int = 128
    embed_dim: int = 64
    transformer_layers: int = 2
    transformer_heads: int = 4
    head_hidden: int = 128
    encoder_dropout: float = 0.0
    max_slots: int = 64
    max_grid_size: int = 16
    contribution_hidden: int = 64
    contribution_dropout: float = 0.0
    transformer_ff_mult: int = 2


class SlotTransformerActorCritic(ActorCriticCore):
    """Recurrent actor-critic over slots with a Slot Transformer trunk.

    Args:
        state_dim: flat observation width ``base_dim + N * slot_dim`` (``slot_dim`` is
            inferred when not given); None = ``base_dim + 31 * N``.
        slot_config: the slots (default: 3 in one row).
        lstm_hidden_dim, lstm_layers: the reference network's widths, over ``config``'s.
        config: every hyper-parameter (`TransformerConfig`; default: its defaults).
        action_space: the factored heads (default: the contract's eight heads).

    Example:
        >>> net = SlotTransformerActorCritic(state_dim=23 + 3 * 31)
        >>> state, bp = torch.randn(2, 5, 116), torch.full((2, 5, 3), -1)
        >>> out = net(state, bp)
        >>> out["slot_logits"].shape, out["value"].shape
        (torch.Size([2, 5, 3]), torch.Size([2, 5]))
    """

    network_type: ClassVar[str] = "transformer"
    supports_slot_config_override: ClassVar[bool] = True
    config: TransformerConfig

    def __init__(
        self,
        state_dim: int | None = None,
        slot_config: SlotConfig | None = None,
        *,
        lstm_hidden_dim: int | None = None,
        lstm_layers: int | None = None,
        config: TransformerConfig | None = None,
        action_space: ActionSpace | None = None,
    ) -> None:
        config = with_contract_arguments(
            TransformerConfig() if config is None else config, TransformerConfig,
            state_dim=state_dim, lstm_hidden_dim=lstm_hidden_dim, lstm_layers=lstm_layers,
        )
        super().__init__(config, slot_config, action_space)
        c = self.config
        self._check_grid(self.slot_config)
        D, H, head_hidden = c.embed_dim, c.lstm_hidden_dim, c.head_hidden
        layout = self.layout
        assert layout is not None  # needs_layout: the constructor inferred or checked it

        self.global_encoder = nn.Sequential(
            nn.Linear(layout.base_dim, D), nn.LayerNorm(D), nn.ReLU(), nn.Linear(D, D)
        )
        self.blueprint_embedding = BlueprintEmbedding(c.num_slot_types, c.blueprint_embed_dim)
        self.encoder = SlotTransformerEncoder(
            slot_dim=layout.slot_dim + c.blueprint_embed_dim,
            embed_dim=D,
            num_heads=c.transformer_heads,
            num_layers=c.transformer_layers,
            max_slots=c.max_slots,
            dropout=c.encoder_dropout,
            max_rows=c.max_grid_size,
            max_cols=c.max_grid_size,
            ff_mult=c.transformer_ff_mult,
        )
        # Fusion of [global ‖ CLS] is the LSTM's input projection.
        self.lstm = ResidualLSTM(input_size=2 * D, hidden_size=H, num_layers=c.lstm_layers)

        # The pointer head's module is named after its head ("slot_head" by default), as
        # every head's is (`head_module`), so any action space's pointer head has one.
        pointer = self.action_space.pointer_head
        assert pointer is not None  # the core refuses an action space without one
        self.add_module(f"{pointer}_head", PointerHead(temporal_dim=H, slot_dim=D))
        for name in self.action_space.head_names:
            if name == pointer:
                continue
            depth = 3 if name == "blueprint" else 2
            n = self.action_space.sizes[name]
            self.add_module(f"{name}_head", categorical_head(H, head_hidden, n, depth))
        # V and Q read the recurrent output alone, as in the flat network, so the reference's
        # `_compute_q(lstm_out, op)` works for both (the LSTM's residual input projection
        # already carries [global ‖ CLS] into it).
        self.state_value_head = value_head(H, head_hidden)
        self.q_head = value_head(H + self.num_ops, head_hidden) if c.use_q_head else None
        self.contribution_predictor = (
            contribution_mlp(
                D, c.contribution_hidden, 1, layer_norm=True, dropout=c.contribution_dropout
            )
            if c.use_contribution_head
            else None
        )
        init_actor_critic_weights(self, skip=(self.encoder, self.lstm))

        self.capture_attention = False
        self._last_intermediates: TrunkIntermediates | None = None
        self._attention_stats: AttentionStats | None = None
        self._telemetry_hooks = TelemetryHooks()

    # ------------------------------------------------------------------ trunk
    def _trunk(self, inputs: PolicyInputs, return_intermediates: bool = False) -> TrunkOutput:
        ctx, active_mask = inputs.ctx, inputs.active
        base, slots = inputs.base, inputs.slots  # [B, T, base], [B, T, N, S]: views, no copy
        assert base is not None and slots is not None
        B, T, N, S = slots.shape
        M = B * T  # the encoder's work is independent per step
        # Views of the caller's tensors (no copy): what a recomputed chunk keeps.
        steps = (
            slots.reshape(M, N, S), inputs.blueprint_indices.reshape(M, N), active_mask.reshape(M, N)
        )
        position = self.encoder.pos_encoding(ctx.row_ids, ctx.col_ids)  # [N, D]
        seen: TrunkIntermediates | None = None
        if return_intermediates or self.capture_attention:
            cls_repr, slot_repr, found = self._encode_steps(
                *steps, position, return_intermediates=True
            )
            maps = tuple(w.view(B, T, *w.shape[1:]) for w in found.attention)
            seen = TrunkIntermediates(maps, active_mask, ctx.slot_config.slot_ids)
            if self.capture_attention:
                self._record(seen)
        elif self.encoder.recomputes():
            # Lean memory: embedding + encoder recomputed chunk by chunk in backward.
            chunk = self.encoder.chunk_steps(N)
            cls_repr, slot_repr = checkpoint_in_chunks(self._encode_steps, steps, chunk, position)
        else:
            cls_repr, slot_repr = self._encode_steps(*steps, position)
        D = self.config.embed_dim
        cls_repr = cls_repr.view(B, T, D)  # [B, T, D]
        slot_repr = slot_repr.view(B, T, N, D)  # [B, T, N, D]
        global_repr = self.global_encoder(base)  # [B, T, D]
        fused = torch.cat([global_repr, cls_repr.to(global_repr.dtype)], dim=-1)  # [B, T, 2D]
        temporal, new_hidden = self.lstm.run(fused, inputs.hidden, inputs.episode_starts)
        return TrunkOutput(temporal, new_hidden, slot_repr, seen)

    @overload
    def _encode_steps(
        self, slots: Tensor, blueprint_indices: Tensor, active: Tensor, position: Tensor
    ) -> tuple[Tensor, Tensor]: ...

    @overload
    def _encode_steps(
        self,
        slots: Tensor,
        blueprint_indices: Tensor,
        active: Tensor,
        position: Tensor,
        return_intermediates: Literal[True],
    ) -> tuple[Tensor, Tensor, EncoderIntermediates]: ...

    def _encode_steps(
        self,
        slots: Tensor,
        blueprint_indices: Tensor,
        active: Tensor,
        position: Tensor,
        return_intermediates: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, EncoderIntermediates]:
        """``slots [M, N, S]``, ``blueprint_indices [M, N]``, ``active [M, N]`` ->
        ``(cls [M, D], slot_repr [M, N, D])`` (and the encoder's intermediates when asked)."""
        blueprint = self.blueprint_embedding(blueprint_indices)  # [M, N, E]
        slot_inputs = torch.cat([slots, blueprint.to(slots.dtype)], dim=-1)  # [M, N, S+E]
        if return_intermediates:
            return self.encoder.encode(slot_inputs, active, position, return_intermediates=True)
        return self.encoder.encode(slot_inputs, active, position)

    def _slot_logits(self, trunk: TrunkOutput) -> Tensor:
        assert trunk.slot_repr is not None and self.action_space.pointer_head is not None
        pointer = self.head_module(self.action_space.pointer_head)
        return pointer(trunk.temporal, trunk.slot_repr.to(trunk.temporal.dtype))

    def _contributions(self, trunk: TrunkOutput, stop_gradient: bool) -> Tensor:
        assert trunk.slot_repr is not None and self.contribution_predictor is not None
        slot_repr = trunk.slot_repr.detach() if stop_gradient else trunk.slot_repr
        if self.encoder.recomputes():
            # Lean memory: the per-slot MLP is recomputed chunk by chunk in backward too, so
            # its [B*T*N, h] activations are never all alive at once.
            B, T, N, D = slot_repr.shape
            tokens = slot_repr.reshape(B * T * N, D)
            chunk = self.encoder.checkpoint_chunk_tokens
            return checkpoint_in_chunks(self.contribution_predictor, (tokens,), chunk).view(B, T, N)
        return self.contribution_predictor(slot_repr).squeeze(-1)  # [B, T, N]

    def _new_context(self, config: SlotConfig, device: torch.device) -> SlotContext:
        self._check_grid(config)
        return super()._new_context(config, device)

    def _check_grid(self, config: SlotConfig) -> None:
        c = self.config
        if config.num_slots > c.max_slots or max(config.num_rows, config.num_cols) > c.max_grid_size:
            raise ValueError(
                f"slot_config has N={config.num_slots} slots on {config.num_rows} rows x "
                f"{config.num_cols} columns; this network takes at most max_slots={c.max_slots} "
                f"slots and max_grid_size={c.max_grid_size} rows and columns"
            )

    # ------------------------------------------------------------------ reference names
    # The reference PPO agent builds its weight-decay optimiser groups from module
    # attributes: the heads (actor, no decay), ``state_value_head`` and ``q_head`` (critic,
    # decayed) and ``feature_net``, ``lstm``, ``lstm_ln``, ``blueprint_embedding`` and
    # ``contribution_predictor`` (shared, no decay). The two below give the transformer's
    # modules those roles; they are views, not registered submodules, so the parameters,
    # the state dict and the module tree are unchanged.
    @property
    def feature_net(self) -> nn.ModuleList:
        """The trunk before the recurrent core but the blueprint embedding (the global
        encoder and the slot encoder): the role of the reference network's ``feature_net``,
        its shared layer before the LSTM. A new list on each read, for grouping parameters;
        not called by `forward`."""
        return nn.ModuleList([self.global_encoder, self.encoder])

    @property
    def lstm_ln(self) -> nn.Module:
        """The reference network's norm after its LSTM: parameter-free here, as in the flat
        network (the recurrent core's layers carry their own norms)."""
        return nn.Identity()

    # ------------------------------------------------------------------ telemetry
    # `forward(..., return_intermediates=True)` returns the attention maps as data. The
    # `capture_attention` switch (`slotformer.telemetry.capture_attention`) and the hooks
    # below keep the last captured maps for callers that cannot pass that argument (a
    # trainer calling a bundle); their statistics are computed on request, outside the call.
    def _record(self, seen: TrunkIntermediates) -> None:
        self._last_intermediates = seen
        self._attention_stats = None
        if self._telemetry_hooks.has_hooks:
            stats = self.get_attention_stats()
            assert stats is not None
            self._telemetry_hooks.call(self, stats)

    def get_attention_stats(self) -> AttentionStats | None:
        """Statistics of the last call run with attention capture on (None before any)."""
        seen = self._last_intermediates
        if self._attention_stats is None and seen is not None:
            self._attention_stats = compute_attention_stats(
                seen.attention, seen.active, seen.slot_ids
            )
        return self._attention_stats

    def register_telemetry_hook(self, hook: TelemetryHook) -> TelemetryHookHandle:
        """Call ``hook(network, stats)`` after each call that captured attention.

        Returns a handle whose ``.remove()`` unregisters the hook. Exceptions raised by the
        hook propagate to the caller.
        """
        return self._telemetry_hooks.register(hook)
