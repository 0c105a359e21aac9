"""Pick-an-entity, a second problem with its own action space (issue #14 item 7): the
environment's invariants, the networks built with ``action_space=`` on it, and a short PPO
run of each network that clearly beats uniformly random valid play."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.pick_entity import (
    TOOL_FOR_TYPE,
    Op,
    PickEntityEnv,
    StepOutput,
    Tool,
    action_space,
    evaluate_policy,
    random_valid_policy,
    scripted_policy,
)
from examples.pick_entity.env import (
    BASE_DIM,
    REWARD_JUNK,
    REWARD_RIGHT_TOOL,
    REWARD_WRONG_TOOL,
    SLOT_DIM,
    SLOT_OCCUPIED,
    SLOT_VALUE,
    VALUABLE_THRESHOLD,
)
from examples.pick_entity.train import TrainConfig, build_policy, policy_fn, train
from slotformer import SlotConfig
from slotformer.config import ObservationLayout

E = 16


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    """One CPU thread (the machines are shared; the learning figures were measured so)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random(seed: int):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    return lambda step: random_valid_policy(step, generator)


def _check_step(env: PickEntityEnv, out: StepOutput) -> None:
    N = env.num_slots
    assert out.obs.shape == (E, BASE_DIM + N * SLOT_DIM) and out.obs.dtype == torch.float32
    assert bool(torch.isfinite(out.obs).all())
    bp = out.blueprint_indices
    assert bp.shape == (E, N) and bp.dtype == torch.long
    assert bool(((bp >= -1) & (bp < 4)).all())
    assert set(out.masks) == set(env.action_space.head_names)
    for head in env.action_space.heads:
        assert out.masks[head.name].shape == (E, head.size)
        assert out.masks[head.name].dtype == torch.bool
    occupied = bp >= 0
    _, slots = ObservationLayout.infer(out.obs.shape[1], N, BASE_DIM).split(out.obs)
    assert torch.equal(slots[..., SLOT_OCCUPIED] == 1, occupied)
    assert torch.equal(out.masks["slot"], occupied)  # the pointer may only hit an entity
    any_entity = occupied.any(-1)
    assert bool(out.masks["op"][:, Op.PASS].all())
    assert torch.equal(out.masks["op"][:, Op.COLLECT], any_entity)
    assert torch.equal(out.masks["op"][:, Op.CLEAR], any_entity)
    assert bool(out.masks["tool"].all())
    valuable = slots[..., SLOT_VALUE] >= VALUABLE_THRESHOLD
    assert torch.equal(out.valuable, valuable & occupied)
    assert bool((out.valuable.sum(-1) <= 1).all())  # at most one valuable entity


def test_env_shapes_masks_and_episode_ends() -> None:
    env = PickEntityEnv(E, episode_length=5, seed=0)
    out = env.reset()
    assert bool(out.valuable.any(-1).all())  # every episode starts with a valuable entity
    policy = _random(0)
    for t in range(1, 11):
        _check_step(env, out)
        out = env.step(policy(out))
        assert bool(out.done.all()) == (t % 5 == 0) and bool(out.done.any()) == (t % 5 == 0)
        assert bool(torch.isfinite(out.episode_return).all()) == (t % 5 == 0)
        assert bool(torch.isnan(out.episode_return).all()) == (t % 5 != 0)


