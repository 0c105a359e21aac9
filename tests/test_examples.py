"""The examples run as a user would run them, and PPO on Slot Garden learns."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples.telemetry import main as telemetry_main
from examples.train_slot_garden import (
    Args,
    check_args,
    collect_rollout,
    entropy_coefficient,
    head_entropy_coefficients,
    make_env,
    make_policy,
    parse_args,
    rescore,
    train,
)
from slotformer import SlotConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parity
def test_quickstart_runs_and_reloads_identically() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    # Rollout scores one step at a time, the update all T steps at once; the matmul kernel
    # (MKL picks it by shape, e.g. on AVX-512 CPUs) may round those differently, so the
    # guarantee is fp32 rounding (~1e-6 measured on AVX-512), not bit equality.
    found = re.search(r"max \|ratio - 1\| = (\S+)", done.stdout)
    assert found is not None, done.stdout
    assert float(found.group(1)) <= 1e-5, done.stdout
    assert "reloaded identical: True" in done.stdout


def test_telemetry_example_prints_diagnostics_and_writes_events(tmp_path: Path) -> None:
    diagnostics = telemetry_main(["--logdir", str(tmp_path)])
    assert diagnostics["network_type"] == "transformer"
    distribution = diagnostics["slot_attention_distribution"]
    assert isinstance(distribution, list) and len(distribution) == 6
    assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_ppo_smoke_run_beats_the_random_policy(tmp_path: Path) -> None:
    """A seeded, CI-sized PPO run of the transformer on 1x3 clearly beats random valid play
    and the do-nothing policy (return 0).

    Another CPU moves a run as much as another seed does, so the margins hold over seeds:
    seeds 0-9 on one machine gave learned - random 0.65 to 1.92 and learned 0.31 to 1.59
    (the thresholds below leave at least a third of the smallest as slack)."""
    args = Args(policy="transformer", rows=1, cols=3, total_steps=9_216, seed=0,
                eval_episodes=1, checkpoint=str(tmp_path / "policy.pt"), quiet=True)
    metrics, _ = train(args)
    assert metrics["random"] < 0.0
    assert metrics["learned"] > metrics["random"] + 0.4, metrics
    assert metrics["learned"] > 0.1, metrics
    assert (tmp_path / "policy.pt").exists()


@pytest.mark.parity
@pytest.mark.parametrize("network", ["lstm", "transformer"])
def test_staggered_rollout_rescores_with_ratio_one(network: str) -> None:
    """With unequal episode lengths, episodes begin inside the stored sequences; the update
    re-scores them with the rollout's episode_starts, so before any gradient step every
    log-prob and value equals the rollout's. Without the flags the recurrent state runs on
    across the boundary and every step after it is scored wrongly."""
    torch.manual_seed(0)
    args = Args(policy=network, num_envs=8, episode_length=10, rollout_length=12,
                stagger=True, hidden_dim=32)
    slot_config = SlotConfig.for_grid(1, 3)
    env = make_env(args, slot_config, seed=0, stagger=True)
    policy = make_policy(args, slot_config)
    floor = {"op": 0.05}  # with a floor: the update must apply it as the rollout did
    step, hidden = env.reset(), policy.initial_hidden(8)
    starts = torch.ones(8, dtype=torch.bool)
    # A first rollout, so that the second starts mid-episode from a non-zero state; as long
    # as environment 0's first episode, so that its next one begins at the second's step 0.
    first_length = int(env.episode_lengths[0])
    _, step, hidden, starts = collect_rollout(policy, env, step, hidden, starts, first_length,
                                              floor)
    rollout, *_ = collect_rollout(policy, env, step, hidden, starts, 12, floor)
    assert rollout.episode_starts[0, 0] and not rollout.episode_starts[:, 0].all()
    inside = rollout.episode_starts[:, 1:]
    assert inside.any(1).all()  # every sequence crosses a boundary...
    assert not inside.all(0).any()  # ...and not all at the same step
    assert torch.equal(rollout.episode_starts[:, 1:], rollout.done[:, :-1])

    everyone = torch.arange(8)
    with torch.no_grad():
        ev = rescore(policy, rollout, everyone, floor)
        stale = policy.evaluate_actions(
            rollout.obs, rollout.blueprint_indices, rollout.actions, rollout.masks,
            rollout.start_hidden, probability_floor=floor,
        )
    log_ratio = sum(ev.log_probs.values()) - rollout.log_prob  # [E, T]
    assert log_ratio.abs().max() <= 1e-5
    assert (ev.state_value - rollout.value).abs().max() <= 1e-5

    # Omitting episode_starts: right up to each sequence's first boundary, wrong after it.
    stale_error = (sum(stale.log_probs.values()) - rollout.log_prob).abs()
    after = inside.cumsum(1) > 0  # [E, T - 1], at or after the first boundary inside
    crossed = torch.cat([torch.zeros(8, 1, dtype=torch.bool), after], dim=1)
    first_start = rollout.episode_starts[:, :1]  # folded into the start state by rescore
    assert stale_error[~crossed & ~first_start.expand_as(crossed)].max() <= 1e-5
    assert stale_error[crossed].max() > 1e-3


@pytest.mark.parity
@pytest.mark.parametrize("network", ["lstm", "transformer"])
def test_rollouts_that_begin_episodes_rescore_with_ratio_one(network: str) -> None:
    """Equal lengths, one episode per rollout: every sequence after the first begins an
    episode at step 0, from a non-zero stored state. Those starts need no per-step flags
    (rescore folds them into the start state) and the ratio is still 1."""
    torch.manual_seed(1)
    args = Args(policy=network, num_envs=4, episode_length=6, rollout_length=6, hidden_dim=32)
    slot_config = SlotConfig.for_grid(1, 3)
    env = make_env(args, slot_config, seed=1, stagger=False)
    policy = make_policy(args, slot_config)
    floor = {"op": 0.05}  # with a floor: the update must apply it as the rollout did
    step, hidden = env.reset(), policy.initial_hidden(4)
    starts = torch.ones(4, dtype=torch.bool)
    _, step, hidden, starts = collect_rollout(policy, env, step, hidden, starts, 6, floor)
    rollout, *_ = collect_rollout(policy, env, step, hidden, starts, 6, floor)
    assert rollout.episode_starts[:, 0].all() and not rollout.episode_starts[:, 1:].any()
    assert rollout.start_hidden[0].abs().max() > 0  # the finished episodes' state
    with torch.no_grad():
        ev = rescore(policy, rollout, torch.arange(4), floor)
    assert (sum(ev.log_probs.values()) - rollout.log_prob).abs().max() <= 1e-5


def test_staggered_ppo_run_finishes_with_finite_losses(tmp_path: Path) -> None:
    """A short --stagger run (episodes of 12..24 steps, rollouts of 16) trains and evaluates."""
    args = Args(policy="transformer", num_envs=8, episode_length=24, rollout_length=16,
                stagger=True, total_steps=8 * 16 * 3, update_epochs=2, num_minibatches=2,
                hidden_dim=32, eval_episodes=1, checkpoint=None, quiet=True)
    metrics, _ = train(args)
    for name in ("loss", "pg_loss", "v_loss", "entropy", "aux_loss", "learned"):
        assert math.isfinite(metrics[name]), (name, metrics)
    # The update's diagnostics: KL and clip fraction are non-negative, each head has an
    # entropy, and the transformer's attention was summarised (at update 1).
    assert metrics["approx_kl"] >= 0 and 0 <= metrics["clip_fraction"] <= 1, metrics
    assert math.isfinite(metrics["explained_variance"]), metrics
    heads = [k for k in metrics if k.startswith("entropy/")]
    assert len(heads) == 8 and metrics["entropy"] == pytest.approx(
        sum(metrics[k] for k in heads), rel=1e-4)
    for layer in (0, 1):
        assert 0 <= metrics[f"attention/layer{layer}/entropy"] <= 1, metrics
        assert 0 < metrics[f"attention/layer{layer}/max_weight"] <= 1 + 1e-6, metrics


# ---------------------------------------------------------------------- the trainer's CLI

ANSI_OR_CONTROL = re.compile(r"[\x1b\r\x08]")


def _run_trainer(*flags: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The trainer as a user runs it, stdout a pipe (not a terminal), one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_slot_garden.py"), *flags],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )


def test_help_describes_every_flag(tmp_path: Path) -> None:
    """--help lists every Args field as a flag, each with a description and its default."""
    done = _run_trainer("--help", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not ANSI_OR_CONTROL.search(done.stdout)
    # Each option starts a line ("--flag TYPE  description" or "--flag TYPE" with the
    # description on the following, indented lines) inside tyro's box.
    rows = [line[2:-1].rstrip() if line.startswith("│ ") else line
            for line in done.stdout.splitlines()]
    options: dict[str, str] = {}
    current = None
    for row in rows:
        found = re.match(r"(--[a-z-]+)(?:, --no-[a-z-]+)?(?: \S+)?(?:\s{2,}(.*))?$", row)
        if found:
            current = found.group(1)
            options[current] = found.group(2) or ""
        elif current is not None and row.startswith(" ") and row.strip():
            options[current] += " " + row.strip()
        elif not row.strip() or row.startswith("╰"):
            current = None
    expected = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Args)}
    assert expected <= set(options), expected - set(options)
    for flag in expected:
        text = options[flag]
        assert "(default:" in text, (flag, text)
        description = text[: text.index("(default:")].strip()
        assert len(description) >= 5, (flag, text)
    assert "{lstm,transformer}" in done.stdout and "{tuned,default}" in done.stdout


def test_existing_command_lines_parse() -> None:
    """The flags of the docs, tests and benchmarks keep their names and meanings."""
    args = parse_args(["--policy", "lstm", "--rows", "2", "--cols", "5", "--total-steps",
                       "200000", "--stagger", "--tensorboard", "runs/tb", "--checkpoint", "",
                       "--quiet", "--malloc", "default", "--num-envs", "8", "--ff-mult", "2",
                       "--contribution-dropout", "0.1", "--learning-rate", "3e-4"])
    assert args == Args(policy="lstm", rows=2, cols=5, total_steps=200_000, stagger=True,
                        tensorboard="runs/tb", checkpoint="", quiet=True, malloc="default",
                        num_envs=8, ff_mult=2, contribution_dropout=0.1, learning_rate=3e-4)
    assert parse_args([]) == Args()
    with pytest.raises(SystemExit):
        parse_args(["--policy", "gru"])


@pytest.mark.parametrize(("change", "message"), [
    ({"num_minibatches": 64}, "--num-minibatches must be at most --num-envs (32)"),
    ({"rollout_length": 0}, "--rollout-length must be a positive int; got 0"),
    ({"policy": "gru"}, "--policy must be 'lstm' or 'transformer'; got 'gru'"),
    ({"attention_every": -1}, "--attention-every must be an int >= 0"),
])
def test_bad_arguments_name_the_flag_value_and_expectation(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_args(dataclasses.replace(Args(), **change))  # type: ignore[arg-type]


def test_piped_output_has_start_line_progress_and_tensorboard_scalars(tmp_path: Path) -> None:
    """In a log or a pipe: the start line, the estimate, plain progress lines with the new
    metrics, evaluation lines, no control characters; TensorBoard gets every metric."""
    done = _run_trainer(
        "--num-envs", "4", "--rollout-length", "6", "--episode-length", "12",
        "--total-steps", "96", "--update-epochs", "1", "--num-minibatches", "2",
        "--hidden-dim", "16", "--eval-episodes", "1", "--log-every", "2",
        "--attention-every", "2", "--threads", "1", "--checkpoint", "", "--anneal-lr", "on",
        "--tensorboard", str(tmp_path / "tb"), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert not ANSI_OR_CONTROL.search(out), repr(out)
    lines = out.splitlines()
    assert re.match(r"training transformer \([\d,]+ parameters\) on a 1x3 grid: 4 envs x "
                    r"6-step rollouts, 4 updates = 96 env steps .* 1 thread, device cpu, seed 0",
                    lines[0]), lines[0]
    estimates = [line for line in lines if line.startswith("updates 2-3 took")]
    assert len(estimates) == 1 and re.match(
        r"updates 2-3 took [\d.]+ s each \(update 1, with warm-up, [\d.]+ s\): estimated ",
        estimates[0]), out
    progress = [line for line in lines if re.match(r"update +\d+/4 ", line)]
    assert len(progress) == 2, out  # updates 2 and 4
    for line in progress:
        for key in ("return", "entropy", "kl", "clip", "ev", "attn0", "attn1", "eta"):
            assert f" {key} " in line, (key, line)
    for name in ("learned", "random", "heuristic"):
        assert re.search(rf"^evaluated {name}: mean return -?[\d.]+ \([\d.]+ s\)$", out, re.M)
    assert "mean return over 1 episode" in out

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"charts/mean_return", "losses/approx_kl", "losses/clip_fraction",
                "losses/explained_variance", "losses/q_loss", "entropy/op", "entropy/slot",
                "attention/layer0/entropy", "attention/layer1/max_weight",
                "attention/entropy_mean", "eval/learned"}
    assert expected <= scalars, expected - scalars
    assert len(events.Scalars("losses/approx_kl")) == 4  # every update
    # A progress line shows the means over the updates since the previous one (2 here).
    entropies = [e.value for e in events.Scalars("losses/entropy")]
    for line, window in zip(progress, (entropies[:2], entropies[2:])):
        shown = float(re.search(r" entropy ([\d.]+) ", line).group(1))  # type: ignore[union-attr]
        assert abs(shown - sum(window) / 2) < 1e-3, (line, window)
    assert len(events.Scalars("attention/layer0/entropy")) == 3  # updates 1, 2 and 4
    # --anneal-lr: a straight line from the learning rate toward 0, one step per update.
    rates = [e.value for e in events.Scalars("charts/learning_rate")]
    assert rates == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    op_coefs = [e.value for e in events.Scalars("charts/op_ent_coef")]
    # The default op schedule: 0.2 at the first update, a straight line to 0.01 at the last.
    assert op_coefs == pytest.approx([0.2, 0.2 - 0.19 / 3, 0.2 - 0.38 / 3, 0.01])


def test_attention_telemetry_does_not_change_the_run() -> None:
    """The attention statistics' extra forward leaves the training run as it was (same
    losses, same evaluation), even with a dropout that draws random numbers."""
    base = Args(num_envs=4, rollout_length=6, episode_length=12, total_steps=48,
                update_epochs=1, num_minibatches=2, hidden_dim=16, eval_episodes=1,
                contribution_dropout=0.2, checkpoint=None, quiet=True)
    without, _ = train(dataclasses.replace(base, attention_every=0))
    watched, _ = train(dataclasses.replace(base, attention_every=1))
    assert not any(k.startswith("attention/") for k in without)
    assert "attention/layer0/entropy" in watched
    for name in ("loss", "approx_kl", "learned"):
        assert watched[name] == without[name], name


def test_entropy_coefficient_anneals_linearly_when_asked() -> None:
    constant = Args(ent_coef=0.05)
    assert [entropy_coefficient(constant, u, 4) for u in (1, 4)] == [0.05, 0.05]
    annealed = Args(ent_coef=0.1, ent_coef_end=0.01)
    values = [entropy_coefficient(annealed, u, 4) for u in (1, 2, 3, 4)]
    assert values == pytest.approx([0.1, 0.07, 0.04, 0.01])
    assert entropy_coefficient(annealed, 1, 1) == 0.1  # one update: the start value
    assert parse_args(["--ent-coef-end", "0.02"]).ent_coef_end == 0.02
    with pytest.raises(ValueError, match=r"--ent-coef-end must be a float >= 0 or None; got -0\.1"):
        check_args(Args(ent_coef_end=-0.1))


def test_op_head_takes_its_own_entropy_schedule() -> None:
    from slotformer.presets.seed_lifecycle import HEAD_NAMES

    op = HEAD_NAMES.index("op")
    same = head_entropy_coefficients(Args(ent_coef=0.1, ent_coef_end=0.02, op_ent_coef=None,
                                          op_ent_coef_end=None), 4, 4)
    assert same.tolist() == pytest.approx([0.02] * len(HEAD_NAMES))  # op follows the rest
    own = Args(ent_coef=0.01, op_ent_coef=0.2, op_ent_coef_end=0.02)
    first, last = head_entropy_coefficients(own, 1, 4), head_entropy_coefficients(own, 4, 4)
    assert (first[op].item(), last[op].item()) == pytest.approx((0.2, 0.02))
    others = [h for h in range(len(HEAD_NAMES)) if h != op]
    assert first[others].tolist() == pytest.approx([0.01] * len(others))
    auto = {policy: head_entropy_coefficients(Args(policy=policy), 4, 4)[op].item()
            for policy in ("lstm", "transformer")}  # op_ent_coef_end "auto", per network
    assert auto == pytest.approx({"lstm": 0.05, "transformer": 0.01})
    constant = head_entropy_coefficients(Args(op_ent_coef=0.3, op_ent_coef_end=None), 4, 4)
    assert constant[op].item() == pytest.approx(0.3)
    assert parse_args(["--op-ent-coef", "0.1", "--op-ent-coef-end", "0.0"]).op_ent_coef_end == 0.0
    with pytest.raises(ValueError, match=r"--op-ent-coef-end must be None unless --op-ent-coef"):
        check_args(Args(op_ent_coef=None, op_ent_coef_end=0.01))
    with pytest.raises(ValueError, match=r"--op-ent-coef must be a float >= 0 or None; got -1"):
        check_args(Args(op_ent_coef=-1.0))
