"""Recurrent PPO on Slot Garden, in one readable file (CleanRL style).

    pip install -e ".[examples]"                               # tyro (flags), rich (progress bar)
    python examples/train_slot_garden.py                       # transformer on a 1x3 grid
    python examples/train_slot_garden.py --help                # every flag, its default and choices
    python examples/train_slot_garden.py --policy lstm --rows 2 --cols 5 --total-steps 200000
    python examples/train_slot_garden.py --stagger    # episodes of unequal lengths
    python examples/train_slot_garden.py --tensorboard runs/tb && tensorboard --logdir runs/tb

What it shows: a policy bundle from `create_policy`, rollouts with `get_action` carrying the
recurrent state per environment (zeroed where an episode begins, through `episode_starts`),
the stored masks re-applied at update through `evaluate_actions`, GAE, a clipped PPO loss over
whole sequences (minibatches by environment, each starting from its stored hidden state),
value, Q and contribution losses, gradient clipping, optional TensorBoard logging and a final
checkpoint.

What it prints: a start line (network, grid, environments, updates, env steps, threads,
device, seed), an estimate of the time left after the second update (the first one warms
up), then progress (a bar on a terminal; plain lines every ``--log-every`` updates in logs
and pipes) with the mean return, and over the updates since the previous line the mean
entropy, value loss, approx-KL, clip fraction, the pooled explained variance and, for the
transformer, the attention entropy per layer; then the evaluation, policy by policy. With
``--tensorboard`` every update also logs each head's entropy, every loss and, every
``--attention-every`` updates, the attention statistics (`slotformer.tensorboard`).

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

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from slotformer.telemetry import compute_attention_stats

Hidden = tuple[Tensor, Tensor]  # (h, c), each [layers, E, H]


@dataclass
class Args:
    """Recurrent PPO on Slot Garden (every flag has a default: the bare command trains)."""

    # ------------------------------------------------------------------ what to train
    policy: Literal["lstm", "transformer"] = "transformer"
    """network: the Slot Transformer, or the flat-concatenation LSTM baseline"""
    rows: int = 1
    """grid rows of the garden (slots = rows x cols)"""
    cols: int = 3
    """grid columns of the garden"""
    hidden_dim: int = 128
    """width of the recurrent core (LSTM hidden size)"""
    head_hidden: int | None = None
    """transformer only: width of the action and value heads; None = TransformerConfig's"""
    contribution_hidden: int | None = None
    """transformer only: width of the per-slot contribution predictor; None =
    TransformerConfig's"""
    contribution_dropout: float | None = None
    """transformer only: dropout of the contribution predictor; None = TransformerConfig's"""
    ff_mult: int | None = None
    """transformer only: feed-forward width of each block, as a multiple of embed_dim; None =
    TransformerConfig's"""
    # ------------------------------------------------------------------ environment
    num_envs: int = 32
    """environments stepped together (one batch)"""
    episode_length: int = 48
    """steps per episode (with --stagger: the longest episode)"""
    rollout_length: int = 24
    """steps per rollout and per stored sequence (T)"""
    stagger: bool = False
    """unequal episode lengths, drawn per environment from episode_length // 2 ..
    episode_length, so episodes end inside rollouts"""
    total_steps: int = 120_000
    """environment steps to train for, all environments together"""
    seed: int = 0
    """seed of torch and of the environments"""
    # ------------------------------------------------------------------ PPO
    learning_rate: float = 1e-3
    """Adam learning rate (at the first update, with --anneal-lr)"""
    anneal_lr: Literal["auto", "on", "off"] = "auto"
    """anneal the learning rate linearly toward 0 over training; auto = per network: on for
    the flat LSTM (over ten seeds a higher mean on 2x5, 1.36x the heuristic's against 1.22x,
    the intervals overlapping), off for the
    transformer (it cost the transformer on 1x3, still learning when the rate reached 0);
    docs/training.md"""
    gamma: float = 0.97
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    update_epochs: int = 4
    """passes over each rollout per update"""
    num_minibatches: int = 4
    """minibatches per epoch, split by environment (whole sequences)"""
    clip_coef: float = 0.2
    """PPO ratio clip"""
    ent_coef: float = 0.01
    """entropy bonus coefficient (at the first update, when --ent-coef-end is set)"""
    ent_coef_end: float | None = None
    """anneal the entropy coefficient linearly from --ent-coef to this at the last update;
    None = constant"""
    op_ent_coef: float | None = 0.2
    """the op head's own entropy coefficient (at the first update, when --op-ent-coef-end is
    set): a high early bonus on op alone keeps the policy off the do-nothing optimum
    (docs/training.md); None = the op head follows --ent-coef / --ent-coef-end like the others
    (with --op-ent-coef-end None too)"""
    op_ent_coef_end: float | Literal["auto"] | None = "auto"
    """anneal the op head's coefficient linearly from --op-ent-coef to this at the last update;
    None = constant (needs --op-ent-coef); auto = 0.05 for the flat LSTM (at 0.01 one LSTM
    seed in ten fell onto the do-nothing policy), 0.01 for the transformer;
    docs/training.md"""
    op_floor: float = 0.0
    """minimum probability of each valid op while training (an exploration aid the op
    entropy schedule made unnecessary, docs/training.md); 0 = off"""
    vf_coef: float = 0.5
    """value loss coefficient (V(s), the baseline)"""
    q_coef: float = 0.25
    """Q(s, op) loss coefficient (an auxiliary head)"""
    aux_coef: float = 0.1
    """per-slot contribution prediction loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient norm clip"""
    # ------------------------------------------------------------------ run and output
    eval_episodes: int = 2
    """evaluation episodes per environment after training (learned, random, heuristic)"""
    threads: int | None = 1
    """torch.set_num_threads: 1 by default, on purpose: this trainer's batches are small
    (32 environments a step), and a second intra-op thread costs more in synchronisation
    than it gains, up to 10x on a machine shared with other work (docs/benchmarks.md);
    None = PyTorch's default (one per core)"""
    tensorboard: str | None = None
    """TensorBoard log folder (losses, KL, clip fraction, entropies, attention); None = off"""
    attention_every: int = 10
    """transformer only: log attention statistics every this many updates; 0 = never"""
    log_every: int = 4
    """print a progress line every this many updates, with the means of their statistics (an
    even number: with 48-step episodes and 24-step rollouts, consecutive updates see
    alternate halves of the episodes)"""
    progress: Literal["auto", "bar", "lines"] = "auto"
    """auto: a progress bar on a terminal, plain lines otherwise (logs, pipes)"""
    checkpoint: str | None = "runs/slot_garden.pt"
    """where to save the trained policy; None or "" = do not save"""
    quiet: bool = False
    """print nothing"""
    malloc: Literal["tuned", "default"] = "tuned"
    """tuned: slotformer.configure_malloc(), faster updates, more resident memory; default: glibc's"""