def test_env_is_deterministic_under_a_seed() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        env, policy = PickEntityEnv(E, seed=seed), _random(7)
        out, seen = env.reset(), []
        for _ in range(2 * env.episode_length):
            seen += [out.obs, out.blueprint_indices, out.reward]
            out = env.step(policy(out))
        return seen

    first, again, other = run(3), run(3), run(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_rewards_of_collect_depend_on_slot_and_tool() -> None:
    env = PickEntityEnv(E, seed=1)
    out = env.reset()
    slot = out.valuable.to(torch.uint8).argmax(-1)
    kind = out.blueprint_indices.gather(-1, slot[:, None]).squeeze(-1)
    right = torch.tensor([int(TOOL_FOR_TYPE[k]) for k in kind.tolist()])
    collect = torch.full((E,), int(Op.COLLECT))
    state = (env.entity_type.clone(), env.value.clone(), env.age.clone())

    def reward_of(slot: torch.Tensor, tool: torch.Tensor) -> torch.Tensor:
        env.entity_type, env.value, env.age = (x.clone() for x in state)
        env.t = 0
        return env.step({"slot": slot, "tool": tool, "op": collect}).reward

    assert torch.equal(reward_of(slot, right), torch.full((E,), REWARD_RIGHT_TOOL))
    assert torch.equal(reward_of(slot, (right + 1) % 3), torch.full((E,), REWARD_WRONG_TOOL))
    junk = out.masks["slot"] & ~out.valuable
    has_junk = junk.any(-1)
    assert bool(has_junk.any())
    rewards = reward_of(torch.where(has_junk, junk.to(torch.uint8).argmax(-1), slot), right)
    assert torch.equal(rewards[has_junk], torch.full((int(has_junk.sum()),), REWARD_JUNK))


def test_invalid_actions_are_rejected_and_an_empty_grid_allows_only_pass() -> None:
    env = PickEntityEnv(E, seed=0)
    env.reset()
    env.entity_type.fill_(-1)
    masks = env.masks()
    assert not bool(masks["slot"].any())
    assert masks["op"].tolist() == [[True, False, False]] * E
    zeros = torch.zeros(E, dtype=torch.long)
    with pytest.raises(ValueError, match="invalid action"):
        env.step({"slot": zeros, "tool": zeros, "op": torch.full((E,), int(Op.COLLECT))})
    out = env.step({"slot": zeros, "tool": zeros, "op": zeros})
    assert bool((out.reward == 0).all())


def test_scripted_policy_beats_random_valid_play() -> None:
    for seed in (0, 1):
        scripted = evaluate_policy(PickEntityEnv(E, seed=seed), scripted_policy, 2)
        random_score = evaluate_policy(PickEntityEnv(E, seed=seed), _random(seed), 2)
        assert random_score < 0.5 and scripted > 5.0, (random_score, scripted)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_networks_with_the_custom_space_only_take_valid_actions(kind: str) -> None:
    """Untrained networks on the env: every sampled action is valid under the env's masks
    (op mask, pointer mask, the all-empty case), and a head irrelevant to the chosen op has
    log-prob exactly 0."""
    torch.manual_seed(0)
    env = PickEntityEnv(E, seed=2)
    env.reset()
    env.entity_type[: E // 2] = -1  # half the grids empty: only PASS is valid there
    env.value[: E // 2] = 0.0
    out = env.observe()
    policy = build_policy(kind, action_space(env.num_slots), env.slot_config, lstm_hidden_dim=16)
    assert policy.network.action_space.head_names == ("slot", "tool", "op")
    act = policy_fn(policy, E)
    for t in range(6):
        actions = act(out)
        assert bool(env.action_validity(actions).all())
        if t == 0:
            assert bool((actions["op"][: E // 2] == Op.PASS).all())
        out = env.step(actions)
    result = policy.get_action(out.obs, out.blueprint_indices, out.masks,
                               policy.initial_hidden(E))
    not_collect = result.actions["op"] != Op.COLLECT
    assert bool((result.log_probs["tool"][not_collect] == 0).all())
    assert bool((result.actions["tool"][not_collect] == Tool.HAND).all())
    passed = result.actions["op"] == Op.PASS
    assert bool((result.log_probs["slot"][passed] == 0).all())


# Measured with these settings (evaluation: 4 episodes x 32 envs on fresh seeds; random valid
# play -0.26/-0.20/-0.42/-0.36/-0.27 for seeds 0-4): transformer, 40 updates of 32 envs x 12
# steps, learned 6.79/6.85/7.40/7.15/5.86 (scripted optimum about 7.6); flat LSTM, 100
# updates at width 128 with entropy 0.03, learned 3.29/3.39/3.95/4.10/3.96. With entropy
# 0.01 the LSTM stalls below 0.4 on some seeds (seeds 0 and 1 of 0-7). Only seed 0 runs here.
LEARNING_RUNS = {
    "transformer": (dict(updates=40), 4.0),
    "lstm": (dict(updates=100, trunk_dim=128, lstm_hidden_dim=128, ent_coef=0.03), 1.5),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(LEARNING_RUNS))
def test_ppo_learns_pick_entity(kind: str) -> None:
    """A short recurrent PPO run through the generic API clearly beats random valid play."""
    overrides, margin = LEARNING_RUNS[kind]
    metrics, _ = train(TrainConfig(policy=kind, seed=0, quiet=True, **overrides))
    assert math.isfinite(metrics["learned"])
    assert metrics["learned"] > metrics["random"] + margin, metrics
    assert metrics["learned"] > metrics["first_update_return"] + margin, metrics


def test_slot_config_other_grid() -> None:
    """The env runs on any grid; the transformer built for it accepts its observations."""
    env = PickEntityEnv(E, SlotConfig.for_grid(3, 3), seed=0)
    out = env.reset()
    policy = build_policy("transformer", env.action_space, env.slot_config, lstm_hidden_dim=16,
                          embed_dim=16, head_hidden=16)
    result = policy.get_action(out.obs, out.blueprint_indices, out.masks, policy.initial_hidden(E))
    assert bool(env.action_validity(result.actions).all())


def test_readme_snippet_runs() -> None:
    """The custom-action-space snippet of examples/pick_entity/README.md runs as written."""
    readme = Path(__file__).resolve().parents[1] / "examples" / "pick_entity" / "README.md"
    block = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)[0]
    namespace: dict[str, Any] = {}
    exec(compile(block, str(readme), "exec"), namespace)
    step, masks = namespace["step"], namespace["masks"]
    assert step.actions["tool"].shape == (8,)
    not_collect = step.actions["op"] != Op.COLLECT
    assert bool((step.log_probs["tool"][not_collect] == 0).all())
    chosen = masks["slot"].gather(-1, step.actions["slot"][:, None]).squeeze(-1)
    assert bool(chosen[~not_collect].all())  # COLLECT points at an occupied slot
