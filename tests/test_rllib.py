"""The RLlib adapter: the factored distribution behind RLlib's API (padding rows, the mode,
entropy and KL against looped references), the RLModule (state layout, log-probs and values
against evaluate_actions, checkpoints), then RLlib's PPO itself: env runners and a learner in
this process (the first minibatch re-scored against the rollout), and two DDP learners."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

pytest.importorskip("ray.rllib")

import gymnasium as gym
from ray.rllib.core.columns import Columns

import slotformer
from slotformer import InvalidStateMachineError, SlotConfig, create_policy
from slotformer.actions import canonicalize_masks
from slotformer.checkpoint import load_checkpoint, save_checkpoint
from slotformer.distributions import masked_log_probs, normalised_entropy
from slotformer.envs import SlotGardenEnv, evaluate_policy
from slotformer.envs.gym import SlotGardenVectorEnv, split_action_mask
from slotformer.integrations.rllib import (
    FactoredMaskedDistribution,
    SlotformerRLModule,
    rl_module_spec_from_checkpoint,
    save_slotformer_checkpoint,
)
from slotformer.presets.seed_lifecycle import HEAD_NAMES, Op

ENV_ID = "slotformer.envs:slotformer/SlotGarden-v0"
SMALL = {"lstm_hidden_dim": 16, "lstm_layers": 2}
WEIGHTS = {"op": 3.0, "slot": 0.5}


def make_module(network: str = "transformer", rows: int = 1, cols: int = 3,
                **config: Any) -> SlotformerRLModule:
    env = gym.make(ENV_ID, rows=rows, cols=cols)
    kwargs = {**SMALL, **({"embed_dim": 16} if network == "transformer" else {"trunk_dim": 16})}
    return SlotformerRLModule(
        observation_space=env.observation_space, action_space=env.action_space,
        model_config={"rows": rows, "cols": cols, "network": network, "policy_kwargs": kwargs,
                      **config})


def rollout_batch(module: SlotformerRLModule, steps: int = 6, envs: int = 3,
                  seed: int = 0) -> dict[str, Any]:
    """``[envs, steps]`` sequences played by the module on Slot Garden, with RLlib's keys and
    the start state (what the learner gets)."""
    torch.manual_seed(seed)
    rows, cols = module.model_config["rows"], module.model_config["cols"]
    venv = SlotGardenVectorEnv(envs, rows=rows, cols=cols, episode_length=4)
    obs, _ = venv.reset(seed=seed)
    init = {k: v.expand(envs, *v.shape).clone() for k, v in module.get_initial_state().items()}
    state, seq, actions, logp = init, [], [], []
    for _ in range(steps):
        o = {k: torch.as_tensor(v)[:, None] for k, v in obs.items()}
        out = module.forward_exploration({Columns.OBS: o, Columns.STATE_IN: state})
        seq.append(o)
        actions.append(out[Columns.ACTIONS])
        logp.append(out[Columns.ACTION_LOGP])
        state = out[Columns.STATE_OUT]
        obs, *_ = venv.step(out[Columns.ACTIONS][:, 0].numpy())
    return {Columns.OBS: {k: torch.cat([s[k] for s in seq], 1) for k in seq[0]},
            Columns.STATE_IN: init, Columns.ACTIONS: torch.cat(actions, 1),
            Columns.ACTION_LOGP: torch.cat(logp, 1)}


def reference(module: SlotformerRLModule, batch: dict[str, Any]) -> Any:
    """slotformer's own evaluate_actions on an RLlib batch (validation off: RLlib's rows)."""
    obs, n = batch[Columns.OBS], module.bundle.slot_config.num_slots
    masks: dict[str, Any] = split_action_mask(obs["action_mask"], num_slots=n)
    masks["slot_by_op"] = obs["slot_by_op"].bool()
    state = batch[Columns.STATE_IN]
    hidden = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())
    actions = dict(zip(HEAD_NAMES, batch[Columns.ACTIONS].long().unbind(-1)))
    with torch.no_grad(), slotformer.validation(False):
        return module.bundle.evaluate_actions(
            obs["obs"], obs["blueprint_indices"].long(), actions, masks, hidden)


def random_inputs(batch: tuple[int, ...] = (5, 4), seed: int = 0,
                  cls: type[FactoredMaskedDistribution] | None = None) -> torch.Tensor:
    """``ACTION_DIST_INPUTS`` with random logits and random masks (every row has a valid op
    whose slots are not empty, and a valid action in every head)."""
    g = torch.Generator().manual_seed(seed)
    cls = cls or make_module().get_train_action_dist_cls()
    space = cls.space
    logits = {h.name: 2 * torch.randn(*batch, h.size, generator=g) for h in space.heads}
    masks = {h.name: torch.rand(*batch, h.size, generator=g) < 0.6 for h in space.heads}
    for m in masks.values():
        m[..., 0] = True
    by_op = torch.rand(*batch, space.num_ops, space.num_slots, generator=g) < 0.5
    by_op[..., 1] = True
    flat = torch.cat([masks[n] for n in space.head_names], -1)
    return cls.to_inputs(logits, flat, by_op, torch.ones(batch))


# ---------------------------------------------------------------------------- distribution
def test_padding_rows_score_finite_while_real_rows_keep_validation() -> None:
    cls = make_module().get_train_action_dist_cls()
    inputs = random_inputs(cls=cls)  # [5, 4, 2 S + O N + 1]
    s, o = sum(cls.space.sizes.values()), cls.space.num_ops
    actions = torch.zeros(1, 4, len(HEAD_NAMES), dtype=torch.long)
    actions[..., HEAD_NAMES.index("op")] = int(Op.PRUNE)
    padded = inputs[:1].clone()
    padded[..., s:] = 0.0  # RLlib's zero padding: every mask empty, outside LOSS_MASK
    appended = inputs[1:2].clone()
    appended[..., 2 * s - o: 2 * s] = 0.0  # the op head's mask (the last head) ...
    appended[..., 2 * s - o + int(Op.WAIT)] = 1.0  # ... allows only WAIT: PRUNE is forbidden
    appended[..., -1] = 0.0  # RLlib's appended step: outside LOSS_MASK
    assert slotformer.validation_enabled()
    for rows in (padded, appended):
        dist = cls.from_logits(rows)
        for value in (dist.logp(actions), dist.entropy(), dist.kl(dist), dist.sample()):
            assert torch.isfinite(value.float()).all()
    # The same row inside LOSS_MASK raises, naming the head; so does a real empty mask row.
    appended[..., -1] = 1.0
    with pytest.raises(ValueError, match=r"forbid.*'op'"):
        cls.from_logits(appended).logp(actions)
    appended[..., s: 2 * s] = 0.0
    with pytest.raises(InvalidStateMachineError, match="no valid action"):
        cls.from_logits(appended).sample()


def test_to_deterministic_is_the_mode() -> None:
    cls = make_module().get_train_action_dist_cls()
    dist = cls.from_logits(random_inputs(seed=1, cls=cls))
    mode = dist.to_deterministic().sample()  # [5, 4, 8]
    op_name = cls.space.op_head
    op = dist.logits[op_name].masked_fill(~dist.masks[op_name], -math.inf).argmax(-1)
    assert torch.equal(mode[..., HEAD_NAMES.index(op_name)], op)
    canonical = canonicalize_masks(cls.space, dist.masks, op, dist.slot_by_op)
    for k, name in enumerate(HEAD_NAMES):
        best = dist.logits[name].masked_fill(~canonical[name], -math.inf).argmax(-1)
        assert torch.equal(mode[..., k], best), name
    # Its log-prob is the stochastic distribution's.
    assert torch.allclose(dist.to_deterministic().logp(mode), dist.logp(mode))


def looped(cls: type[FactoredMaskedDistribution], p: FactoredMaskedDistribution,
           q: FactoredMaskedDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted entropy of p and KL(p || q), one op and one head at a time."""
    space, op_name = cls.space, cls.space.op_head
    w = cls.entropy_weights
    p_op = masked_log_probs(p.logits[op_name], p.masks[op_name])
    q_op = masked_log_probs(q.logits[op_name], p.masks[op_name])
    entropy = w.get(op_name, 1.0) * normalised_entropy(p_op, p.masks[op_name])
    valid = p.masks[op_name]
    kl = (p_op.exp() * (p_op - q_op).masked_fill(~valid, 0)).sum(-1)
    for o in range(space.num_ops):
        ops = torch.full(p_op.shape[:-1], o)
        canonical = canonicalize_masks(space, p.masks, ops, p.slot_by_op)
        for name in space.head_names:
            if name == op_name:
                continue
            lp = masked_log_probs(p.logits[name], canonical[name])
            lq = masked_log_probs(q.logits[name], canonical[name])
            weight = p_op[..., o].exp()
            entropy = entropy + weight * w.get(name, 1.0) * normalised_entropy(lp, canonical[name])
            kl = kl + weight * (lp.exp() * (lp - lq).masked_fill(~canonical[name], 0)).sum(-1)
    return entropy, kl


