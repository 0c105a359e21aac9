"""PPO with TorchRL's distributed collectors on Slot Garden: workers collect, this process learns.

    pip install -e ".[torchrl,rllib,examples]"              # ray comes with the rllib extra
    python examples/torchrl_distributed.py                  # RayCollector, 2 collector processes
    python examples/torchrl_distributed.py --collector distributed   # torch.distributed (gloo)
    python examples/torchrl_distributed.py --address auto   # RayCollector on a running Ray cluster
    python examples/torchrl_distributed.py --help           # every flag (PPO's: torchrl_ppo.py)

What it shows: the adapter of ``examples/torchrl_ppo.py`` (`SlotGardenTorchRLEnv`,
`make_actor_critic`, `add_state_values`) unchanged behind TorchRL's ``RayCollector`` or
``DistributedCollector`` (``launcher="mp"``, gloo), both synchronous: each batch stacks one
``[E, T]`` piece per collector (``[C, E, T]``; the sequences are independent, so the update
sees ``[C E, T]``), and after each update ``update_policy_weights_()`` sends the new weights
to every collector before the next batch. Only collection is distributed; the update runs
here (wrap the loss in DDP yourself to spread it, docs/ppo_loop.md, "Distributed data parallel").
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torchrl.data import Unbounded
from torchrl.envs import Compose, EnvBase, RewardSum, TensorDictPrimer, TransformedEnv
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

if __package__ in (None, ""):  # run as a script: make `slotformer` and `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.torchrl_ppo import Args as PPOArgs
from examples.torchrl_ppo import evaluate_against_references, ppo_update
from slotformer import SlotConfig, create_policy
from slotformer.integrations.torchrl import (
    RECURRENT_STATE_KEYS,
    SlotGardenTorchRLEnv,
    make_actor_critic,
)

ROOT = str(Path(__file__).resolve().parents[1])


@dataclass
class Args(PPOArgs):
    """PPO with TorchRL's distributed collectors on Slot Garden."""

    collector: Literal["ray", "distributed"] = "ray"
    """RayCollector (Ray actors) or DistributedCollector (torch.distributed, mp launcher)."""
    collectors: int = 2
    """Collector processes; num_envs is split over them."""
    address: str | None = None
    """RayCollector only: a Ray cluster to join ("auto"); None = a local Ray."""


def make_env(num_envs: int, rows: int, cols: int, episode_length: int, seed: int,
             table_seed: int, layers: int, hidden: int) -> EnvBase:
    """One collector's environment: Slot Garden, the recurrent state's primer (what
    ``SlotformerPolicyModule.make_tensordict_primer`` builds) and the running return. A
    module-level function, so it pickles into the worker processes."""
    base = SlotGardenTorchRLEnv(num_envs, SlotConfig.for_grid(rows, cols), episode_length,
                                seed=seed, table_seed=table_seed)
    primer = TensorDictPrimer({key: Unbounded(shape=(layers, hidden))
                               for key in RECURRENT_STATE_KEYS}, expand_specs=True)
    return TransformedEnv(base, Compose(primer, RewardSum()))


def make_collector(args: Args, actor: Any, layers: int, hidden: int, total_frames: int) -> Any:
    """A synchronous RayCollector or DistributedCollector of ``args.collectors`` workers,
    each stepping ``num_envs / collectors`` environments for ``rollout_length`` steps."""
    envs = args.num_envs // args.collectors
    # Collector k plays its own episodes (seed) of the same world (table_seed).
    create = [functools.partial(make_env, envs, args.rows, args.cols, args.episode_length,
                                args.seed + 10_000 * (k + 1), args.seed, layers, hidden)
              for k in range(args.collectors)]
    common = {"frames_per_batch": args.num_envs * args.rollout_length,
              "total_frames": total_frames, "sync": True}
    if args.collector == "ray":
        from torchrl.collectors.distributed import RayCollector

        init = {"runtime_env": {"env_vars": {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}}}
        init.update({"address": args.address} if args.address else
                    {"num_cpus": args.collectors + 1, "include_dashboard": False})
        return RayCollector(create, actor, ray_init_config=init, remote_configs={"num_cpus": 1},
                            **common)
    from torchrl.collectors.distributed import DistributedCollector

    return DistributedCollector(create, actor, launcher="mp", backend="gloo", **common)


