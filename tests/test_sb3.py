"""The SB3 features extractor: shapes, errors, and a short MaskablePPO training that learns."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sb3_contrib")

from gymnasium import spaces

from examples.sb3_maskable_ppo import make_model, run
from slotformer.envs.gym import SlotGardenGymEnv
from slotformer.integrations.sb3 import SlotTransformerExtractor


def test_extractor_encodes_the_gym_observation() -> None:
    env = SlotGardenGymEnv(rows=2, cols=3)
    extractor = SlotTransformerExtractor(env.observation_space, rows=2, cols=3, embed_dim=16)
    obs, _ = env.reset(seed=0)
    batch = {k: torch.as_tensor(v)[None].float() for k, v in obs.items()}
    features = extractor(batch)
    assert features.shape == (1, (2 + 6) * 16) == (1, extractor.features_dim)
    assert torch.isfinite(features).all()
    features.sum().backward()
    missing = [n for n, p in extractor.named_parameters() if p.grad is None]
    # the type embedding's empty-slot row and unused types get zero grads, not None
    assert missing == []


def test_extractor_checks_the_space() -> None:
    env = SlotGardenGymEnv(rows=1, cols=3)
    with pytest.raises(ValueError, match=r"observation_space\['obs'\] must have shape \(178,\)"):
        SlotTransformerExtractor(env.observation_space, rows=1, cols=5)
    with pytest.raises(ValueError, match="must be a gymnasium Dict"):
        SlotTransformerExtractor(spaces.Box(0, 1, (116,)), rows=1, cols=3)  # type: ignore[arg-type]


def test_maskable_ppo_uses_the_extractor_and_action_masks() -> None:
    model = make_model(rows=1, cols=3, num_envs=2, episode_length=8, table_seed=0, seed=0)
    assert isinstance(model.policy.features_extractor, SlotTransformerExtractor)
    before = [p.detach().clone() for p in model.policy.features_extractor.parameters()]
    model.learn(256)  # one rollout of 2 x 128 steps, one update
    after = list(model.policy.features_extractor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "extractor never trained"


def test_short_maskable_ppo_training_beats_random_play() -> None:
    """20k steps (about 30 s on one thread): MaskablePPO stops paying rent for random seeds.

    Measured (seeds 0 and 1): learned -0.02, untrained -0.34, random valid -0.40, heuristic
    +2.74; the margins below hold with room. Reaching the heuristic takes slotformer's own
    networks (examples/train_slot_garden.py), not a per-head-masked MultiDiscrete policy.
    """
    result = run(total_steps=20_000, seed=0, threads=1, learning_rate=1e-3)
    assert result.env_steps >= 20_000
    assert result.learned > result.random + 0.2, result
    assert result.learned > result.untrained + 0.15, result
