"""Shared workloads and measurements for the network benchmarks.

`benchmarks/test_network_bench.py` (pytest-benchmark) and `benchmarks/compare.py` (the
comparison report) both build their inputs and measure with this module, so the suite and
the report measure the same thing with the same code.

What is measured, per network type (``"lstm"``, ``"transformer"``) and slot count N, on
``create_policy`` defaults:

* ``forward``: ``bundle.evaluate_actions`` with grad on (the forward of an update).
* ``backward``: ``loss.backward()`` of the PPO-style loss (`ppo_loss`) of a fresh forward.
* ``update``: one full update step: ``zero_grad`` + forward + loss + backward +
  ``clip_grad_norm_`` + ``Adam.step``.
* ``act``: ``bundle.get_action`` latency for B environments, T = 1.
* memory: parameter count, bytes of parameters + gradients + Adam state (read from a real
  Adam step's tensors), and the peak activation memory of forward + backward
  (`peak_activation_bytes`).
* compile: time to compile ``network.evaluate_actions`` with ``fullgraph=True`` plus the
  first forward + backward through it, and the compiled steady-state time
  (`measure_compile`).

Workload (`build_workload`): ``B x T`` steps of random observations with about half the
slots active (``blueprint_indices`` -1 for the others, their slot features zero), masks
shaped like Slot Garden's (``slot_by_op`` per op: GERMINATE on empty slots, the other ops on
subsets of the active ones; the op mask = ops with a valid slot, some ops switched off at
random; the blueprint mask without NOOP and a few others; other heads all valid), and actions
drawn by the network's own ``get_action`` over the ``B * T`` rows as one T = 1 batch, so
they are valid under the canonicalised masks (they need to be valid, not a trajectory).

Timings are medians over rounds; `interleaved_samples` takes one sample of every probe per
round in turn, so a ratio between two probes (transformer / lstm) sees the same machine noise.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from slotformer.config import SlotConfig
from slotformer.policy import PolicyBundle, create_policy
from slotformer.policy.protocol import SLOT_BY_OP_KEY
from slotformer.presets.seed_lifecycle import NUM_OPS, BlueprintAction, Op

NETWORK_TYPES: tuple[str, ...] = ("lstm", "transformer")
VARIANTS: tuple[str, ...] = (*NETWORK_TYPES, "transformer-lean")
"""What `build_policy` builds by default: a network type at its defaults, or
``transformer-lean``, the transformer with its lean-memory setting
(`enable_gradient_checkpointing`: the encoder and the contribution predictor recomputed chunk
by chunk in backward)."""
EXTRA_VARIANTS: dict[str, dict[str, Any]] = {
    "transformer-wide": {"head_hidden": 256, "transformer_ff_mult": 4},  # the plan's sizes
}
"""Further transformer settings `build_policy` knows, by name: constructor overrides."""
GRIDS: dict[int, tuple[int, int]] = {3: (1, 3), 10: (2, 5), 25: (5, 5), 50: (5, 10)}
"""Slot count N -> (rows, cols) of the grid it is measured on."""

ACTIVE_FRACTION = 0.5
LEARNING_RATE = 1e-5  # small: many timed steps must not drift the weights to NaN
MAX_GRAD_NORM = 0.5


@dataclass(frozen=True)
class Sizes:
    """Sizes and repetitions of one benchmark run.

    Args:
        batch: B of the update (sequences per minibatch).
        time: T of the update (steps per sequence).
        slots: the slot counts N to measure (keys of `GRIDS` or any N, laid out in one row).
        act_batches: B of the rollout latency (T = 1).
        rounds: timed samples per figure (median reported).
        act_iterations: calls per rollout latency sample (short calls are averaged).
        compile_backend: ``torch.compile`` backend for the compile figures.
        compile_rounds: compiled steady-state samples after the first call.
        compile_slots: the slot counts whose compile time is measured (None = all).
    """

    batch: int = 32
    time: int = 64
    slots: tuple[int, ...] = (3, 10, 25, 50)
    act_batches: tuple[int, ...] = (1, 64)
    rounds: int = 5
    act_iterations: int = 20
    compile_backend: str = "inductor"
    compile_rounds: int = 3
    compile_slots: tuple[int, ...] | None = None

    def compiles(self, num_slots: int) -> bool:
        return self.compile_slots is None or num_slots in self.compile_slots


FULL = Sizes()
# CI smoke run: small sizes, few rounds, and the fast aot_eager backend at one N (it still
# proves that fullgraph=True traces both networks' evaluate_actions path).
QUICK = Sizes(
    batch=4,
    time=8,
    slots=(3, 10),
    rounds=2,
    act_iterations=3,
    compile_backend="aot_eager",
    compile_rounds=1,
    compile_slots=(3,),
)


def grid_for(num_slots: int) -> SlotConfig:
    """The grid a slot count is measured on (`GRIDS`; one row for other N)."""
    rows, cols = GRIDS.get(num_slots, (1, num_slots))
    return SlotConfig.for_grid(rows, cols)


def sync(device: torch.device) -> None:
    """Wait for queued device work so that host timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_policy(
    network_type: str, num_slots: int, device: str | torch.device = "cpu", seed: int = 0
) -> PolicyBundle:
    """``create_policy(network_type, slot_config=grid_for(num_slots))`` with default sizes
    (``network_type`` is one of `VARIANTS`)."""
    torch.manual_seed(seed)
    lean = network_type == "transformer-lean"
    overrides = EXTRA_VARIANTS.get(network_type, {})
    base = "transformer" if lean or overrides else network_type
    policy = create_policy(base, slot_config=grid_for(num_slots), device=device, **overrides)
    if lean:
        policy.enable_gradient_checkpointing()
    policy.network.train()
    return policy


