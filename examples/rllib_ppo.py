"""PPO with RLlib on Slot Garden: env runners sample in parallel, DDP learners update.

    pip install -e ".[rllib,examples]"
    python examples/rllib_ppo.py                          # 2 env runners, 1 learner (this process)
    python examples/rllib_ppo.py --learners 2             # 2 DDP learners (gloo, CPU)
    python examples/rllib_ppo.py --address auto           # on a running Ray cluster
    python examples/rllib_ppo.py --help                   # every flag, with its help

What it shows: `slotformer.integrations.rllib.SlotformerRLModule` as the module of RLlib's
PPO (new API stack), the environment made in each env runner from its module-qualified
gymnasium id (no import needed there), the op head's entropy weight annealed on every learner
between iterations, and at the end the learned policy's mean return next to a random valid
policy's and the scripted heuristic's, on fresh episodes of the training world (the same
evaluation as ``examples/train_slot_garden.py``: 2 episodes x 32 environments, seed + 1000).

Settings match ``examples/train_slot_garden.py`` where RLlib allows: 32 environments (split
over the env runners) x 24-step fragments per iteration, gamma 0.97, GAE lambda 0.95, clip
0.2, no KL penalty, 4 epochs x 4 minibatches of whole sequences, Adam lr 1e-3, gradient
norm clip 0.5, value loss 0.25 x squared error (the trainer's 0.5 x 0.5) unclipped, entropy
0.01 on every head and 0.2 -> 0.01 on the op head. What differs: RLlib normalises advantages
over the whole batch (the trainer: per minibatch), its Adam has eps 1e-8 (the trainer: 1e-5),
its entropy bonus marginalises the op (the trainer scores the sampled op's heads), and the
auxiliary heads (Q, contributions) are frozen (docs/distributed.md).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make `slotformer` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slotformer import SlotConfig
from slotformer.envs import (
    GYM_ENV_ID,
    SlotGardenEnv,
    StepOutput,
    evaluate_policy,
    heuristic_policy,
    random_valid_policy,
)
from slotformer.presets.seed_lifecycle import HEAD_NAMES

ENV_ID = "slotformer.envs:" + GYM_ENV_ID  # gymnasium imports slotformer.envs in each worker


@dataclass
class Args:
    """PPO through RLlib (env runners + learners) on Slot Garden."""

    network: Literal["transformer", "lstm"] = "transformer"
    """The slotformer network."""
    rows: int = 1
    """Rows of the slot grid."""
    cols: int = 3
    """Columns of the slot grid."""
    env_runners: int = 2
    """RLlib env runners (processes that sample); the 32 environments are split over them."""
    learners: int = 0
    """DDP learner processes; 0 = one learner in this process."""
    num_envs: int = 32
    """Environments in all (each env runner steps num_envs / env_runners of them)."""
    rollout_length: int = 24
    """Steps per environment per iteration (RLlib's rollout_fragment_length)."""
    episode_length: int = 48
    """Steps per episode."""
    total_steps: int = 120_000
    """Environment steps to train for."""
    seed: int = 0
    """Seeds RLlib (modules, env runners), the world (affinity tables) and the evaluation."""
    learning_rate: float = 1e-3
    entropy_coeff: float = 0.01
    """RLlib's entropy coefficient (every head; the op head's is a multiple of it)."""
    op_entropy: float = 0.2
    """The op head's entropy coefficient at the first iteration ..."""
    op_entropy_end: float = 0.01
    """... annealed linearly to this at the last one."""
    hidden_dim: int = 128
    """Width of the recurrent core."""
    threads: int = 1
    """torch threads of this process (the learner when --learners 0)."""
    address: str | None = None
    """A Ray cluster to join ("auto": the one `ray start` runs here); None = a local Ray."""
    eval_episodes: int = 2
    """Evaluation episodes per environment for each of the three policies."""
    quiet: bool = False


def ppo_config(args: Args) -> Any:
    """The ``PPOConfig`` (``algo = ppo_config(args).build_algo()``)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from slotformer.integrations.rllib import SlotformerRLModule

    if args.num_envs % args.env_runners or args.num_envs % max(1, args.learners):
        raise ValueError(f"--num-envs {args.num_envs} must divide by --env-runners "
                         f"{args.env_runners} and --learners {args.learners}")
    learners = max(1, args.learners)
    # Sequences of one fragment plus the step RLlib appends to each episode chunk: no padding.
    seq_len = args.rollout_length + 1
    model_config = {
        "rows": args.rows, "cols": args.cols, "network": args.network,
        "policy_kwargs": {"lstm_hidden_dim": args.hidden_dim},
        "entropy_weights": {"op": args.op_entropy / args.entropy_coeff},
        "max_seq_len": seq_len,
    }
    return (
        PPOConfig()
        .environment(ENV_ID, env_config={"rows": args.rows, "cols": args.cols,
                                          "episode_length": args.episode_length,
                                          "table_seed": args.seed})
        .env_runners(num_env_runners=args.env_runners,
                     num_envs_per_env_runner=args.num_envs // args.env_runners,
                     rollout_fragment_length=args.rollout_length,
                     # Slot Garden's own vector env (one batched torch env per runner).
                     gym_env_vectorize_mode="vector_entry_point")
        .learners(num_learners=args.learners)
        .training(
            train_batch_size_per_learner=args.num_envs * args.rollout_length // learners,
            minibatch_size=args.num_envs * seq_len // (learners * 4),  # 4 per epoch
            num_epochs=4, lr=args.learning_rate, gamma=0.97, lambda_=0.95, clip_param=0.2,
            use_kl_loss=False, kl_coeff=0.0, vf_loss_coeff=0.25, vf_clip_param=1e9,
            entropy_coeff=args.entropy_coeff, grad_clip=0.5, grad_clip_by="global_norm",
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=SlotformerRLModule,
                                               model_config=model_config))
        .debugging(seed=args.seed)
    )


def set_op_entropy(algo: Any, weight: float) -> None:
    """Set the op head's entropy weight (relative to entropy_coeff) on every learner."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    calls = algo.learner_group.foreach_learner(
        lambda learner: learner.module[DEFAULT_MODULE_ID].unwrapped().set_entropy_weights(
            {"op": weight}))
    for call in calls:  # RLlib hands a remote learner's error back instead of raising it
        if not call.ok:
            raise call.get()


