"""Train sb3-contrib's MaskablePPO on Slot Garden with slotformer's whole network as its policy.

Needs the ``sb3`` extra::

    pip install -e ".[sb3]"
    python examples/sb3_maskable_ppo.py                        # 1x3 grid, 120k env steps
    python examples/sb3_maskable_ppo.py --zero-shot 2x5        # then play a 2x5 grid untrained

It steps ``--num-envs`` Slot Gardens as one batch (``slotformer.integrations.sb3
.SlotGardenVecEnv``), trains ``MaskablePPO(SlotformerPolicy)`` (the Slot Transformer with its
pointer head, the op sampled first and the slot masked by ``slot_by_op`` for that op, V(s)),
prints progress after every few updates, then the learned policy's mean episode return next to
the same model before training, a random valid policy and the scripted heuristic on the same
world (``table_seed``). With ``--zero-shot RxC`` it saves the network with
``slotformer.checkpoint.save_checkpoint``, loads it onto an RxC grid with ``load_checkpoint(...,
slot_config=SlotConfig.for_grid(R, C))`` and scores it there against the same references.

The policy is not recurrent: SB3 has no maskable recurrent PPO, so every step is scored from a
zero recurrent state (``examples/train_slot_garden.py`` trains the recurrent policy in its own
PPO loop). As in that trainer, the op head has its own, larger entropy weight early on
(``--op-entropy`` times ``--ent-coef``, annealed to ``--op-entropy-end`` times it over the run):
without it PPO settles on the do-nothing policy (WAIT costs no rent).

Threads: one intra-op thread by default (``--threads``). The batches are small (``--num-envs``
observations at rollout, ``--batch-size`` at update) and the runs this file was measured with
shared a 2-core machine with other jobs; raise it on an idle machine with more cores.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback

from slotformer import SlotConfig
from slotformer.checkpoint import load_checkpoint, save_checkpoint
from slotformer.envs import (
    SlotGardenEnv,
    StepOutput,
    evaluate_policy,
    heuristic_policy,
    random_valid_policy,
)
from slotformer.envs.gym import SlotGardenVectorEnv
from slotformer.integrations.sb3 import SlotformerPolicy, SlotGardenVecEnv
from slotformer.policy import PolicyBundle


@dataclass(frozen=True)
class Sb3Result:
    """Mean episode returns on the training world (higher is better)."""

    learned: float
    untrained: float  # the same model before training
    random: float
    heuristic: float
    seconds: float  # training only
    env_steps: int
    zero_shot: dict[str, float] | None = None  # learned, random, heuristic on --zero-shot


class Progress(BaseCallback):
    """Anneal the op head's entropy weight linearly over the run and print a line after every
    ``every`` updates (env steps, steps/s, mean return of the last 100 episodes)."""

    def __init__(self, total_steps: int, op_entropy: float, op_entropy_end: float,
                 every: int, quiet: bool = False) -> None:
        super().__init__()
        self.total, self.every, self.quiet = total_steps, every, quiet
        self.op_entropy, self.op_entropy_end = op_entropy, op_entropy_end
        self.rollouts, self.start = 0, time.perf_counter()

    def _on_rollout_start(self) -> None:
        # The previous rollout has been trained on: report it, then set the next weight.
        if not self.quiet and self.rollouts and self.rollouts % self.every == 0:
            self.report()
        done = min(self.num_timesteps / self.total, 1.0)
        weight = self.op_entropy + (self.op_entropy_end - self.op_entropy) * done
        self.model.policy.entropy_weights["op"] = weight  # type: ignore[attr-defined]

    def _on_rollout_end(self) -> None:
        self.rollouts += 1

    def report(self) -> None:
        elapsed = time.perf_counter() - self.start
        returns = [info["r"] for info in self.model.ep_info_buffer]
        mean = f"{np.mean(returns):+.3f}" if returns else "n/a"
        eta = elapsed / max(self.num_timesteps, 1) * (self.total - self.num_timesteps)
        weight = self.model.policy.entropy_weights["op"]  # type: ignore[attr-defined]
        print(f"steps {self.num_timesteps:7d}/{self.total}  {elapsed:5.0f} s  "
              f"{self.num_timesteps / elapsed:5.0f} steps/s  return {mean} (last "
              f"{len(returns)} episodes)  op entropy weight {weight:.2f}  eta {eta:.0f} s",
              flush=True)

    def _on_step(self) -> bool:
        return True


def make_model(
    rows: int = 1, cols: int = 3, num_envs: int = 32, episode_length: int = 48,
    table_seed: int = 0, seed: int = 0, n_steps: int = 24, batch_size: int = 192,
    n_epochs: int = 4, learning_rate: float = 1e-3, ent_coef: float = 0.01,
    op_entropy: float = 20.0, gamma: float = 0.97, **config_fields: object,
) -> MaskablePPO:
    """A MaskablePPO with `SlotformerPolicy` on ``num_envs`` batched Slot Gardens."""
    env = SlotGardenVecEnv(num_envs, rows=rows, cols=cols, episode_length=episode_length,
                           table_seed=table_seed, invalid_action="raise")
    env.seed(seed)
    return MaskablePPO(
        SlotformerPolicy, env, n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs,
        learning_rate=learning_rate, ent_coef=ent_coef, gamma=gamma, max_grad_norm=0.5,
        seed=seed, device="cpu", verbose=0,
        policy_kwargs={"rows": rows, "cols": cols, "entropy_weights": {"op": op_entropy},
                       **config_fields},
    )


def evaluate_model(
    model: MaskablePPO, rows: int, cols: int, episode_length: int, table_seed: int,
    num_envs: int = 32, seed: int = 12345, deterministic: bool = False,
) -> float:
    """Mean return of the model over one episode of ``num_envs`` gardens, acting through the
    gymnasium observation it trained on."""
    envs = SlotGardenVectorEnv(num_envs=num_envs, rows=rows, cols=cols,
                               episode_length=episode_length, table_seed=table_seed)
    obs, _ = envs.reset(seed=seed)
    for _ in range(episode_length):
        actions, _ = model.predict(obs, action_masks=envs.action_masks(),
                                   deterministic=deterministic)
        obs, _, terminated, _, info = envs.step(np.asarray(actions, dtype=np.int64))
    assert terminated.all(), "every garden ends after episode_length steps"
    return float(np.mean(info["episode_return"]))


def garden_factory(rows: int, cols: int, episode_length: int, table_seed: int,
                   num_envs: int = 32, seed: int = 12345):  # type: ignore[no-untyped-def]
    """A factory of fresh `SlotGardenEnv` (the evaluation set-up of `evaluate_model`)."""
    return lambda: SlotGardenEnv(num_envs=num_envs, slot_config=SlotConfig.for_grid(rows, cols),
                                 episode_length=episode_length, table_seed=table_seed, seed=seed)


def reference_returns(rows: int, cols: int, episode_length: int, table_seed: int,
                      seed: int = 12345) -> tuple[float, float]:
    """(random valid, heuristic) mean returns on the same world."""
    garden = garden_factory(rows, cols, episode_length, table_seed, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    random = evaluate_policy(garden, functools.partial(random_valid_policy, generator=generator))
    return random, evaluate_policy(garden, heuristic_policy)


def bundle_policy(bundle: PolicyBundle):  # type: ignore[no-untyped-def]
    """A slotformer bundle as an ``[E, 8]`` action function, from a zero recurrent state at
    every step (as `SlotformerPolicy` trained it)."""
    heads = bundle.network.action_space.head_names  # type: ignore[union-attr]

    def act(out: StepOutput) -> torch.Tensor:
        step = bundle.get_action(out.obs, out.blueprint_indices,
                                 {**out.masks, "slot_by_op": out.slot_by_op})
        return torch.stack([step.actions[h] for h in heads], -1)

    return act


def zero_shot(model: MaskablePPO, rows: int, cols: int, episode_length: int,
              table_seed: int) -> dict[str, float]:
    """Save the trained network, load it onto a ``rows x cols`` grid and score it there."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "sb3_policy.pt", model.policy.bundle)  # type: ignore[attr-defined]
        bundle = load_checkpoint(path, slot_config=SlotConfig.for_grid(rows, cols))
    garden = garden_factory(rows, cols, episode_length, table_seed)
    learned = evaluate_policy(garden, bundle_policy(bundle))
    random, heuristic = reference_returns(rows, cols, episode_length, table_seed)
    return {"learned": learned, "random": random, "heuristic": heuristic}


