"""SlotTransformerEncoder against the same encoder built on ``nn.TransformerEncoder``.

For each N and for forward (eval, inference mode) and forward+backward (train), the suite
times our encoder with pytest-benchmark, then times ours and the reference in turn within
one loop so that their ratio is measured in the same run under the same machine noise.
Both compute the same function with the same weights (pre-LN, exact GELU, batch_first,
CLS token, key padding mask); this is checked before timing.

``benchmark.extra_info`` holds: sizes, medians, ``speedup`` (reference time / ours, from
medians; ``speedup_best`` from the best rounds),
GFLOP/s of both (FLOPs counted on ours with ``FlopCounterMode``; the reference does the same
arithmetic), the session's fp32 matmul peak and the fraction of it reached, and the target.

Full run: ``python -m pytest benchmarks/test_encoder_bench.py --benchmark-only``
Smoke run: ``python -m pytest benchmarks/test_encoder_bench.py --benchmark-only --quick``
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
import torch
from torch import Tensor, nn

from slotformer.layers.encoder import SlotAttentionBlock, SlotTransformerEncoder


@dataclass(frozen=True)
class Sizes:
    batch: int
    time: int
    slots: tuple[int, ...]
    rounds: int  # pytest-benchmark rounds of ours
    ratio_rounds: int  # interleaved rounds of ours and the reference


FULL = Sizes(batch=32, time=64, slots=(3, 10, 25, 50), rounds=5, ratio_rounds=9)
QUICK = Sizes(batch=4, time=8, slots=(3, 10), rounds=3, ratio_rounds=3)
# The targets for speedup = reference time / our time.
TARGETS = {("forward_backward", 50): 1.5, ("forward_backward", 3): 1.0, ("forward", 3): 1.0}

Inputs = tuple[Tensor, Tensor, Tensor, Tensor]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "num_slots" in metafunc.fixturenames:
        sizes = QUICK if metafunc.config.getoption("--quick") else FULL
        metafunc.parametrize("num_slots", sizes.slots)


class TorchReferenceEncoder(nn.Module):
    """``encoder``'s function on ``nn.TransformerEncoder``, with copies of its weights."""

    def __init__(self, encoder: SlotTransformerEncoder) -> None:
        super().__init__()
        D = encoder.embed_dim
        self.slot_embed = copy.deepcopy(encoder.slot_embed)
        self.pos_encoding = copy.deepcopy(encoder.pos_encoding)
        self.cls_token = nn.Parameter(encoder.cls_token.detach().clone())
        layer = nn.TransformerEncoderLayer(
            D,
            encoder.num_heads,
            4 * D,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, encoder.num_layers, norm=nn.LayerNorm(D), enable_nested_tensor=False
        )
        with torch.no_grad():
            for block, theirs in zip(encoder.blocks, self.encoder.layers):
                ours = cast(SlotAttentionBlock, block)
                theirs.self_attn.in_proj_weight.copy_(ours.qkv.weight)
                theirs.self_attn.in_proj_bias.copy_(ours.qkv.bias)
                theirs.self_attn.out_proj.load_state_dict(ours.attn_out.state_dict())
                theirs.linear1.load_state_dict(ours.ff_in.state_dict())
                theirs.linear2.load_state_dict(ours.ff_out.state_dict())
                theirs.norm1.load_state_dict(ours.attn_norm.state_dict())
                theirs.norm2.load_state_dict(ours.ff_norm.state_dict())
            assert self.encoder.norm is not None
            self.encoder.norm.load_state_dict(encoder.final_norm.state_dict())

    def forward(
        self, features: Tensor, active: Tensor, row_ids: Tensor, col_ids: Tensor
    ) -> tuple[Tensor, Tensor]:
        B, T, N, _ = features.shape
        D = self.cls_token.shape[-1]
        tokens = self.slot_embed(features) + self.pos_encoding(row_ids, col_ids)
        x = torch.cat([self.cls_token.expand(B * T, 1, D), tokens.reshape(B * T, N, D)], dim=1)
        padding = torch.cat(
            [torch.zeros(B * T, 1, dtype=torch.bool), ~active.reshape(B * T, N)], dim=1
        )
        x = self.encoder(x, src_key_padding_mask=padding)
        return x[:, 0].reshape(B, T, D), x[:, 1:].reshape(B, T, N, D)


