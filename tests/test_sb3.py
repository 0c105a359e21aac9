"""SlotformerPolicy under sb3-contrib's MaskablePPO: shapes, errors, parity with slotformer's
evaluate_actions, op-conditional masks, deterministic mode, checkpoints, and a short training
run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")

from gymnasium import spaces
from sb3_contrib import MaskablePPO

from examples.sb3_maskable_ppo import bundle_policy, run
from slotformer import SlotConfig
from slotformer.checkpoint import load_checkpoint, save_checkpoint
from slotformer.envs import SlotGardenEnv, evaluate_policy
from slotformer.envs.gym import SlotGardenGymEnv
from slotformer.integrations.sb3 import SlotformerPolicy, SlotGardenVecEnv
from slotformer.presets.seed_lifecycle import Op

SMALL = {"embed_dim": 16, "lstm_hidden_dim": 16, "head_hidden": 32, "transformer_layers": 1}
SMALL_LSTM = {"lstm_hidden_dim": 16, "trunk_dim": 32}


def make(rows: int = 2, cols: int = 3, num_envs: int = 16, network: str = "transformer",
         **kwargs: object) -> MaskablePPO:
    env = SlotGardenVecEnv(num_envs, rows=rows, cols=cols, invalid_action="raise")
    env.seed(0)
    config = SMALL if network == "transformer" else SMALL_LSTM
    return MaskablePPO(SlotformerPolicy, env, n_steps=8, batch_size=64, device="cpu", seed=0,
                       policy_kwargs={"rows": rows, "cols": cols, "network": network,
                                      **config, **kwargs})


def visited_observations(model: MaskablePPO, steps: int = 24) -> dict[str, torch.Tensor]:
    """Observations along ``steps`` steps of the (untrained, near uniform) policy: seeds in
    every stage, so slot_by_op differs between ops."""
    env, policy = model.get_env(), model.policy
    assert env is not None
    obs, seen = env.reset(), []
    for _ in range(steps):
        seen.append(obs)
        with torch.no_grad():
            actions, _, _ = policy(policy.obs_to_tensor(obs)[0])
        obs, _, _, _ = env.step(actions.numpy())
    batch = {k: np.concatenate([o[k] for o in seen]) for k in seen[0]}  # type: ignore[index]
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def as_stored(obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What SB3's rollout buffer hands back at update: every entry as float32."""
    return {k: v.float() for k, v in obs.items()}


def test_shapes_of_every_sb3_call() -> None:
    model = make()
    policy = model.policy
    obs = visited_observations(model, steps=2)  # [32, ...]
    b, k = obs["obs"].shape[0], len(policy.heads.head_names)
    with torch.no_grad():
        actions, values, log_prob = policy(obs)
    assert actions.shape == (b, k) and actions.dtype == torch.int64
    assert values.shape == (b, 1) and log_prob.shape == (b,)
    assert (log_prob <= 0).all() and torch.isfinite(log_prob).all()
    values2, log_prob2, entropy = policy.evaluate_actions(as_stored(obs), actions.float())
    with pytest.raises(ValueError, match=rf"actions has shape \({b}, 7\), expected \({b}, 8\)"):
        policy.evaluate_actions(obs, actions[:, 1:])
    with pytest.raises(ValueError, match=rf"obs\['action_mask'\] has shape \({b}, 43\), "
                                         rf"expected \(B, 44\)"):
        policy.evaluate_actions({**obs, "action_mask": obs["action_mask"][:, 1:]}, actions)
    assert values2.shape == (b, 1) and log_prob2.shape == (b,) and entropy.shape == (b,)
    assert log_prob2.requires_grad and entropy.requires_grad and (entropy > 0).all()
    assert policy.predict_values(obs).shape == (b, 1)
    predicted, _ = model.predict({k: v.numpy() for k, v in obs.items()})
    assert predicted.shape == (b, k)
    # The network is the policy's module: SB3's optimiser holds its parameters.
    in_optimizer = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in policy.bundle.network.parameters()} <= in_optimizer


