"""The comparison report (benchmarks/compare.py) at tiny sizes: table, ratios, targets, JSON,
profiler traces; and the peak-memory method it relies on."""

from __future__ import annotations

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
    try:
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
    return result, json_path, profile_dir, result["markdown"]


def test_table_has_one_row_per_network_and_slot_count(report: tuple) -> None:
    result, _, _, markdown = report
    lines = markdown.splitlines()
    header = "| " + " | ".join(compare.table_header([1, 2])) + " |"
    assert header in lines
    start = lines.index(header)
    body = lines[start + 2 : start + 6]
    assert [line.split(" | ")[0:2] for line in body] == [
        ["| lstm", "3"],
        ["| transformer", "3"],
        ["| lstm", "4"],
        ["| transformer", "4"],
    ]
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(compare.table_header([1, 2]))
        assert cells[2] in ("1x3", "1x4")
        for cell in cells[3:10]:  # timings and memory are positive numbers
            assert float(cell.replace(",", "")) > 0
        assert cells[10] == "-"  # compile not measured in this run
    assert len(result["rows"]) == 4


def test_ratios_are_transformer_over_lstm_of_the_same_run(report: tuple) -> None:
    result, _, _, markdown = report
    rows = {(r["network"], r["N"]): r for r in result["rows"]}
    assert [r["N"] for r in result["ratios"]] == [3, 4]
    for ratio in result["ratios"]:
        n = ratio["N"]
        for key in (
            "forward_ms",
            "backward_ms",
            "update_ms",
            "act_b1_ms",
            "act_b2_ms",
            "param_grad_adam_bytes",
            "peak_activation_bytes",
            "parameters",
        ):
            expected = rows[("transformer", n)][key] / rows[("lstm", n)][key]
            assert ratio[key] == pytest.approx(expected)
    assert "Ratio transformer / lstm, same run:" in markdown


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
    targets = {t["measure"]: t for t in result["targets"]}
    assert len(targets) == 4
    update = targets["update_ms transformer / lstm at N=3"]
    assert update["met"] == (update["value"] <= compare.UPDATE_RATIO_GOAL_N3)
    assert targets["distinct transformer parameter counts over the measured N"]["met"] is True
    assert targets["param_grad_adam_bytes transformer / lstm at N=50"]["met"] is None
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
    assert traces == ["lstm_N3", "lstm_N4", "transformer_N3", "transformer_N4"]
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
    policy = create_policy("transformer", hidden_dim=16, embed_dim=16, head_hidden=16)
    workload = build_workload(policy, batch=2, time=3)
    active = workload.blueprint_indices >= 0
    assert workload.active.bool().equal(active)
    slot_by_op = workload.masks["slot_by_op"]
    assert slot_by_op[..., 1, :].equal(~active)  # GERMINATE: empty slots only
    # evaluate_actions rejects actions its canonicalised masks forbid (validation is on).
    result = workload.evaluate()
    for log_prob in result.log_prob.values():
        assert torch.isfinite(log_prob).all()
    assert workload.loss().dim() == 0
