"""Slot Garden behind gymnasium's API: spaces, the env checker, vector = single, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from slotformer.envs import GYM_ENV_ID, StepOutput, heuristic_policy  # noqa: E402
from slotformer.envs.gym import (  # noqa: E402
    SlotGardenGymEnv,
    SlotGardenVectorEnv,
    split_action_mask,
)
from slotformer.presets.seed_lifecycle import HEAD_NAMES, Op  # noqa: E402

OP = HEAD_NAMES.index("op")
SLOT = HEAD_NAMES.index("slot")


def test_single_env_passes_gymnasium_checker() -> None:
    env = SlotGardenGymEnv(rows=2, cols=2, episode_length=8)
    check_env(env, skip_render_check=False)  # raises on any API violation


def test_registered_id_makes_single_and_vector_envs() -> None:
    env = gym.make(GYM_ENV_ID, rows=1, cols=3, episode_length=6)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    envs = gym.make_vec(
        GYM_ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", rows=1, cols=3
    )
    assert isinstance(envs.unwrapped, SlotGardenVectorEnv)
    obs, _ = envs.reset(seed=1)
    assert envs.observation_space.contains(obs)
    assert obs["obs"].shape == (3, 23 + 31 * 3)


def _heuristic_numpy(obs: dict[str, np.ndarray], num_slots: int) -> np.ndarray:
    """The scripted heuristic, fed from a gymnasium observation ``[E, ...]``."""
    slot_by_op = torch.as_tensor(obs["slot_by_op"]).bool()
    masks = split_action_mask(torch.as_tensor(obs["action_mask"]), num_slots=num_slots)
    out = StepOutput(
        obs=torch.as_tensor(obs["obs"]),
        blueprint_indices=torch.as_tensor(obs["blueprint_indices"]),
        masks=masks,
        slot_by_op=slot_by_op,
        reward=torch.zeros(slot_by_op.shape[0]),
        done=torch.zeros(slot_by_op.shape[0], dtype=torch.bool),
        episode_return=torch.zeros(slot_by_op.shape[0]),
        info={},
    )
    return heuristic_policy(out).numpy()


def test_vector_env_steps_like_the_single_env() -> None:
    """One environment of the vector env and the single env see the same trajectory."""
    kwargs = {"rows": 1, "cols": 3, "episode_length": 5, "table_seed": 3}
    single = SlotGardenGymEnv(**kwargs)
    vector = SlotGardenVectorEnv(num_envs=1, **kwargs)
    s_obs, _ = single.reset(seed=7)
    v_obs, _ = vector.reset(seed=7)
    rng = np.random.default_rng(0)
    for step in range(5):
        for key in s_obs:
            np.testing.assert_array_equal(s_obs[key], v_obs[key][0], err_msg=f"{key} @ {step}")
        mask = split_action_mask(torch.as_tensor(s_obs["action_mask"])[None], num_slots=3)
        ops = np.flatnonzero(mask["op"][0].numpy())
        action = np.zeros(len(HEAD_NAMES), dtype=np.int64)
        action[OP] = int(rng.choice(ops))
        action[SLOT] = int(np.flatnonzero(s_obs["slot_by_op"][action[OP]])[0])
        for k, name in enumerate(HEAD_NAMES):
            if name not in ("op", "slot"):
                action[k] = int(np.flatnonzero(mask[name][0].numpy())[0])
        s_obs, s_rew, s_term, s_trunc, s_info = single.step(action)
        v_obs, v_rew, v_term, v_trunc, v_info = vector.step(action[None])
        assert s_rew == pytest.approx(float(v_rew[0]))
        assert s_term == bool(v_term[0]) and not s_trunc and not v_trunc[0]
    # The last step ended the episode: the single env returns the final state, the vector
    # env the next episode's first state and the final one in info.
    assert s_term
    for key in s_obs:
        np.testing.assert_array_equal(s_obs[key], v_info["final_obs"][key][0], err_msg=key)
    assert v_info["_final_obs"].tolist() == [True]
    assert s_info["episode_return"] == pytest.approx(float(v_info["episode_return"][0]))


def test_vector_env_autoresets_in_the_same_step() -> None:
    envs = SlotGardenVectorEnv(num_envs=4, rows=1, cols=3, episode_length=6, min_episode_length=3)
    obs, _ = envs.reset(seed=0)
    ended = np.zeros(4, dtype=bool)
    for _ in range(6):
        obs, _, terminated, truncated, info = envs.step(_heuristic_numpy(obs, 3))
        assert not truncated.any()
        if terminated.any():
            assert info["_final_obs"].tolist() == terminated.tolist()
            # the new episode starts at t = 0: its progress feature is 0
            assert np.all(obs["obs"][terminated, 0] == 0.0)
            assert np.all(np.isfinite(info["episode_return"][terminated]))
            assert np.all(np.isnan(info["episode_return"][~terminated]))
        ended |= terminated
    assert ended.all()


def test_action_mask_matches_the_torch_env_masks() -> None:
    envs = SlotGardenVectorEnv(num_envs=3, rows=2, cols=3, episode_length=8)
    obs, _ = envs.reset(seed=2)
    garden_masks = envs.garden.masks()
    split = split_action_mask(torch.as_tensor(obs["action_mask"]), num_slots=6)
    assert list(split) == list(HEAD_NAMES)
    for name in HEAD_NAMES:
        assert torch.equal(split[name], garden_masks[name]), name
    np.testing.assert_array_equal(envs.action_masks(), obs["action_mask"].astype(bool))
    assert obs["action_mask"].dtype == np.int8


def _germinate_on_occupied(env: SlotGardenGymEnv) -> np.ndarray:
    """An action whose op is GERMINATE on a slot GERMINATE may not use."""
    obs, _ = env.reset(seed=0)
    action = np.zeros(len(HEAD_NAMES), dtype=np.int64)
    action[OP] = int(Op.GERMINATE)
    action[HEAD_NAMES.index("blueprint")] = 1
    obs, *_ = env.step(action)  # seed slot 0
    assert obs["blueprint_indices"][0] >= 0, "slot 0 should hold a seed now"
    return action  # GERMINATE on slot 0 again: invalid


def test_invalid_action_becomes_wait() -> None:
    env = SlotGardenGymEnv(rows=1, cols=3, episode_length=8, invalid_action="wait")
    action = _germinate_on_occupied(env)
    before = env.garden.get_state()
    _, reward, _, _, info = env.step(action)
    assert info["invalid_action"] is True
    # Same transition as WAIT from the same state.
    twin = SlotGardenGymEnv(rows=1, cols=3, episode_length=8)
    twin.reset(seed=0)
    twin.garden.set_state(before)
    twin._last = env._last  # the twin needs a current state; masks are not used by WAIT
    wait = action.copy()
    wait[OP] = int(Op.WAIT)
    _, wait_reward, _, _, wait_info = twin.step(wait)
    assert wait_info["invalid_action"] is False
    assert reward == pytest.approx(wait_reward)


def test_invalid_action_can_raise() -> None:
    env = SlotGardenGymEnv(rows=1, cols=3, episode_length=8, invalid_action="raise")
    action = _germinate_on_occupied(env)
    with pytest.raises(ValueError, match=r"invalid action .* environment 0"):
        env.step(action)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": 0}, "rows must be a positive int, got 0"),
        ({"cols": 2.0}, "cols must be a positive int, got 2.0"),
        ({"rows": 8, "cols": 9}, "72 slots, expected at most 64"),
        ({"invalid_action": "ignore"}, "invalid_action must be 'wait' or 'raise', got 'ignore'"),
        ({"render_mode": "human"}, "render_mode must be None or 'ansi', got 'human'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SlotGardenGymEnv(**kwargs)


def test_bad_actions_are_named() -> None:
    env = SlotGardenGymEnv(rows=1, cols=3)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(8, dtype=np.int64))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(8,\).*got shape \(7,\)"):
        env.step(np.zeros(7, dtype=np.int64))
    with pytest.raises(ValueError, match="dtype float64"):
        env.step(np.zeros(8))
    envs = SlotGardenVectorEnv(num_envs=2)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 8\).*got shape \(8,\)"):
        envs.step(np.zeros(8, dtype=np.int64))
    with pytest.raises(ValueError, match="seed must be an int or None"):
        envs.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="action_mask has 5 columns"):
        split_action_mask(torch.ones(2, 5))


def test_reset_seed_reproduces_and_table_seed_fixes_the_world() -> None:
    a, b = SlotGardenGymEnv(table_seed=1), SlotGardenGymEnv(table_seed=1)
    obs_a, _ = a.reset(seed=5)
    obs_b, _ = b.reset(seed=5)
    action = np.zeros(8, dtype=np.int64)
    action[OP] = int(Op.GERMINATE)
    action[HEAD_NAMES.index("blueprint")] = 2
    for _ in range(3):
        obs_a, ra, *_ = a.step(action)
        obs_b, rb, *_ = b.step(action)
        np.testing.assert_array_equal(obs_a["obs"], obs_b["obs"])
        assert ra == rb
        action[OP] = int(Op.WAIT)
    assert torch.equal(a.garden.affinity, b.garden.affinity)
    other = SlotGardenGymEnv(table_seed=2)
    assert not torch.equal(a.garden.affinity, other.garden.affinity)


def test_render_ansi_draws_the_grid() -> None:
    env = SlotGardenGymEnv(rows=2, cols=2, render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert text is not None and text.startswith("t=0 ")
    assert len(text.splitlines()) == 3  # header + 2 rows
