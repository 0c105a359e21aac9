"""Stable-Baselines3: a features extractor around :class:`~slotformer.SlotTransformerEncoder`.

Needs the ``sb3`` extra (``pip install "slotformer[sb3]"``). Use it with sb3-contrib's
``MaskablePPO`` (or plain ``PPO``) and a ``"MultiInputPolicy"`` on the gymnasium Slot Garden
(:mod:`slotformer.envs.gym`), or on any environment with the same ``Dict`` observation
(``"obs"`` in slotformer's flat layout, ``"blueprint_indices"``)::

    from sb3_contrib import MaskablePPO
    from slotformer.envs.gym import SlotGardenGymEnv
    from slotformer.integrations.sb3 import SlotTransformerExtractor

    model = MaskablePPO(
        "MultiInputPolicy", SlotGardenGymEnv(rows=1, cols=3),
        policy_kwargs={"features_extractor_class": SlotTransformerExtractor,
                       "features_extractor_kwargs": {"rows": 1, "cols": 3}},
    )
    model.learn(20_000)

The slots are encoded with self-attention (a shared per-slot embedding with the slot's type,
a CLS summary); SB3's heads are linear layers on the features, so there is no pointer head
(a trained model is tied to its grid), no op-conditional slot mask (``MaskablePPO`` masks
each head on its own; the gymnasium environment turns an invalid (op, slot) pair into WAIT)
and no recurrence (SB3 has **no maskable recurrent PPO**). For those, use slotformer's own
networks (:func:`slotformer.create_policy`) in a PPO loop (``docs/ppo_loop.md``) or the
TorchRL adapter.
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from slotformer.config import DEFAULT_BASE_DIM, DEFAULT_SLOT_DIM, SlotConfig
from slotformer.layers.encoder import BlueprintEmbedding, SlotTransformerEncoder

__all__ = ["SlotTransformerExtractor"]


class SlotTransformerExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: slot self-attention over a ``Dict`` observation.

    Args:
        observation_space: a ``Dict`` with ``"obs"`` (``Box [base_dim + N * slot_dim]``, the
            base block then one block per slot) and ``"blueprint_indices"`` (``Box [N]``,
            -1 = empty slot, else ``0 .. num_slot_types - 1``); other keys are ignored.
        rows, cols: the grid (``N = rows * cols``, ``SlotConfig.for_grid``'s slot order).
        embed_dim, num_heads, num_layers: the encoder's token width D, heads and blocks.
        type_embed_dim: width of each slot's type embedding.

    Shapes:
        ``forward(observations)`` with ``obs [B, base_dim + N * slot_dim]`` and
        ``blueprint_indices [B, N]`` (as float from SB3) -> ``[B, (2 + N) * embed_dim]``:
        ``[CLS ‖ base-block projection ‖ every slot's representation]``.

    Example:
        >>> space = spaces.Dict({
        ...     "obs": spaces.Box(-1.0, 1.0, (23 + 31 * 3,)),
        ...     "blueprint_indices": spaces.Box(-1, 12, (3,), dtype="int64"),
        ... })
        >>> extractor = SlotTransformerExtractor(space, rows=1, cols=3, embed_dim=16)
        >>> batch = {"obs": torch.zeros(4, 116), "blueprint_indices": -torch.ones(4, 3)}
        >>> extractor(batch).shape
        torch.Size([4, 80])
    """

    def __init__(
        self, observation_space: spaces.Dict, rows: int = 1, cols: int = 3,
        base_dim: int = DEFAULT_BASE_DIM, slot_dim: int = DEFAULT_SLOT_DIM,
        num_slot_types: int = 13, embed_dim: int = 32, num_heads: int = 4, num_layers: int = 1,
        type_embed_dim: int = 4,
    ) -> None:
        slot_config = SlotConfig.for_grid(rows, cols)
        n = slot_config.num_slots
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError("observation_space must be a gymnasium Dict with 'obs' and "
                             f"'blueprint_indices', got {type(observation_space).__name__}")
        for key, shape in {"obs": (base_dim + n * slot_dim,), "blueprint_indices": (n,)}.items():
            got = observation_space.spaces.get(key)
            if got is None or got.shape != shape:
                raise ValueError(f"observation_space[{key!r}] must have shape {shape} for a "
                                 f"{rows}x{cols} grid (base_dim={base_dim}, slot_dim={slot_dim}), "
                                 f"got {None if got is None else got.shape}")
        super().__init__(observation_space, features_dim=(2 + n) * embed_dim)
        self.num_slots, self.base_dim, self.slot_dim = n, base_dim, slot_dim
        self.type_embedding = BlueprintEmbedding(num_slot_types, type_embed_dim)
        self.encoder = SlotTransformerEncoder(
            slot_dim=slot_dim + type_embed_dim, embed_dim=embed_dim, num_heads=num_heads,
            num_layers=num_layers, max_slots=max(n, 1), dropout=0.0,
            max_rows=max(rows, 1), max_cols=max(cols, 1),
        )
        self.base_proj = nn.Sequential(nn.Linear(base_dim, embed_dim), nn.ReLU())
        self.row_ids: Tensor
        self.col_ids: Tensor
        for name, ids in zip(("row_ids", "col_ids"), slot_config.position_ids()):
            self.register_buffer(name, ids, persistent=False)

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        obs = observations["obs"]  # [B, G + N*S]
        batch = obs.shape[0]
        base = obs[:, : self.base_dim]  # [B, G]
        slots = obs[:, self.base_dim :].reshape(batch, self.num_slots, self.slot_dim)  # [B, N, S]
        # SB3 turns every Box into float; the indices are small integers: rounding is exact.
        types = observations["blueprint_indices"].round().long()  # [B, N]
        tokens = torch.cat([slots, self.type_embedding(types).to(slots.dtype)], dim=-1)
        position = self.encoder.pos_encoding(self.row_ids, self.col_ids)  # [N, D]
        cls, slot_repr = self.encoder.encode(tokens, types >= 0, position)  # [B, D], [B, N, D]
        return torch.cat([cls, self.base_proj(base), slot_repr.flatten(1)], dim=-1)
