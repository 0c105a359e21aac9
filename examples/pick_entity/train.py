"""Recurrent PPO on pick-an-entity through slotformer's generic API (a custom action space).

    python examples/pick_entity/train.py                         # Slot Transformer, seed 0
    python examples/pick_entity/train.py --policy lstm --updates 100 --trunk-dim 128 --lstm-hidden-dim 128

The policy comes from ``create_policy`` with ``action_space=`` the environment's three heads
(``slot``, ``tool``, ``op``), ``num_slot_types=4`` (the entity types, which go in as
``blueprint_indices``), ``base_dim=4`` and ``slot_dim=4``; the loop speaks the
`slotformer.policy.PolicyBundle` protocol (``get_action``, ``evaluate_actions``,
``get_value``, ``initial_hidden``, ``network``).

Each rollout is exactly one episode of every environment (all environments start together
and the episode length is the rollout length), so every stored sequence starts from a zero
recurrent state and ends at a terminal step (no bootstrap).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.pick_entity.env import BASE_DIM, NUM_TYPES, SLOT_DIM, PickEntityEnv, StepOutput
from examples.pick_entity.policies import evaluate_policy, random_valid_policy, scripted_policy
from slotformer import PolicyBundle, SlotConfig, create_policy
from slotformer.actions import ActionSpace


def build_policy(
    kind: str, space: ActionSpace, slot_config: SlotConfig, **sizes: Any
) -> PolicyBundle:
    """A ``"transformer"`` or ``"lstm"`` policy bundle over ``space``, with entity types as
    the slot-type vocabulary and observations of width ``BASE_DIM + N * SLOT_DIM``;
    ``sizes`` are the network's config fields (e.g. ``embed_dim``, ``lstm_hidden_dim``,
    ``head_hidden``, ``trunk_dim``)."""
    return create_policy(
        kind, slot_config=slot_config, action_space=space, num_slot_types=NUM_TYPES,
        base_dim=BASE_DIM, slot_dim=SLOT_DIM, value_baseline="v", **sizes,
    )


@dataclass
class TrainConfig:
    policy: str = "transformer"  # "transformer" | "lstm"
    rows: int = 2
    cols: int = 3
    num_envs: int = 32
    episode_length: int = 12  # = the rollout length: one episode per update
    updates: int = 50
    seed: int = 0
    learning_rate: float = 2e-3
    gamma: float = 0.9
    gae_lambda: float = 0.9
    update_epochs: int = 4
    num_minibatches: int = 4  # minibatches by environment
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    lstm_hidden_dim: int = 64
    embed_dim: int = 32  # transformer: slot token width
    head_hidden: int = 64  # transformer: action / value head width
    transformer_layers: int = 1
    trunk_dim: int = 64  # lstm: feature layer before the LSTM
    eval_episodes: int = 4
    quiet: bool = False


def network_sizes(config: TrainConfig) -> dict[str, Any]:
    """The config fields of ``config.policy``'s network that `TrainConfig` sets."""
    if config.policy == "transformer":
        return dict(lstm_hidden_dim=config.lstm_hidden_dim, embed_dim=config.embed_dim,
                    head_hidden=config.head_hidden, transformer_layers=config.transformer_layers)
    return dict(lstm_hidden_dim=config.lstm_hidden_dim, trunk_dim=config.trunk_dim)


def policy_fn(policy: PolicyBundle, num_envs: int, deterministic: bool = False):  # type: ignore[no-untyped-def]
    """Wrap a policy as an action function for `evaluate_policy` (carries the hidden state,
    zeroed at episode ends)."""
    state: dict[str, Any] = {"hidden": policy.initial_hidden(num_envs)}

    def act(step: StepOutput) -> dict[str, Tensor]:
        if bool(step.done.any()):
            state["hidden"] = policy.initial_hidden(num_envs)
        result = policy.get_action(step.obs, step.blueprint_indices, step.masks, state["hidden"],
                                   deterministic)
        state["hidden"] = result.hidden
        return result.actions

    return act