def parse_args(argv: list[str] | None = None) -> Args:
    """Args from the command line (``--help`` lists every flag with its default)."""
    try:
        import tyro
    except ImportError as error:  # the message names the extra that brings it
        raise ImportError(
            "the trainer's command line needs tyro: pip install -e '.[examples]'"
        ) from error
    return tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])


_POSITIVE = ("rows", "cols", "hidden_dim", "num_envs",
             "episode_length", "rollout_length", "total_steps", "update_epochs",
             "num_minibatches", "eval_episodes", "log_every")


def check_args(args: Args) -> None:
    """Reject values that would fail later, or silently train something else."""
    def bad(name: str, expected: str) -> ValueError:
        flag = "--" + name.replace("_", "-")
        return ValueError(f"{flag} must be {expected}; got {getattr(args, name)!r}")

    choices = {"policy": ("lstm", "transformer"), "malloc": ("tuned", "default"),
               "anneal_lr": ("auto", "on", "off"),
               "progress": ("auto", "bar", "lines")}
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise bad(name, " or ".join(repr(a) for a in allowed))
    for name in _POSITIVE:
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(name, "a positive int")
    if not isinstance(args.attention_every, int) or args.attention_every < 0:
        raise bad("attention_every", "an int >= 0 (0 = never)")
    if args.threads is not None and (not isinstance(args.threads, int) or args.threads < 1):
        raise bad("threads", "a positive int or None")
    if args.num_minibatches > args.num_envs:
        raise bad("num_minibatches", f"at most --num-envs ({args.num_envs}): minibatches "
                  "split the environments")
    if not 0.0 <= args.op_floor < 1.0:
        raise bad("op_floor", "in [0, 1)")
    for name in ("ent_coef", "ent_coef_end", "op_ent_coef", "op_ent_coef_end"):
        value = getattr(args, name)
        if name == "op_ent_coef_end" and value == "auto":
            continue
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value):
            raise bad(name, "a float >= 0" + (" or None" if name != "ent_coef" else "")
                      + (" or 'auto'" if name == "op_ent_coef_end" else ""))
    if args.op_ent_coef is None and args.op_ent_coef_end not in (None, "auto"):
        raise bad("op_ent_coef_end", "None unless --op-ent-coef is set (the value the op "
                  "head's coefficient anneals from)")


