"""PPO with TorchRL on Slot Garden: a TorchRL Collector, GAE and ClipPPOLoss around slotformer.

    python examples/torchrl_ppo.py                        # Slot Transformer on a 1x3 grid
    python examples/torchrl_ppo.py --policy lstm --total-steps 60000
    python examples/torchrl_ppo.py --stagger              # episodes of unequal lengths
    python examples/torchrl_ppo.py --help                 # every flag, with its help

What it shows: Slot Garden as a TorchRL ``EnvBase`` (`SlotGardenTorchRLEnv`), a slotformer
policy bundle as a ``ProbabilisticActor`` over slotformer's masked factored distribution and
as the critic (`make_actor_critic`), the recurrent state carried by a ``TensorDictPrimer``,
TorchRL's ``Collector`` gathering ``[E, T]`` sequences, ``GAE`` on values scored over the
whole sequences (`add_state_values`), and ``ClipPPOLoss`` on minibatches of whole
sequences (by environment) under ``set_recurrent_mode(True)``, so each sequence is
re-scored from its stored start state with its stored ``is_init`` flags. At the end it prints
the mean episode return of the learned policy, of a random valid policy and of the scripted
heuristic on fresh episodes of the same world.

Reference (1x3 grid, episodes of 48 steps): random valid play scores about -0.35, the
heuristic about 2.05; the repository's own trainer (``examples/train_slot_garden.py``)
reaches about 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, set_interaction_type
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make `slotformer` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchrl.collectors import Collector
from torchrl.envs import Compose, RewardSum, TransformedEnv
from torchrl.modules import ProbabilisticActor, set_recurrent_mode
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from slotformer import SlotConfig, create_policy
from slotformer.envs import (
    SlotGardenEnv,
    StepOutput,
    evaluate_policy,
    heuristic_policy,
    random_valid_policy,
)
from slotformer.integrations.torchrl import (
    RECURRENT_STATE_KEYS,
    SlotformerPolicyModule,
    SlotGardenTorchRLEnv,
    add_state_values,
    make_actor_critic,
)
from slotformer.policy import PolicyBundle


@dataclass
class Args:
    """PPO with TorchRL's Collector, GAE and ClipPPOLoss on Slot Garden."""

    policy: Literal["transformer", "lstm"] = "transformer"
    """The slotformer network: the Slot Transformer or the flat LSTM."""
    rows: int = 1
    """Rows of the slot grid."""
    cols: int = 3
    """Columns of the slot grid."""
    num_envs: int = 32
    """Environments stepped together (E)."""
    episode_length: int = 48
    """Steps per episode (the longest one with --stagger)."""
    stagger: bool = False
    """Unequal episode lengths, drawn per environment from episode_length // 2 ..
    episode_length: environments end episodes at different steps (partial resets)."""
    rollout_length: int = 24
    """Steps per environment in each collected batch (T)."""
    total_steps: int = 120_000
    """Environment steps to train for (all environments together)."""
    seed: int = 0
    """Seeds torch, the environment and its world (the affinity tables)."""
    learning_rate: float = 1e-3
    """Adam's learning rate."""
    gamma: float = 0.97
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE's lambda."""
    update_epochs: int = 4
    """Passes over each batch."""
    num_minibatches: int = 4
    """Minibatches per pass, split by environment (whole sequences)."""
    clip_epsilon: float = 0.2
    """PPO's ratio clip."""
    entropy_coeff: float = 0.01
    """Weight of the entropy bonus (slotformer's normalised per-head entropies)."""
    critic_coeff: float = 0.25
    """Weight of the squared value error (TorchRL's l2 has no 1/2: 0.25 = 0.5 x 0.5)."""
    op_floor: float = 0.05
    """Minimum probability of each valid op, at rollout and update (0 = none)."""
    max_grad_norm: float = 0.5
    """Gradient norm clip."""
    hidden_dim: int = 128
    """Width of the recurrent core."""
    eval_episodes: int = 2
    """Evaluation episodes per environment for each of the three policies."""
    quiet: bool = False
    """Print nothing (the returned metrics still hold the results)."""


def torchrl_policy_fn(
    actor: ProbabilisticActor, module: SlotformerPolicyModule, num_envs: int
) -> Callable[[StepOutput], Tensor]:
    """The TorchRL actor as an ``[E, 8]`` action function for `evaluate_policy` (it
    samples, as in training, and carries the recurrent state between calls)."""
    layers, width = module.network.lstm_layers, module.network.lstm_hidden_dim
    state = {key: torch.zeros(num_envs, layers, width) for key in RECURRENT_STATE_KEYS}

    def act(step: StepOutput) -> Tensor:
        td = TensorDict(
            {
                "obs": step.obs,
                "blueprint_indices": step.blueprint_indices,
                "masks": dict(step.masks),
                "slot_by_op": step.slot_by_op,
                "is_init": step.done.unsqueeze(-1),  # an episode begins where one ended
                **state,
            },
            batch_size=[num_envs],
        )
        with torch.no_grad(), set_interaction_type(InteractionType.RANDOM):
            td = actor(td)
        for key in RECURRENT_STATE_KEYS:
            state[key] = td.get(("next", key))
        action: Tensor = td.get("action")
        return action

    return act