def _inputs(batch: int, time: int, num_slots: int, slot_dim: int) -> Inputs:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(batch, time, num_slots, slot_dim, generator=gen)
    active = torch.rand(batch, time, num_slots, generator=gen) < 0.6
    index = torch.arange(num_slots)
    return features, active, index // 8, index % 8


def _step(module: nn.Module, inputs: Inputs, mode: str) -> None:
    if mode == "forward":
        with torch.inference_mode():
            module(*inputs)
    else:
        module.zero_grad(set_to_none=True)
        cls_repr, slot_repr = module(*inputs)
        (cls_repr.sum() + slot_repr.sum()).backward()


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
def test_encoder_vs_nn_transformer_encoder(
    benchmark: Any,
    mode: str,
    num_slots: int,
    quick: bool,
    matmul_peak_gflops: float,
    interleaved_timer: Callable[..., dict[str, list[float]]],
    flop_counter: Callable[[Callable[[], object]], int],
    bench_report: Callable[[str, dict[str, Any]], None],
) -> None:
    sizes = QUICK if quick else FULL
    torch.manual_seed(0)
    # dropout=0.0: what the policy networks use (no dropout on the policy/value path).
    ours = SlotTransformerEncoder(dropout=0.0)
    reference = TorchReferenceEncoder(ours)
    inputs = _inputs(sizes.batch, sizes.time, num_slots, ours.slot_dim)

    with torch.no_grad():  # same function before comparing speed
        small = tuple(t[:2] if t.dim() > 1 else t for t in inputs)
        torch.testing.assert_close(
            ours.eval()(*small)[0], reference.eval()(*small)[0], atol=1e-4, rtol=1e-4
        )
    training = mode == "forward_backward"
    ours.train(training)
    reference.train(training)

    flops = flop_counter(lambda: _step(ours, inputs, mode))
    benchmark.group = f"encoder {mode}"
    benchmark.pedantic(
        _step, args=(ours, inputs, mode), rounds=sizes.rounds, warmup_rounds=1, iterations=1
    )
    seconds = interleaved_timer(
        {
            "ours": lambda: _step(ours, inputs, mode),
            "reference": lambda: _step(reference, inputs, mode),
        },
        rounds=sizes.ratio_rounds,
    )
    ours_s, reference_s = (statistics.median(seconds[k]) for k in ("ours", "reference"))
    speedup = reference_s / ours_s
    figures: dict[str, Any] = {
        "N": num_slots,
        "B": sizes.batch,
        "T": sizes.time,
        "threads": torch.get_num_threads(),
        "ours_median_s": ours_s,
        "reference_median_s": reference_s,
        "speedup": speedup,
        "ratio_ours_over_reference": 1 / speedup,
        # Best-of ratio: less sensitive to other processes on a shared machine.
        "speedup_best": min(seconds["reference"]) / min(seconds["ours"]),
        "gflop": flops / 1e9,
        "ours_gflops": flops / ours_s / 1e9,
        "reference_gflops": flops / reference_s / 1e9,
        "matmul_peak_gflops": matmul_peak_gflops,
        "ours_fraction_of_peak": flops / ours_s / 1e9 / matmul_peak_gflops,
    }
    target = TARGETS.get((mode, num_slots))
    if target is not None and not quick:
        figures["target_speedup"] = target
        figures["meets_target"] = speedup >= target
    benchmark.extra_info.update(figures)
    bench_report(f"encoder {mode} N={num_slots}", figures)