def linear_schedule(start: float, end: float | None, update: int, num_updates: int) -> float:
    """``start`` at update 1 to ``end`` at update ``num_updates`` on a straight line; ``start``
    throughout when ``end`` is None (or there is one update)."""
    if end is None or num_updates == 1:
        return start
    return start + (end - start) * (update - 1) / (num_updates - 1)


def entropy_coefficient(args: Args, update: int, num_updates: int) -> float:
    """The entropy coefficient of every head at ``update`` (1-based), except op when it has
    its own (``op_ent_coef``): ``ent_coef``, or with ``ent_coef_end`` a straight line from
    ``ent_coef`` at the first update to ``ent_coef_end`` at the last.

    Example:
        >>> args = Args(ent_coef=0.1, ent_coef_end=0.0)
        >>> [round(entropy_coefficient(args, u, 3), 3) for u in (1, 2, 3)]
        [0.1, 0.05, 0.0]
    """
    return linear_schedule(args.ent_coef, args.ent_coef_end, update, num_updates)


def head_entropy_coefficients(args: Args, update: int, num_updates: int) -> Tensor:
    """``[H]`` entropy coefficients in ``HEAD_NAMES`` order at ``update``: every head on the
    ``ent_coef`` schedule, the op head on its own when ``op_ent_coef`` is set.

    The op head decides whether anything happens at all; the others only shape an action
    that happens (their entropy is 0 whenever op makes them irrelevant). A bonus on op alone
    keeps the policy off the do-nothing optimum without randomising how it acts.

    Example:
        >>> args = Args(ent_coef=0.01, op_ent_coef=0.1)
        >>> coefs = head_entropy_coefficients(args, 1, 10)
        >>> round(coefs[HEAD_NAMES.index("op")].item(), 3), round(coefs[0].item(), 3)
        (0.1, 0.01)
    """
    coefs = torch.full((len(HEAD_NAMES),), entropy_coefficient(args, update, num_updates))
    if args.op_ent_coef is not None:
        coefs[HEAD_NAMES.index("op")] = linear_schedule(
            args.op_ent_coef, op_entropy_end(args), update, num_updates)
    return coefs


def op_entropy_end(args: Args) -> float | None:
    """``op_ent_coef_end`` with ``"auto"`` resolved for the network (0.05 LSTM, 0.01
    transformer), or None where the op head has no schedule of its own."""
    if args.op_ent_coef is None:
        return None
    if args.op_ent_coef_end == "auto":
        return 0.05 if args.policy == "lstm" else 0.01
    return args.op_ent_coef_end


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


TRANSFORMER_SIZE_FIELDS = {"head_hidden": "head_hidden", "contribution_hidden":
                           "contribution_hidden", "contribution_dropout": "contribution_dropout",
                           "ff_mult": "transformer_ff_mult"}
"""The transformer size flags (``Args`` fields, None = the network's default) and the
`TransformerConfig` fields they set."""


