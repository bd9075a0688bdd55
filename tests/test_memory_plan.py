"""``drpo-bench plan``: a suite's training rows against a GPU's memory, on the tiny twins' suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from drpo_bench.compute import bench
from drpo_bench.commands.main import main as cli_main
from drpo_bench.suite.config import load_suite
from drpo_bench.errors import UserError
from drpo_bench.compute.memory import GiB, Precision, predict_memory
from drpo_bench.commands.memory_plan import Planner, parse_size, plan_rows

TINY = Path("suites/paper/sd-turbo-pickscore-tiny.yaml")


def one_method_suite(tmp_path: Path, method: str = "draft") -> Path:
    """The tiny paper suite with one training method (and the base row, which plan skips)."""
    raw = yaml.safe_load(TINY.read_text())
    raw["methods"] = [m for m in raw["methods"] if m["id"] in ("base", method)]
    raw["prompts"]["args"] = {k: str(Path.cwd() / v) for k, v in raw["prompts"]["args"].items()}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def direct(micro: int, checkpointing: tuple[str, ...] = ()) -> int:
    """DRaFT's row predicted by hand: what plan must derive from the suite."""
    setting = bench.make_setting("sd-turbo", "pickscore", k=6, effective_batch=12, tiny=True, checkpointing=checkpointing,
                                 method_args={"draft": {"ref_l2_weight": 0.0}})
    return predict_memory("draft", setting, micro=micro, precision=Precision("fp32", "fp16", "fp32"),
                          generator_args={"convention": "drpo", "vae_slicing": True}).peak_bytes


def test_parse_size() -> None:
    assert parse_size("80GB") == 80 * 10**9
    assert parse_size("80GiB") == parse_size("80G") == 80 * GiB
    assert parse_size("81920MiB") == 80 * GiB
    with pytest.raises(UserError, match="80GB"):
        parse_size("eighty")


def test_plan_row_matches_direct_prediction(tmp_path: Path) -> None:
    suite = load_suite(str(one_method_suite(tmp_path)))
    one, two = direct(1), direct(2)
    assert two > one
    between = Planner(int((one + two) / 2 * 1.1), reserve=0)
    (row,) = plan_rows(suite, between)
    assert (row.method, row.candidates_per_prompt, row.micro_batch_prompts) == ("draft", 6, 1)
    assert row.peak_bytes == one and row.fits and row.checkpointing_needed == "no"
    assert row.largest_micro == 1  # two prompts per forward would not fit
    roomy = Planner(int(two * 1.2), reserve=0)
    assert plan_rows(suite, roomy)[0].largest_micro == 2  # the update's 2 prompts in one forward
    ckpt = direct(1, ("generator", "reward"))
    tight = Planner(int((ckpt + one) / 2 * 1.1), reserve=0)
    (row,) = plan_rows(suite, tight)
    assert not row.fits and row.checkpointing_needed.startswith("yes")
    assert row.largest_micro == (2 if tight.fits(direct(2, ("generator", "reward"))) else 1)  # planned with checkpointing
    (row,) = plan_rows(suite, Planner(int(ckpt * 0.5), reserve=0))
    assert not row.fits and row.checkpointing_needed.startswith("does not fit") and row.largest_micro is None


def test_plan_and_validate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = one_method_suite(tmp_path)
    assert cli_main(["plan", str(path), "--gpu-memory", "1GiB", "--reserve", "0", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "largest micro" in out and "draft" in out
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["draft"] and rows[0]["fits"] and rows[0]["largest_micro"] == 2
    assert cli_main(["validate", str(path), "--gpu-memory", "1GiB", "--reserve", "0"]) == 0
    captured = capsys.readouterr()
    assert "2 cells" in captured.out and "largest micro" in captured.out  # validated (on stdout), then planned
    assert cli_main(["plan", str(path), "--gpu-memory", "lots"]) == 2
    assert cli_main(["plan", str(path), "--gpu-memory", "1GiB", "--gpus", "3"]) == 2  # 2 prompts over 3 GPUs


def test_flops_memory_json(tmp_path: Path) -> None:
    from drpo_bench.commands.flops import main as flops_main

    args = ["flops", "--reward", "pickscore", "--K", "4", "--effective-batch", "8", "--tiny", "--methods", "drpo,draft",
            "--method-arg", "drpo.n_pos=2", "--method-arg", "drpo.n_neg=2", "--memory", "--json", str(tmp_path / "f.json")]
    assert flops_main(args) == 0
    data = json.loads((tmp_path / "f.json").read_text())
    memory = data["memory"]["methods"]
    assert memory["draft"]["peak_bytes"] > memory["drpo"]["activation_peak_bytes"] > 0
    assert data["memory"]["ratios"]["draft/drpo"] == pytest.approx(memory["draft"]["peak_bytes"] / memory["drpo"]["peak_bytes"])
    assert "reward_forward" in memory["draft"]["phase_saved_bytes"]
