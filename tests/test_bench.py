"""One definition of each update: the paper-scale FLOP path (meta device) counts what a real update records.

The tiny twins of the architectures run each registered method's real ``Method.step`` twice: with
real random tensors on the CPU, FLOPs counted by the ledger exactly as a training run counts them
(``Ledger(count_flops=True)``), and on the meta device through ``drpo_bench.compute.bench.count_update``,
the path ``drpo-bench flops`` takes at paper scale. The two must agree phase by phase.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from drpo_bench.compute import bench
from drpo_bench.errors import UserError
from drpo_bench.commands.flops import main as cli_main
from drpo_bench.compute.ledger import Ledger

SMALL = {"drpo": {"n_pos": 2, "n_neg": 2}}


def tiny(reward: str = "hpsv3", checkpointing: tuple[str, ...] = (), generator: str = "sd-turbo") -> bench.Setting:
    return bench.make_setting(generator, reward, k=4, effective_batch=8, checkpointing=checkpointing,
                              method_args=SMALL, tiny=True)


def real_count(method: str, setting: bench.Setting) -> dict[str, float]:
    torch.manual_seed(0)
    return bench.count_update(method, setting, bench.build_stack(setting, "cpu")).phase_flops


@pytest.mark.parametrize("method", ["drpo", "draft"])
def test_meta_count_equals_real_update(method: str) -> None:
    setting = tiny()
    predicted = bench.count_update(method, setting).phase_flops
    assert predicted == real_count(method, setting)
    assert predicted["generator_backward"] > 0
    assert ("reward_backward" in predicted) == (method == "draft")  # DrPO never backpropagates the reward


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vggflow", "dpo", "grpo", "pso", "raft"])
def test_meta_count_equals_real_update_baselines(method: str) -> None:
    setting = tiny()
    assert bench.count_update(method, setting).phase_flops == real_count(method, setting)


def test_checkpointing_recompute_counted_alike() -> None:
    plain, ckpt = tiny(), tiny(checkpointing=("generator", "reward"))
    with_ckpt = bench.count_update("draft", ckpt).phase_flops
    assert with_ckpt == real_count("draft", ckpt)
    without = bench.count_update("draft", plain).phase_flops
    assert with_ckpt["reward_backward"] > without["reward_backward"]  # the reward's forward recomputed
    assert with_ckpt["generator_backward"] > without["generator_backward"]  # UNet and VAE recomputed
    assert with_ckpt["reward_forward"] == without["reward_forward"]


@pytest.mark.slow
def test_pixel_features_and_sdxl() -> None:
    setting = tiny("pickscore", generator="sdxl-turbo")
    predicted = bench.count_update("drpo", setting).phase_flops
    assert predicted == real_count("drpo", setting)
    assert predicted["features"] > 0


def test_timed_update_records_the_predicted_flops() -> None:
    setting = tiny()
    out = bench.time_updates("drpo", setting, device="cpu", updates=2, micro=1)
    summary = out["summary"]
    assert summary["updates"] == 3 and summary["updates_averaged"] == 2
    predicted = bench.count_update("drpo", setting)
    # micro-batches of one prompt encode one prompt at a time: same FLOPs as one batch
    assert summary["flops_per_update"] == pytest.approx(predicted.total, rel=1e-9)
    assert summary["seconds_per_update"] > 0 and summary["peak_memory_bytes"] > 0
    assert out["achieved_tflops"] == pytest.approx(summary["flops_per_update"] / summary["seconds_per_update"] / 1e12)
    assert out["share_of_peak"] is None  # CPU: no known peak
    assert "optimizer" in summary["phase_seconds"]


def test_micro_batch_must_divide() -> None:
    with pytest.raises(UserError, match="micro-batch"):
        bench.time_updates("draft", tiny(), device="cpu", updates=1, micro=3)


def test_setting_errors() -> None:
    with pytest.raises(UserError, match="multiple of K"):
        bench.make_setting("sd-turbo", "hpsv3", k=24, effective_batch=100)
    with pytest.raises(UserError, match="Nearest"):
        bench.make_setting("sd-turbo", "hpsv4")
    with pytest.raises(UserError, match="cannot checkpoint"):
        bench.make_setting("sd-turbo", "hpsv3", checkpointing=["features"])


def test_flops_and_bench_cli_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--reward", "pickscore", "--K", "4", "--effective-batch", "8", "--tiny",
              "--method-arg", "drpo.n_pos=2", "--method-arg", "drpo.n_neg=2", "--methods", "drpo,draft"]
    assert cli_main(["flops", *common, "--json", str(tmp_path / "f.json")]) == 0
    flops = json.loads((tmp_path / "f.json").read_text())
    assert set(flops["methods"]) == {"drpo", "draft"}
    assert flops["ratios"]["draft/drpo"]["total"] > 0
    assert cli_main(["bench", *common, "--updates", "1", "--device", "cpu", "--json", str(tmp_path / "b.json")]) == 0
    timed = json.loads((tmp_path / "b.json").read_text())
    assert [r["method"] for r in timed["runs"]] == ["drpo", "draft"]
    assert timed["versions"]["torch"] == torch.__version__ and timed["command"].startswith("drpo-bench bench")
    for run in timed["runs"]:  # the timed update recorded what the FLOP path predicts
        assert run["summary"]["flops_per_update"] == pytest.approx(flops["methods"][run["method"]]["total_flops"])
    out = capsys.readouterr().out
    assert "DRaFT time ÷ drpo time" in out and "DRaFT FLOPs ÷ drpo FLOPs" in out


def test_cli_unknown_method_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["flops", "--tiny", "--methods", "drpoo"]) == 2
    assert "drpo" in capsys.readouterr().err


# ---- the report's compute-savings table -------------------------------------------------------


def _cell(method: str, seconds: float, flops: float, memory: int, reward: str = "hpsv3") -> Any:
    info = SimpleNamespace(trains=True, method={"method": method}, generator={"name": "sd-turbo"},
                           train_reward={"name": reward, "alias": reward})
    ledger = {"updates": 4, "seconds_per_update": seconds, "flops_per_update": flops, "peak_memory_bytes": memory,
              "peak_memory_kind": "cuda_max_allocated"}
    return SimpleNamespace(info=info, ledger=ledger, row_key=("sd-turbo", method, reward))


def test_compute_savings_table() -> None:
    from drpo_bench.report.compute import compute_savings_table

    cells = [_cell("drpo", 6.0, 2.3e15, 40 * 2**30), _cell("draft", 21.0, 5.4e15, 80 * 2**30),
             _cell("drpo", 8.0, 2.3e15, 42 * 2**30), _cell("raft", 30.0, 1.9e15, 30 * 2**30)]
    table = compute_savings_table(cells, predictions={("sd-turbo", "hpsv3", "drpo"): 2.2e15})
    assert table is not None
    col = table.headers.index("time ÷ DRaFT's")
    by_method = {row[0]: row for row in table.rows}
    assert by_method["draft"][col] == "1 (reference)"
    assert by_method["drpo"][col] == "0.33"  # mean(6, 8) s ÷ 21 s: the header's quotient, below 1 = cheaper
    assert by_method["raft"][col] == "1.43"  # 30 ÷ 21: RAFT takes longer
    fcol = table.headers.index("FLOPs ÷ DRaFT's")
    assert by_method["draft"][fcol] == "1 (reference)"
    assert by_method["drpo"][fcol] == "0.43"  # 2.3e15 ÷ 5.4e15
    assert by_method["raft"][fcol] == "0.35"  # 1.9e15 ÷ 5.4e15
    assert [by_method["drpo"][j] for j, b in enumerate(table.bold[table.rows.index(by_method["drpo"])]) if b] == ["0.33", "0.43"]
    assert by_method["drpo"][headers_index(table, "peak memory GiB")] == "42.00"
    assert by_method["drpo"][-1] == "2,200" and by_method["draft"][-1] == "not computed"
    assert table.label_columns == 2 and table.headers[:2] == ["method", "train reward"], "split parts keep the method"
    assert compute_savings_table([]) is None
    no_prediction = compute_savings_table(cells, predictions={})
    assert not any("paper scale" in h for h in no_prediction.headers), "an empty paper-scale column is dropped"


def headers_index(table: Any, name: str) -> int:
    return table.headers.index(name)


def test_load_predictions(tmp_path: Path) -> None:
    from drpo_bench.report.compute import load_predictions

    data = {"setting": {"generator": "sd-turbo", "reward": "hpsv3"}, "methods": {"drpo": {"total_flops": 3.0}}}
    (tmp_path / "sd-turbo_hpsv3.json").write_text(json.dumps(data))
    (tmp_path / "sd-turbo_hpsv3_ckpt.json").write_text(json.dumps({**data, "methods": {"drpo": {"total_flops": 9.0}}}))
    assert load_predictions(tmp_path) == {("sd-turbo", "hpsv3", "drpo"): 3.0}


def test_ledger_counts_in_update_only() -> None:
    ledger = Ledger("cpu", count_flops=True)
    assert ledger.summary() == {"updates": 0}
