"""Recurrent PPO on Slot Garden, in one readable file (CleanRL style).

    python examples/train_slot_garden.py                       # transformer on a 1x3 grid
    python examples/train_slot_garden.py --policy lstm --rows 2 --cols 5 --total-steps 200000

What it shows: a policy bundle from `create_policy`, rollouts with `get_action` carrying the
recurrent state per environment (zeroed at episode ends), the stored masks re-applied at
update through `evaluate_actions`, GAE, a clipped PPO loss over whole sequences (minibatches
by environment, each starting from its stored hidden state), value, Q and contribution losses,
gradient clipping, a per-update log line, optional TensorBoard logging and a final checkpoint.

Sequences never cross an episode boundary: Slot Garden's episodes have a fixed length and all
environments start together, and the rollout length divides the episode length, so each
rollout lies inside one episode of every environment and its stored start state is exact.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.slot_garden import (
    SlotGardenEnv,
    StepOutput,
    evaluate_policy,
    heuristic_policy,
    random_valid_policy,
)
from slotformer import SlotConfig, configure_malloc
from slotformer.checkpoint import save_checkpoint
from slotformer.policy import PolicyBundle, create_policy
from slotformer.presets.seed_lifecycle import HEAD_NAMES


@dataclass
class Args:
    policy: str = "transformer"  # "lstm" | "transformer"
    rows: int = 1
    cols: int = 3
    num_envs: int = 32
    episode_length: int = 48
    rollout_length: int = 24  # must divide episode_length
    total_steps: int = 120_000  # environment steps (all environments together)
    seed: int = 0
    learning_rate: float = 1e-3
    gamma: float = 0.97
    gae_lambda: float = 0.95
    update_epochs: int = 4
    num_minibatches: int = 4  # minibatches by environment
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    op_floor: float = 0.05  # minimum probability of each valid op while training (exploration)
    vf_coef: float = 0.5
    q_coef: float = 0.25
    aux_coef: float = 0.1
    max_grad_norm: float = 0.5
    hidden_dim: int = 128
    contribution_hidden: int = 64  # transformer: width of the per-slot contribution predictor
    contribution_dropout: float = 0.0  # transformer: its dropout
    ff_mult: int = 4  # transformer: feed-forward width of each block / embed_dim
    eval_episodes: int = 2
    tensorboard: str | None = None  # a log folder, or None
    checkpoint: str | None = "runs/slot_garden.pt"
    quiet: bool = False
    # "tuned": slotformer.configure_malloc(), large CPU tensors stay in glibc's heap between
    # updates (faster updates, resident memory at its high-water mark); "default": glibc's.
    malloc: str = "tuned"


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Args):
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default)
        elif default is None or field.name in ("tensorboard", "checkpoint"):
            parser.add_argument(flag, type=str, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return Args(**vars(parser.parse_args(argv)))


def masks_of(step: StepOutput) -> dict[str, torch.Tensor]:
    """The masks dict a bundle takes: every head plus ``slot_by_op``."""
    return {**step.masks, "slot_by_op": step.slot_by_op}


def reset_done(hidden: tuple[torch.Tensor, torch.Tensor], done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the recurrent state of environments whose episode just ended."""
    keep = (~done).to(hidden[0].dtype).view(1, -1, 1)  # [1, E, 1]
    return hidden[0] * keep, hidden[1] * keep


def policy_fn(policy: PolicyBundle, num_envs: int, deterministic: bool):  # type: ignore[no-untyped-def]
    """Wrap a bundle as an ``[E, 8]`` action function for `evaluate_policy` (keeps hidden)."""
    state = {"hidden": policy.initial_hidden(num_envs), "t": 0}

    def act(step: StepOutput) -> torch.Tensor:
        if state["t"] > 0 and bool(step.done.any()):
            state["hidden"] = reset_done(state["hidden"], step.done)
        result = policy.get_action(
            step.obs, step.blueprint_indices, masks_of(step), state["hidden"], deterministic
        )
        state["hidden"], state["t"] = result.hidden, state["t"] + 1
        return torch.stack([result.actions[h] for h in HEAD_NAMES], dim=-1)

    return act


