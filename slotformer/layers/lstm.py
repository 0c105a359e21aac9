"""Residual, layer-normalised stacked LSTM: the recurrent core of both policy networks.

Each layer computes ``x = x + norm(lstm(x))``; the stack keeps ``nn.LSTM``'s ``(h, c)``
interface, each ``[num_layers, B, hidden_size]``.

Not ``nn.LSTM``: TorchDynamo refuses to trace it unless the global
``torch._dynamo.config.allow_rnn`` is set, which breaks ``torch.compile(fullgraph=True)``.
:class:`LSTMLayer` owns the same four parameters (same names: state dicts are
interchangeable), calls the same ATen op ``torch.lstm`` (same kernels) and re-packs its
weights for cuDNN after a device move, as ``nn.LSTM`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from slotformer.layers.heads import check_dropout
from slotformer.validation import check_positive_int, describe_shape, expect

_State = tuple[Tensor, Tensor]  # (h, c)
_NUM_GATES = 4  # PyTorch gate order in the stacked weights: input, forget, cell (g), output


def _onednn_has_bf16_lstm() -> bool:
    """Whether oneDNN runs a bf16 LSTM on this CPU (AVX-512 or newer; honours
    ``ONEDNN_MAX_CPU_ISA``). Asked once, at import: the answer cannot change in a process."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and probe is not None and probe())
    except RuntimeError:  # an old or unusual build without the probe: assume not
        return False


ONEDNN_BF16_LSTM: bool = _onednn_has_bf16_lstm()
"""True where the LSTM core runs in bf16 under CPU bf16 autocast (see `cpu_lstm_dtype`)."""


def cpu_lstm_dtype(autocast_dtype: torch.dtype) -> torch.dtype:
    """The dtype the LSTM core runs in under CPU autocast to ``autocast_dtype``: bf16 where
    oneDNN has a bf16 LSTM (`ONEDNN_BF16_LSTM`, AVX-512), else fp32 (bf16 on AVX2-only CPUs,
    and fp16, whose oneDNN LSTM fails in grad mode). The layers around it keep autocast's.

    Example:
        >>> cpu_lstm_dtype(torch.float16)
        torch.float32
    """
    if autocast_dtype == torch.bfloat16 and ONEDNN_BF16_LSTM:
        return torch.bfloat16
    return torch.float32