def run(
    total_steps: int = 120_000, rows: int = 1, cols: int = 3, episode_length: int = 48,
    table_seed: int = 0, seed: int = 0, threads: int = 1, op_entropy: float = 20.0,
    op_entropy_end: float = 1.0, zero_shot_grid: tuple[int, int] | None = None,
    log_every: int = 10, quiet: bool = False, **model_kwargs: object,
) -> Sb3Result:
    """Train, then evaluate against the reference policies (``threads`` intra-op threads,
    restored afterwards)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = make_model(rows, cols, episode_length=episode_length, table_seed=table_seed,
                           seed=seed, op_entropy=op_entropy, **model_kwargs)  # type: ignore[arg-type]
        untrained = evaluate_model(model, rows, cols, episode_length, table_seed)
        start = time.perf_counter()
        model.learn(total_steps, callback=Progress(total_steps, op_entropy, op_entropy_end,
                                                   log_every, quiet))
        seconds = time.perf_counter() - start
        learned = evaluate_model(model, rows, cols, episode_length, table_seed)
        random, heuristic = reference_returns(rows, cols, episode_length, table_seed)
        transfer = None if zero_shot_grid is None else zero_shot(
            model, *zero_shot_grid, episode_length, table_seed)
        return Sb3Result(learned, untrained, random, heuristic, seconds,
                         int(model.num_timesteps), transfer)
    finally:
        torch.set_num_threads(previous_threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--total-steps", type=int, default=120_000, help="environment steps")
    add("--rows", type=int, default=1, help="grid rows")
    add("--cols", type=int, default=3, help="grid columns")
    add("--num-envs", type=int, default=32, help="environments stepped as one batch")
    add("--n-steps", type=int, default=24, help="steps per environment per rollout")
    add("--batch-size", type=int, default=192, help="minibatch size at update")
    add("--n-epochs", type=int, default=4, help="epochs per update")
    add("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    add("--ent-coef", type=float, default=0.01, help="MaskablePPO's entropy coefficient")
    add("--op-entropy", type=float, default=20.0, help="the op head's entropy weight at first")
    add("--op-entropy-end", type=float, default=1.0, help="... and at the end of the run")
    add("--episode-length", type=int, default=48, help="steps per episode")
    add("--table-seed", type=int, default=0, help="the world (affinities)")
    add("--seed", type=int, default=0, help="SB3 and environment seed")
    add("--threads", type=int, default=1, help="torch intra-op threads")
    add("--zero-shot", default=None, metavar="RxC", help="also score the network on this grid")
    add("--log-every", type=int, default=10, help="print progress after every N updates")
    args = parser.parse_args()
    grid = None if args.zero_shot is None else tuple(int(x) for x in args.zero_shot.split("x"))
    print(f"MaskablePPO + SlotformerPolicy on Slot Garden {args.rows}x{args.cols}: "
          f"{args.total_steps} env steps, {args.num_envs} envs x {args.n_steps} steps per "
          f"rollout, seed {args.seed}, {args.threads} thread(s)", flush=True)
    result = run(
        args.total_steps, args.rows, args.cols, args.episode_length, args.table_seed, args.seed,
        args.threads, args.op_entropy, args.op_entropy_end, grid, args.log_every,  # type: ignore[arg-type]
        num_envs=args.num_envs, n_steps=args.n_steps, batch_size=args.batch_size,
        n_epochs=args.n_epochs, learning_rate=args.learning_rate, ent_coef=args.ent_coef,
    )
    print(f"trained {result.env_steps} steps in {result.seconds:.0f} s "
          f"({result.env_steps / result.seconds:.0f} steps/s); mean episode return: learned "
          f"{result.learned:+.3f} (untrained {result.untrained:+.3f}), random "
          f"{result.random:+.3f}, heuristic {result.heuristic:+.3f}, learned / heuristic "
          f"{result.learned / result.heuristic:.2f}x", flush=True)
    if result.zero_shot is not None:
        z = result.zero_shot
        print(f"zero-shot on {args.zero_shot}: learned {z['learned']:+.3f}, random "
              f"{z['random']:+.3f}, heuristic {z['heuristic']:+.3f}, learned / heuristic "
              f"{z['learned'] / z['heuristic']:.2f}x")


if __name__ == "__main__":
    main()
