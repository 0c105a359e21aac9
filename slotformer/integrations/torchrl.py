"""TorchRL: Slot Garden as an ``EnvBase``, slotformer policies as TensorDict modules.

Needs the ``torchrl`` extra (``pip install "slotformer[torchrl]"``). The pieces: the
environment :class:`SlotGardenTorchRLEnv`, the action distribution
:class:`FactoredMaskedDistribution`, the TensorDict module :class:`SlotformerPolicyModule`,
:func:`make_actor_critic` (for ``ClipPPOLoss``) and :func:`add_state_values` (for ``GAE``).

The TensorDict keys, how Slot Garden's same-step auto-reset maps onto TorchRL's
``"_reset"``, how the recurrent state is carried and re-scored, and why values come from
:func:`add_state_values`: ``docs/torchrl.md``.

Example (collect a few steps; ``examples/torchrl_ppo.py`` trains with PPO):

    >>> import torch
    >>> from torchrl.collectors import Collector
    >>> from torchrl.envs import TransformedEnv
    >>> from slotformer import create_policy
    >>> from slotformer.integrations.torchrl import SlotGardenTorchRLEnv, make_actor_critic
    >>> base = SlotGardenTorchRLEnv(num_envs=2, episode_length=4, seed=0)
    >>> policy = create_policy("lstm", slot_config=base.slot_config, lstm_hidden_dim=16,
    ...                        trunk_dim=16)
    >>> actor, critic = make_actor_critic(policy)
    >>> env = TransformedEnv(base, critic.make_tensordict_primer())
    >>> collector = Collector(env, actor, frames_per_batch=8, total_frames=8)
    >>> batch = next(iter(collector))
    >>> batch.batch_size, batch["action"].shape
    (torch.Size([2, 4]), torch.Size([2, 4, 8]))
    >>> collector.shutdown()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import InteractionType, TensorDictModuleBase
from torch import Tensor
from torchrl.data import Binary, Bounded, Categorical, Composite, MultiCategorical, Unbounded
from torchrl.envs import EnvBase, TensorDictPrimer
from torchrl.modules import ProbabilisticActor
from torchrl.modules import recurrent_mode as torchrl_recurrent_mode

from slotformer.actions import ActionSpace
from slotformer.config import SlotConfig
from slotformer.envs import SlotGardenEnv, StepOutput
from slotformer.envs.policies import random_valid_policy
from slotformer.envs.rules import DEFAULT_RENT
from slotformer.networks.core import ActorCriticCore
from slotformer.policy.protocol import PolicyBundle
from slotformer.policy_step import (
    ProbabilityFloor,
    check_shapes,
    expected_entropy,
    floors_by_head,
    policy_step,
)
from slotformer.presets.seed_lifecycle import HEAD_NAMES, NUM_BLUEPRINTS
from slotformer.validation import describe_shape, expect, validation_enabled

__all__ = [
    "ACTION_KEY",
    "BLUEPRINT_KEY",
    "IS_INIT_KEY",
    "LOGITS_KEY",
    "MASKS_KEY",
    "OBS_KEY",
    "RECURRENT_STATE_KEYS",
    "SLOT_BY_OP_KEY",
    "VALUE_KEY",
    "FactoredMaskedDistribution",
    "SlotGardenTorchRLEnv",
    "SlotformerPolicyModule",
    "add_state_values",
    "make_actor_critic",
]

OBS_KEY = "obs"
BLUEPRINT_KEY = "blueprint_indices"
MASKS_KEY = "masks"
SLOT_BY_OP_KEY = "slot_by_op"
IS_INIT_KEY = "is_init"
ACTION_KEY = "action"
LOGITS_KEY = "logits"
VALUE_KEY = "state_value"
RECURRENT_STATE_KEYS = ("recurrent_state_h", "recurrent_state_c")
"""The TensorDict keys of the recurrent state ``(h, c)``, each ``[*batch, layers, H]``."""


# ---------------------------------------------------------------------------------- env
class SlotGardenTorchRLEnv(EnvBase):
    """Slot Garden (:class:`~slotformer.envs.SlotGardenEnv`) as a TorchRL ``EnvBase`` with
    ``batch_size [E]`` (keys: ``docs/torchrl.md``). An invalid action raises (as
    ``SlotGardenEnv.step``); an episode end is ``terminated``, never ``truncated``.
    ``rand_action`` draws a random **valid** action, so ``env.rollout(n)`` without a policy
    and ``check_env_specs`` play legal moves. Resetting only some environments works for
    those whose episode just ended (what a collector does); resetting all always works.

    Args:
        num_envs: E; the other arguments are :class:`~slotformer.envs.SlotGardenEnv`'s.

    Example:
        >>> from torchrl.envs.utils import check_env_specs
        >>> env = SlotGardenTorchRLEnv(num_envs=4, episode_length=3, seed=0)
        >>> check_env_specs(env)
        >>> td = env.rollout(5, break_when_any_done=False)
        >>> td.batch_size, td["next", "done"][:, :, 0].tolist()[0]
        (torch.Size([4, 5]), [False, False, True, False, False])
    """

    def __init__(
        self,
        num_envs: int,
        slot_config: SlotConfig | None = None,
        episode_length: int = 100,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rent: float = DEFAULT_RENT,
        table_seed: int | None = None,
        min_episode_length: int | None = None,
    ) -> None:
        garden = SlotGardenEnv(
            num_envs, slot_config, episode_length, seed=seed, device=device, rent=rent,
            table_seed=table_seed, min_episode_length=min_episode_length,
            final_observation=True,
        )
        super().__init__(device=garden.device, batch_size=torch.Size([num_envs]))
        self.garden = garden
        self.slot_config = garden.slot_config
        self.action_space = garden.action_space
        self._rand_generator = torch.Generator(device=garden.device)
        self._rand_generator.manual_seed(seed)
        self._last: StepOutput | None = None  # the garden's latest output (its current state)
        self._pending = torch.zeros(num_envs, dtype=torch.bool, device=garden.device)
        self._make_specs()

    def _make_specs(self) -> None:
        e, n, dev = self.garden.num_envs, self.garden.num_slots, self.garden.device
        sizes = self.action_space.sizes
        flag = Categorical(2, shape=(e, 1), device=dev, dtype=torch.bool)
        masks = Composite({name: Binary(n=size, shape=(e, size), device=dev, dtype=torch.bool)
                           for name, size in sizes.items()}, shape=(e,), device=dev)
        self.observation_spec = Composite({
            OBS_KEY: Unbounded(shape=(e, self.garden.observation_layout.state_dim), device=dev),
            BLUEPRINT_KEY: Bounded(low=-1, high=NUM_BLUEPRINTS - 1, shape=(e, n), device=dev,
                                   dtype=torch.int64),
            MASKS_KEY: masks,
            SLOT_BY_OP_KEY: Binary(n=n, shape=(e, self.action_space.num_ops, n), device=dev,
                                   dtype=torch.bool),
            IS_INIT_KEY: flag.clone(),
        }, shape=(e,), device=dev)
        nvec = torch.tensor([sizes[name] for name in HEAD_NAMES], device=dev)
        self.action_spec = MultiCategorical(nvec=nvec.expand(e, len(HEAD_NAMES)), device=dev,
                                            shape=(e, len(HEAD_NAMES)), dtype=torch.int64)
        self.reward_spec = Unbounded(shape=(e, 1), device=dev)
        self.done_spec = Composite({key: flag.clone() for key in ("done", "terminated", "truncated")},
                                   shape=(e,), device=dev)

    # ------------------------------------------------------------------ EnvBase hooks
    def _observation(self, out: StepOutput, is_init: Tensor) -> TensorDict:
        """The observation entries of ``out`` and ``is_init [E]``."""
        return TensorDict({
            OBS_KEY: out.obs, BLUEPRINT_KEY: out.blueprint_indices, SLOT_BY_OP_KEY: out.slot_by_op,
            MASKS_KEY: TensorDict(dict(out.masks), batch_size=self.batch_size),
            IS_INIT_KEY: is_init.unsqueeze(-1),
        }, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        e = self.garden.num_envs
        if reset is not None:
            reset = reset.reshape(e)
        if reset is None or self._last is None:
            out = self.garden.reset()
            reset = torch.ones(e, dtype=torch.bool, device=self.device)
        elif bool((reset & ~self._pending).any()):
            # An environment whose episode did not just end: Slot Garden can start a new
            # episode for all environments at once, not for some of them.
            if not bool(reset.all()):
                raise ValueError(
                    f"SlotGardenTorchRLEnv can reset all environments or those whose episode "
                    f"just ended; _reset asks for environments "
                    f"{(reset & ~self._pending).nonzero().flatten().tolist()}, which are "
                    f"mid-episode (reset mask shape {describe_shape(reset)})"
                )
            out = self.garden.reset()
        else:
            out = self._last  # the garden already started their new episodes in `step`
        self._last = out
        self._pending = torch.zeros_like(self._pending)
        td = self._observation(out, is_init=reset)
        done = torch.zeros(e, 1, dtype=torch.bool, device=self.device)
        td.update({"done": done, "terminated": done.clone(), "truncated": done.clone()})
        return td

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = self.garden.step(tensordict.get(ACTION_KEY))
        done = out.done  # [E]
        self._last = out
        self._pending = done
        # Under "next": the finished episodes' last state (the garden has already reset
        # them; `_reset` hands over the new episodes' first state).
        td = self._observation(self.garden.final_state(out), is_init=torch.zeros_like(done))
        done_col = done.unsqueeze(-1)  # [E, 1]
        td.update({"reward": out.reward.unsqueeze(-1), "done": done_col,
                   "terminated": done_col.clone(), "truncated": torch.zeros_like(done_col)})
        return td

    def _set_seed(self, seed: int | None) -> None:
        """Reseed the draws (qualities, noise, episode lengths) and ``rand_action``; the
        affinity and style tables were drawn at construction and stay."""
        if seed is not None:
            self.garden.generator.manual_seed(seed)
            self._rand_generator.manual_seed(seed)

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """A uniformly random valid action for the current state, written to ``"action"``."""
        if self._last is None:
            raise RuntimeError("SlotGardenTorchRLEnv.rand_action: call reset() first")
        action = random_valid_policy(self._last, self._rand_generator)  # [E, 8]
        if tensordict is None:
            tensordict = TensorDict({}, batch_size=self.batch_size, device=self.device)
        tensordict.set(ACTION_KEY, action)
        return tensordict


# ---------------------------------------------------------------------------------- distribution
class FactoredMaskedDistribution(torch.distributions.Distribution):
    """slotformer's masked factored action distribution over int64 actions ``[..., K]``:
    the policy step every slotformer network runs (`slotformer.policy_step`), so
    ``log_prob`` equals ``evaluate_actions``' summed log-prob for the same logits and masks,
    and ``entropy()`` is the analytic ``H(op) + sum_o p(o) sum_h H(h | o)``
    (``docs/torchrl.md``).

    Args:
        logits: head name -> **unmasked** logits ``[..., n]`` (a dict or a ``TensorDict``),
            every head of the network's action space.
        masks: head name -> bool ``[..., n]`` (True = valid), every head.
        slot_by_op: bool ``[..., num_ops, N]`` or None: the valid slots for each op.
        network: the `ActorCriticCore` the logits came from (its action space, floor mode).
        probability_floor: minimum probability per valid action (a float, or per head); the
            same at rollout and update.

    Shapes: ``batch_shape`` = the logits' leading shape ``[...]``, ``event_shape`` = ``[K]``
    (the heads in the action space's order); ``sample()`` -> int64 ``[..., K]``,
    ``log_prob(action [..., K])`` and ``entropy()`` -> ``[...]``.

    Example:
        >>> from slotformer import create_policy
        >>> policy = create_policy("lstm", lstm_hidden_dim=16, trunk_dim=16)
        >>> space = policy.network.action_space
        >>> logits = {h.name: torch.randn(5, h.size) for h in space.heads}
        >>> masks = {h.name: torch.ones(5, h.size, dtype=torch.bool) for h in space.heads}
        >>> slot_by_op = torch.ones(5, space.num_ops, 3, dtype=torch.bool)
        >>> dist = FactoredMaskedDistribution(logits, masks, slot_by_op, network=policy.network)
        >>> action = dist.sample()
        >>> action.shape, dist.log_prob(action).shape, dist.entropy().shape
        (torch.Size([5, 8]), torch.Size([5]), torch.Size([5]))
    """

    arg_constraints: dict[str, Any] = {}  # noqa: RUF012 (torch's class attribute)
    has_rsample = False

    def __init__(
        self,
        logits: Mapping[str, Tensor],
        masks: Mapping[str, Tensor],
        slot_by_op: Tensor | None = None,
        *,
        network: ActorCriticCore,
        probability_floor: ProbabilityFloor = None,
    ) -> None:
        if not isinstance(network, ActorCriticCore):
            raise TypeError(
                f"network must be a slotformer ActorCriticCore (a bundle's .network), got "
                f"{type(network).__name__}"
            )
        self.action_space: ActionSpace = network.action_space
        self.head_names = self.action_space.head_names
        for what, table in (("logits", logits), ("masks", masks)):
            missing = [n for n in self.head_names if n not in table.keys()]
            if missing:
                raise ValueError(f"{what} is missing heads {missing}; expected every head "
                                 f"{list(self.head_names)}")
        self._logits = {n: logits[n] for n in self.head_names}
        self._masks = {n: masks[n] for n in self.head_names}
        batch_shape = check_shapes(self.action_space, self._logits, self._masks, slot_by_op)
        self._slot_by_op = slot_by_op
        self._floors = floors_by_head(self.action_space, probability_floor)
        self._floor_mode = network.config.floor_mode
        super().__init__(
            batch_shape=batch_shape, event_shape=torch.Size([len(self.head_names)]),
            validate_args=False,
        )

    def _step(self, actions: Mapping[str, Tensor] | None, deterministic: bool) -> Any:
        """The policy step every slotformer network runs, on these logits and masks."""
        return policy_step(
            self.action_space, self._logits, self._masks, self._slot_by_op, actions=actions,
            deterministic=deterministic, floors=self._floors, floor_mode=self._floor_mode,
        )

    def _stack(self, per_head: Mapping[str, Tensor]) -> Tensor:
        return torch.stack([per_head[n] for n in self.head_names], -1)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        """int64 ``[..., K]``: the op first, then every head under its op-canonical mask."""
        if tuple(sample_shape) != ():
            raise ValueError(
                f"FactoredMaskedDistribution.sample draws one action per row; sample_shape "
                f"must be (), got {tuple(sample_shape)}"
            )
        with torch.no_grad():
            return self._stack(self._step(None, deterministic=False).actions)

    @property
    def mode(self) -> Tensor:
        """int64 ``[..., K]``: the most likely op, then each head's most likely action."""
        with torch.no_grad():
            return self._stack(self._step(None, deterministic=True).actions)

    @property
    def deterministic_sample(self) -> Tensor:
        """What TorchRL takes under ``ExplorationType.DETERMINISTIC``: the `mode`."""
        return self.mode

    def log_prob(self, value: Tensor) -> Tensor:
        """``[...]`` fp32: the summed log-prob of int64 actions ``value [..., K]``."""
        k = len(self.head_names)
        expect("action", value, dtype=torch.int64, shape=(*self.batch_shape, k),
               hint=f" (batch shape + {k} heads in order {list(self.head_names)})")
        if validation_enabled():
            sizes = torch.tensor([self.action_space.sizes[n] for n in self.head_names],
                                 device=value.device)
            bad = ((value < 0) | (value >= sizes)).flatten(0, -2).sum(0)  # [K], one host sync
            if bool(bad.any()):
                counts = {n: int(c) for n, c in zip(self.head_names, bad.tolist()) if c}
                raise ValueError(f"action values out of range, count per head: {counts}")
        actions = dict(zip(self.head_names, value.unbind(-1)))
        return torch.stack(list(self._step(actions, False).log_probs.values()), -1).sum(-1)

    def entropy(self) -> Tensor:
        """``[...]`` fp32: ``H(op) + sum_o p(o) sum_h H(h | o)``, each head's entropy
        normalised by ``ln(num_valid)`` under the masks canonicalised for op ``o``
        (`slotformer.policy_step.expected_entropy`)."""
        return expected_entropy(
            self.action_space, self._logits, self._masks, self._slot_by_op, floors=self._floors,
            floor_mode=self._floor_mode,
        )


# ---------------------------------------------------------------------------------- modules
class SlotformerPolicyModule(TensorDictModuleBase):
    """A slotformer `PolicyBundle` as a TensorDict module: the first module of the actor
    (:func:`make_actor_critic`) and the critic.

    Reads ``"obs"``, ``"blueprint_indices"``, ``"is_init"`` and the recurrent state; writes
    every head's unmasked logits to ``("logits", head)`` and V(s) to ``"state_value"``. Two
    modes, as TorchRL's ``LSTMModule`` (``docs/torchrl.md``): one step (batch ``[*B]``; the
    state entering the step, zeroed where ``is_init``, and the state after it written to
    ``("next", "recurrent_state_h" / "_c")``), or sequences (``recurrent_mode``; batch
    ``[*B, T]``, from the stored state at ``t = 0`` with ``is_init`` as ``episode_starts``).

    Args:
        policy: a policy bundle with ``value_baseline="v"`` (the critic is V(s)).
        recurrent_mode: force sequence mode (True) or one-step mode (False); None follows
            ``torchrl.modules.recurrent_mode()``.

    Example:
        >>> from slotformer import create_policy
        >>> module = SlotformerPolicyModule(
        ...     create_policy("lstm", lstm_hidden_dim=16, trunk_dim=16))
        >>> td = TensorDict({
        ...     "obs": torch.zeros(4, 116), "blueprint_indices": torch.full((4, 3), -1),
        ...     "is_init": torch.ones(4, 1, dtype=torch.bool),
        ...     "recurrent_state_h": torch.zeros(4, 1, 16),
        ...     "recurrent_state_c": torch.zeros(4, 1, 16)}, batch_size=[4])
        >>> out = module(td)
        >>> out["logits", "op"].shape, out["state_value"].shape
        (torch.Size([4, 6]), torch.Size([4, 1]))
        >>> out["next", "recurrent_state_h"].shape
        torch.Size([4, 1, 16])
    """

    def __init__(self, policy: PolicyBundle, *, recurrent_mode: bool | None = None) -> None:
        super().__init__()
        network = policy.network
        if not isinstance(network, ActorCriticCore):
            raise TypeError(
                f"policy must wrap a slotformer ActorCriticCore, got {type(network).__name__}"
            )
        if network.value_baseline != "v":
            raise ValueError(
                f"policy has value_baseline={network.value_baseline!r}; the TorchRL critic is "
                f"V(s), so build the policy with value_baseline='v'"
            )
        self.policy = policy
        self.network = network  # registered: its parameters are this module's
        self.head_names = network.action_space.head_names
        self._recurrent_mode = recurrent_mode
        self.in_keys = [OBS_KEY, BLUEPRINT_KEY, IS_INIT_KEY, *RECURRENT_STATE_KEYS]
        self.out_keys = [
            *((LOGITS_KEY, name) for name in self.head_names),
            VALUE_KEY,
            *(("next", key) for key in RECURRENT_STATE_KEYS),
        ]

    @property
    def recurrent_mode(self) -> bool:
        """Whether calls score ``[*B, T]`` sequences (see the class docstring)."""
        if self._recurrent_mode is not None:
            return self._recurrent_mode
        return bool(torchrl_recurrent_mode())

    def make_tensordict_primer(self) -> TensorDictPrimer:
        """A ``TensorDictPrimer`` that makes an environment carry the recurrent state
        (zeros at reset): ``TransformedEnv(env, module.make_tensordict_primer())``."""
        layers, hidden = self.network.lstm_layers, self.network.lstm_hidden_dim
        return TensorDictPrimer(
            {key: Unbounded(shape=(layers, hidden)) for key in RECURRENT_STATE_KEYS},
            expand_specs=True,
        )

    def _hidden(self, tensordict: TensorDictBase, index: Any) -> tuple[Tensor, Tensor]:
        """The stored state ``(h, c)`` as slotformer's ``[L, B, H]``."""
        states = []
        for key in RECURRENT_STATE_KEYS:
            value = tensordict.get(key, None)
            if value is None:
                raise KeyError(
                    f"the TensorDict has no {key!r} (the recurrent state): add "
                    f"module.make_tensordict_primer() to the environment "
                    f"(TransformedEnv(env, primer))"
                )
            value = value[index]  # [B, L, H]
            states.append(value.transpose(0, 1).contiguous())
        return states[0], states[1]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Write ``("logits", head)`` ``[*B, n]``, ``"state_value"`` ``[*B, 1]`` and, one
        step at a time, ``("next", "recurrent_state_h" / "_c")`` ``[*B, L, H]`` into
        ``tensordict`` (batch ``[*B]``, or ``[*B, T]`` in recurrent mode) and return it."""
        sequences = self.recurrent_mode
        batch = tensordict.batch_size
        if sequences and len(batch) < 1:
            raise ValueError(
                f"recurrent mode needs a TensorDict with batch shape [*B, T], got {list(batch)}"
            )
        td = tensordict.reshape(-1, batch[-1]) if sequences else tensordict.reshape(-1)
        obs, bp = td.get(OBS_KEY), td.get(BLUEPRINT_KEY)
        is_init = td.get(IS_INIT_KEY, None)
        if sequences:
            h, c = self._hidden(td, (slice(None), 0))  # [L, B, H]
            starts = None
            if is_init is not None:
                starts = is_init.reshape(*td.batch_size)  # [B, T]
                # Starts at t = 0 fold into the start state; the flags go to the network only
                # when an episode begins inside a sequence (otherwise the trunk runs the
                # whole sequence in one recurrent call).
                first = starts[:, 0].view(1, -1, 1)
                h, c = torch.where(first, 0.0, h), torch.where(first, 0.0, c)
                starts = starts if bool(starts[:, 1:].any()) else None
        else:
            h, c = self._hidden(td, slice(None))
            starts = None if is_init is None else is_init.reshape(-1)  # [B]
        # Raw logits: the distribution applies the masks itself (canonicalised for the op),
        # as evaluate_actions does on its raw logits. Logits filled with MASKED_LOGIT_VALUE
        # would change the probabilities wherever slot_by_op allows a slot the base mask
        # forbids.
        no_masks: dict[str, Tensor | None] = dict.fromkeys(self.head_names)
        out = self.policy.forward(obs, bp, no_masks, (h, c), episode_starts=starts)
        shape = tensordict.batch_size
        result = TensorDict(
            {LOGITS_KEY: {n: out.logits[n].reshape(*shape, -1) for n in self.head_names},
             VALUE_KEY: out.value.reshape(*shape, 1)},
            batch_size=shape,
        )
        if not sequences:
            assert out.hidden is not None
            for key, state in zip(RECURRENT_STATE_KEYS, out.hidden):
                result.set(("next", key), state.transpose(0, 1).reshape(*shape, *state.shape[::2]))
        tensordict.update(result)
        return tensordict


def make_actor_critic(
    policy: PolicyBundle,
    *,
    probability_floor: ProbabilityFloor = None,
    recurrent_mode: bool | None = None,
) -> tuple[ProbabilisticActor, SlotformerPolicyModule]:
    """``(actor, critic)`` for a policy bundle with ``value_baseline="v"``: the actor runs
    :class:`SlotformerPolicyModule` and draws ``"action"`` ``[*B, 8]`` from
    :class:`FactoredMaskedDistribution`, writing ``"action_log_prob"``; the critic is the same
    module (one shared trunk), reading ``"state_value"``. Pass the actor to a ``Collector``
    and both to ``ClipPPOLoss``; score sequences inside ``set_recurrent_mode(True)``.
    ``probability_floor`` applies at rollout and update alike.

    Example:
        >>> from slotformer import create_policy
        >>> actor, critic = make_actor_critic(
        ...     create_policy("lstm", lstm_hidden_dim=16, trunk_dim=16),
        ...     probability_floor={"op": 0.05})
        >>> [key for key in actor.out_keys if isinstance(key, str)]
        ['state_value', 'action', 'action_log_prob']
    """
    module = SlotformerPolicyModule(policy, recurrent_mode=recurrent_mode)
    # Distribution keyword -> TensorDict key; the logits and masks are sub-TensorDicts.
    in_keys = {"logits": LOGITS_KEY, "masks": MASKS_KEY, "slot_by_op": SLOT_BY_OP_KEY}
    actor = ProbabilisticActor(
        module=module,
        in_keys=in_keys,
        out_keys=[ACTION_KEY],
        distribution_class=FactoredMaskedDistribution,
        distribution_kwargs={"network": module.network, "probability_floor": probability_floor},
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM,
    )
    return actor, module


@torch.no_grad()
def add_state_values(batch: TensorDictBase, critic: SlotformerPolicyModule) -> TensorDictBase:
    """Write ``"state_value"`` and ``("next", "state_value")`` ``[E, T, 1]`` into a
    collected ``batch [E, T]`` for ``GAE(value_network=None)``: each sequence plus its last
    ``("next", ...)`` observation scored as one ``T + 1`` sequence in recurrent mode
    (``docs/torchrl.md`` says why not ``GAE(value_network=critic)``). After a step that ended
    an episode the next value belongs to the new episode; GAE multiplies it by
    ``1 - terminated`` = 0.

    Example:
        >>> from torchrl.collectors import Collector
        >>> from torchrl.envs import TransformedEnv
        >>> from torchrl.objectives.value import GAE
        >>> from slotformer import create_policy
        >>> base = SlotGardenTorchRLEnv(num_envs=2, episode_length=3, seed=0)
        >>> actor, critic = make_actor_critic(
        ...     create_policy("lstm", lstm_hidden_dim=16, trunk_dim=16))
        >>> env = TransformedEnv(base, critic.make_tensordict_primer())
        >>> collector = Collector(env, actor, frames_per_batch=10, total_frames=10)
        >>> batch = add_state_values(next(iter(collector)), critic)  # [2, 5]
        >>> GAE(gamma=0.97, lmbda=0.95, value_network=None)(batch)["advantage"].shape
        torch.Size([2, 5, 1])
        >>> collector.shutdown()
    """
    if batch.batch_dims != 2:
        raise ValueError(
            f"batch must have batch shape [E, T] (time last), got {list(batch.batch_size)}"
        )
    keys = [OBS_KEY, BLUEPRINT_KEY, IS_INIT_KEY, *RECURRENT_STATE_KEYS]
    root = batch.select(*keys)
    last = batch.get("next")[:, -1:].select(OBS_KEY, BLUEPRINT_KEY, IS_INIT_KEY)
    # The observation after the last step continues the sequence (its is_init is False: a
    # reset shows up on the next batch's root).
    last.set(IS_INIT_KEY, torch.zeros_like(last.get(IS_INIT_KEY)))
    for key in RECURRENT_STATE_KEYS:  # unused past t = 0 in recurrent mode
        last.set(key, root.get(key)[:, -1:])
    sequence = torch.cat([root, last], dim=1)  # [E, T + 1]
    previous = critic._recurrent_mode
    critic._recurrent_mode = True
    try:
        values = critic(sequence).get(VALUE_KEY)  # [E, T + 1, 1]
    finally:
        critic._recurrent_mode = previous
    batch.set(VALUE_KEY, values[:, :-1])
    batch.set(("next", VALUE_KEY), values[:, 1:])
    return batch
