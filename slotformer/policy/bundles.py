"""The two registered bundles, ``"lstm"`` and ``"transformer"``: one implementation
(`ActorCriticBundle`) around an `ActorCriticCore` network.

Each call goes to the network's entry point of the same name (whose boundary reads the masks
dict and one-step input), and compiled callables live beside the network, so that
``state_dict()`` keys never carry ``torch.compile``'s ``_orig_mod.`` prefix. The calls' shapes
are the `PolicyBundle` protocol's.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from slotformer.actions import ActionSpace
from slotformer.config import SlotConfig
from slotformer.networks.configs import ActorCriticConfig
from slotformer.networks.core import ActorCriticCore, without_compile_prefix
from slotformer.networks.inputs import Hidden, ProbabilityFloor, SlotObservation, as_autograd_input
from slotformer.networks.lstm import FactoredRecurrentActorCritic, LSTMConfig
from slotformer.networks.results import ActionResult, EvalResult, ForwardResult
from slotformer.networks.transformer import SlotTransformerActorCritic, TransformerConfig
from slotformer.policy.protocol import Masks, PolicyBundle
from slotformer.policy.registry import register_policy
from slotformer.validation import check_positive_int

COMPILE_MODES: tuple[str, ...] = (
    "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs",
)
"""Valid ``compile_mode`` values: ``"off"`` plus ``torch.compile``'s modes."""

_REFERENCE_NAMES = {"feature_dim": "state_dim", "hidden_dim": "lstm_hidden_dim"}
"""The reference bundle's constructor names for two config fields."""
_COMPILED_ENTRY_POINTS = ("forward", "get_action", "evaluate_actions")
Observation = Tensor | SlotObservation


