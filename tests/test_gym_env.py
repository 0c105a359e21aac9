"""Slot Garden behind gymnasium's API: spaces, the env checker, vector = single, masks."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402
from gymnasium.vector import AutoresetMode  # noqa: E402

from slotformer.envs import (  # noqa: E402
    GYM_ENV_ID,
    StepOutput,
    heuristic_policy,
    random_valid_policy,
)
from slotformer.envs.gym import (  # noqa: E402
    AUTORESET_MODES,
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
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP  # gymnasium's default
    obs, _ = envs.reset(seed=1)
    assert envs.observation_space.contains(obs)
    assert obs["obs"].shape == (3, 23 + 31 * 3)


FRESH_PROCESS = f"""
import sys, warnings
warnings.simplefilter("error")  # registering twice, or anything else gymnasium warns about
import gymnasium as gym
assert "slotformer" not in sys.modules
env = gym.make("slotformer.envs:{GYM_ENV_ID}", episode_length=3)
env.reset(seed=0)
ends = [env.step(env.action_space.sample() * 0)[2] for _ in range(3)]  # WAIT
assert ends == [False, False, True], ends
envs = gym.make_vec("slotformer.envs:{GYM_ENV_ID}", num_envs=2,
                    vectorization_mode="vector_entry_point")
assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
import slotformer.envs
from slotformer.envs.gym import register_envs
register_envs()
gym.make("{GYM_ENV_ID}").reset(seed=0)
print("ok", type(env.unwrapped).__module__)
"""


def test_a_process_that_never_imported_slotformer_makes_the_env() -> None:
    """gymnasium alone makes Slot Garden (single and vector) in a fresh interpreter (a Ray
    worker) when the id names the module to import; importing slotformer and registering
    again on top of it warns about nothing."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], env=env, cwd=root / "tests", capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "slotformer.envs.gym"]


def _step_output(obs: dict[str, np.ndarray], num_slots: int) -> StepOutput:
    """A gymnasium observation ``[E, ...]`` as the ``StepOutput`` the reference policies read."""
    slot_by_op = torch.as_tensor(obs["slot_by_op"]).bool()
    num_envs = slot_by_op.shape[0]
    return StepOutput(
        obs=torch.as_tensor(obs["obs"]),
        blueprint_indices=torch.as_tensor(obs["blueprint_indices"]),
        masks=split_action_mask(torch.as_tensor(obs["action_mask"]), num_slots=num_slots),
        slot_by_op=slot_by_op,
        reward=torch.zeros(num_envs),
        done=torch.zeros(num_envs, dtype=torch.bool),
        episode_return=torch.zeros(num_envs),
        info={},
    )


def _heuristic_numpy(obs: dict[str, np.ndarray], num_slots: int) -> np.ndarray:
    """The scripted heuristic, fed from a gymnasium observation ``[E, ...]``."""
    return heuristic_policy(_step_output(obs, num_slots)).numpy()


def _random_numpy(obs: dict[str, np.ndarray], num_slots: int, generator: torch.Generator) -> np.ndarray:
    """A seeded random valid action per environment, from a gymnasium observation ``[E, ...]``."""
    return random_valid_policy(_step_output(obs, num_slots), generator).numpy()


def _batched(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value[None] for key, value in obs.items()}


def _assert_same_obs(a: dict[str, np.ndarray], b: dict[str, np.ndarray], where: str) -> None:
    assert sorted(a) == sorted(b), where
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} {where}")


GARDEN = {"rows": 2, "cols": 2, "episode_length": 5, "table_seed": 3, "invalid_action": "raise"}


def _play_single(env: SlotGardenGymEnv, episodes: int) -> tuple[list, list, list]:
    """Observations acted on, final observations and (length, return, reported return) of
    ``episodes`` episodes of a seeded random valid policy, resetting after each."""
    generator = torch.Generator().manual_seed(0)
    acted, finals, episodes_seen = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=7 if episode == 0 else None)
        length, total, terminated = 0, 0.0, False
        while not terminated:
            acted.append(obs)
            action = _random_numpy(_batched(obs), 4, generator)[0]
            obs, reward, terminated, truncated, info = env.step(action)
            assert not truncated
            length, total = length + 1, total + reward
        finals.append(obs)
        episodes_seen.append((length, total, info["episode_return"]))
    return acted, finals, episodes_seen