class LSTMLayer(nn.Module):
    """One batch-first LSTM layer, parameter-compatible with ``nn.LSTM(n, n, batch_first=True)``.

    Parameters are ``weight_ih_l0 [4H, I]``, ``weight_hh_l0 [4H, H]``, ``bias_ih_l0 [4H]``,
    ``bias_hh_l0 [4H]`` (gate order i, f, g, o), so ``nn.LSTM(...).state_dict()`` loads into
    this module and vice versa. Inputs are not checked here (:class:`ResidualLSTM` does).

    Shapes:
        ``forward(x [B, T, input_size], h [1, B, hidden_size], c [1, B, hidden_size])`` ->
        ``(out [B, T, hidden_size], h, c)``.

    Example:
        >>> layer = LSTMLayer(8, 16)
        >>> h = c = torch.zeros(1, 2, 16)
        >>> out, h, c = layer(torch.randn(2, 5, 8), h, c)
        >>> out.shape, h.shape
        (torch.Size([2, 5, 16]), torch.Size([1, 2, 16]))
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        gates = _NUM_GATES * hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates))
        bound = 1.0 / math.sqrt(hidden_size)  # nn.LSTM's default; ResidualLSTM re-initialises
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flat_weights(self) -> list[Tensor]:
        """The parameters in the order ``torch.lstm`` expects."""
        return [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the layer over ``x [B, T, I]`` from state ``(h, c)`` each ``[1, B, H]``."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU autocast sends torch.lstm to oneDNN in the autocast dtype, which oneDNN
            # refuses at run time where it has no such LSTM; so pick the dtype here.
            dtype = cpu_lstm_dtype(torch.get_autocast_dtype("cpu"))
            with torch.autocast("cpu", enabled=False):
                weights = [w.to(dtype) for w in self.flat_weights()]
                return self._cpu(x.to(dtype), h.to(dtype), c.to(dtype), weights)
        if x.device.type == "cpu":
            return self._cpu(x, h, c, self.flat_weights())
        return self._lstm(x, h, c, self.flat_weights())

    def _cpu(
        self, x: Tensor, h: Tensor, c: Tensor, weights: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not torch.is_grad_enabled():
            # On CPU torch.lstm picks its kernel by grad mode, and the two differ in the last
            # bits once h != 0: take the grad-mode kernel always, so that get_action
            # (inference) reproduces evaluate_actions' log-probs bit for bit. Under inference
            # mode nothing is recorded; under no_grad the detach drops the one-op graph.
            with torch.enable_grad():
                out, h_n, c_n = self._lstm(x, h, c, weights)
            return out.detach(), h_n.detach(), c_n.detach()
        return self._lstm(x, h, c, weights)

    def _lstm(
        self, x: Tensor, h: Tensor, c: Tensor, weights: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        out, h_n, c_n = torch.lstm(
            x,
            (h, c),
            weights,
            True,  # has_biases
            1,  # num_layers
            0.0,  # dropout (ResidualLSTM applies its own between layers)
            self.training,
            False,  # bidirectional
            True,  # batch_first
        )
        return out, h_n, c_n  # [B, T, H], [1, B, H], [1, B, H]

    def flatten_parameters(self) -> None:
        """Pack the weights into one cuDNN buffer (a no-op off CUDA), as ``nn.LSTM`` does;
        otherwise cuDNN copies them on every call and warns."""
        weights = self.flat_weights()
        first = weights[0]
        if not all(
            w.is_cuda and w.dtype == first.dtype and torch.backends.cudnn.is_acceptable(w)
            for w in weights
        ):
            return
        if len({w.data_ptr() for w in weights}) != len(weights):
            return  # aliased parameters: fall back to cuDNN's copying path, like nn.LSTM
        import torch.backends.cudnn.rnn as cudnn_rnn

        with torch.cuda.device_of(first), torch.no_grad():
            if torch._use_cudnn_rnn_flatten_weight():
                torch._cudnn_rnn_flatten_weight(
                    weights,
                    4,  # weights per layer (with biases)
                    self.input_size,
                    cudnn_rnn.get_cudnn_mode("LSTM"),
                    self.hidden_size,
                    0,  # proj_size
                    1,  # num_layers
                    True,  # batch_first
                    False,  # bidirectional
                )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> LSTMLayer:
        # Re-pack after .to()/.cuda(), the moment the parameters may have landed on CUDA.
        result = super()._apply(fn, recurse)
        self.flatten_parameters()
        return result

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, batch_first=True"


class ResidualLSTMBlock(nn.Module):
    """One residual step of :class:`ResidualLSTM`: ``x + norm(lstm(x))`` (see there)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.lstm = LSTMLayer(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lstm_out, h_n, c_n = self.lstm(x, h, c)  # [B, T, H], [1, B, H], [1, B, H]
        return x + self.norm(lstm_out), h_n, c_n


class ResidualLSTM(nn.Module):
    """Stacked LSTM with a residual connection and LayerNorm around every layer.

    ``x`` is first projected to ``hidden_size`` (a ``Linear``, or the identity when the sizes
    match); each layer then computes ``x = x + LayerNorm(lstm_l(x))``.

    Normalisation placement: the norm sits on the LSTM *branch*, before the add. The skip
    path stays an exact identity, so gradients reach lower layers (and the fused
    observation features reach the heads) unattenuated, while each layer's contribution is
    rescaled to unit size whatever its gate saturation. A pre-norm block
    (``x + lstm(norm(x))``) would add the raw LSTM output, whose magnitude is small
    (``|h| < 1``, ~0.1 at init) next to the stream; a post-norm block
    (``norm(x + lstm(x))``) would renormalise the skip path too.

    Initialisation: each gate's ``[H, H]`` block of ``weight_ih`` and ``weight_hh`` is
    orthogonal (orthogonal rather than Xavier for ``weight_ih`` as well, because after
    the projection both matrices are square and an orthogonal map preserves the norm of
    both the input and the recurrent signal); biases are zero except the forget gate,
    whose effective bias (``bias_ih + bias_hh``) is ``1 + ln(num_layers)`` so deeper stacks
    start out remembering longer. The value sits in ``bias_ih`` and ``bias_hh`` is zero.

    Dropout (``dropout`` in ``[0, 1)``, with ``num_layers > 1``) applies to the stream
    between layers, never after the last, as in ``nn.LSTM``; the policy networks keep it at 0
    so that ``evaluate_actions`` stays deterministic.

    Under autocast the linear layers run in the low-precision dtype and, on CPU, the LSTM in
    `cpu_lstm_dtype`. The returned ``(h, c)`` keep the dtype of the ``hidden`` passed in (of
    ``x`` when None); under autocast ``hidden`` may be any floating dtype (typically fp32
    from :meth:`initial_hidden` while ``x`` is bf16).

    Shapes:
        x: ``[B, T, input_size]``; hidden: ``(h, c)``, each ``[num_layers, B, hidden_size]``.
        returns: ``(out [B, T, hidden_size], (h, c))``.

    Example:
        >>> lstm = ResidualLSTM(input_size=24, hidden_size=32, num_layers=2)
        >>> out, hidden = lstm(torch.randn(4, 6, 24))
        >>> out.shape, hidden[0].shape
        (torch.Size([4, 6, 32]), torch.Size([2, 4, 32]))
        >>> out_step, hidden = lstm(torch.randn(4, 1, 24), hidden)  # one rollout step
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        for name, size in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("num_layers", num_layers)):
            check_positive_int(name, size)
        self.dropout_p = check_dropout(dropout)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.input_proj: nn.Module = (
            nn.Linear(input_size, hidden_size) if input_size != hidden_size else nn.Identity()
        )
        self.layers = nn.ModuleList(ResidualLSTMBlock(hidden_size) for _ in range(num_layers))
        self.dropout: nn.Module = (
            nn.Dropout(dropout) if dropout > 0.0 and num_layers > 1 else nn.Identity()
        )
        self.forget_gate_bias = 1.0 + math.log(num_layers)
        self.reset_lstm_parameters()

    @torch.no_grad()
    def reset_lstm_parameters(self) -> None:
        """Orthogonal gate weights, zero biases, forget-gate bias ``1 + ln(num_layers)``."""
        size = self.hidden_size
        for index in range(self.num_layers):
            lstm = self._block(index).lstm
            for weight in (lstm.weight_ih_l0, lstm.weight_hh_l0):
                for gate in range(_NUM_GATES):
                    nn.init.orthogonal_(weight[gate * size : (gate + 1) * size])
            lstm.bias_ih_l0.zero_()
            lstm.bias_hh_l0.zero_()
            lstm.bias_ih_l0[size : 2 * size] = self.forget_gate_bias  # gate order i, f, g, o

    def _block(self, index: int) -> ResidualLSTMBlock:
        return cast(ResidualLSTMBlock, self.layers[index])

    def initial_hidden(
        self, batch_size: int, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> _State:
        """Zero state ``(h, c)``, each ``[num_layers, batch_size, hidden_size]``, on the
        parameters' device and dtype unless given."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        reference = self._block(0).lstm.weight_hh_l0
        shape = (self.num_layers, batch_size, self.hidden_size)
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        h = torch.zeros(shape, device=device, dtype=dtype)
        return h, torch.zeros_like(h)

    def forward(
        self, x: Tensor, hidden: _State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, _State]:
        """Run the stack over ``x [B, T, input_size]`` from ``hidden`` (zeros when None).

        ``episode_starts`` (bool ``[B, T]``, True where a new episode begins at that step):
        the state is zeroed before each such step, so a sequence that crosses an episode
        boundary gives what its parts would give separately from zero state. The stack then
        runs one time step at a time, so pass it only when a sequence can hold a boundary.
        """
        self._check_input(x)
        if hidden is not None:
            self._check_hidden(hidden, x)
        if episode_starts is not None:
            expect(
                "episode_starts", episode_starts, dtype=torch.bool, device=x.device,
                shape=tuple(x.shape[:2]), hint=" ([B, T], True where an episode begins)",
            )
        return self.run(x, hidden, episode_starts)

    def run(
        self, x: Tensor, hidden: _State | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, _State]:
        """`forward` without its checks, for callers that made them (the networks' boundary,
        `slotformer.networks.inputs`)."""
        if hidden is None:
            hidden = self.initial_hidden(x.shape[0], device=x.device, dtype=x.dtype)
        h_0, c_0 = hidden
        x = self.input_proj(x)  # [B, T, H]
        if episode_starts is not None:
            return self._forward_with_resets(x, h_0, c_0, episode_starts)
        h, c = self._run_layers(x, h_0, c_0)
        return h[0], (h[1].to(h_0.dtype), c.to(h_0.dtype))

    def _run_layers(self, x: Tensor, h_0: Tensor, c_0: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """Every layer over ``x [B, T, H]`` from ``(h_0, c_0)`` each ``[L, B, H]``:
        ``((out [B, T, H], h [L, B, H]), c [L, B, H])``."""
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for index in range(self.num_layers):
            if index > 0:
                x = self.dropout(x)
            x, h_layer, c_layer = self._block(index)(
                x, h_0[index : index + 1], c_0[index : index + 1]
            )  # [B, T, H], [1, B, H], [1, B, H]
            h_n.append(h_layer)
            c_n.append(c_layer)
        return (x, torch.cat(h_n, dim=0)), torch.cat(c_n, dim=0)  # [L, B, H] each

    def _forward_with_resets(
        self, x: Tensor, h: Tensor, c: Tensor, episode_starts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`forward` with the state zeroed before each step where ``episode_starts``."""
        state_dtype = h.dtype
        keep = (~episode_starts).unsqueeze(-1)  # [B, T, 1]
        outputs: list[Tensor] = []
        for t in range(x.shape[1]):
            # where, not a product: a product would keep NaN/inf from a finished episode.
            h = torch.where(keep[:, t], h, 0.0)  # [L, B, H]
            c = torch.where(keep[:, t], c, 0.0)
            (out, h), c = self._run_layers(x[:, t : t + 1], h, c)
            outputs.append(out)  # [B, 1, H]
        return torch.cat(outputs, dim=1), (h.to(state_dtype), c.to(state_dtype))

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_size or x.shape[1] == 0:
            raise ValueError(
                f"x must have shape [B, T, input_size={self.input_size}] with at least one time "
                f"step, got {describe_shape(x)}"
            )
        reference = self._block(0).lstm.weight_hh_l0
        hint = " (floating-point, on the ResidualLSTM parameters' device, in their dtype " \
            "outside autocast)"
        expect("x", x, floating=True, device=reference.device, hint=hint)
        if not torch.is_autocast_enabled(x.device.type):
            expect("x", x, dtype=reference.dtype, hint=hint)

    def _check_hidden(self, hidden: object, x: Tensor) -> None:
        if not isinstance(hidden, tuple) or len(hidden) != 2:
            got = type(hidden).__name__
            got = f"tuple of length {len(hidden)}" if isinstance(hidden, tuple) else got
            raise ValueError(f"hidden must be a tuple (h, c) of two tensors, got a {got}")
        # x's dtype outside autocast, any floating dtype within; c then takes h's dtype.
        dtype = None if torch.is_autocast_enabled(x.device.type) else x.dtype
        hint = " ([num_layers, B, hidden_size] on x's device; h and c share a floating dtype, " \
            "x's outside autocast)"
        for name, state in zip(("hidden h", "hidden c"), hidden):
            expect(name, state, floating=True, device=x.device,
                   shape=(self.num_layers, x.shape[0], self.hidden_size), hint=hint)
            dtype = expect(name, state, dtype=dtype, hint=hint).dtype

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}, dropout={self.dropout_p}, "
            f"forget_gate_bias={self.forget_gate_bias:.4f}"
        )
