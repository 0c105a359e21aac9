"""Recurrent PPO on Slot Garden, in one readable file (CleanRL style).

    python examples/train_slot_garden.py                       # transformer on a 1x3 grid
    python examples/train_slot_garden.py --policy lstm --rows 2 --cols 5 --total-steps 200000
    python examples/train_slot_garden.py --stagger    # episodes of unequal lengths

What it shows: a policy bundle from `create_policy`, rollouts with `get_action` carrying the
recurrent state per environment (zeroed where an episode begins, through `episode_starts`),
the stored masks re-applied at update through `evaluate_actions`, GAE, a clipped PPO loss over
whole sequences (minibatches by environment, each starting from its stored hidden state),
value, Q and contribution losses, gradient clipping, a per-update log line, optional
TensorBoard logging and a final checkpoint.

Sequences may cross episode boundaries. A rollout stores ``episode_starts [E, T]`` (True at a
step where that environment's episode began: the ``done`` of the step before, including the
step before the rollout), and the update passes the same flags to `evaluate_actions`, so the
recurrent state is zeroed before exactly the steps where it was zeroed at rollout and the
re-scored log-probs equal the rollout's. With ``--stagger`` every episode's length is drawn
from ``episode_length // 2 .. episode_length`` per environment (Slot Garden's
``min_episode_length``), so environments end episodes at different steps, inside the
rollouts; without it all episodes have ``episode_length`` steps and end together. The
evaluation at the end always plays full-length episodes, comparable with the reference
policies' scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slotformer import SlotConfig, configure_malloc
from slotformer.checkpoint import save_checkpoint
from slotformer.envs import (
    SlotGardenEnv,
    StepOutput,
    evaluate_policy,
    heuristic_policy,
    random_valid_policy,
)
from slotformer.policy import EvalResult, PolicyBundle, create_policy
from slotformer.presets.seed_lifecycle import HEAD_NAMES

Hidden = tuple[Tensor, Tensor]  # (h, c), each [layers, E, H]


@dataclass
class Args:
    policy: str = "transformer"  # "lstm" | "transformer"
    rows: int = 1
    cols: int = 3
    num_envs: int = 32
    episode_length: int = 48  # the longest episode with --stagger
    rollout_length: int = 24
    stagger: bool = False  # unequal episode lengths: drawn from episode_length // 2 .. episode_length
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


def policy_fn(policy: PolicyBundle, num_envs: int, deterministic: bool):  # type: ignore[no-untyped-def]
    """Wrap a bundle as an ``[E, 8]`` action function for `evaluate_policy` (keeps hidden)."""
    state = {"hidden": policy.initial_hidden(num_envs)}

    def act(step: StepOutput) -> torch.Tensor:
        # An environment whose episode just ended (done; all False after reset, where the
        # state is zero anyway) starts the next one from a zero state.
        result = policy.get_action(
            step.obs, step.blueprint_indices, masks_of(step), state["hidden"], deterministic,
            episode_starts=step.done,
        )
        state["hidden"] = result.hidden
        return torch.stack([result.actions[h] for h in HEAD_NAMES], dim=-1)

    return act


def make_env(args: Args, slot_config: SlotConfig, seed: int, *, stagger: bool,
             table_seed: int | None = None) -> SlotGardenEnv:
    """Slot Garden as the arguments ask; ``stagger``: episode lengths drawn per environment
    from ``episode_length // 2 .. episode_length``."""
    return SlotGardenEnv(
        args.num_envs, slot_config, args.episode_length, seed=seed, table_seed=table_seed,
        min_episode_length=max(1, args.episode_length // 2) if stagger else None,
    )


def make_policy(args: Args, slot_config: SlotConfig) -> PolicyBundle:
    """The policy bundle the arguments ask for (a V(s) baseline; Q is an auxiliary head)."""
    extra = ({"contribution_hidden": args.contribution_hidden,
              "contribution_dropout": args.contribution_dropout,
              "transformer_ff_mult": args.ff_mult}
             if args.policy == "transformer" else {})
    return create_policy(
        args.policy, state_dim=23 + 31 * slot_config.num_slots, slot_config=slot_config,
        lstm_hidden_dim=args.hidden_dim, value_baseline="v", **extra,
    )


@dataclass
class Rollout:
    """One rollout of ``E`` environments over ``T`` steps, as sequences by environment."""

    obs: Tensor  # [E, T, D]
    blueprint_indices: Tensor  # [E, T, N]
    masks: dict[str, Tensor]  # every head [E, T, n] and slot_by_op [E, T, 6, N]
    actions: dict[str, Tensor]  # every head [E, T]
    log_prob: Tensor  # [E, T], summed over heads
    value: Tensor  # [E, T]
    reward: Tensor  # [E, T]
    done: Tensor  # [E, T], the episode ended at this step (the env auto-reset)
    episode_starts: Tensor  # [E, T], an episode began at this step (the step before was done)
    contributions: Tensor  # [E, T, N], true contributions: the auxiliary head's targets
    start_hidden: Hidden  # the state before step 0, as get_action received it
    finished_returns: list[float]  # returns of the episodes that ended, in step order


def collect_rollout(
    policy: PolicyBundle, env: SlotGardenEnv, step: StepOutput, hidden: Hidden,
    episode_starts: Tensor, num_steps: int, floor: dict[str, float] | None,
) -> tuple[Rollout, StepOutput, Hidden, Tensor]:
    """Play ``num_steps`` steps from ``step`` (the last observation), ``hidden`` and
    ``episode_starts [E]`` (where the next step begins an episode: the last ``done``, all True
    after ``reset``). Returns the rollout and the three to carry into the next one."""
    start_hidden = (hidden[0].clone(), hidden[1].clone())
    buf: dict[str, list[Tensor]] = {k: [] for k in (
        "obs", "bp", "logp", "value", "reward", "done", "starts", "contrib", "return")}
    buf_masks: dict[str, list[Tensor]] = {}
    buf_actions: dict[str, list[Tensor]] = {h: [] for h in HEAD_NAMES}
    for _ in range(num_steps):
        masks = masks_of(step)
        # get_action zeroes the state of the environments whose episode begins here; the
        # update passes the same flags to evaluate_actions.
        result = policy.get_action(step.obs, step.blueprint_indices, masks, hidden,
                                   probability_floor=floor, episode_starts=episode_starts)
        buf["obs"].append(step.obs)
        buf["bp"].append(step.blueprint_indices)
        buf["contrib"].append(step.info["contributions"])  # targets for this observation
        buf["starts"].append(episode_starts)
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
        buf["return"].append(step.episode_return)
        episode_starts = step.done

    def seq(key: str) -> Tensor:
        return torch.stack(buf[key], 1)  # [E, T, ...]

    done = seq("done")
    rollout = Rollout(
        obs=seq("obs"), blueprint_indices=seq("bp"),
        masks={k: torch.stack(v, 1) for k, v in buf_masks.items()},
        actions={k: torch.stack(v, 1) for k, v in buf_actions.items()},
        log_prob=seq("logp"), value=seq("value"), reward=seq("reward"), done=done,
        episode_starts=seq("starts"), contributions=seq("contrib"), start_hidden=start_hidden,
        finished_returns=seq("return").T[done.T].tolist(),  # one host sync per rollout
    )
    return rollout, step, hidden, episode_starts


def rescore(
    policy: PolicyBundle, rollout: Rollout, envs: Tensor, floor: dict[str, float] | None
) -> EvalResult:
    """Re-score the rollout's sequences of environments ``envs`` (PPO update): the stored
    observations, actions and masks from the stored start state, with the rollout's
    ``episode_starts``, so the first epoch's log-probs equal the rollout's (ratio 1)."""
    starts = rollout.episode_starts[envs]  # [mb, T]
    h, c = rollout.start_hidden[0][:, envs], rollout.start_hidden[1][:, envs]
    # Starts at step 0 are folded into the start state. The flags go to evaluate_actions only
    # when an episode begins inside a sequence: with them the recurrent core runs one step at
    # a time (about 1.7x the transformer's update cost on CPU), and equal-length episodes with
    # a rollout length that divides the episode length never need them.
    first = starts[:, 0].view(1, -1, 1)  # [1, mb, 1]
    return policy.evaluate_actions(
        rollout.obs[envs], rollout.blueprint_indices[envs],
        {k: v[envs] for k, v in rollout.actions.items()},
        {k: v[envs] for k, v in rollout.masks.items()},
        (torch.where(first, 0.0, h), torch.where(first, 0.0, c)),
        probability_floor=floor,
        episode_starts=starts if bool(starts[:, 1:].any()) else None,
    )


def train(args: Args) -> tuple[dict[str, float], PolicyBundle]:
    """Train, evaluate against the reference policies, checkpoint; returns (metrics, policy).

    The metrics hold the mean evaluation returns (``learned``, ``random``, ``heuristic``),
    ``wall_s``, ``env_steps_per_s`` and the last minibatch's losses (``loss``, ``pg_loss``,
    ``v_loss``, ``entropy``, ``aux_loss``)."""
    if args.malloc not in ("tuned", "default"):
        raise ValueError(f"malloc must be 'tuned' or 'default', got {args.malloc!r}")
    if args.malloc == "tuned":
        configure_malloc()  # process-wide, on purpose: this script is the whole process
    torch.manual_seed(args.seed)
    slot_config = SlotConfig.for_grid(args.rows, args.cols)
    env = make_env(args, slot_config, args.seed, stagger=args.stagger)
    E, T = args.num_envs, args.rollout_length
    policy = make_policy(args, slot_config)
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
    starts = torch.ones(E, dtype=torch.bool)  # every environment begins an episode at reset
    num_updates = max(1, args.total_steps // (E * T))
    recent_returns: list[float] = []
    start = time.perf_counter()
    for update in range(1, num_updates + 1):
        # ---------------------------------------------------------------- rollout
        rollout, step, hidden, starts = collect_rollout(policy, env, step, hidden, starts, T, floor)
        recent_returns += rollout.finished_returns
        values, rewards, dones = rollout.value, rollout.reward, rollout.done
        active = (rollout.blueprint_indices >= 0).float()  # [E, T, N]

        # ---------------------------------------------------------------- GAE
        with torch.no_grad():
            # V of the next observation, from a zero state where it begins an episode (the
            # bootstrap is masked by done there anyway).
            next_value = policy.get_value(step.obs, step.blueprint_indices, hidden,
                                          episode_starts=starts)  # [E]
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
                ev = rescore(policy, rollout, mb, floor)
                new_logp = sum(ev.log_probs.values())  # [mb, T]
                ratio = (new_logp - rollout.log_prob[mb]).exp()
                adv = advantages[mb]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(
                    -adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                v_loss = 0.5 * (ev.value - returns[mb]).pow(2).mean()
                q_loss = 0.5 * (ev.q_value - returns[mb]).pow(2).mean()
                mb_active = active[mb]
                aux_loss = ((ev.pred_contributions - rollout.contributions[mb]).pow(2) * mb_active).sum() / mb_active.sum().clamp(min=1)
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
    def fresh_env(seed: int) -> SlotGardenEnv:  # full-length episodes, even after --stagger
        return make_env(args, slot_config, seed, stagger=False, table_seed=args.seed)

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
              "wall_s": wall, "env_steps_per_s": num_updates * E * T / wall, **stats}
    if not args.quiet:
        print(f"\nmean return over {args.eval_episodes} episodes x {E} envs "
              f"({args.policy}, {args.rows}x{args.cols} grid): learned {learned:.3f}  "
              f"random {random_score:.3f}  heuristic {heuristic:.3f}  "
              f"(trained {wall:.0f} s, {result['env_steps_per_s']:.0f} env steps/s)")
    return result, policy


if __name__ == "__main__":
    train(parse_args())