def random_masks(
    active: Tensor, generator: torch.Generator, head_sizes: Mapping[str, int]
) -> dict[str, Tensor]:
    """Slot-Garden-like masks for slot activity ``active [..., N]`` (bool).

    Returns every head's mask ``[..., n]`` plus ``"slot_by_op"`` ``[..., num_ops, N]``.
    """
    lead, N = active.shape[:-1], active.shape[-1]

    def coin(p: float, *shape: int) -> Tensor:
        return torch.rand(*lead, *shape, generator=generator) < p

    rows = [
        torch.ones_like(active),  # WAIT: slot irrelevant
        ~active,  # GERMINATE: empty slots
        active & coin(0.5, N),  # SET_ALPHA_TARGET: blending or holding seeds
        active,  # PRUNE: live seeds
        active & coin(0.3, N),  # FOSSILIZE: holding seeds
        active & coin(0.3, N),  # ADVANCE: seeds that trained long enough
    ]
    slot_by_op = torch.stack(rows, dim=-2)  # [..., num_ops, N]
    op = slot_by_op.any(dim=-1) & ~coin(0.25, NUM_OPS)  # [..., num_ops]
    op[..., Op.WAIT] = True
    masks = {name: torch.ones(*lead, size, dtype=torch.bool) for name, size in head_sizes.items()}
    masks["op"] = op
    masks["slot"] = slot_by_op.any(dim=-2)
    blueprint = coin(0.8, head_sizes["blueprint"])
    blueprint[..., BlueprintAction.NOOP] = False
    blueprint[..., BlueprintAction.CONV_LIGHT] = True  # never an empty row
    masks["blueprint"] = blueprint
    masks[SLOT_BY_OP_KEY] = slot_by_op
    return masks