def train(args: Args) -> dict[str, float]:
    """Train, then evaluate like ``examples/torchrl_ppo.py``; returns the metrics."""
    if args.num_envs % args.collectors:
        raise ValueError(f"--num-envs {args.num_envs} must divide by --collectors "
                         f"{args.collectors}")
    torch.manual_seed(args.seed)
    slot_config = SlotConfig.for_grid(args.rows, args.cols)
    policy = create_policy(args.policy, slot_config=slot_config,
                           lstm_hidden_dim=args.hidden_dim, value_baseline="v")
    floor = {"op": args.op_floor} if args.op_floor > 0 else None
    actor, critic = make_actor_critic(policy, probability_floor=floor)
    num_updates = max(1, args.total_steps // (args.num_envs * args.rollout_length))
    collector = make_collector(args, actor, critic.network.lstm_layers, args.hidden_dim,
                               num_updates * args.num_envs * args.rollout_length)
    collector.update_policy_weights_()  # every worker starts from this process's weights
    advantage = GAE(gamma=args.gamma, lmbda=args.gae_lambda, value_network=None)
    loss_module = ClipPPOLoss(actor, critic, clip_epsilon=args.clip_epsilon,
                              entropy_coeff=args.entropy_coeff, critic_coeff=args.critic_coeff,
                              loss_critic_type="l2", normalize_advantage=True)
    optimizer = torch.optim.Adam(policy.network.parameters(), lr=args.learning_rate, eps=1e-5)
    if not args.quiet:
        print(f"TorchRL PPO with {args.collectors} {args.collector} collectors: {args.policy} "
              f"on a {args.rows}x{args.cols} grid, {num_updates} updates", flush=True)
    start, recent = time.perf_counter(), []
    for update, stacked in enumerate(collector, start=1):  # [C, E / C, T]
        batch = stacked.reshape(-1, stacked.shape[-1])  # [E, T]: independent sequences
        done = batch.get(("next", "done"))[..., 0]
        recent += batch.get(("next", "episode_reward"))[..., 0][done].tolist()
        ppo_update(batch, critic, advantage, loss_module, optimizer, args)  # torchrl_ppo's
        collector.update_policy_weights_()  # the next batch is collected with these weights
        if not args.quiet and (update % 5 == 0 or update == num_updates):
            tail = recent[-2 * args.num_envs:]
            sps = update * batch.numel() / (time.perf_counter() - start)
            print(f"update {update:4d}/{num_updates}  sps {sps:5.0f}  return "
                  f"{sum(tail) / max(1, len(tail)):7.3f}", flush=True)
    collector.shutdown()
    wall = time.perf_counter() - start

    learned, random_score, heuristic = evaluate_against_references(actor, critic, args,
                                                                   slot_config)
    steps = num_updates * args.num_envs * args.rollout_length
    if not args.quiet:
        print(f"\nmean return over {args.eval_episodes} episodes x {args.num_envs} envs: "
              f"learned {learned:.3f}  random {random_score:.3f}  heuristic {heuristic:.3f}  "
              f"(trained {wall:.0f} s, {steps / wall:.0f} env steps/s)", flush=True)
    return {"learned": learned, "random": random_score, "heuristic": heuristic,
            "wall_s": wall, "env_steps_per_s": steps / wall}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the command line (``--help`` lists every flag) and train."""
    import tyro

    return train(tyro.cli(Args, args=argv))


if __name__ == "__main__":  # the mp launcher spawns processes that import this module
    main()