def module_policy_fn(module: Any, num_envs: int) -> Any:
    """The RLlib module as an ``[E, 8]`` action function for `evaluate_policy` (samples,
    as the trainer's evaluation does, and carries the recurrent state)."""
    from ray.rllib.core.columns import Columns

    state = {k: v.expand(num_envs, *v.shape).clone() for k, v in module.get_initial_state().items()}

    def act(step: StepOutput) -> Tensor:
        fresh = step.done.view(-1, 1, 1)  # an episode begins where one ended: zero state
        obs = {"obs": step.obs, "blueprint_indices": step.blueprint_indices,
               "action_mask": torch.cat([step.masks[h] for h in HEAD_NAMES], -1),
               "slot_by_op": step.slot_by_op}
        batch = {Columns.OBS: {k: v.unsqueeze(1) for k, v in obs.items()},
                 Columns.STATE_IN: {k: torch.where(fresh, 0.0, v) for k, v in state.items()}}
        out = module.forward_exploration(batch)
        state.update(out[Columns.STATE_OUT])
        actions: Tensor = out[Columns.ACTIONS][:, 0]
        return actions

    return act


def train(args: Args) -> dict[str, float]:
    """Train with RLlib, then evaluate; returns the metrics (``learned``, ``random``,
    ``heuristic``, ``wall_s``, ``env_steps_per_s``, ``env_steps``)."""
    import ray

    torch.set_num_threads(args.threads)
    root = str(Path(__file__).resolve().parents[1])
    # Workers import slotformer from this checkout too.
    runtime_env = {"env_vars": {"PYTHONPATH": root, "OMP_NUM_THREADS": "1"}}
    if args.address:
        ray.init(address=args.address, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=args.env_runners + max(1, args.learners), include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=False)
    algo = ppo_config(args).build_algo()
    iterations = max(1, args.total_steps // (args.num_envs * args.rollout_length))
    if not args.quiet:
        print(f"RLlib PPO: {args.network} on a {args.rows}x{args.cols} grid, "
              f"{args.env_runners} env runners x {args.num_envs // args.env_runners} envs, "
              f"{args.learners or 'local'} learner(s), {iterations} iterations", flush=True)
    start, steps, result = time.perf_counter(), 0, {}
    last_return = last_len = float("nan")  # of the last iteration in which episodes ended
    for it in range(1, iterations + 1):
        frac = (it - 1) / max(1, iterations - 1)
        op = args.op_entropy + (args.op_entropy_end - args.op_entropy) * frac
        set_op_entropy(algo, op / args.entropy_coeff)
        result = algo.train()
        steps = int(result["num_env_steps_sampled_lifetime"])
        runners, learner = result["env_runners"], result["learners"]["default_policy"]
        if runners.get("num_episodes", 0):
            last_return, last_len = runners["episode_return_mean"], runners["episode_len_mean"]
        if not args.quiet and (it % 5 == 0 or it == iterations):
            # entropy: the weighted bonus (op weight x H(op) + the other heads' sum).
            print(f"iter {it:4d}/{iterations}  steps {steps:7d}  "
                  f"sps {steps / (time.perf_counter() - start):5.0f}  return {last_return:7.3f}  "
                  f"len {last_len:5.1f}  entropy {learner['entropy']:.3f}  "
                  f"vf {learner['vf_loss']:.4f}", flush=True)
    wall = time.perf_counter() - start

    module = algo.get_module()
    module.set_state(algo.learner_group.get_weights()["default_policy"])  # the learner's
    slots = SlotConfig.for_grid(args.rows, args.cols)

    def fresh_env() -> SlotGardenEnv:
        return SlotGardenEnv(args.num_envs, slots, args.episode_length, seed=args.seed + 1000,
                             table_seed=args.seed)

    learned = evaluate_policy(fresh_env(), module_policy_fn(module, args.num_envs),
                              num_episodes=args.eval_episodes)
    gen = torch.Generator().manual_seed(args.seed + 1000)
    random_score = evaluate_policy(fresh_env(), lambda s: random_valid_policy(s, gen),
                                   num_episodes=args.eval_episodes)
    heuristic = evaluate_policy(fresh_env(), heuristic_policy, num_episodes=args.eval_episodes)
    algo.stop()
    ray.shutdown()
    metrics = {"learned": learned, "random": random_score, "heuristic": heuristic,
               "wall_s": wall, "env_steps": float(steps), "env_steps_per_s": steps / wall}
    if not args.quiet:
        print(f"\nmean return over {args.eval_episodes} episodes x {args.num_envs} envs "
              f"({args.network}, {args.rows}x{args.cols} grid): learned {learned:.3f}  "
              f"random {random_score:.3f}  heuristic {heuristic:.3f}  (trained {wall:.0f} s, "
              f"{metrics['env_steps_per_s']:.0f} env steps/s)", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the command line (``--help`` lists every flag) and train."""
    import tyro

    return train(tyro.cli(Args, args=argv))


if __name__ == "__main__":
    main()
