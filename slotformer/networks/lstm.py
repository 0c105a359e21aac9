"""The flat baseline: `FactoredRecurrentActorCritic`, the concatenation LSTM actor-critic.

``concat(state, flattened blueprint embeddings) -> Linear -> LayerNorm -> ReLU ->
ResidualLSTM``, then per-head MLPs. Its input layer, slot head and contribution predictor
are sized by N, so it runs on one grid only. Everything right of the trunk is the shared
core (`slotformer.networks.core`), identical to the Slot Transformer's.

Its parameters have the reference network's layout (esper-lite's
``FactoredRecurrentActorCritic``) layer for layer: the same widths and the same order, so
a reference state dict loads after its keys are renamed (`slotformer.migration`). Heads
on the LSTM output ``[B, T, H]``:

* every categorical head (the slot head included): ``Linear(H, H/2) -> ReLU ->
  Linear(H/2, n)``; the blueprint head: ``Linear(H, H) -> ReLU -> Linear(H, H/2) -> ReLU
  -> Linear(H/2, 13)``;
* V(s) and Q(s, op): the four-layer `value_head` on ``H`` and ``H + num_ops`` features;
* contributions: ``Linear(H, H/2) -> LayerNorm -> ReLU -> Dropout(0.1) -> Linear(H/2, H/4)
  -> ReLU -> Linear(H/4, N)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from slotformer.actions import ActionSpace
from slotformer.config import SlotConfig
from slotformer.layers.encoder import BlueprintEmbedding
from slotformer.layers.heads import categorical_head, contribution_mlp, value_head
from slotformer.layers.lstm import ResidualLSTM
from slotformer.networks.configs import ActorCriticConfig, with_contract_arguments
from slotformer.networks.core import ActorCriticCore, TrunkOutput, init_actor_critic_weights
from slotformer.networks.inputs import PolicyInputs
from slotformer.networks.results import TrunkIntermediates


@dataclass(frozen=True)
class LSTMConfig(ActorCriticConfig):
    """The flat LSTM's hyper-parameters (and `ActorCriticConfig`'s shared ones).

    Args:
        lstm_hidden_dim: H (default 512).
        trunk_dim: width of the feature layer before the LSTM (the network's constructor
            takes it as ``feature_dim``, the reference network's name).

    Example:
        >>> FactoredRecurrentActorCritic(config=LSTMConfig(trunk_dim=64, lstm_hidden_dim=64)).state_dim
        116
    """

    lstm_hidden_dim: int = 512
    trunk_dim: int = 512


class FactoredRecurrentActorCritic(ActorCriticCore):
    """Flat concatenation LSTM actor-critic with factored, masked action heads.

    The reference network's constructor: its five arguments, in its order and with its
    names, over ``config`` (every other hyper-parameter, `LSTMConfig`).

    Args:
        state_dim: flat observation width, any positive int (as in the reference network);
            None = ``base_dim + 31 * N``. Structured observations need it to be
            ``base_dim + N * slot_dim``.
        feature_dim: width of the feature layer before the LSTM (`LSTMConfig`'s
            ``trunk_dim``; default 512).
        lstm_hidden_dim: H (default 512).
        lstm_layers: recurrent layers (default 1).
        slot_config: the slots (default: 3 in one row).
        config: every hyper-parameter (default: `LSTMConfig`'s defaults).
        action_space: the factored heads (default: the contract's eight heads).

    Example:
        >>> net = FactoredRecurrentActorCritic(state_dim=116, feature_dim=64, lstm_hidden_dim=64)
        >>> out = net(torch.randn(2, 5, 116), torch.full((2, 5, 3), -1))
        >>> out["op_logits"].shape, out["lstm_out"].shape
        (torch.Size([2, 5, 6]), torch.Size([2, 5, 64]))
    """

    network_type: ClassVar[str] = "lstm"
    needs_layout: ClassVar[bool] = False  # reads the flat vector whole: any state_dim
    config: LSTMConfig

    def __init__(
        self,
        state_dim: int | None = None,
        feature_dim: int | None = None,
        lstm_hidden_dim: int | None = None,
        lstm_layers: int | None = None,
        slot_config: SlotConfig | None = None,
        *,
        config: LSTMConfig | None = None,
        action_space: ActionSpace | None = None,
    ) -> None:
        config = with_contract_arguments(
            LSTMConfig() if config is None else config, LSTMConfig, state_dim=state_dim,
            trunk_dim=feature_dim, lstm_hidden_dim=lstm_hidden_dim, lstm_layers=lstm_layers,
        )
        super().__init__(config, slot_config, action_space)
        c = self.config
        N, H, feature_dim = self.slot_config.num_slots, c.lstm_hidden_dim, c.trunk_dim
        self.blueprint_embedding = BlueprintEmbedding(c.num_slot_types, c.blueprint_embed_dim)
        self.feature_net = nn.Sequential(
            nn.Linear(self.state_dim + N * c.blueprint_embed_dim, feature_dim),
            nn.LayerNorm(feature_dim),
            nn.ReLU(),
        )
        self.lstm = ResidualLSTM(input_size=feature_dim, hidden_size=H, num_layers=c.lstm_layers)
        # The reference keeps this (parameter-free) attribute, and its PPO agent's
        # weight-decay optimizer groups read it; the LSTM's layers carry their own norms.
        self.lstm_ln = nn.Identity()
        # The heads have the reference network's widths, layer for layer, so that its
        # weights load unchanged (slotformer.migration): H -> H/2 -> n, the blueprint head
        # H -> H -> H/2 -> n.
        for name in self.action_space.head_names:
            deep = name == "blueprint"
            n = self.action_space.sizes[name]
            head = categorical_head(
                H, H // 2, n, depth=3 if deep else 2, first_hidden_dim=H if deep else None
            )
            self.add_module(f"{name}_head", head)
        self.state_value_head = value_head(H, H // 2)
        self.q_head = value_head(H + self.num_ops, H // 2) if c.use_q_head else None
        self.contribution_predictor = (
            contribution_mlp(H, H // 2, N, layer_norm=True, dropout=0.1, first_layer_only=True)
            if c.use_contribution_head
            else None
        )
        init_actor_critic_weights(self, skip=(self.lstm,))

    @property
    def feature_dim(self) -> int:
        """The reference network's name for the trunk width (`LSTMConfig.trunk_dim`)."""
        return self.config.trunk_dim

    def _trunk(self, inputs: PolicyInputs, return_intermediates: bool = False) -> TrunkOutput:
        state = inputs.state  # [B, T, D]
        blueprint = self.blueprint_embedding(inputs.blueprint_indices)  # [B, T, N, E]
        features = torch.cat([state, blueprint.flatten(-2).to(state.dtype)], dim=-1)
        temporal, new_hidden = self.lstm.run(
            self.feature_net(features), inputs.hidden, inputs.episode_starts
        )  # [B, T, H]
        seen = (
            TrunkIntermediates((), inputs.active, inputs.ctx.slot_config.slot_ids)
            if return_intermediates
            else None
        )
        return TrunkOutput(temporal, new_hidden, intermediates=seen)

    def _slot_logits(self, trunk: TrunkOutput) -> Tensor:
        pointer = self.action_space.pointer_head
        assert pointer is not None
        return self.head_module(pointer)(trunk.temporal)  # [B, T, N]

    def _contributions(self, trunk: TrunkOutput, stop_gradient: bool) -> Tensor:
        assert self.contribution_predictor is not None
        temporal = trunk.temporal.detach() if stop_gradient else trunk.temporal
        return self.contribution_predictor(temporal)  # [B, T, N]