def train(config: TrainConfig) -> tuple[dict[str, float], PolicyBundle]:
    """Train, then evaluate the learned policy next to random valid and scripted play on fresh
    environments (seed ``config.seed + 1000``); returns ``(metrics, policy)``."""
    torch.manual_seed(config.seed)
    slot_config = SlotConfig.for_grid(config.rows, config.cols)
    env = PickEntityEnv(config.num_envs, slot_config, config.episode_length, seed=config.seed)
    policy = build_policy(config.policy, env.action_space, slot_config, **network_sizes(config))
    params = list(policy.network.parameters())
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, eps=1e-5)
    E, T = config.num_envs, config.episode_length
    heads = env.action_space.head_names
    step = env.reset()
    start = time.perf_counter()
    first_returns: list[float] = []
    for update in range(1, config.updates + 1):
        # ------------------------------------------------------------ rollout: one episode
        hidden = policy.initial_hidden(E)
        buf: dict[str, list[Tensor]] = {k: [] for k in ("obs", "bp", "logp", "value", "reward")}
        buf_masks: dict[str, list[Tensor]] = {h: [] for h in heads}
        buf_actions: dict[str, list[Tensor]] = {h: [] for h in heads}
        for _ in range(T):
            result = policy.get_action(step.obs, step.blueprint_indices, step.masks, hidden)
            buf["obs"].append(step.obs)
            buf["bp"].append(step.blueprint_indices)
            for h in heads:
                buf_masks[h].append(step.masks[h])
                buf_actions[h].append(result.actions[h].clone())
            buf["logp"].append(torch.stack(list(result.log_probs.values())).sum(0))
            buf["value"].append(result.value.clone())
            assert result.hidden is not None
            hidden = (result.hidden[0].clone(), result.hidden[1].clone())
            step = env.step(result.actions)
            buf["reward"].append(step.reward)
        assert bool(step.done.all()), "a rollout is one whole episode"
        episode_return = float(step.episode_return.mean())
        if update == 1:
            first_returns.append(episode_return)

        obs, bp = torch.stack(buf["obs"], 1), torch.stack(buf["bp"], 1)  # [E, T, ...]
        masks = {h: torch.stack(v, 1) for h, v in buf_masks.items()}
        actions = {h: torch.stack(v, 1) for h, v in buf_actions.items()}
        old_logp, values = torch.stack(buf["logp"], 1), torch.stack(buf["value"], 1)
        rewards = torch.stack(buf["reward"], 1)

        # ------------------------------------------------------------ GAE (terminal at T)
        advantages = torch.zeros_like(rewards)
        last = torch.zeros(E)
        for t in reversed(range(T)):
            next_value = values[:, t + 1] if t + 1 < T else torch.zeros(E)
            delta = rewards[:, t] + config.gamma * next_value - values[:, t]
            last = delta + config.gamma * config.gae_lambda * last
            advantages[:, t] = last
        returns = advantages + values

        # ------------------------------------------------------------ PPO update
        for _ in range(config.update_epochs):
            for mb in torch.randperm(E).chunk(config.num_minibatches):
                ev = policy.evaluate_actions(
                    obs[mb], bp[mb], {h: a[mb] for h, a in actions.items()},
                    {h: m[mb] for h, m in masks.items()},
                )
                new_logp = torch.stack(list(ev.log_probs.values())).sum(0)  # [mb, T]
                ratio = (new_logp - old_logp[mb]).exp()
                adv = advantages[mb]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(
                    -adv * ratio, -adv * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
                ).mean()
                assert ev.state_value is not None
                v_loss = 0.5 * (ev.state_value - returns[mb]).pow(2).mean()
                entropy = torch.stack(list(ev.entropies.values())).sum(0).mean()
                loss = pg_loss + config.vf_coef * v_loss - config.ent_coef * entropy
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
        if not config.quiet and (update % 10 == 0 or update == config.updates):
            print(f"update {update:3d}/{config.updates}  return {episode_return:6.2f}  "
                  f"entropy {entropy.item():.3f}  v_loss {v_loss.item():.3f}  "
                  f"{time.perf_counter() - start:5.1f} s", flush=True)
    wall = time.perf_counter() - start

    # ---------------------------------------------------------------- evaluation
    eval_seed = config.seed + 1000

    def fresh_env() -> PickEntityEnv:
        return PickEntityEnv(E, slot_config, T, seed=eval_seed)

    n = config.eval_episodes
    generator = torch.Generator().manual_seed(eval_seed)
    metrics = {
        "learned": evaluate_policy(fresh_env(), policy_fn(policy, E), n),
        "learned_greedy": evaluate_policy(fresh_env(), policy_fn(policy, E, deterministic=True), n),
        "random": evaluate_policy(fresh_env(), lambda s: random_valid_policy(s, generator), n),
        "scripted": evaluate_policy(fresh_env(), scripted_policy, n),
        "first_update_return": first_returns[0],
        "train_s": wall,
    }
    if not config.quiet:
        print(f"\nmean return over {n} episodes x {E} envs ({config.policy}): "
              f"learned {metrics['learned']:.2f} (greedy {metrics['learned_greedy']:.2f})  "
              f"random {metrics['random']:.2f}  scripted {metrics['scripted']:.2f}  "
              f"(trained {wall:.0f} s)")
    return metrics, policy


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            parser.add_argument(flag, action="store_true", default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    return TrainConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    train(parse_args())