def ppo_update(batch: TensorDict, critic: SlotformerPolicyModule, advantage: GAE,
               loss_module: ClipPPOLoss, optimizer: torch.optim.Optimizer,
               args: Args) -> TensorDict:
    """One PPO update on a collected batch ``[E, T]`` of independent sequences: V(s) and GAE,
    then ``update_epochs`` passes over ``num_minibatches`` minibatches of whole sequences;
    returns the last minibatch's losses."""
    add_state_values(batch, critic)
    advantage(batch)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    E = batch.shape[0]
    with set_recurrent_mode(True):  # the loss scores whole [mb, T] sequences
        for _epoch in range(args.update_epochs):
            for envs in torch.randperm(E).split(max(1, E // args.num_minibatches)):
                losses = loss_module(batch[envs])
                loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
                optimizer.step()
    return losses


def evaluate_against_references(actor: ProbabilisticActor, critic: SlotformerPolicyModule, args: Args,
                                slot_config: SlotConfig) -> tuple[float, float, float]:
    """Mean returns of the trained policy, the random valid policy and the heuristic, each on
    new full-length episodes of the training world (the same tables), even after --stagger,
    so the three scores compare with the reference scores."""
    def fresh_env() -> SlotGardenEnv:
        return SlotGardenEnv(args.num_envs, slot_config, args.episode_length,
                             seed=args.seed + 1000, table_seed=args.seed)

    learned = evaluate_policy(fresh_env(), torchrl_policy_fn(actor, critic, args.num_envs),
                              num_episodes=args.eval_episodes)
    gen = torch.Generator().manual_seed(args.seed + 1000)
    random_score = evaluate_policy(fresh_env(), lambda s: random_valid_policy(s, gen),
                                   num_episodes=args.eval_episodes)
    heuristic = evaluate_policy(fresh_env(), heuristic_policy, num_episodes=args.eval_episodes)
    return learned, random_score, heuristic


def train(args: Args) -> tuple[dict[str, float], PolicyBundle]:
    """Train, then evaluate against the reference policies; returns (metrics, policy).

    The metrics hold the mean evaluation returns (``learned``, ``random``, ``heuristic``),
    ``wall_s`` (training only) and ``env_steps_per_s``."""
    torch.manual_seed(args.seed)
    slot_config = SlotConfig.for_grid(args.rows, args.cols)
    E, T = args.num_envs, args.rollout_length
    base = SlotGardenTorchRLEnv(
        E, slot_config, args.episode_length, seed=args.seed,
        min_episode_length=max(1, args.episode_length // 2) if args.stagger else None,
    )
    policy = create_policy(
        args.policy, slot_config=slot_config, lstm_hidden_dim=args.hidden_dim,
        value_baseline="v",
    )
    floor = {"op": args.op_floor} if args.op_floor > 0 else None
    actor, critic = make_actor_critic(policy, probability_floor=floor)
    # The primer carries the recurrent state from step to step; RewardSum keeps each
    # episode's running return (for the progress line).
    env = TransformedEnv(base, Compose(critic.make_tensordict_primer(), RewardSum()))
    num_updates = max(1, args.total_steps // (E * T))
    collector = Collector(env, actor, frames_per_batch=E * T, total_frames=num_updates * E * T)
    advantage = GAE(gamma=args.gamma, lmbda=args.gae_lambda, value_network=None)
    loss_module = ClipPPOLoss(
        actor, critic, clip_epsilon=args.clip_epsilon, entropy_coeff=args.entropy_coeff,
        critic_coeff=args.critic_coeff, loss_critic_type="l2", normalize_advantage=True,
    )
    optimizer = torch.optim.Adam(policy.network.parameters(), lr=args.learning_rate, eps=1e-5)
    if not args.quiet:
        print(f"TorchRL PPO: {args.policy} on a {args.rows}x{args.cols} grid, {E} envs x {T} "
              f"steps per batch, {num_updates} updates ({num_updates * E * T} env steps), "
              f"{torch.get_num_threads()} thread(s)", flush=True)

    recent: list[float] = []
    stats: dict[str, float] = {}
    start = time.perf_counter()
    for update, batch in enumerate(collector, start=1):  # batch: [E, T]
        done = batch.get(("next", "done"))[..., 0]
        recent += batch.get(("next", "episode_reward"))[..., 0][done].tolist()
        losses = ppo_update(batch, critic, advantage, loss_module, optimizer, args)
        stats = {k: float(losses[k].detach()) for k in ("loss_objective", "loss_critic", "entropy")}
        if not args.quiet and (update % 5 == 0 or update == num_updates):
            tail = recent[-2 * E:]
            mean_return = sum(tail) / len(tail) if tail else float("nan")
            sps = update * E * T / (time.perf_counter() - start)
            print(f"update {update:4d}/{num_updates}  steps {update * E * T:7d}  sps {sps:5.0f}  "
                  f"return {mean_return:7.3f}  entropy {stats['entropy']:.3f}  "
                  f"critic {stats['loss_critic']:.4f}", flush=True)
    collector.shutdown()
    wall = time.perf_counter() - start

    learned, random_score, heuristic = evaluate_against_references(actor, critic, args,
                                                                   slot_config)
    metrics = {"learned": learned, "random": random_score, "heuristic": heuristic,
               "wall_s": wall, "env_steps_per_s": num_updates * E * T / wall, **stats}
    if not args.quiet:
        print(f"\nmean return over {args.eval_episodes} episodes x {E} envs ({args.policy}, "
              f"{args.rows}x{args.cols} grid): learned {learned:.3f}  random {random_score:.3f}  "
              f"heuristic {heuristic:.3f}  (trained {wall:.0f} s, "
              f"{metrics['env_steps_per_s']:.0f} env steps/s)")
    return metrics, policy


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the command line (``--help`` lists every flag) and train."""
    import tyro

    args = tyro.cli(Args, args=argv)
    return train(args)[0]


if __name__ == "__main__":
    main()