def test_entropy_and_kl_equal_a_looped_reference() -> None:
    cls = make_module(entropy_weights=WEIGHTS).get_train_action_dist_cls()
    assert cls.entropy_weights == WEIGHTS
    inputs = random_inputs(seed=2, cls=cls)
    p = cls.from_logits(inputs)
    other = inputs.clone()
    s = sum(cls.space.sizes.values())
    other[..., :s] += torch.randn(*inputs.shape[:-1], s)
    q = cls.from_logits(other)
    entropy, kl = looped(cls, p, q)
    assert torch.allclose(p.entropy(), entropy, atol=1e-5)
    assert torch.allclose(p.kl(q), kl, atol=1e-5)
    assert (kl > 0).all() and p.kl(p).abs().max() < 1e-6


def test_rsample_and_bad_inputs_raise_clear_errors() -> None:
    module = make_module()
    cls = module.get_train_action_dist_cls()
    dist = cls.from_logits(random_inputs(cls=cls))
    with pytest.raises(NotImplementedError, match="reparameterisable"):
        dist.rsample()
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 101\]"):
        cls.from_logits(torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"expected integers of shape \(5, 4, 8\)"):
        dist.logp(torch.zeros(5, 4, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown keys"):
        make_module(max_seq_lenn=4)
    with pytest.raises(ValueError, match="entropy_weights names unknown heads"):
        make_module(entropy_weights={"opp": 1.0})
    with pytest.raises(ValueError, match=r"MultiDiscrete\(\[3, 13"):
        SlotformerRLModule(observation_space=module.observation_space,
                           action_space=gym.spaces.MultiDiscrete([4, 13, 4, 3, 3, 4, 5, 6]),
                           model_config={"network": "lstm"})
    assert cls.required_input_dim() == 101 and module.model_config["max_seq_len"] == 25


# ---------------------------------------------------------------------------- module
@pytest.mark.parametrize("network", ["transformer", "lstm"])
def test_logp_and_values_equal_evaluate_actions(network: str) -> None:
    module = make_module(network, rows=2, cols=2)
    batch = rollout_batch(module)
    batch[Columns.LOSS_MASK] = torch.ones(3, 6, dtype=torch.bool)
    out = module.forward_train(batch)
    dist = module.get_train_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    logp = dist.logp(batch[Columns.ACTIONS])
    ev = reference(module, batch)
    expected = torch.stack([ev.log_probs[h] for h in HEAD_NAMES]).sum(0)
    assert (logp - expected).abs().max() <= 1e-5
    assert (logp - batch[Columns.ACTION_LOGP]).abs().max() <= 1e-5  # ratio 1 at rollout
    values = module.compute_values(batch, out[Columns.EMBEDDINGS])
    assert torch.allclose(values, ev.state_value, atol=1e-5)
    assert torch.allclose(module.compute_values(batch), values, atol=1e-6)
    (logp.sum() + values.sum()).backward()  # the auxiliary heads are frozen (DDP) ...
    network = module.network
    frozen = [*network.q_head.parameters(), *network.contribution_predictor.parameters()]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    ids = {id(p) for p in frozen}  # ... and every other parameter trains
    assert all(p.grad is not None for p in network.parameters() if id(p) not in ids)


def test_state_layout_is_converted_both_ways() -> None:
    module = make_module("lstm")
    state = module.get_initial_state()
    assert state["h"].shape == (2, 16)  # [L, H]: RLlib adds B in front
    b = 3
    h, c = torch.randn(b, 2, 16), torch.randn(b, 2, 16)  # RLlib's [B, L, H]
    batch = rollout_batch(module, steps=1, envs=b)
    batch[Columns.STATE_IN] = {"h": h, "c": c}
    out = module.forward_exploration(batch)
    obs = batch[Columns.OBS]
    direct = module.network(obs["obs"], obs["blueprint_indices"],
                            (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()))
    for key, value in zip("hc", direct["hidden"]):  # slotformer's [L, B, H]
        assert torch.equal(out[Columns.STATE_OUT][key], value.transpose(0, 1))


def test_rllib_checkpoint_round_trip_is_exact(tmp_path: Any) -> None:
    module = make_module("transformer", probability_floor={"op": 0.02})
    module.save_to_path(tmp_path / "module")
    restored = SlotformerRLModule.from_checkpoint(tmp_path / "module")
    for (k, a), (_, b) in zip(module.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), k
    batch = rollout_batch(module, steps=2)
    batch[Columns.LOSS_MASK] = torch.ones(3, 2, dtype=torch.bool)
    assert torch.equal(module.forward_train(batch)[Columns.ACTION_DIST_INPUTS],
                       restored.forward_train(batch)[Columns.ACTION_DIST_INPUTS])


def test_slotformer_checkpoint_seeds_a_module_and_back(tmp_path: Any) -> None:
    policy = create_policy("lstm", slot_config=SlotConfig.for_grid(2, 2), lstm_hidden_dim=16)
    save_checkpoint(tmp_path / "policy.pt", policy)
    spec = rl_module_spec_from_checkpoint(tmp_path / "policy.pt")
    spec.observation_space = gym.make(ENV_ID, rows=2, cols=2).observation_space
    spec.action_space = gym.make(ENV_ID, rows=2, cols=2).action_space
    module = spec.build()
    assert spec.model_config["rows"] == 2 and spec.model_config["network"] == "lstm"
    for key, value in policy.state_dict().items():
        assert torch.equal(module.bundle.state_dict()[key], value), key
    with torch.no_grad():
        next(module.network.parameters()).add_(1.0)  # "training"
    save_slotformer_checkpoint(module, tmp_path / "back.pt", extra={"iterations": 3})
    bad = {**spec.model_config, "policy_kwargs": {"lstm_layers": 2}}
    with pytest.raises(ValueError, match="both checkpoint and policy_kwargs"):
        SlotformerRLModule(observation_space=spec.observation_space,
                           action_space=spec.action_space, model_config=bad)
    back = load_checkpoint(tmp_path / "back.pt")
    for key, value in module.bundle.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_example_policy_plays_legal_moves_and_the_example_lists_its_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    from examples.rllib_ppo import main, module_policy_fn

    module = make_module("lstm")
    env = SlotGardenEnv(4, SlotConfig.for_grid(1, 3), episode_length=6, seed=0)
    # SlotGardenEnv.step raises on an illegal move (validation on); episodes restart inside.
    assert math.isfinite(evaluate_policy(env, module_policy_fn(module, 4), num_episodes=2))
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--learners", "--env-runners", "--address", "--seed"))


# ---------------------------------------------------------------------------- RLlib itself
CAPTURED: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def ray_session() -> Any:
    import os

    import ray

    # Workers import slotformer from this checkout, and this module (the config refers to
    # its learner and callback classes).
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([os.path.dirname(tests), tests])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def ppo(env_runners: int, learners: int, **training: Any) -> Any:
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    config = {"rows": 1, "cols": 3, "network": "transformer", "max_seq_len": 8,
              "policy_kwargs": {"lstm_hidden_dim": 16, "embed_dim": 16}}
    return (
        PPOConfig()
        .environment(ENV_ID, env_config={"episode_length": 16})
        .env_runners(num_env_runners=env_runners, num_envs_per_env_runner=2,
                     rollout_fragment_length=20, gym_env_vectorize_mode="vector_entry_point")
        .learners(num_learners=learners)
        .training(num_epochs=1, use_kl_loss=False, **training)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=SlotformerRLModule,
                                               model_config=config))
        .debugging(seed=0)
    )