def _play_vector(envs: SlotGardenVectorEnv, episodes: int) -> tuple[list, list, list]:
    """As ``_play_single``, for one environment of a vector env that autoresets."""
    next_step = envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    generator = torch.Generator().manual_seed(0)
    acted, finals, episodes_seen = [], [], []
    obs, _ = envs.reset(seed=7)
    length, total, restarting = 0, 0.0, False
    while len(episodes_seen) < episodes:
        if restarting:  # NEXT_STEP: this step restarts the environment and ignores the action
            obs, reward, terminated, truncated, info = envs.step(np.full((1, 8), 99))
            assert reward.tolist() == [0.0] and not terminated[0] and not truncated[0]
            assert obs["obs"][0, 0] == 0.0  # the new episode's first observation (progress 0)
            restarting = False
            continue
        acted.append({key: value[0] for key, value in obs.items()})
        obs, reward, terminated, truncated, info = envs.step(_random_numpy(obs, 4, generator))
        assert not truncated[0]
        length, total = length + 1, total + float(reward[0])
        if terminated[0]:
            final = obs if next_step else info["final_obs"]
            finals.append({key: value[0] for key, value in final.items()})
            episodes_seen.append((length, total, float(info["episode_return"][0])))
            length, total, restarting = 0, 0.0, next_step
    return acted, finals, episodes_seen


@pytest.mark.parametrize("mode", AUTORESET_MODES)
def test_vector_env_plays_the_single_envs_episodes(mode: AutoresetMode) -> None:
    """In both autoreset modes, one environment of the vector env and the single env see the
    same observations and end the same episodes, with the same lengths and returns."""
    single = _play_single(SlotGardenGymEnv(**GARDEN), episodes=3)
    vector = _play_vector(SlotGardenVectorEnv(num_envs=1, autoreset_mode=mode, **GARDEN), 3)
    for name, a, b in zip(("acted on", "final"), single[:2], vector[:2]):
        assert len(a) == len(b), name
        for step, (obs_a, obs_b) in enumerate(zip(a, b)):
            _assert_same_obs(obs_a, obs_b, f"{name} @ {step}")
    assert single[2] == vector[2]
    assert [length for length, *_ in single[2]] == [5, 5, 5]
    assert len({episode_return for *_, episode_return in single[2]}) == 3  # not all the same


@pytest.mark.parametrize("mode", AUTORESET_MODES)
def test_vector_env_autoresets_as_gymnasiums_sync_vector_env(mode: AutoresetMode) -> None:
    """Step for step equal to gymnasium's own ``SyncVectorEnv`` of single environments in
    the same autoreset mode (its reference implementation of the mode)."""
    ours = SlotGardenVectorEnv(num_envs=1, autoreset_mode=mode, **GARDEN)
    reference = gym.vector.SyncVectorEnv(
        [lambda: SlotGardenGymEnv(**GARDEN)], autoreset_mode=mode
    )
    obs, _ = ours.reset(seed=7)
    ref_obs, _ = reference.reset(seed=7)
    generator = torch.Generator().manual_seed(1)
    ends = 0
    for step in range(3 * GARDEN["episode_length"] + 2):
        _assert_same_obs(obs, ref_obs, f"@ {step}")
        action = _random_numpy(obs, 4, generator)
        obs, reward, terminated, truncated, info = ours.step(action)
        ref_obs, ref_reward, ref_terminated, ref_truncated, ref_info = reference.step(action)
        np.testing.assert_array_equal(reward, ref_reward, err_msg=f"reward @ {step}")
        assert terminated.tolist() == ref_terminated.tolist(), step
        assert truncated.tolist() == ref_truncated.tolist() == [False], step
        if terminated[0]:
            ends += 1
            if mode == AutoresetMode.SAME_STEP:  # the last step's info is in final_info
                final = {key: value[0] for key, value in info["final_obs"].items()}
                _assert_same_obs(final, ref_info["final_obs"][0], f"final @ {step}")
                ref_info = ref_info["final_info"]
                assert info["final_info"]["episode_return"][0] == ref_info["episode_return"][0]
            assert info["episode_return"][0] == ref_info["episode_return"][0]
    assert ends == 3


# gymnasium's vector RecordEpisodeStatistics ignored SAME_STEP in step() until a fix released
# after 1.2 (1.4 has it); ray[rllib] 2.60, in the dev extra, pins gymnasium 1.2.2.
_STATS_SEE_SAME_STEP = "SAME_STEP" in inspect.getsource(
    gym.wrappers.vector.RecordEpisodeStatistics.step)


@pytest.mark.parametrize("mode", [
    AUTORESET_MODES[0],
    pytest.param(AUTORESET_MODES[1], marks=pytest.mark.xfail(
        not _STATS_SEE_SAME_STEP, strict=True,
        reason="this gymnasium's RecordEpisodeStatistics assumes NEXT_STEP in step()")),
])
def test_episode_statistics_count_every_step(mode: AutoresetMode) -> None:
    """gymnasium's ``RecordEpisodeStatistics`` (which reads ``metadata["autoreset_mode"]``,
    and assumes NEXT_STEP without it) counts 16 steps in episodes of 16 and the returns the
    env reports; a consumer that miscounted the autoreset saw 15.25 on average."""
    envs = gym.make_vec(
        GYM_ENV_ID, num_envs=4, vectorization_mode="vector_entry_point", episode_length=16,
        autoreset_mode=mode,
    )
    assert envs.metadata["autoreset_mode"] == mode
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    obs, _ = envs.reset(seed=0)
    reported = []
    for _ in range(3 * 16 + 2):
        obs, _, terminated, _, info = envs.step(_heuristic_numpy(obs, 3))
        if terminated.any():
            assert info["episode"]["l"][terminated].tolist() == [16] * 4
            np.testing.assert_allclose(
                info["episode"]["r"][terminated], info["episode_return"][terminated], rtol=1e-5
            )
            reported.extend(info["episode_return"][terminated].tolist())
    assert len(reported) == 12 and len(envs.length_queue) == 12
    assert set(envs.length_queue) == {16}