def random_observation(
    policy: PolicyBundle, lead: tuple[int, ...], generator: torch.Generator
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Features ``[*lead, D]``, blueprint indices ``[*lead, N]`` and masks, on CPU."""
    network: Any = policy.network
    layout = network.layout
    N = layout.num_slots
    active = torch.rand(*lead, N, generator=generator) < ACTIVE_FRACTION  # [*lead, N]
    blueprint = torch.randint(1, len(BlueprintAction), (*lead, N), generator=generator)
    blueprint_indices = torch.where(active, blueprint, -1)
    base = torch.randn(*lead, layout.base_dim, generator=generator)
    slots = torch.randn(*lead, N, layout.slot_dim, generator=generator)
    slots = slots * active.unsqueeze(-1)  # empty slots observe zeros
    features = torch.cat([base, slots.flatten(-2)], dim=-1)  # [*lead, D]
    masks = random_masks(active, generator, network.action_space.sizes)
    return features, blueprint_indices, masks


@dataclass
class Workload:
    """One update minibatch and its targets; every tensor on the policy's device.

    Shapes: ``features [B, T, D]``, ``blueprint_indices [B, T, N]``, masks ``[B, T, n]``
    (``slot_by_op [B, T, num_ops, N]``), actions and targets ``[B, T]``,
    ``contribution_target`` and ``active [B, T, N]``, ``hidden`` ``([1, B, H], [1, B, H])``.
    """

    policy: PolicyBundle
    features: Tensor
    blueprint_indices: Tensor
    masks: dict[str, Tensor]
    actions: dict[str, Tensor]
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor
    contribution_target: Tensor
    active: Tensor
    hidden: tuple[Tensor, Tensor]
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.policy.network.parameters(), lr=LEARNING_RATE)

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def batch(self) -> int:
        return int(self.features.shape[0])

    @property
    def time(self) -> int:
        return int(self.features.shape[1])

    # ---------------------------------------------------------------- the measured steps
    def evaluate(self, evaluate_fn: Callable[..., Any] | None = None) -> Any:
        """``bundle.evaluate_actions`` on the minibatch (or ``evaluate_fn`` with the
        network's own signature, for a compiled ``network.evaluate_actions``)."""
        if evaluate_fn is None:
            return self.policy.evaluate_actions(
                self.features, self.blueprint_indices, self.actions, self.masks, self.hidden
            )
        head_masks = {k: v for k, v in self.masks.items() if k != SLOT_BY_OP_KEY}
        return evaluate_fn(
            self.features,
            self.blueprint_indices,
            self.actions,
            hidden=self.hidden,
            masks=head_masks,
            slot_by_op_mask=self.masks[SLOT_BY_OP_KEY],
        )

    def loss(self, evaluate_fn: Callable[..., Any] | None = None) -> Tensor:
        """Forward and PPO-style loss (`ppo_loss`)."""
        return ppo_loss(self.evaluate(evaluate_fn), self)

    def forward(self) -> None:
        self.evaluate()

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def zero_grad(self) -> None:
        # Keep the gradient buffers (set_to_none=False) so that a memory measurement of
        # forward + backward sees activations and temporaries, not the gradients' first
        # allocation (those are counted with parameters and Adam state).
        self.optimizer.zero_grad(set_to_none=False)

    def update(self) -> None:
        """One full update step (zero_grad, forward, loss, backward, clip, Adam step)."""
        self.zero_grad()
        self.loss().backward()
        torch.nn.utils.clip_grad_norm_(self.policy.network.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()


def ppo_loss(result: Any, workload: Workload, clip: float = 0.2) -> Tensor:
    """Clipped PPO surrogate + value loss (``value``, V(s)) + the auxiliary Q(s, op) and
    masked contribution losses (so every parameter gets a gradient) - entropy bonus; a
    scalar.

    ``result`` is what ``evaluate_actions`` returns (a bundle and a network alike): an
    `EvalResult`.
    """
    log_probs, value, entropy = result.log_probs, result.value, result.entropies
    contributions = result.pred_contributions
    new_log_prob = torch.stack(list(log_probs.values())).sum(0)  # [B, T]
    ratio = (new_log_prob - workload.old_log_prob).exp()
    advantages = workload.advantages
    policy_loss = torch.max(
        -advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)
    ).mean()
    value_loss = 0.5 * (value - workload.returns).pow(2).mean()
    q_loss = 0.5 * (result.q_value - workload.returns).pow(2).mean()
    active = workload.active
    aux_loss = ((contributions - workload.contribution_target).pow(2) * active).sum()
    aux_loss = aux_loss / active.sum().clamp(min=1)
    entropy_bonus = torch.stack(list(entropy.values())).sum(0).mean()
    return (
        policy_loss
        + 0.5 * value_loss
        + 0.5 * q_loss
        + 0.1 * aux_loss
        - (0.01 * entropy_bonus)
    )


def build_workload(policy: PolicyBundle, batch: int, time: int, seed: int = 0) -> Workload:
    """A ``[batch, time]`` update minibatch for ``policy`` (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    device = policy.device
    features, blueprint_indices, masks = random_observation(policy, (batch, time), generator)
    N = blueprint_indices.shape[-1]
    flat_masks = {k: v.flatten(0, 1).to(device) for k, v in masks.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = policy.get_action(
            features.flatten(0, 1).to(device),
            blueprint_indices.flatten(0, 1).to(device),
            flat_masks,
        )
    # .clone() outside inference mode: stored rollout tensors would otherwise be copied by
    # evaluate_actions on every call (autograd cannot save inference tensors).
    actions = {k: v.clone().reshape(batch, time) for k, v in result.actions.items()}
    old_log_prob = torch.stack(list(result.log_probs.values())).sum(0).clone().reshape(batch, time)
    active = (blueprint_indices >= 0).float()
    advantages = torch.randn(batch, time, generator=generator)
    zeros = policy.initial_hidden(batch)  # shapes only: a minibatch starts mid-episode
    assert zeros is not None
    hidden = tuple(0.1 * torch.randn(z.shape, generator=generator) for z in zeros)
    return Workload(
        policy=policy,
        features=features.to(device),
        blueprint_indices=blueprint_indices.to(device),
        masks={k: v.to(device) for k, v in masks.items()},
        actions=actions,
        old_log_prob=old_log_prob,
        advantages=((advantages - advantages.mean()) / advantages.std()).to(device),
        returns=torch.randn(batch, time, generator=generator).to(device),
        contribution_target=(torch.randn(batch, time, N, generator=generator) * active).to(device),
        active=active.to(device),
        hidden=(hidden[0].to(device), hidden[1].to(device)),
    )


@dataclass
class RolloutInputs:
    """One rollout step for ``B`` environments: ``features [B, D]``, ``blueprint_indices
    [B, N]``, masks ``[B, n]`` (``slot_by_op [B, num_ops, N]``) and a hidden state."""

    policy: PolicyBundle
    features: Tensor
    blueprint_indices: Tensor
    masks: dict[str, Tensor]
    hidden: tuple[Tensor, Tensor]

    def act(self) -> Any:
        return self.policy.get_action(
            self.features, self.blueprint_indices, self.masks, self.hidden
        )


def build_rollout_inputs(policy: PolicyBundle, batch: int, seed: int = 0) -> RolloutInputs:
    generator = torch.Generator().manual_seed(seed + 1)
    features, blueprint_indices, masks = random_observation(policy, (batch,), generator)
    device = policy.device
    hidden = policy.initial_hidden(batch)
    assert hidden is not None
    return RolloutInputs(
        policy,
        features.to(device),
        blueprint_indices.to(device),
        {k: v.to(device) for k, v in masks.items()},
        hidden,
    )


# -------------------------------------------------------------------- timing probes
Probe = Callable[[], float]
"""One timed sample: does its own untimed setup and returns the timed seconds."""


def forward_probe(workload: Workload) -> Probe:
    def probe() -> float:
        sync(workload.device)
        start = time.perf_counter()
        workload.evaluate()
        sync(workload.device)
        return time.perf_counter() - start

    return probe


def backward_probe(workload: Workload) -> Probe:
    def probe() -> float:
        workload.zero_grad()
        loss = workload.loss()
        sync(workload.device)
        start = time.perf_counter()
        loss.backward()
        sync(workload.device)
        return time.perf_counter() - start

    return probe


def update_probe(workload: Workload) -> Probe:
    def probe() -> float:
        sync(workload.device)
        start = time.perf_counter()
        workload.update()
        sync(workload.device)
        return time.perf_counter() - start

    return probe


def act_probe(inputs: RolloutInputs, iterations: int) -> Probe:
    """Mean seconds of one ``get_action`` over ``iterations`` back-to-back calls."""
    device = inputs.policy.device

    def probe() -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(iterations):
            inputs.act()
        sync(device)
        return (time.perf_counter() - start) / iterations

    return probe


def interleaved_samples(
    probes: Mapping[Any, Probe], rounds: int, warmup: int = 1
) -> dict[Any, list[float]]:
    """``rounds`` samples of every probe, taken in turn each round (after ``warmup`` rounds)
    so that machine noise hits them alike."""
    samples: dict[Any, list[float]] = {name: [] for name in probes}
    for round_index in range(warmup + rounds):
        for name, probe in probes.items():
            seconds = probe()
            if round_index >= warmup:
                samples[name].append(seconds)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def time_networks(
    workloads: Mapping[str, Workload],
    rollouts: Mapping[str, Mapping[int, RolloutInputs]],
    rounds: int,
    act_iterations: int,
    metrics: tuple[str, ...] = ("forward", "backward", "update", "act"),
) -> dict[str, dict[str, float]]:
    """Median milliseconds of each metric for each network, measured interleaved.

    Every round takes one sample of each (metric, network) in turn, so the ratio between
    networks is measured under the same machine noise. Keys: ``forward_ms``,
    ``backward_ms``, ``update_ms`` and ``act_b{B}_ms`` per rollout batch size B.
    """
    makers: dict[str, Callable[[Workload], Probe]] = {
        "forward": forward_probe,
        "backward": backward_probe,
        "update": update_probe,
    }
    probes: dict[tuple[str, str], Probe] = {}
    for metric in metrics:
        for network_type, workload in workloads.items():
            if metric == "act":
                for batch, inputs in rollouts[network_type].items():
                    probes[(network_type, f"act_b{batch}_ms")] = act_probe(inputs, act_iterations)
            else:
                probes[(network_type, f"{metric}_ms")] = makers[metric](workload)
    samples = interleaved_samples(probes, rounds)
    out: dict[str, dict[str, float]] = {name: {} for name in workloads}
    for (network_type, key), values in samples.items():
        out[network_type][key] = 1e3 * median(values)
    return out


# -------------------------------------------------------------------- memory
def parameter_memory(workload: Workload) -> dict[str, int]:
    """Parameter count and bytes of parameters, gradients and Adam state, read from the
    tensors after one real update step (so nothing is assumed about their dtype or count)."""
    workload.update()
    params = [p for p in workload.policy.network.parameters() if p.requires_grad]
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state_bytes = sum(
        value.numel() * value.element_size()
        for state in workload.optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    )
    return {
        "parameters": sum(p.numel() for p in params),
        "param_bytes": param_bytes,
        "grad_bytes": grad_bytes,
        "adam_state_bytes": state_bytes,
        "param_grad_adam_bytes": param_bytes + grad_bytes + state_bytes,
    }


CPU_PEAK_METHOD = (
    "torch.profiler(profile_memory=True) over forward + loss + backward with the gradient "
    "buffers already allocated; the allocator events ('[memory]', +bytes on allocation, "
    "-bytes on free) sorted by time and summed; peak = max of the running sum"
)
CUDA_PEAK_METHOD = (
    "torch.cuda.max_memory_allocated() during forward + loss + backward minus "
    "memory_allocated() before it (gradient buffers already allocated)"
)


def _profiled_peak_bytes(step: Callable[[], None]) -> tuple[int, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += int(event.nbytes())
        peak = max(peak, running)
    return peak, len(events)


def peak_activation_bytes(workload: Workload) -> dict[str, Any]:
    """Peak memory allocated above the starting point during forward + loss + backward.

    The gradient buffers exist before the step (``zero_grad(set_to_none=False)``), so the
    figure is activations saved for backward plus temporaries, not parameter-sized state.
    """
    workload.update()  # gradients and Adam state exist; later steps allocate no state

    def step() -> None:
        workload.zero_grad()
        workload.loss().backward()

    device = workload.device
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"peak_activation_bytes": int(peak), "memory_method": CUDA_PEAK_METHOD}
    peak, count = _profiled_peak_bytes(step)
    return {
        "peak_activation_bytes": peak,
        "allocator_events": count,
        "memory_method": CPU_PEAK_METHOD,
    }


# -------------------------------------------------------------------- FLOPs
FLOP_METHOD = (
    "matmuls (mm/addmm/bmm) counted from their shapes by torch.utils.flop_counter over one "
    "forward + loss + backward (checkpoint recomputation included); plus, analytically, the "
    "ops it does not count: each LSTM layer 8*H*(I+H) per step forward, and each attention "
    "block 4*S^2*D per step forward (S = N + 1 tokens), both x3 for forward + backward (x4 "
    "for recomputed attention)"
)


def update_flops(workload: Workload) -> dict[str, Any]:
    """Floating-point operations of one forward + loss + backward (an update minus the
    optimizer step, whose element-wise work is negligible next to it)."""
    from torch.utils.flop_counter import FlopCounterMode

    from slotformer.layers.encoder import SlotAttentionBlock, SlotTransformerEncoder
    from slotformer.layers.lstm import LSTMLayer

    workload.zero_grad()
    with FlopCounterMode(display=False) as counter:
        workload.loss().backward()
    counted = counter.get_flop_counts().get("Global", {})
    matmul = int(sum(counted.values()))
    network: Any = workload.policy.network
    rows = workload.batch * workload.time
    lstm = sum(
        3 * 8 * m.hidden_size * (m.input_size + m.hidden_size) * rows
        for m in network.modules()
        if isinstance(m, LSTMLayer)
    )
    attention = 0
    if not any("scaled_dot_product" in str(op) for op in counted):
        tokens = network.slot_config.num_slots + 1
        for encoder in (m for m in network.modules() if isinstance(m, SlotTransformerEncoder)):
            passes = 4 if encoder.gradient_checkpointing else 3
            blocks = sum(isinstance(m, SlotAttentionBlock) for m in encoder.modules())
            attention += passes * blocks * 4 * tokens * tokens * encoder.embed_dim * rows
    return {
        "update_flops": matmul + lstm + attention,
        "flops_matmul": matmul,
        "flops_lstm": lstm,
        "flops_attention": attention,
        "flop_method": FLOP_METHOD,
    }


def matmul_peak_gflops(device: torch.device | str = "cpu", size: int = 1024, rounds: int = 5) -> float:
    """Best-of-``rounds`` GFLOP/s of one fp32 ``[size, size] @ [size, size]`` matmul on this
    machine with torch's current thread count: the roof the achieved figures are read
    against."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(rounds):
        sync(torch.device(device))
        start = time.perf_counter()
        a @ b
        sync(torch.device(device))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# -------------------------------------------------------------------- compile
@contextlib.contextmanager
def _cold_compile_caches() -> Iterator[None]:
    """Fresh dynamo state and empty inductor caches, so each compile is measured cold
    (otherwise a second network reuses the first one's kernels and a re-run reads the
    on-disk FX graph cache)."""
    torch._dynamo.reset()
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:  # older torch
        from torch._inductor.utils import fresh_inductor_cache as fresh_cache
    with fresh_cache():
        yield
    torch._dynamo.reset()


def compile_evaluate_actions(
    workload: Workload, backend: str = "inductor", mode: str = "default"
) -> Callable[..., Any]:
    """``torch.compile(network.evaluate_actions, fullgraph=True)`` with the options
    ``bundle.compile`` uses (``dynamic=True``; ``mode`` only for inductor)."""
    options: dict[str, Any] = {"dynamic": True, "backend": backend, "fullgraph": True}
    if backend == "inductor":
        options["mode"] = mode
    network: Any = workload.policy.network
    return torch.compile(network.evaluate_actions, **options)


def measure_compile(
    workload: Workload, backend: str = "inductor", rounds: int = 3
) -> dict[str, Any]:
    """Compile time of the ``evaluate_actions`` path with ``fullgraph=True``.

    ``first_call_s``: the first forward + loss + backward through the compiled function
    (tracing and compiling both graphs, then running them). ``compile_s``: that minus the
    compiled steady-state time of the same step (``compiled_step_ms``, median of
    ``rounds``), i.e. the time spent compiling. ``eager_step_ms``: the same step eager,
    measured beside it. A failure (e.g. a graph break under ``fullgraph``) is reported in
    ``compile_error`` with ``fullgraph_ok`` False, not raised.
    """
    figures: dict[str, Any] = {
        "compile_backend": backend,
        "compile_fullgraph": True,
        "compile_dynamic": True,
    }
    device = workload.device

    def eager_step() -> None:
        workload.zero_grad()
        workload.loss().backward()

    with _cold_compile_caches():
        compiled = compile_evaluate_actions(workload, backend)

        def compiled_step() -> None:
            workload.zero_grad()
            workload.loss(compiled).backward()

        try:
            sync(device)
            start = time.perf_counter()
            compiled_step()
            sync(device)
            first_call = time.perf_counter() - start
            samples = interleaved_samples(
                {"compiled": _timed(compiled_step, device), "eager": _timed(eager_step, device)},
                rounds=rounds,
                warmup=0,
            )
        except Exception as error:  # reported, not raised: fullgraph is a target
            figures.update(fullgraph_ok=False, compile_error=_short_error(error))
            return figures
    compiled_s, eager_s = median(samples["compiled"]), median(samples["eager"])
    figures.update(
        fullgraph_ok=True,
        first_call_s=first_call,
        compile_s=max(first_call - compiled_s, 0.0),
        compiled_step_ms=1e3 * compiled_s,
        eager_step_ms=1e3 * eager_s,
        compiled_speedup=eager_s / compiled_s,
    )
    return figures


def _timed(fn: Callable[[], None], device: torch.device) -> Probe:
    def probe() -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    return probe


def _short_error(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    text = "".join(lines).strip()
    return text if len(text) <= 600 else text[:600] + " ..."
