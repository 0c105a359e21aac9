"""Train sb3-contrib's MaskablePPO on Slot Garden with slotformer's slot-attention extractor.

Needs the ``sb3`` extra::

    pip install -e ".[sb3]"
    python examples/sb3_maskable_ppo.py --total-steps 30000

It builds ``--num-envs`` gymnasium Slot Gardens (``slotformer.envs.gym.SlotGardenGymEnv``) in
an SB3 ``DummyVecEnv``, trains ``MaskablePPO("MultiInputPolicy")`` with
:class:`slotformer.integrations.sb3.SlotTransformerExtractor` as the features extractor, and
prints the learned policy's mean episode return next to a random valid policy's and the
scripted heuristic's on the same world (``table_seed``).

What MaskablePPO cannot do that slotformer's own networks do: mask the slot by the chosen op
(its masks are per head, so the slot mask is the union over ops and an invalid (op, slot) pair
becomes WAIT in the environment), point at slots (its slot logits come from a linear layer
on flattened slot features, so a model is tied to its grid) and carry a recurrent state (SB3
has no maskable recurrent PPO). ``examples/train_slot_garden.py`` trains slotformer's own
networks; this file shows the extractor inside the tools an SB3 user already has.

One intra-op thread by default: SB3 steps batches of a few environments, where a second
thread costs more in synchronisation than it gains (see the README's note on threads).
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import DummyVecEnv

from slotformer.envs import SlotGardenEnv, evaluate_policy, heuristic_policy, random_valid_policy
from slotformer.envs.gym import SlotGardenGymEnv
from slotformer.integrations.sb3 import SlotTransformerExtractor


@dataclass(frozen=True)
class Sb3Result:
    """Mean episode returns on the training world (higher is better)."""

    learned: float
    untrained: float  # the same model before training
    random: float
    heuristic: float
    seconds: float
    env_steps: int


def make_model(
    rows: int, cols: int, num_envs: int, episode_length: int, table_seed: int, seed: int,
    n_steps: int = 128, batch_size: int = 256, n_epochs: int = 4, learning_rate: float = 3e-4,
    ent_coef: float = 0.01, embed_dim: int = 32, gamma: float = 0.97,
) -> MaskablePPO:
    """A MaskablePPO on ``num_envs`` Slot Gardens with the slot-attention extractor."""

    def make_env() -> SlotGardenGymEnv:
        return SlotGardenGymEnv(
            rows=rows, cols=cols, episode_length=episode_length, table_seed=table_seed
        )

    vec_env = DummyVecEnv([make_env] * num_envs)
    vec_env.seed(seed)
    return MaskablePPO(
        "MultiInputPolicy",
        vec_env,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=n_epochs,
        learning_rate=learning_rate,
        ent_coef=ent_coef,
        gamma=gamma,
        seed=seed,
        device="cpu",
        verbose=0,
        policy_kwargs={
            "features_extractor_class": SlotTransformerExtractor,
            "features_extractor_kwargs": {"rows": rows, "cols": cols, "embed_dim": embed_dim},
            "net_arch": [64],
        },
    )


def evaluate_model(
    model: MaskablePPO, rows: int, cols: int, episode_length: int, table_seed: int,
    num_envs: int = 32, seed: int = 12345, deterministic: bool = False,
) -> float:
    """Mean return of the model over one episode of ``num_envs`` gardens.

    The model acts through the same gymnasium observation it trained on; an invalid (op, slot)
    pair becomes WAIT, exactly as during training.
    """
    from slotformer.envs.gym import SlotGardenVectorEnv

    envs = SlotGardenVectorEnv(
        num_envs=num_envs, rows=rows, cols=cols, episode_length=episode_length,
        table_seed=table_seed,
    )
    obs, _ = envs.reset(seed=seed)
    for _ in range(episode_length):
        actions, _ = model.predict(
            obs, action_masks=envs.action_masks(), deterministic=deterministic
        )
        obs, _, terminated, _, info = envs.step(np.asarray(actions, dtype=np.int64))
    assert terminated.all(), "every garden ends after episode_length steps"
    return float(np.mean(info["episode_return"]))


def reference_returns(
    rows: int, cols: int, episode_length: int, table_seed: int, num_envs: int = 32,
    seed: int = 12345,
) -> tuple[float, float]:
    """(random valid, heuristic) mean returns on the same world."""
    from slotformer.config import SlotConfig

    def garden() -> SlotGardenEnv:
        return SlotGardenEnv(
            num_envs=num_envs, slot_config=SlotConfig.for_grid(rows, cols),
            episode_length=episode_length, table_seed=table_seed, seed=seed,
        )

    generator = torch.Generator().manual_seed(seed)
    random = evaluate_policy(garden, functools.partial(random_valid_policy, generator=generator))
    return random, evaluate_policy(garden, heuristic_policy)


def run(
    total_steps: int = 30_000, rows: int = 1, cols: int = 3, num_envs: int = 8,
    episode_length: int = 48, table_seed: int = 0, seed: int = 0, threads: int = 1,
    **model_kwargs: float,
) -> Sb3Result:
    """Train, then evaluate against the reference policies."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_and_evaluate(
            total_steps, rows, cols, num_envs, episode_length, table_seed, seed, **model_kwargs
        )
    finally:
        torch.set_num_threads(previous_threads)


def _train_and_evaluate(
    total_steps: int, rows: int, cols: int, num_envs: int, episode_length: int,
    table_seed: int, seed: int, **model_kwargs: float,
) -> Sb3Result:
    start = time.perf_counter()
    model = make_model(rows, cols, num_envs, episode_length, table_seed, seed, **model_kwargs)  # type: ignore[arg-type]
    untrained = evaluate_model(model, rows, cols, episode_length, table_seed)
    model.learn(total_steps)
    seconds = time.perf_counter() - start
    learned = evaluate_model(model, rows, cols, episode_length, table_seed)
    random, heuristic = reference_returns(rows, cols, episode_length, table_seed)
    return Sb3Result(learned, untrained, random, heuristic, seconds, int(model.num_timesteps))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--total-steps", type=int, default=30_000, help="environment steps")
    parser.add_argument("--rows", type=int, default=1, help="grid rows")
    parser.add_argument("--cols", type=int, default=3, help="grid columns")
    parser.add_argument("--num-envs", type=int, default=8, help="environments in DummyVecEnv")
    parser.add_argument("--episode-length", type=int, default=48, help="steps per episode")
    parser.add_argument("--table-seed", type=int, default=0, help="the world (affinities)")
    parser.add_argument("--seed", type=int, default=0, help="SB3 and environment seed")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    grid = f"{args.rows}x{args.cols}"
    print(
        f"MaskablePPO + SlotTransformerExtractor on Slot Garden {grid}: {args.total_steps} env "
        f"steps, {args.num_envs} envs, seed {args.seed}, {args.threads} thread(s)",
        flush=True,
    )
    result = run(
        args.total_steps, args.rows, args.cols, args.num_envs, args.episode_length,
        args.table_seed, args.seed, args.threads,
    )
    print(
        f"trained {result.env_steps} steps in {result.seconds:.0f} s; mean episode return: "
        f"learned {result.learned:+.3f} (untrained {result.untrained:+.3f}), "
        f"random {result.random:+.3f}, do-nothing +0.000, "
        f"heuristic {result.heuristic:+.3f}"
    )


if __name__ == "__main__":
    main()