def test_errors_name_the_argument_and_what_was_expected() -> None:
    env = SlotGardenGymEnv(rows=1, cols=3)
    obs_space, act_space = env.observation_space, env.action_space

    def build(observation_space: spaces.Space = obs_space, action_space: spaces.Space = act_space,
              **kwargs: object) -> SlotformerPolicy:
        return SlotformerPolicy(observation_space, action_space, lambda _: 1e-3, **SMALL, **kwargs)

    assert build().sizes == [3, 13, 4, 3, 3, 4, 5, 6]
    with pytest.raises(ValueError, match=r"'blueprint_indices' has shape \(N,\), got Box"):
        build(spaces.Box(0, 1, (116,)))
    with pytest.raises(ValueError, match=r"rows x cols = 2 x 2 must equal the 3 slots"):
        build(rows=2, cols=2)
    with pytest.raises(ValueError, match=r"rows must be a positive int, got 0"):
        build(rows=0)
    without_slot_by_op = spaces.Dict({k: v for k, v in obs_space.spaces.items()  # type: ignore[attr-defined]
                                      if k != "slot_by_op"})
    with pytest.raises(ValueError,
                       match=r"observation_space\['slot_by_op'\] must have shape \(6, 3\), got None"):
        build(without_slot_by_op)
    wide_obs = spaces.Dict({**obs_space.spaces, "obs": spaces.Box(-1, 1, (120,))})  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"observation_space\['obs'\] must have shape \(116,\), "
                                         r"got \(120,\)"):
        build(wide_obs)
    with pytest.raises(ValueError, match=r"action_space must be MultiDiscrete\(\[3, 13, 4, 3, 3, "
                                         r"4, 5, 6\]\) \(heads \['slot'"):
        build(action_space=spaces.MultiDiscrete([3, 13, 4, 3, 3, 4, 5, 5]))
    with pytest.raises(ValueError, match=r"entropy_weights names unknown heads \['ops'\]"):
        build(entropy_weights={"ops": 2.0})


@pytest.mark.parity
@pytest.mark.parametrize("network", ["transformer", "lstm"])
def test_log_probs_and_values_equal_slotformers_evaluate_actions(network: str) -> None:
    model = make(network=network)
    policy, bundle = model.policy, model.policy.bundle
    obs = visited_observations(model)
    with torch.no_grad():
        actions, rollout_values, rollout_log_prob = policy(obs)
    values, log_prob, _ = policy.evaluate_actions(as_stored(obs), actions.float())
    heads = bundle.action_space.head_names
    masks = dict(zip(heads, obs["action_mask"].bool().split(policy.sizes, -1)))
    ev = bundle.evaluate_actions(obs["obs"], obs["blueprint_indices"],
                                 dict(zip(heads, actions.unbind(-1))),
                                 {**masks, "slot_by_op": obs["slot_by_op"].bool()})
    close = {"atol": 1e-6, "rtol": 0.0}
    torch.testing.assert_close(log_prob, sum(ev.log_probs.values()), **close)
    torch.testing.assert_close(values[:, 0], ev.state_value, **close)
    # Rollout and update score the same distribution: PPO's first ratio is 1.
    torch.testing.assert_close(rollout_log_prob, log_prob.detach(), **close)
    torch.testing.assert_close(rollout_values, values.detach(), **close)
    # Without slot_by_op the slot head scores another distribution: the parity is not vacuous.
    other = bundle.evaluate_actions(obs["obs"], obs["blueprint_indices"],
                                    dict(zip(heads, actions.unbind(-1))), masks)
    assert not torch.allclose(sum(other.log_probs.values()), log_prob)


def test_sampled_op_slot_pairs_are_allowed_by_slot_by_op() -> None:
    model = make(num_envs=32)
    policy = model.policy
    obs = visited_observations(model, steps=40)
    slot_by_op = obs["slot_by_op"].bool()  # [B, 6, N]
    several_ops_several_slots = (slot_by_op.sum(-1) >= 1).sum(-1) >= 3
    assert several_ops_several_slots.float().mean() > 0.3  # the check below has teeth
    seen_ops = set()
    for _ in range(5):
        with torch.no_grad():
            actions, _, _ = policy(obs)
        op, slot = actions[:, -1], actions[:, 0]
        allowed = slot_by_op[torch.arange(len(op)), op, slot]
        acting = op != int(Op.WAIT)
        assert allowed[acting].all(), actions[acting & ~allowed][:5]
        seen_ops |= set(op.tolist())
    assert len(seen_ops) >= 4  # germinate, advance, prune ... were drawn, not only WAIT