def check_compile_mode(mode: str) -> None:
    """Raise ``ValueError`` naming the valid modes unless ``mode`` is one of them."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; valid modes: {list(COMPILE_MODES)}")


class ActorCriticBundle:
    """Shared `PolicyBundle` implementation around one `ActorCriticCore` network.

    A bundle holds its network's config dataclass (`TransformerConfig`, `LSTMConfig`):
    ``config=``, its fields as keyword arguments, or both (keywords win). ``state_dim`` None
    is ``base_dim + slot_dim * N`` (``slot_dim`` None: 31). The reference bundle's names
    ``feature_dim`` (the observation width) and ``hidden_dim`` (the recurrent width) are
    taken too. ``action_space``: an `ActionSpace` or its ``to_dict()`` form (None = the
    seed-lifecycle preset for N slots); its pointer head must have N choices.
    """

    runs_on_any_grid: ClassVar[bool] = False
    """True when the weights do not depend on N (a checkpoint may load onto another grid)."""
    network_class: ClassVar[type[ActorCriticCore]]
    config_class: ClassVar[type[ActorCriticConfig]]

    def __init__(
        self,
        state_dim: int | None = None,
        *,
        slot_config: SlotConfig | None = None,
        config: ActorCriticConfig | None = None,
        action_space: ActionSpace | Mapping[str, Any] | None = None,
        **fields_: Any,
    ) -> None:
        if isinstance(action_space, Mapping):  # its plain-data form (a config file)
            action_space = ActionSpace.from_dict(action_space)
        for name, value, kind, expected in (
            ("slot_config", slot_config, SlotConfig, "a SlotConfig"),
            ("action_space", action_space, ActionSpace, "an ActionSpace or its to_dict() form"),
        ):
            if value is not None and not isinstance(value, kind):
                raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
        self._network = self.network_class(
            slot_config=slot_config, config=self.build_config(state_dim, config, fields_),
            action_space=action_space,
        )
        self._compiled: dict[str, Callable[..., Any]] | None = None
        self._compile_settings: tuple[str, bool, str] | None = None

    @classmethod
    def accepted_arguments(cls) -> list[str]:
        """Keyword arguments besides ``slot_config`` and ``config``: the config's fields,
        the reference bundle's names and ``action_space``."""
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        return sorted(names | set(_REFERENCE_NAMES) | {"action_space"})

    @classmethod
    def build_config(
        cls, state_dim: int | None, config: ActorCriticConfig | None, overrides: Mapping[str, Any]
    ) -> ActorCriticConfig:
        """``config`` (default: the config class's defaults) with ``state_dim`` and the
        keyword ``overrides`` applied."""
        if config is not None and not isinstance(config, cls.config_class):
            raise TypeError(
                f"config must be a {cls.config_class.__name__}, got {type(config).__name__}")
        accepted = cls.accepted_arguments()
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise TypeError(f"{cls.__name__} does not accept {unknown}; it accepts {accepted}")
        values = {_REFERENCE_NAMES.get(k, k): v for k, v in overrides.items()}
        if len(values) != len(overrides) or (state_dim is not None and "state_dim" in values):
            raise TypeError(
                f"{cls.__name__} got one value under two names ({sorted(overrides)}, "
                f"state_dim={state_dim}): feature_dim is state_dim and hidden_dim is "
                f"lstm_hidden_dim")
        if state_dim is not None:
            values["state_dim"] = state_dim
        return dataclasses.replace(config if config is not None else cls.config_class(), **values)

    # ------------------------------------------------------------------ acting and learning
    def get_action(
        self,
        features: Observation,
        blueprint_indices: Tensor | None,
        masks: Masks,
        hidden: Hidden | None = None,
        deterministic: bool = False,
        probability_floor: ProbabilityFloor = None,
        *,
        return_op_logits: bool = False,
        generator: torch.Generator | None = None,
        episode_starts: Tensor | None = None,
    ) -> ActionResult:
        """`PolicyBundle.get_action`; also ``return_op_logits`` (the masked op logits
        ``[B, num_ops]``) and ``generator`` (the RNG for sampling)."""
        # The compiled get_action is the undecorated method (inductor cannot trace the
        # inference_mode decorator), so inference mode is entered here, around it.
        with torch.inference_mode():
            result: ActionResult = self._entry("get_action")(
                features, blueprint_indices, hidden, masks=_checked(masks, self.action_space),
                deterministic=deterministic, return_op_logits=return_op_logits,
                probability_floor=probability_floor, generator=generator,
                **_starts(episode_starts),
            )
        return result

    def forward(
        self,
        features: Observation,
        blueprint_indices: Tensor | None,
        masks: Masks,
        hidden: Hidden | None = None,
        *,
        episode_starts: Tensor | None = None,
    ) -> ForwardResult:
        """`PolicyBundle.forward` (``masks["slot_by_op"]`` is accepted and not used: it
        applies once an op is chosen)."""
        features, blueprint_indices, hidden, masks, episode_starts = self._autograd_inputs(
            (features, blueprint_indices, hidden, _checked(masks, self.action_space),
             episode_starts))
        out = self._entry("forward")(
            features, blueprint_indices, hidden, masks=masks, **_starts(episode_starts))
        logits = {name: out[f"{name}_logits"] for name in self.action_space.head_names}
        return ForwardResult(logits=logits, value=out["value"], hidden=out["hidden"])

    def evaluate_actions(
        self,
        features: Observation,
        blueprint_indices: Tensor | None,
        actions: Mapping[str, Tensor],
        masks: Masks,
        hidden: Hidden | None = None,
        probability_floor: ProbabilityFloor = None,
        aux_stop_gradient: bool = True,
        *,
        episode_starts: Tensor | None = None,
    ) -> EvalResult:
        """`PolicyBundle.evaluate_actions`; ``aux_stop_gradient`` keeps the contribution
        predictor's gradient out of the trunk."""
        features, blueprint_indices, actions, hidden, masks, episode_starts = (
            self._autograd_inputs((features, blueprint_indices, actions, hidden,
                                   _checked(masks, self.action_space), episode_starts)))
        result: EvalResult = self._entry("evaluate_actions")(
            features, blueprint_indices, actions, hidden=hidden,
            probability_floor=probability_floor, aux_stop_gradient=aux_stop_gradient,
            masks=masks, **_starts(episode_starts),
        )
        return result

    def get_q_values(
        self, features: Observation, blueprint_indices: Tensor | None, hidden: Hidden | None = None
    ) -> Tensor:
        """Not supported: these bundles have no twin Q critics (``supports_off_policy`` is
        False). Q(s, op) of the on-policy value head is ``evaluate_actions(...).q_value``."""
        raise NotImplementedError(
            f"{type(self).__name__} ({self.network_type!r}) has no twin Q critics for "
            f"off-policy learning (supports_off_policy is False); for the on-policy Q(s, op) "
            f"head use evaluate_actions(...).q_value")

    @torch.no_grad()
    def get_value(
        self,
        features: Observation,
        blueprint_indices: Tensor | None,
        hidden: Hidden | None = None,
        *,
        episode_starts: Tensor | None = None,
    ) -> Tensor:
        """`PolicyBundle.get_value`: V(s) whatever ``value_baseline`` says (a bootstrap
        needs the value of the state, not of an op sampled for it), without gradient."""
        state_value: Tensor = self._entry("forward")(
            features, blueprint_indices, hidden, **_starts(episode_starts))["state_value"]
        return state_value

    def sync_from(self, source: PolicyBundle, tau: float = 0.005) -> None:
        """Polyak-average ``source``'s weights into this (target) bundle, in place:
        ``target = tau * source + (1 - tau) * target`` for every floating parameter and
        buffer; integer buffers are copied. ``tau=1`` copies exactly, ``tau=0`` does nothing.

        Raises:
            TypeError: ``source`` is not a bundle of the same class.
            ValueError: ``tau`` outside [0, 1], or the two networks differ in shape.
        """
        if type(source) is not type(self):
            raise TypeError(f"sync_from needs a source of the same bundle class "
                            f"{type(self).__name__}, got {type(source).__name__}")
        if not isinstance(tau, int | float) or math.isnan(tau) or not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be a float in [0, 1], got {tau!r}")
        target, origin = _named_tensors(self.network), _named_tensors(source.network)
        differing = sorted(k for k in set(target) | set(origin)
                           if k not in target or k not in origin or target[k].shape != origin[k].shape)
        if differing:
            raise ValueError(
                f"sync_from: source and target networks differ in parameters {differing[:10]}"
                f"{' ...' if len(differing) > 10 else ''}; build both with the same config")
        with torch.no_grad():
            for name, tensor in target.items():
                value = origin[name].to(device=tensor.device, dtype=tensor.dtype)
                if tensor.is_floating_point():
                    tensor.lerp_(value, float(tau))
                else:
                    tensor.copy_(value)

    def initial_hidden(self, batch_size: int) -> Hidden:
        """Zero ``(h, c)``, each ``[lstm_layers, batch_size, H]`` on the bundle's device."""
        check_positive_int("batch_size", batch_size)
        return self._network.get_initial_hidden(batch_size, self.device)

    # ------------------------------------------------------------------ weights and placement
    def state_dict(self) -> dict[str, Any]:
        """The network's state dict (keys never carry a compile prefix)."""
        return dict(self._network.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """Load weights (a ``_orig_mod.`` prefix on every key is stripped).

        Raises:
            ValueError: with ``strict``, the keys or shapes do not fit this network (a state
                dict of another network type or grid).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        loaded = without_compile_prefix(state_dict)
        where = f"this {self.network_type!r} bundle ({type(self._network).__name__}, slots " \
                f"{list(self.slot_config.slot_ids)}, state_dim={self.state_dim})"
        expected = set(self._network.state_dict())
        missing, unexpected = sorted(expected - set(loaded)), sorted(set(loaded) - expected)
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict does not fit {where}: {len(missing)} missing keys {missing[:5]}, "
                f"{len(unexpected)} unexpected keys {unexpected[:5]}; was it saved from another "
                f"network type?")
        try:
            return self._network.load_state_dict(loaded, strict=strict)
        except RuntimeError as error:
            raise ValueError(f"state_dict does not fit {where}: {error}") from error

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ActorCriticBundle:
        """Move and/or cast the network (``bundle.to(torch.float64)`` casts); returns the
        bundle. Refused once compiled: compiled graphs (and CUDA graphs under
        ``"reduce-overhead"``) are specialised to the device, dtype and memory they were
        built on, so move first, then compile.

        Raises:
            RuntimeError: the bundle is compiled and the call would move or cast it.
            ValueError: ``dtype`` is not a floating dtype.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        target = torch.device(device) if device is not None else None
        here = self.device
        # "cuda" names the current CUDA device: equal to any index of that type.
        moves = target is not None and (target.type != here.type or (None not in (
            target.index, here.index) and target.index != here.index))
        casts = dtype is not None and dtype != self.dtype
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        if (moves or casts) and self.is_compiled:
            raise RuntimeError(
                f"cannot move or cast a compiled {self.network_type!r} bundle (now on "
                f"{here} as {self.dtype}, asked for device={device}, dtype={dtype}): its "
                f"compiled graphs are specialised to the device, dtype and memory they were "
                f"built on. Move or cast the bundle first, then compile it (create_policy does "
                f"it in that order).")
        if moves or casts:
            self._network.to(device=target, dtype=dtype)
        return self

    def train(self, mode: bool = True) -> ActorCriticBundle:
        """Put the network in train (or eval) mode; returns the bundle."""
        self._network.train(mode)
        return self

    def eval(self) -> ActorCriticBundle:
        """Put the network in eval mode; returns the bundle."""
        return self.train(False)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in backward where the network supports it (see subclasses);
        a no-op for the flat network, which has no encoder layers worth recomputing (its
        activation memory is the LSTM's, whose steps are not checkpointed)."""

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether gradient checkpointing is on."""
        return False

    def compile(
        self, mode: str = "default", dynamic: bool = True, *, backend: str | None = None
    ) -> None:
        """``torch.compile`` the network's ``forward``, ``get_action`` and ``evaluate_actions``.

        The compiled callables live beside the network, so `network` and `state_dict` stay
        uncompiled. ``mode="off"`` does nothing; the same settings again do nothing; other
        settings recompile from the uncompiled network (never a wrapper of a wrapper).
        Compilation happens on the first call of each entry point. Graph breaks are allowed:
        the value checks of `slotformer.validation` are skipped while tracing.

        Args:
            mode: one of `COMPILE_MODES`.
            dynamic: mark batch and time sizes dynamic (one graph for every B and T).
            backend: ``torch.compile`` backend; None = inductor (``mode`` goes to inductor
                only; tests use ``"eager"`` or ``"aot_eager"`` for speed).
        """
        check_compile_mode(mode)
        if mode == "off":
            return
        backend_name = "inductor" if backend is None else backend
        settings = (mode, bool(dynamic), backend_name)
        if self._compiled is not None and self._compile_settings == settings:
            return
        options: dict[str, Any] = {"dynamic": bool(dynamic), "backend": backend_name}
        if backend_name == "inductor":
            options["mode"] = mode
        self._compiled = {name: torch.compile(_undecorated_method(self._network, name), **options)
                          for name in _COMPILED_ENTRY_POINTS}
        self._compile_settings = settings

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self._network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._network.parameters()).dtype

    @property
    def is_recurrent(self) -> bool:
        return True

    @property
    def supports_off_policy(self) -> bool:
        return False

    @property
    def slot_config(self) -> SlotConfig:
        return self._network.slot_config

    @property
    def state_dim(self) -> int:
        """D, the flat observation width (the reference protocol's ``feature_dim``)."""
        return self._network.state_dim

    @property
    def lstm_hidden_dim(self) -> int:
        """H, the recurrent core's width (the reference protocol's ``hidden_dim``)."""
        return self._network.lstm_hidden_dim

    feature_dim = state_dim
    hidden_dim = lstm_hidden_dim

    @property
    def network(self) -> nn.Module:
        """The uncompiled network (its state dict is the bundle's)."""
        return self._network

    @property
    def is_compiled(self) -> bool:
        return self._compiled is not None

    @property
    def compile_mode(self) -> str:
        """The mode the bundle is compiled with, ``"off"`` when not compiled."""
        return "off" if self._compile_settings is None else self._compile_settings[0]

    @property
    def network_type(self) -> str:
        """The registered policy name (``"lstm"`` or ``"transformer"``)."""
        return str(self._network.network_type)

    @property
    def action_space(self) -> ActionSpace:
        """The factored heads (the pointer head has N choices)."""
        return self._network.action_space

    @property
    def config(self) -> ActorCriticConfig:
        """The network's config dataclass (frozen; ``dataclasses.asdict`` gives plain data)."""
        return self._network.config

    # ------------------------------------------------------------------ helpers
    def _entry(self, name: str) -> Callable[..., Any]:
        if self._compiled is not None:
            return self._compiled[name]
        return cast(Callable[..., Any], getattr(self._network, name))

    def _autograd_inputs(self, value: Any) -> Any:
        """`as_autograd_input` before a compiled network, which cannot see is_inference();
        an eager network's boundary does it itself."""
        return value if self._compiled is None else as_autograd_input(value)

    def __repr__(self) -> str:
        compiled = f", compiled={self.compile_mode!r}" if self.is_compiled else ""
        return (f"{type(self).__name__}(state_dim={self.state_dim}, lstm_hidden_dim="
                f"{self.lstm_hidden_dim}, slots={list(self.slot_config.slot_ids)}, "
                f"device={self.device}{compiled})")


def _checked(masks: Masks, space: ActionSpace) -> Masks:
    """The bundle's masks dict holds every head (None = all valid): a forgotten mask is an
    error, not an unmasked head. The network's boundary checks the rest."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict head name -> bool mask (None = all valid), got "
                        f"{type(masks).__name__}")
    missing = [name for name in space.head_names if name not in masks]
    if missing:
        raise KeyError(f"masks is missing heads {missing}; expected every head "
                       f"{list(space.head_names)} (a value may be None = all valid) plus "
                       f"optional 'slot_by_op'")
    return masks


def _starts(episode_starts: Tensor | None) -> dict[str, Tensor]:
    """``episode_starts`` as a keyword argument, only when given (a compiled entry point
    then keeps one graph for calls without it)."""
    return {} if episode_starts is None else {"episode_starts": episode_starts}


def _undecorated_method(network: nn.Module, name: str) -> Callable[..., Any]:
    """``network.name`` without its decorators (``get_action``'s ``torch.inference_mode``:
    inductor fails on it with "Cannot set version_counter for inference tensor")."""
    return cast(Callable[..., Any], inspect.unwrap(getattr(type(network), name)).__get__(network))


def _named_tensors(network: nn.Module) -> dict[str, Tensor]:
    return {**dict(network.named_parameters()), **dict(network.named_buffers())}


@register_policy("lstm")
class LSTMPolicyBundle(ActorCriticBundle):
    """The flat concatenation LSTM (`FactoredRecurrentActorCritic`) as a `PolicyBundle`.

    Constructor: see `ActorCriticBundle` (``config`` is an `LSTMConfig`; the trunk width is
    ``trunk_dim``, which the reference network's constructor calls ``feature_dim``).
    Gradient checkpointing is a no-op for this network.

    Example:
        >>> policy = LSTMPolicyBundle(lstm_hidden_dim=32, trunk_dim=32)
        >>> masks = dict.fromkeys(policy.network.action_space.head_names)
        >>> result = policy.get_action(torch.randn(4, 116), torch.full((4, 3), -1), masks)
        >>> result.actions["op"].shape, result.value.shape
        (torch.Size([4]), torch.Size([4]))
    """

    network_class = FactoredRecurrentActorCritic
    config_class = LSTMConfig


@register_policy("transformer")
class TransformerPolicyBundle(ActorCriticBundle):
    """The Slot Transformer (`SlotTransformerActorCritic`) as a `PolicyBundle`.

    Constructor: see `ActorCriticBundle` (``config`` is a `TransformerConfig`). Its weights
    do not depend on N, so a checkpoint loads onto another grid
    (`slotformer.checkpoint.load_checkpoint` with ``slot_config=``), resizing the pointer head.

    Example:
        >>> policy = TransformerPolicyBundle(lstm_hidden_dim=16, embed_dim=16, head_hidden=16)
        >>> masks = dict.fromkeys(policy.network.action_space.head_names)
        >>> out = policy.forward(torch.randn(2, 5, 116), torch.full((2, 5, 3), -1), masks)
        >>> out.logits["slot"].shape, out.value.shape
        (torch.Size([2, 5, 3]), torch.Size([2, 5]))
    """

    runs_on_any_grid: ClassVar[bool] = True
    network_class = SlotTransformerActorCritic
    config_class = TransformerConfig

    def enable_gradient_checkpointing(
        self, enabled: bool = True, chunk_tokens: int | None = None
    ) -> None:
        """The lean-memory setting: the encoder and the per-slot contribution predictor run
        in chunks of about ``chunk_tokens`` slot tokens (None keeps the current size, default
        4096), each recomputed in backward instead of storing its activations. Gradients are
        unchanged (up to fp32 rounding); the slot path runs forward twice
        (`docs/benchmarks.md` measures both). Applies in train mode with grad enabled."""
        encoder = cast(SlotTransformerActorCritic, self._network).encoder
        encoder.gradient_checkpointing = bool(enabled)
        if chunk_tokens is not None:
            encoder.checkpoint_chunk_tokens = check_positive_int("chunk_tokens", chunk_tokens)

    @property
    def gradient_checkpointing(self) -> bool:
        return cast(SlotTransformerActorCritic, self._network).encoder.gradient_checkpointing