def make_policy(args: Args, slot_config: SlotConfig) -> PolicyBundle:
    """The policy bundle the arguments ask for (a V(s) baseline; Q is an auxiliary head)."""
    sizes = {name: getattr(args, flag) for flag, name in TRANSFORMER_SIZE_FIELDS.items()}
    extra = ({k: v for k, v in sizes.items() if v is not None}
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


class Reporter:
    """Where the run's output goes: a rich progress bar when stdout is a terminal, plain
    lines otherwise (CI logs and pipes get no control characters), nothing with --quiet.

    ``line`` prints a line that stays (above the bar, when there is one); ``task`` /
    ``advance`` drive a bar and do nothing without one."""

    def __init__(self, args: Args) -> None:
        self.quiet = args.quiet
        use_bar = args.progress == "bar" or (args.progress == "auto" and sys.stdout.isatty())
        self.bar: Any = None
        if not self.quiet and use_bar:
            try:
                from rich import progress as rp
            except ImportError as error:
                raise ImportError(
                    "--progress bar needs rich: pip install -e '.[examples]' (or pass "
                    "--progress lines)"
                ) from error
            self.bar = rp.Progress(
                rp.TextColumn("{task.description}"), rp.BarColumn(bar_width=24),
                rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("eta"),
                rp.TimeRemainingColumn(), rp.TextColumn("{task.fields[status]}"),
            )

    def __enter__(self) -> Reporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def task(self, description: str, total: int) -> int | None:
        return None if self.bar is None else self.bar.add_task(description, total=total, status="")

    def advance(self, task: int | None, steps: int = 1, status: str | None = None) -> None:
        if task is not None:
            fields = {} if status is None else {"status": status}
            self.bar.update(task, advance=steps, **fields)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# What one update logs, in the order of the on-device accumulator (one host read per update).
LOSS_NAMES = ("loss", "pg_loss", "v_loss", "q_loss", "aux_loss", "entropy", "approx_kl",
              "clip_fraction")


def attention_summary(policy: PolicyBundle, rollout: Rollout) -> tuple[dict[str, float], Any]:
    """Per-layer attention statistics of the current network on a rollout's observations:
    ``layer{i}/entropy`` (mean normalised entropy of the valid query rows: 0 = one-hot,
    1 = uniform) and ``layer{i}/max_weight`` (mean over those rows of the row's largest
    weight), plus the all-layer `AttentionStats` for `slotformer.tensorboard.log_attention`.

    One extra forward without gradients, every ``--attention-every`` updates, on every 6th
    step of the rollout (all environments): the statistics are means over rows, and the full
    rollout's maps ([E, T, heads, N+1, N+1] per layer) raised the trainer's peak memory at 50
    slots from about 500 to 710 MB. Attention is computed per step from the observation alone
    (the recurrent state comes after it), so the forward needs no hidden state and no episode
    starts."""
    # fork_rng: should the forward draw random numbers (a dropout), the training run must not
    # depend on --attention-every.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        obs, blueprints = rollout.obs[:, ::6], rollout.blueprint_indices[:, ::6]  # [E, T/6, ...]
        out = policy.network(obs, blueprints, return_intermediates=True)
        seen = out["intermediates"]
        # Query rows that describe something: CLS and the active slots.
        cls = torch.ones_like(seen.active[..., :1])
        valid = torch.cat([cls, seen.active], dim=-1)[:, :, None, :]  # [B, T, 1, N+1]
        peaks = [m.amax(-1)[valid.expand(m.shape[:-1])].mean() for m in seen.attention]
        peak_values = torch.stack(peaks).tolist()  # one host read for every layer
    summary: dict[str, float] = {}
    for layer, attention in enumerate(seen.attention):
        one = compute_attention_stats([attention], seen.active, seen.slot_ids)
        summary[f"layer{layer}/entropy"] = one.entropy_mean
        summary[f"layer{layer}/max_weight"] = float(peak_values[layer])
    return summary, compute_attention_stats(seen.attention, seen.active, seen.slot_ids)


def train(
    args: Args, on_update: Callable[[int, float], None] | None = None
) -> tuple[dict[str, float], PolicyBundle]:
    """Train, evaluate against the reference policies, checkpoint; returns (metrics, policy).

    ``on_update(env_steps, mean_return)`` is called after every update with the environment
    steps so far and the mean return of the last ``2 E`` training episodes (sampled actions,
    op floor on if set; NaN before the first episode ends): the learning curve.

    The metrics hold the mean evaluation returns (``learned``, ``random``, ``heuristic``),
    ``wall_s`` (training only), ``eval_s``, ``env_steps_per_s``, ``updates``, and the last
    update's statistics, each a mean over its minibatches: the losses (``loss``, ``pg_loss``,
    ``v_loss``, ``q_loss``, ``aux_loss``), ``entropy`` (summed over heads) and
    ``entropy/{head}``, ``approx_kl``, ``clip_fraction``, ``explained_variance``, and for the
    transformer the last attention statistics (``attention/layer{i}/entropy``,
    ``attention/layer{i}/max_weight``) when ``attention_every`` > 0."""
    check_args(args)
    if args.malloc == "tuned":
        configure_malloc()  # process-wide, on purpose: this script is the whole process
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    slot_config = SlotConfig.for_grid(args.rows, args.cols)
    env = make_env(args, slot_config, args.seed, stagger=args.stagger)
    E, T = args.num_envs, args.rollout_length
    policy = make_policy(args, slot_config)
    # fused: one kernel over every parameter instead of a dozen small ops per tensor (the
    # transformer has 111 tensors): 4-6x faster Adam steps on CPU (docs/benchmarks.md).
    anneal_lr = args.anneal_lr == "on" or (args.anneal_lr == "auto" and args.policy == "lstm")
    optimizer = torch.optim.Adam(policy.network.parameters(), lr=args.learning_rate, eps=1e-5,
                                 fused=True)
    writer = None
    if args.tensorboard:
        from slotformer.tensorboard import create_summary_writer, log_attention

        writer = create_summary_writer(args.tensorboard)
    watch_attention = args.policy == "transformer" and args.attention_every > 0

    # An optional floor on the op head (off by default: the op entropy schedule does its job,
    # docs/training.md). The same floor at rollout and update keeps the PPO ratio at 1 (up to
    # fp32 rounding).
    floor = {"op": args.op_floor} if args.op_floor > 0 else None
    step = env.reset()
    hidden = policy.initial_hidden(E)
    starts = torch.ones(E, dtype=torch.bool)  # every environment begins an episode at reset
    num_updates = max(1, args.total_steps // (E * T))
    eval_steps = args.eval_episodes * args.episode_length  # the learned policy's
    recent_returns: list[float] = []
    stats: dict[str, float] = {}
    attention: dict[str, float] = {}
    parameters = sum(p.numel() for p in policy.network.parameters())
    report = Reporter(args)
    report.line(
        f"training {args.policy} ({parameters:,} parameters) on a {args.rows}x{args.cols} grid: "
        f"{E} envs x {T}-step rollouts, {num_updates} updates = {num_updates * E * T:,} env "
        f"steps ({args.update_epochs} epochs x {args.num_minibatches} minibatches), then "
        f"{plural(args.eval_episodes, 'evaluation episode')} x 3 policies; "
        f"{plural(torch.get_num_threads(), 'thread')}, device cpu, seed {args.seed}"
    )
    with report:
        train_task = report.task("training", num_updates)
        start = time.perf_counter()
        first_update_s = 0.0  # set after update 1; the time estimates leave it out
        estimate_at = min(num_updates, max(3, num_updates // 20))  # the first estimate's update
        window: dict[str, float] = {}  # statistics summed since the last progress line
        window_updates, rollout_total_s = 0, 0.0
        for update in range(1, num_updates + 1):
            ent_coefs = head_entropy_coefficients(args, update, num_updates)  # [H]
            if anneal_lr:
                optimizer.param_groups[0]["lr"] = linear_schedule(
                    args.learning_rate, 0.0, update, num_updates + 1)  # never exactly 0
            # ------------------------------------------------------------ rollout
            rollout_start = time.perf_counter()
            rollout, step, hidden, starts = collect_rollout(policy, env, step, hidden, starts,
                                                            T, floor)
            rollout_s = time.perf_counter() - rollout_start
            recent_returns += rollout.finished_returns
            values, rewards, dones = rollout.value, rollout.reward, rollout.done
            active = (rollout.blueprint_indices >= 0).float()  # [E, T, N]

            # ------------------------------------------------------------ GAE
            with torch.no_grad():
                # V of the next observation, from a zero state where it begins an episode
                # (the bootstrap is masked by done there anyway).
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
                # How much of the returns' variance the rollout's values explain (1 = all,
                # 0 = no better than a constant, < 0 = worse).
                residual_var, returns_var = (returns - values).var(), returns.var()
                explained_var = 1 - residual_var / returns_var.clamp_min(1e-8)

            # ------------------------------------------------------------ PPO update
            env_order = torch.randperm(E)
            mb_size = E // args.num_minibatches
            # Statistics are summed on the device and read once per update: an .item() per
            # minibatch would wait for each step's kernels (on a GPU, a sync each time).
            totals = torch.zeros(len(LOSS_NAMES) + len(HEAD_NAMES))
            minibatches = 0
            for _epoch in range(args.update_epochs):
                for mb in env_order.split(mb_size):
                    ev = rescore(policy, rollout, mb, floor)
                    new_logp = sum(ev.log_probs.values())  # [mb, T]
                    log_ratio = new_logp - rollout.log_prob[mb]
                    ratio = log_ratio.exp()
                    adv = advantages[mb]
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    pg_loss = torch.max(
                        -adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                    ).mean()
                    v_loss = 0.5 * (ev.value - returns[mb]).pow(2).mean()
                    q_loss = 0.5 * (ev.q_value - returns[mb]).pow(2).mean()
                    mb_active = active[mb]
                    aux_loss = ((ev.pred_contributions - rollout.contributions[mb]).pow(2) * mb_active).sum() / mb_active.sum().clamp(min=1)
                    head_entropy = torch.stack([ev.entropies[h].mean() for h in HEAD_NAMES])
                    entropy = head_entropy.sum()  # = the per-step sum over heads, averaged
                    loss = (pg_loss + args.vf_coef * v_loss + args.q_coef * q_loss
                            + args.aux_coef * aux_loss - (ent_coefs * head_entropy).sum())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(policy.network.parameters(), args.max_grad_norm,
                                                   foreach=True)
                    optimizer.step()
                    with torch.no_grad():
                        # The low-variance KL(old || new) estimator, (r - 1) - log r >= 0
                        # (http://joschu.net/blog/kl-approx.html), and how often the clip bit.
                        approx_kl = ((ratio - 1) - log_ratio).mean()
                        clip_fraction = ((ratio - 1).abs() > args.clip_coef).float().mean()
                        totals += torch.cat([torch.stack(
                            [loss, pg_loss, v_loss, q_loss, aux_loss, entropy, approx_kl,
                             clip_fraction]).detach(), head_entropy.detach()])
                    minibatches += 1

            # ------------------------------------------------------------ logging
            read = torch.cat([totals / minibatches, torch.stack(
                [explained_var, residual_var, returns_var])]).tolist()  # one host read
            stats = dict(zip(LOSS_NAMES, read))
            stats.update({f"entropy/{h}": v for h, v in zip(HEAD_NAMES, read[len(LOSS_NAMES):])})
            stats["explained_variance"] = read[-3]
            # The progress lines show means over the updates since the previous line: with
            # equal episodes all environments are in the same phase, and consecutive updates
            # can see different halves of the episodes (an entropy near 0 at the end of
            # episodes, 1.4 at their start), so one update's statistics swing line to line.
            # Explained variance over the window is pooled (1 - summed residual variance /
            # summed return variance), not a mean of ratios: a rollout whose returns hardly
            # vary (the quiet half of an episode) gives a ratio of -3 or -10 alone.
            window = {k: window.get(k, 0.0) + v for k, v in
                      [*stats.items(), ("residual_var", read[-2]), ("returns_var", read[-1])]}
            window_updates += 1
            rollout_total_s += rollout_s
            env_steps = update * E * T
            elapsed = time.perf_counter() - start
            sps = env_steps / elapsed
            recent = recent_returns[-2 * E:]
            mean_return = sum(recent) / len(recent) if recent else math.nan
            if on_update is not None:
                on_update(env_steps, mean_return)
            if watch_attention and (update % args.attention_every == 0 or update == 1):
                attention, attention_stats = attention_summary(policy, rollout)
                if writer is not None:
                    log_attention(writer, attention_stats, env_steps)
                    for k, v in attention.items():
                        writer.add_scalar(f"attention/{k}", v, env_steps)
            if writer is not None:
                writer.add_scalar("charts/mean_return", mean_return, env_steps)
                writer.add_scalar("charts/sps", sps, env_steps)
                writer.add_scalar("charts/ent_coef", ent_coefs[0].item(), env_steps)
                writer.add_scalar("charts/op_ent_coef",
                                  ent_coefs[HEAD_NAMES.index("op")].item(), env_steps)
                writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"],
                                  env_steps)
                for k, v in stats.items():
                    group = "" if k.startswith("entropy/") else "losses/"
                    writer.add_scalar(f"{group}{k}", v, env_steps)
            if update == 1:
                first_update_s = elapsed
            elif update == estimate_at:
                # Update 1 includes warm-up (allocator, kernel selection: it was 25x slower
                # than update 2 in one run here), so the estimate leaves it out, and it waits a
                # few updates: on a shared machine one update's time is noise. The learned
                # policy's evaluation steps cost what a rollout step costs; the reference
                # policies' cost little.
                per_update = (elapsed - first_update_s) / (update - 1)
                eval_eta = rollout_total_s / (update * T) * eval_steps
                report.line(f"updates 2-{update} took {per_update:.2f} s each (update 1, with "
                            f"warm-up, {first_update_s:.1f} s): estimated "
                            f"{duration(per_update * (num_updates - update))} more training, "
                            f"then ~{duration(eval_eta)} of evaluation")
            per_update = (elapsed - first_update_s) / max(update - 1, 1)
            remaining = per_update * (num_updates - update)
            report.advance(train_task, status=f"return {mean_return:.3f}  "
                           f"kl {stats['approx_kl']:.4f}  clip {stats['clip_fraction']:.3f}")
            if update % args.log_every == 0 or update == num_updates:
                attention_note = "".join(
                    f"  attn{k[5:-8]} {v:.2f}" for k, v in attention.items()
                    if k.endswith("/entropy"))
                mean = {k: v / window_updates for k, v in window.items()}
                mean["explained_variance"] = 1 - window["residual_var"] / max(
                    window["returns_var"], 1e-8)
                report.line(
                    f"update {update:4d}/{num_updates}  steps {env_steps:7d}  sps {sps:6.0f}  "
                    f"return {mean_return:7.3f}  entropy {mean['entropy']:.3f}  "
                    f"v_loss {mean['v_loss']:.4f}  kl {mean['approx_kl']:.4f}  "
                    f"clip {mean['clip_fraction']:.3f}  ev {mean['explained_variance']:.2f}"
                    f"{attention_note}  eta {duration(remaining)}"
                )
                window, window_updates = {}, 0

        wall = time.perf_counter() - start
        # ------------------------------------------------------------ evaluation
        def evaluate(name: str, act: Any, seed: int) -> float:
            """Mean return of ``act`` on full-length episodes (even after --stagger)."""
            fresh = make_env(args, slot_config, seed, stagger=False, table_seed=args.seed)
            task = report.task(f"evaluating {name}", args.eval_episodes * args.episode_length)

            def counted(s: StepOutput) -> Tensor:
                report.advance(task)
                return act(s)

            began = time.perf_counter()
            score = evaluate_policy(fresh, counted, num_episodes=args.eval_episodes)
            report.line(f"evaluated {name}: mean return {score:.3f} "
                        f"({time.perf_counter() - began:.1f} s)")
            return score

        eval_start = time.perf_counter()
        eval_seed = args.seed + 1000
        learned = evaluate("learned", policy_fn(policy, E, deterministic=False), eval_seed)
        gen = torch.Generator().manual_seed(eval_seed)
        random_score = evaluate("random", lambda s: random_valid_policy(s, gen), eval_seed)
        heuristic = evaluate("heuristic", heuristic_policy, eval_seed)
        eval_s = time.perf_counter() - eval_start
    if writer is not None:
        writer.add_scalar("eval/learned", learned, num_updates * E * T)
        writer.add_scalar("eval/random", random_score, num_updates * E * T)
        writer.add_scalar("eval/heuristic", heuristic, num_updates * E * T)
        writer.close()
    if args.checkpoint:
        Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(args.checkpoint, policy, extra={"args": dataclasses.asdict(args)})
    result = {"learned": learned, "random": random_score, "heuristic": heuristic,
              "wall_s": wall, "eval_s": eval_s, "env_steps_per_s": num_updates * E * T / wall,
              "updates": float(num_updates), **stats,
              **{f"attention/{k}": v for k, v in attention.items()}}
    if not args.quiet:
        print(f"\nmean return over {plural(args.eval_episodes, 'episode')} x {E} envs "
              f"({args.policy}, {args.rows}x{args.cols} grid): learned {learned:.3f}  "
              f"random {random_score:.3f}  heuristic {heuristic:.3f}  "
              f"(trained {wall:.0f} s, {result['env_steps_per_s']:.0f} env steps/s, "
              f"evaluated {eval_s:.0f} s)"
              + (f"; checkpoint {args.checkpoint}" if args.checkpoint else ""), flush=True)
    return result, policy


if __name__ == "__main__":
    train(parse_args())