def test_deterministic_mode_takes_the_most_likely_op_every_time() -> None:
    model = make()
    policy = model.policy
    obs = visited_observations(model, steps=4)
    with torch.no_grad():
        first, _, log_prob = policy(obs, deterministic=True)
        second = torch.as_tensor(model.predict({k: v.numpy() for k, v in obs.items()},
                                               deterministic=True)[0])
        sampled = torch.stack([policy(obs)[0] for _ in range(4)])
        op_logits = policy.bundle.network(obs["obs"], obs["blueprint_indices"])["op_logits"]
    assert torch.equal(first, second)
    op_mask = obs["action_mask"].bool()[:, -6:]
    assert torch.equal(first[:, -1], op_logits.masked_fill(~op_mask, -1e9).argmax(-1))
    assert not all(torch.equal(s, first) for s in sampled)  # sampling does differ
    assert (log_prob > -50).all()  # the greedy action is allowed by its masks


def test_vec_env_resets_finished_gardens_and_reports_episodes() -> None:
    env = SlotGardenVecEnv(3, rows=1, cols=3, episode_length=4)
    env.seed(7)
    first = env.reset()
    assert env.action_masks().shape == (3, 41) and env.has_attr("action_masks")
    for step in range(4):
        obs, reward, done, infos = env.step(np.zeros((3, 8), dtype=np.int64))  # WAIT
        assert reward.shape == (3,) and done.all() == (step == 3)
    assert all(i["episode"]["l"] == 4 and "terminal_observation" in i for i in infos)
    np.testing.assert_array_equal(obs["blueprint_indices"], first["blueprint_indices"])
    env.seed(7)
    np.testing.assert_array_equal(env.reset()["obs"], first["obs"])


def test_checkpoints_from_sb3_keep_the_scores_and_run_zero_shot(tmp_path: object) -> None:
    model = make(rows=1, cols=3)
    policy = model.policy
    obs = visited_observations(model, steps=4)
    with torch.no_grad():
        actions, values, log_prob = policy(obs)
    model.save(f"{tmp_path}/sb3_model")
    loaded = MaskablePPO.load(f"{tmp_path}/sb3_model", device="cpu")
    values2, log_prob2, _ = loaded.policy.evaluate_actions(as_stored(obs), actions.float())
    torch.testing.assert_close(log_prob2.detach(), log_prob, atol=1e-6, rtol=0.0)
    torch.testing.assert_close(values2.detach(), values, atol=1e-6, rtol=0.0)
    # The transformer saved by slotformer plays a 2x5 grid it never saw: valid actions only.
    path = save_checkpoint(f"{tmp_path}/policy.pt", policy.bundle)
    wide = load_checkpoint(path, slot_config=SlotConfig.for_grid(2, 5))
    garden = SlotGardenEnv(8, SlotConfig.for_grid(2, 5), episode_length=12, seed=0)
    act, out = bundle_policy(wide), garden.reset()
    for _ in range(12):
        chosen = act(out)
        assert chosen.shape == (8, 8) and garden.action_validity(chosen).all()
        out = garden.step(chosen)
    assert np.isfinite(evaluate_policy(garden, act))


@pytest.mark.slow
def test_short_maskable_ppo_training_learns_to_garden() -> None:
    """12 rollouts of 32 x 24 steps (9,216 env steps) with the example's defaults.

    Measured after 9,216 steps, seeds 0-4 (one thread, a 2-core machine under load 8, 31-69 s
    of training): learned 1.67 / 0.90 / 0.98 / 0.96 / 2.14, untrained -0.27 to -0.42, random
    valid -0.40, do-nothing 0, heuristic 2.74. Above 0.5 means it plants and harvests, not
    only stops paying rent (the features extractor it replaces reached about 0 at 20k steps).
    """
    result = run(total_steps=9_216, seed=0, threads=1, quiet=True)
    assert result.env_steps == 9_216
    assert result.learned > 0.5, result
    assert result.learned > result.random + 0.8, result
    assert result.learned > result.untrained + 0.8, result
