"""The comparison report (benchmarks/compare.py) at tiny sizes: table, ratios, targets, JSON,
profiler traces; and the peak-memory method it relies on."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from benchmarks import compare
from benchmarks._workload import _profiled_peak_bytes, build_workload
from slotformer.policy import create_policy

TINY = [
    "--batch",
    "2",
    "--time",
    "2",
    "--slots",
    "3",
    "4",
    "--act-batches",
    "1",
    "2",
    "--rounds",
    "1",
    "--act-iterations",
    "1",
    "--compile-backend",
    "none",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path, str]:
    folder = tmp_path_factory.mktemp("bench")
    json_path, profile_dir = folder / "out" / "bench.json", folder / "traces"
    doc = folder / "doc.md"
    doc.write_text(f"# Title\n\n{compare.DOC_BEGIN}\nold table\n{compare.DOC_END}\n\nAfter.\n")
    threads = torch.get_num_threads()
    progress = io.StringIO()
    try:
        with contextlib.redirect_stderr(progress):
            result = compare.main(
                [
                    *TINY,
                    "--json",
                    str(json_path),
                    "--profile",
                    str(profile_dir),
                    "--doc",
                    str(doc),
                ]
            )
    finally:
        torch.set_num_threads(threads)
    result["doc_text"] = doc.read_text()
    result["progress"] = progress.getvalue()
    return result, json_path, profile_dir, result["markdown"]


def test_progress_names_each_step_on_stderr(report: tuple) -> None:
    """While it measures, the report says which N and which step runs (on stderr: stdout is
    the report)."""
    progress = report[0]["progress"]
    for line in (
        "comparing lstm, transformer, transformer-lean at N = 3 4 on cpu (1 threads)",
        "measuring N=3 (1/2, ",
        "measuring N=4 (2/2, ",
        "  N=3: building lstm, transformer, transformer-lean on a 1x3 grid (B=2, T=2) ...",
        "  N=4: timing update and get_action, 1 interleaved rounds ...",
        "  N=3 transformer: memory and FLOPs ...",
        "  N=4 lstm: profiling into ",
        "measuring the matmul roof",
    ):
        assert line in progress, (line, progress)
    assert "\x1b" not in progress


def test_table_has_one_row_per_network_and_slot_count(report: tuple) -> None:
    result, _, _, markdown = report
    lines = markdown.splitlines()
    header = "| " + " | ".join(compare.table_header([1, 2])) + " |"
    assert header in lines
    start = lines.index(header)
    body = lines[start + 2 : start + 8]
    assert [line.split(" | ")[0:2] for line in body] == [
        ["| lstm", "3"],
        ["| transformer", "3"],
        ["| transformer-lean", "3"],
        ["| lstm", "4"],
        ["| transformer", "4"],
        ["| transformer-lean", "4"],
    ]
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(compare.table_header([1, 2]))
        assert cells[2] in ("1x3", "1x4")
        # timings, memory, train-step memory, FLOPs and GFLOP/s are positive numbers
        for cell in cells[3:13]:
            assert float(cell.replace(",", "")) > 0
        assert cells[13] == "-"  # compile not measured in this run
    assert len(result["rows"]) == 6


def test_ratios_are_transformer_over_lstm_of_the_same_run(report: tuple) -> None:
    result, _, _, markdown = report
    rows = {(r["network"], r["N"]): r for r in result["rows"]}
    assert [(r["network"], r["N"]) for r in result["ratios"]] == [
        ("transformer", 3), ("transformer-lean", 3), ("transformer", 4), ("transformer-lean", 4),
    ]
    for ratio in result["ratios"]:
        n, network = ratio["N"], ratio["network"]
        for key in (
            "forward_ms",
            "backward_ms",
            "update_ms",
            "act_b1_ms",
            "act_b2_ms",
            "param_grad_adam_bytes",
            "peak_activation_bytes",
            "train_step_bytes",
            "update_flops",
            "parameters",
        ):
            expected = rows[(network, n)][key] / rows[("lstm", n)][key]
            assert ratio[key] == pytest.approx(expected)
        default = rows[(network, n)]["default_malloc"]["update_ms"]
        default_lstm = rows[("lstm", n)]["default_malloc"]["update_ms"]
        assert ratio["update_ms_default_malloc"] == pytest.approx(default / default_lstm)
    assert "Ratio to the lstm of the same N, same run:" in markdown


def test_both_malloc_settings_are_timed_and_tabled(report: tuple) -> None:
    result, _, _, markdown = report
    assert result["meta"]["malloc"] in ("tuned", "default")  # default off glibc
    for row in result["rows"]:
        timings = row["default_malloc"]  # from the second process, glibc's default malloc
        assert {"update_ms", "act_b1_ms", "act_b2_ms"} <= set(timings)
        assert all(value > 0 for value in timings.values())
    assert "with glibc's default malloc" in markdown
    assert "| update default ms | update tuned ms | default / tuned |" in markdown


def test_flops_and_the_lean_setting(report: tuple) -> None:
    result, _, _, markdown = report
    rows = {(r["network"], r["N"]): r for r in result["rows"]}
    for n in (3, 4):
        lstm, plain, lean = (rows[(k, n)] for k in ("lstm", "transformer", "transformer-lean"))
        assert lstm["flops_lstm"] > 0 and lstm["flops_attention"] == 0
        assert plain["flops_attention"] > 0 and plain["flops_matmul"] > 0
        # The lean setting recomputes the slot path in backward: more work, less memory.
        assert lean["update_flops"] > plain["update_flops"]
        assert lean["peak_activation_bytes"] < plain["peak_activation_bytes"]
        assert lean["parameters"] == plain["parameters"]
        for row in (lstm, plain, lean):
            assert row["achieved_gflops"] == pytest.approx(
                row["update_flops"] / row["update_ms"] / 1e6
            )
    assert result["meta"]["matmul_peak_gflops"] > 0
    assert "Matmul roof of this run" in markdown


def test_memory_figures_come_from_a_real_adam_step(report: tuple) -> None:
    result, _, _, _ = report
    for row in result["rows"]:
        assert row["grad_bytes"] == row["param_bytes"] == 4 * row["parameters"]
        assert row["adam_state_bytes"] >= 2 * row["param_bytes"]  # exp_avg, exp_avg_sq, step
        assert row["param_grad_adam_bytes"] == (
            row["param_bytes"] + row["grad_bytes"] + row["adam_state_bytes"]
        )
        assert row["peak_activation_bytes"] > 0 and row["allocator_events"] > 0
    transformer = [r["parameters"] for r in result["rows"] if r["network"] == "transformer"]
    assert len(set(transformer)) == 1  # N-independent weights


def test_targets_report_what_this_run_could_measure(report: tuple) -> None:
    result, _, _, markdown = report
    targets = [t for t in result["targets"]]
    assert len(targets) == 10
    n3 = [t for t in targets if t["measure"] == "update_ms transformer / lstm at N=3"]
    assert [t["met"] for t in n3] == [
        n3[0]["value"] <= compare.UPDATE_RATIO_GOALS[3],
        n3[0]["value"] <= compare.UPDATE_RATIO_GOAL_N3,
    ]
    targets = {t["target"]: t for t in result["targets"]}  # type: ignore[misc]
    for name, target in targets.items():
        if "N=50" in name:
            assert target["met"] is None, name  # N=50 was not measured
    assert targets["transformer parameter count constant in N"]["met"] is True
    act = next(t for n, t in targets.items() if n.startswith("get_action"))
    assert act["met"] == (act["value"] <= compare.ACT_RATIO_GOAL)
    assert "not measured in this run" in markdown


def test_json_file_holds_the_printed_report(report: tuple) -> None:
    result, json_path, _, _ = report
    written = json.loads(json_path.read_text())
    assert set(written) == {"meta", "rows", "ratios", "targets", "markdown"}
    assert "doc_text" not in written  # added by the fixture after the file was written
    assert written["markdown"] == result["markdown"]
    assert written["meta"]["threads"] == 1
    assert written["meta"]["sizes"]["batch"] == 2
    assert written["meta"]["sizes"]["slots"] == [3, 4]


def test_a_saved_run_re_renders_to_the_same_report(report: tuple) -> None:
    result, json_path, _, _ = report
    again = compare.main(["--from-json", str(json_path)])
    assert again["markdown"] == result["markdown"]
    assert again["ratios"] == result["ratios"]


def test_doc_block_is_replaced_and_the_rest_kept(report: tuple) -> None:
    result, _, _, markdown = report
    expected = f"# Title\n\n{compare.DOC_BEGIN}\n{markdown}\n{compare.DOC_END}\n\nAfter.\n"
    assert result["doc_text"] == expected


def test_profile_writes_one_tensorboard_trace_per_network_and_slot_count(report: tuple) -> None:
    _, _, profile_dir, _ = report
    traces = sorted(p.name.split(".")[0] for p in profile_dir.glob("*.pt.trace.json"))
    assert traces == [
        "lstm_N3", "lstm_N4", "transformer-lean_N3", "transformer-lean_N4",
        "transformer_N3", "transformer_N4",
    ]
    trace = json.loads(next(profile_dir.glob("transformer_N3.*.pt.trace.json")).read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"update_step", "get_action_B1", "get_action_B2"} <= names


def test_cpu_peak_is_the_running_sum_of_allocator_events() -> None:
    megabyte = 1 << 20

    def step() -> None:
        a = torch.empty(megabyte, dtype=torch.uint8)
        b = torch.empty(2 * megabyte, dtype=torch.uint8)
        del a
        c = torch.empty(megabyte // 2, dtype=torch.uint8)
        del b, c

    peak, events = _profiled_peak_bytes(step)
    assert peak == 3 * megabyte  # a + b live together; c comes after a is freed
    assert events == 6


def test_workload_actions_are_valid_under_their_masks() -> None:
    # Small widths: the masks and actions do not depend on them, and building is fast.
    policy = create_policy("transformer", lstm_hidden_dim=16, embed_dim=16, head_hidden=16)
    workload = build_workload(policy, batch=2, time=3)
    active = workload.blueprint_indices >= 0
    assert workload.active.bool().equal(active)
    slot_by_op = workload.masks["slot_by_op"]
    assert slot_by_op[..., 1, :].equal(~active)  # GERMINATE: empty slots only
    # evaluate_actions rejects actions its canonicalised masks forbid (validation is on).
    result = workload.evaluate()
    for log_prob in result.log_probs.values():
        assert torch.isfinite(log_prob).all()
    assert workload.loss().dim() == 0


def test_compiled_rollout_times_eager_and_compiled_get_action() -> None:
    from benchmarks import compiled_rollout

    row = compiled_rollout.measure(
        "transformer", num_slots=3, batch=2, mode="default", rounds=1, calls=1, backend="eager"
    )
    assert (row["network"], row["N"], row["B"], row["backend"]) == ("transformer", 3, 2, "eager")
    assert row["eager_ms"] > 0 and row["compiled_ms"] > 0
    assert row["eager_over_compiled"] == pytest.approx(row["eager_ms"] / row["compiled_ms"])