def train(args: Args) -> tuple[dict[str, float], PolicyBundle]:
    """Train, evaluate against the reference policies, checkpoint; returns (metrics, policy)."""
    if args.episode_length % args.rollout_length != 0:
        raise ValueError(
            f"rollout_length={args.rollout_length} must divide episode_length={args.episode_length}"
        )
    if args.malloc not in ("tuned", "default"):
        raise ValueError(f"malloc must be 'tuned' or 'default', got {args.malloc!r}")
    if args.malloc == "tuned":
        configure_malloc()  # process-wide, on purpose: this script is the whole process
    torch.manual_seed(args.seed)
    slot_config = SlotConfig.for_grid(args.rows, args.cols)
    env = SlotGardenEnv(args.num_envs, slot_config, args.episode_length, seed=args.seed)
    E, T, N = args.num_envs, args.rollout_length, slot_config.num_slots
    extra = ({"contribution_hidden": args.contribution_hidden,
              "contribution_dropout": args.contribution_dropout,
              "transformer_ff_mult": args.ff_mult}
             if args.policy == "transformer" else {})
    policy = create_policy(
        args.policy, state_dim=23 + 31 * N, slot_config=slot_config,
        lstm_hidden_dim=args.hidden_dim, value_baseline="v", **extra,
    )
    optimizer = torch.optim.Adam(policy.network.parameters(), lr=args.learning_rate, eps=1e-5)
    writer = None
    if args.tensorboard:
        from slotformer.tensorboard import create_summary_writer

        writer = create_summary_writer(args.tensorboard)

    # The same floor at rollout and update keeps the PPO ratio at 1 (up to fp32 rounding); it
    # stops the op head from collapsing onto WAIT (every action costs rent before the policy
    # learns to plant).
    floor = {"op": args.op_floor} if args.op_floor > 0 else None
    step = env.reset()
    hidden = policy.initial_hidden(E)
    num_updates = max(1, args.total_steps // (E * T))
    recent_returns: list[float] = []
    start = time.perf_counter()
    for update in range(1, num_updates + 1):
        # ---------------------------------------------------------------- rollout
        start_hidden = (hidden[0].clone(), hidden[1].clone())  # [L, E, H]
        buf: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "bp", "logp", "value", "reward", "done", "contrib", "active")}
        buf_masks: dict[str, list[torch.Tensor]] = {}
        buf_actions: dict[str, list[torch.Tensor]] = {h: [] for h in HEAD_NAMES}
        for _ in range(T):
            masks = masks_of(step)
            result = policy.get_action(step.obs, step.blueprint_indices, masks, hidden,
                                       probability_floor=floor)
            buf["obs"].append(step.obs)
            buf["bp"].append(step.blueprint_indices)
            buf["active"].append(step.blueprint_indices >= 0)
            buf["contrib"].append(step.info["contributions"])  # targets for this observation
            for name, mask in masks.items():
                buf_masks.setdefault(name, []).append(mask)
            for name in HEAD_NAMES:
                buf_actions[name].append(result.actions[name].clone())
            buf["logp"].append(sum(result.log_probs.values()).clone())
            buf["value"].append(result.value.clone())
            hidden = (result.hidden[0].clone(), result.hidden[1].clone())
            step = env.step({h: result.actions[h] for h in HEAD_NAMES})
            buf["reward"].append(step.reward)
            buf["done"].append(step.done)
            hidden = reset_done(hidden, step.done)
            recent_returns += step.episode_return[step.done].tolist()

        # Tensors [E, T, ...]: sequences by environment.
        obs = torch.stack(buf["obs"], 1)
        bp = torch.stack(buf["bp"], 1)
        masks_t = {k: torch.stack(v, 1) for k, v in buf_masks.items()}
        actions_t = {k: torch.stack(v, 1) for k, v in buf_actions.items()}
        old_logp, values = torch.stack(buf["logp"], 1), torch.stack(buf["value"], 1)
        rewards, dones = torch.stack(buf["reward"], 1), torch.stack(buf["done"], 1)
        contrib_target, active = torch.stack(buf["contrib"], 1), torch.stack(buf["active"], 1)

        # ---------------------------------------------------------------- GAE
        with torch.no_grad():
            next_value = policy.get_value(step.obs, step.blueprint_indices, hidden)  # [E]
            advantages = torch.zeros_like(rewards)
            last_gae = torch.zeros(E)
            for t in reversed(range(T)):
                not_done = (~dones[:, t]).float()
                bootstrap = next_value if t == T - 1 else values[:, t + 1]
                delta = rewards[:, t] + args.gamma * bootstrap * not_done - values[:, t]
                last_gae = delta + args.gamma * args.gae_lambda * not_done * last_gae
                advantages[:, t] = last_gae
            returns = advantages + values

        # ---------------------------------------------------------------- PPO update
        env_order = torch.randperm(E)
        mb_size = E // args.num_minibatches
        stats: dict[str, float] = {}
        for _epoch in range(args.update_epochs):
            for mb in env_order.split(mb_size):
                mb_hidden = (start_hidden[0][:, mb], start_hidden[1][:, mb])
                ev = policy.evaluate_actions(
                    obs[mb], bp[mb], {k: v[mb] for k, v in actions_t.items()},
                    {k: v[mb] for k, v in masks_t.items()}, mb_hidden,
                    probability_floor=floor,
                )
                new_logp = sum(ev.log_probs.values())  # [mb, T]
                ratio = (new_logp - old_logp[mb]).exp()
                adv = advantages[mb]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(
                    -adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                v_loss = 0.5 * (ev.value - returns[mb]).pow(2).mean()
                q_loss = 0.5 * (ev.q_value - returns[mb]).pow(2).mean()
                mb_active = active[mb].float()
                aux_loss = ((ev.pred_contributions - contrib_target[mb]).pow(2) * mb_active).sum() / mb_active.sum().clamp(min=1)
                entropy = torch.stack(list(ev.entropies.values())).sum(0).mean()
                loss = (pg_loss + args.vf_coef * v_loss + args.q_coef * q_loss
                        + args.aux_coef * aux_loss - args.ent_coef * entropy)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.network.parameters(), args.max_grad_norm)
                optimizer.step()
                stats = {"loss": loss.item(), "pg_loss": pg_loss.item(), "v_loss": v_loss.item(),
                         "entropy": entropy.item(), "aux_loss": aux_loss.item()}

        env_steps = update * E * T
        sps = env_steps / (time.perf_counter() - start)
        mean_return = sum(recent_returns[-2 * E:]) / max(len(recent_returns[-2 * E:]), 1)
        if writer is not None:
            writer.add_scalar("charts/mean_return", mean_return, env_steps)
            writer.add_scalar("charts/sps", sps, env_steps)
            for k, v in stats.items():
                writer.add_scalar(f"losses/{k}", v, env_steps)
        if not args.quiet and (update % 5 == 0 or update == num_updates):
            print(f"update {update:4d}/{num_updates}  steps {env_steps:7d}  sps {sps:6.0f}  "
                  f"return {mean_return:7.3f}  entropy {stats['entropy']:.3f}  "
                  f"v_loss {stats['v_loss']:.4f}", flush=True)

    wall = time.perf_counter() - start
    # ---------------------------------------------------------------- evaluation
    def fresh_env(seed: int) -> SlotGardenEnv:
        return SlotGardenEnv(E, slot_config, args.episode_length, seed=seed, table_seed=args.seed)

    eval_seed = args.seed + 1000
    learned = evaluate_policy(fresh_env(eval_seed), policy_fn(policy, E, deterministic=False),
                              num_episodes=args.eval_episodes)
    gen = torch.Generator().manual_seed(eval_seed)
    random_score = evaluate_policy(fresh_env(eval_seed), lambda s: random_valid_policy(s, gen),
                                   num_episodes=args.eval_episodes)
    heuristic = evaluate_policy(fresh_env(eval_seed), heuristic_policy,
                                num_episodes=args.eval_episodes)
    if writer is not None:
        writer.close()
    if args.checkpoint:
        Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(args.checkpoint, policy, extra={"args": dataclasses.asdict(args)})
    result = {"learned": learned, "random": random_score, "heuristic": heuristic,
              "wall_s": wall, "env_steps_per_s": num_updates * E * T / wall}
    if not args.quiet:
        print(f"\nmean return over {args.eval_episodes} episodes x {E} envs "
              f"({args.policy}, {args.rows}x{args.cols} grid): learned {learned:.3f}  "
              f"random {random_score:.3f}  heuristic {heuristic:.3f}  "
              f"(trained {wall:.0f} s, {result['env_steps_per_s']:.0f} env steps/s)")
    return result, policy


if __name__ == "__main__":
    train(parse_args())