@pytest.mark.slow
def test_ppo_first_minibatch_rescores_the_rollout(ray_session: Any) -> None:
    from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class CapturingLearner(PPOTorchLearner):  # in this process (num_learners=0)
        def compute_loss_for_module(self, *, module_id: str, config: Any, batch: Any,
                                    fwd_out: Any) -> Any:
            if not CAPTURED:  # the first minibatch, before any update: score it now
                module = self.module[module_id].unwrapped()
                with torch.no_grad():
                    dist = module.get_train_action_dist_cls().from_logits(
                        fwd_out[Columns.ACTION_DIST_INPUTS])
                    CAPTURED.append({
                        "batch": batch, "logp": dist.logp(batch[Columns.ACTIONS]),
                        "entropy": dist.entropy(), "reference": reference(module, batch),
                        "values": module.compute_values(batch, fwd_out[Columns.EMBEDDINGS])})
            return super().compute_loss_for_module(module_id=module_id, config=config,
                                                   batch=batch, fwd_out=fwd_out)

    class EpisodeCheck(RLlibCallback):  # in the env runners: RLlib's return vs the env's
        def on_episode_end(self, *, episode: Any, metrics_logger: Any, **kwargs: Any) -> None:
            env_return = episode.get_infos(-1)["episode_return"]
            metrics_logger.log_value("return_gap", abs(episode.get_return() - env_return),
                                     reduce="max")

    CAPTURED.clear()
    config = ppo(2, 0, train_batch_size_per_learner=80, minibatch_size=40)
    config.learners(learner_class=CapturingLearner).callbacks(EpisodeCheck)
    algo = config.build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    runners, learner = result["env_runners"], result["learners"]["default_policy"]
    assert runners["episode_len_mean"] == 16 and runners["return_gap"] < 1e-5
    for key in ("total_loss", "policy_loss", "vf_loss", "entropy"):
        assert math.isfinite(learner[key]), key
    captured = CAPTURED[0]
    batch, logp, ev = captured["batch"], captured["logp"], captured["reference"]
    real = batch[Columns.LOSS_MASK]
    assert 0 < real.sum() < real.numel()  # RLlib's own rows are in the minibatch
    # Validation was on (logp did not raise) and every row, RLlib's own too, is finite.
    assert torch.isfinite(logp).all() and torch.isfinite(captured["entropy"]).all()
    assert (logp - batch[Columns.ACTION_LOGP])[real].abs().max() <= 1e-5
    summed = torch.stack([ev.log_probs[h] for h in HEAD_NAMES]).sum(0)
    assert (logp - summed)[real].abs().max() <= 1e-5
    assert (captured["values"] - ev.state_value)[real].abs().max() <= 1e-5
    actions, by_op = batch[Columns.ACTIONS][real], batch[Columns.OBS]["slot_by_op"][real].bool()
    op, slot = actions[:, HEAD_NAMES.index("op")], actions[:, HEAD_NAMES.index("slot")]
    acted = op != int(Op.WAIT)
    assert acted.any() and by_op[torch.arange(len(op)), op, slot][acted].all()


@pytest.mark.slow
def test_ppo_with_two_ddp_learners(ray_session: Any) -> None:
    from examples.rllib_ppo import set_op_entropy

    algo = ppo(0, 2, train_batch_size_per_learner=40, minibatch_size=20).build_algo()
    try:
        set_op_entropy(algo, 7.0)  # what the example does between iterations
        weights = [call.get() for call in algo.learner_group.foreach_learner(
            lambda learner: learner.module["default_policy"].unwrapped()
            .get_train_action_dist_cls().entropy_weights)]
        learner = algo.train()["learners"]["default_policy"]
    finally:
        algo.stop()
    assert weights == [{"op": 7.0}, {"op": 7.0}]  # on both learner processes
    for key in ("total_loss", "policy_loss", "vf_loss", "entropy"):
        assert math.isfinite(learner[key]), key