def test_next_step_restarts_each_environment_on_its_own() -> None:
    """Unequal episode lengths: an environment restarts at the step after its episode ends,
    ignoring its action (an invalid one does not raise), while the others play on."""
    envs = SlotGardenVectorEnv(
        num_envs=4, rows=1, cols=3, episode_length=6, min_episode_length=2,
        invalid_action="raise",
    )
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = envs.reset(seed=0)
    lengths = envs.garden.episode_lengths.tolist()
    counted, length, restarting = [], np.zeros(4, dtype=int), np.zeros(4, dtype=bool)
    for _ in range(30):
        actions = _heuristic_numpy(obs, 3)
        actions[restarting, OP] = 99  # ignored: these environments restart this step
        obs, reward, terminated, truncated, info = envs.step(actions)
        assert not truncated.any()
        assert np.all(reward[restarting] == 0.0) and not terminated[restarting].any()
        assert np.all(obs["obs"][restarting, 0] == 0.0)  # their new episodes' first step
        assert not info["invalid_action"].any()
        for env in np.flatnonzero(restarting):  # the length drawn for the new episode
            lengths[env] = int(envs.garden.episode_lengths[env])
        length[~restarting] += 1
        for env in np.flatnonzero(terminated):
            counted.append((int(length[env]), lengths[env]))
            assert obs["obs"][env, 0] == 1.0  # the last observation: progress t / T = 1
        length[terminated] = 0
        restarting = terminated
    assert len(counted) >= 8 and len({drawn for _, drawn in counted}) > 1
    assert all(steps == drawn for steps, drawn in counted)


def test_a_refused_step_leaves_the_restarts_pending() -> None:
    envs = SlotGardenVectorEnv(
        num_envs=3, rows=1, cols=3, episode_length=4, min_episode_length=2,
        invalid_action="raise",
    )
    envs.reset(seed=0)
    wait = np.zeros((3, 8), dtype=np.int64)
    for _ in range(20):  # until some environments, not all, end an episode
        _, _, terminated, _, _ = envs.step(wait)
        if terminated.any() and not terminated.all():
            break
    assert terminated.any() and not terminated.all()
    bad = wait.copy()
    bad[~terminated, OP] = int(Op.FOSSILIZE)  # nothing holds: invalid where not restarting
    with pytest.raises(ValueError, match="invalid action"):
        envs.step(bad)
    obs, reward, again, _, _ = envs.step(wait)  # the restart the refused step did not do
    assert np.all(obs["obs"][terminated, 0] == 0.0) and np.all(reward[terminated] == 0.0)
    assert not again[terminated].any()


def test_same_step_autoresets_in_the_step_that_ends_the_episode() -> None:
    envs = SlotGardenVectorEnv(
        num_envs=4, rows=1, cols=3, episode_length=6, min_episode_length=3,
        autoreset_mode="SameStep",
    )
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert SlotGardenVectorEnv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = envs.reset(seed=0)
    ended = np.zeros(4, dtype=bool)
    for _ in range(6):
        obs, _, terminated, truncated, info = envs.step(_heuristic_numpy(obs, 3))
        assert not truncated.any()
        if terminated.any():
            assert info["_final_obs"].tolist() == terminated.tolist()
            assert info["_final_info"].tolist() == terminated.tolist()
            # the new episode starts at t = 0: its progress feature is 0
            assert np.all(obs["obs"][terminated, 0] == 0.0)
            assert np.all(info["final_obs"]["obs"][terminated, 0] == 1.0)
            assert np.all(np.isfinite(info["episode_return"][terminated]))
            assert np.all(np.isnan(info["episode_return"][~terminated]))
        ended |= terminated
    assert ended.all()


@pytest.mark.parametrize("mode", [AutoresetMode.DISABLED, "next_step", "NEXT_STEP", 1, None])
def test_unsupported_autoreset_mode_is_named(mode: object) -> None:
    with pytest.raises(ValueError, match=r"autoreset_mode must be one of AutoresetMode\.NEXT_STEP, "
                       r"AutoresetMode\.SAME_STEP \(or their values 'NextStep', 'SameStep'\), got "
                       + re.escape(repr(mode))):
        SlotGardenVectorEnv(num_envs=2, autoreset_mode=mode)  # type: ignore[arg-type]


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
