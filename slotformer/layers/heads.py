"""Output heads shared by both networks: categorical MLP heads, the four-layer value head,
the contribution MLP, and `init_weights`."""

from __future__ import annotations

import math

from torch import nn


def check_dropout(dropout: float) -> float:
    """``dropout`` if it lies in ``[0, 1)``, else a ``ValueError`` naming it (every layer's)."""
    if not 0.0 <= dropout < 1.0:  # also rejects NaN
        raise ValueError(f"dropout must lie in [0, 1), got dropout={dropout}")
    return dropout


def categorical_head(
    in_dim: int, hidden_dim: int, num_actions: int, depth: int = 2, *,
    first_hidden_dim: int | None = None,
) -> nn.Sequential:
    """An MLP from a representation to one head's logits.

    ``depth=2``: ``Linear(in, first) -> ReLU -> Linear(first, n)``; each extra level adds a
    ``Linear -> ReLU`` of width ``hidden_dim``. ``first`` is ``first_hidden_dim``, by default
    ``hidden_dim`` (the flat network's blueprint head is ``H -> H -> H/2 -> n``, the
    transformer's ``H -> h -> h -> n``). Shapes: ``[..., in_dim] -> [..., num_actions]``.

    Example:
        >>> head = categorical_head(8, 4, 13, depth=3, first_hidden_dim=8)
        >>> [tuple(m.weight.shape) for m in head if isinstance(m, nn.Linear)]
        [(8, 8), (4, 8), (13, 4)]
    """
    if depth < 2:
        raise ValueError(f"depth must be >= 2, got {depth}")
    width = hidden_dim if first_hidden_dim is None else first_hidden_dim
    layers: list[nn.Module] = [nn.Linear(in_dim, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, num_actions))
    return nn.Sequential(*layers)


def value_head(in_dim: int, hidden_dim: int) -> nn.Sequential:
    """The four-layer value head used for both V(s) and Q(s, op).

    ``Linear(in, h) -> LN -> ReLU -> Linear(h, h/2) -> LN -> ReLU -> Linear(h/2, h/4) -> ReLU
    -> Linear(h/4, 1)``. Shapes: ``[..., in_dim] -> [..., 1]``.
    """
    if hidden_dim < 4:
        raise ValueError(f"hidden_dim must be >= 4 for a four-layer value head, got {hidden_dim}")
    h2, h4 = hidden_dim // 2, hidden_dim // 4
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, h2),
        nn.LayerNorm(h2),
        nn.ReLU(),
        nn.Linear(h2, h4),
        nn.ReLU(),
        nn.Linear(h4, 1),
    )


def contribution_mlp(
    in_dim: int, hidden_dim: int, out_dim: int, layer_norm: bool, dropout: float = 0.1, *,
    first_layer_only: bool = False,
) -> nn.Sequential:
    """The auxiliary contribution predictor: three linear layers, optional dropout.

    ``Linear(in, h) [-> LN] -> ReLU [-> Dropout] -> Linear(h, h/2) [-> LN] -> ReLU
    [-> Dropout] -> Linear(h/2, out)``; with ``first_layer_only`` (the reference network's
    layout, used by the flat baseline with ``out_dim=N``) LN and Dropout follow the first
    layer only. The transformer applies it per slot (``out_dim=1``, no dropout: on
    ``[B, T, N, h]`` its masks cost a quarter of the N=50 update step). Dropout regularises
    this auxiliary task only; nothing on the policy or value path is stochastic.

    Example:
        >>> mlp = contribution_mlp(8, 4, 3, layer_norm=True, first_layer_only=True)
        >>> [type(m).__name__ for m in mlp]
        ['Linear', 'LayerNorm', 'ReLU', 'Dropout', 'Linear', 'ReLU', 'Linear']
    """
    check_dropout(dropout)
    h2 = max(hidden_dim // 2, 1)

    def norm(dim: int, stage: int) -> list[nn.Module]:
        return [nn.LayerNorm(dim)] if layer_norm and (stage == 0 or not first_layer_only) else []

    def drop(stage: int) -> list[nn.Module]:
        return [nn.Dropout(dropout)] if dropout > 0 and (stage == 0 or not first_layer_only) else []

    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        *norm(hidden_dim, 0),
        nn.ReLU(),
        *drop(0),
        nn.Linear(hidden_dim, h2),
        *norm(h2, 1),
        nn.ReLU(),
        *drop(1),
        nn.Linear(h2, out_dim),
    )


def init_weights(
    model: nn.Module, skip: tuple[nn.Module, ...], action_heads: list[nn.Module],
    value_heads: list[nn.Module], contribution_head: nn.Module | None,
) -> None:
    """Orthogonal (gain sqrt(2), zero bias) for every Linear of ``model`` outside ``skip``
    (modules that keep their own init: the encoder's Xavier, the LSTM's orthogonal gates);
    gain 0.01 for the last layer of every action and value head, so that the initial policy
    is near uniform and the initial values near 0; gain 0.1 with zero bias for the
    contribution head's last layer."""
    skipped = {id(p) for module in skip for p in module.parameters()}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in skipped:
            nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def last_linear(module: nn.Module) -> nn.Linear:
        output_layer = getattr(module, "output_layer", None)
        if isinstance(output_layer, nn.Linear):
            return output_layer
        return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]

    for head in [*action_heads, *value_heads]:
        nn.init.orthogonal_(last_linear(head).weight, gain=0.01)
    if contribution_head is not None:
        out = last_linear(contribution_head)
        nn.init.orthogonal_(out.weight, gain=0.1)
        if out.bias is not None:
            nn.init.zeros_(out.bias)
