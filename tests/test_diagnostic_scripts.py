"""The statistics inside scripts/feature_neighborhoods.py (the DrPO feature-space diagnostic)."""

import importlib.util
from pathlib import Path

import torch
from scipy.stats import spearmanr

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "feature_neighborhoods.py"


def _script():
    spec = importlib.util.spec_from_file_location("feature_neighborhoods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rank_correlation_matches_scipy_with_ties():
    fn = _script().rank_correlation
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 8), generator=g).float()  # many ties, as checker scores have
    b = torch.randn(5, 8, generator=g)
    ours = fn(a, b)
    for i in range(5):
        assert abs(float(ours[i]) - spearmanr(a[i].numpy(), b[i].numpy()).statistic) < 1e-5


def test_neighbourhood_signal_is_high_when_features_encode_the_reward_and_low_when_not():
    signal = _script().neighbourhood_signal
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(64, 16, generator=g)
    informative = scores[..., None]  # a 1-D feature equal to the reward
    noise = torch.randn(64, 16, 8, generator=g)
    assert signal(informative, scores) > 0.8
    assert abs(signal(noise, scores)) < 0.1


def test_cell_costs_adds_what_the_cells_recorded(tmp_path):
    """scripts/cell_costs.py: per row, the cells' seconds, the ledger's update seconds and the recorded
    evaluation seconds, summed by hand here; a cell without eval seconds makes its row "unknown"."""
    import json

    spec = importlib.util.spec_from_file_location("cell_costs", SCRIPT.parent / "cell_costs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def cell(name, method, alias, seconds, evals, updates):
        folder = tmp_path / name
        folder.mkdir()
        record = {"status": "complete", "cell_id": name, "method": {"id": method},
                  "train_reward": {"alias": alias} if alias else None, "wall_seconds_this_run": seconds}
        if evals is not None:
            record["eval_seconds_this_run"] = evals
        (folder / "cell.json").write_text(json.dumps(record))
        (folder / "ledger.json").write_text(json.dumps({"updates": [{"seconds": s} for s in updates],
                                                        "summary": {"seconds_per_update": 0.5} if updates else {}}))

    cell("a0", "drpo", "clip", 10.0, 2.0, [1.0, 2.0])
    cell("a1", "drpo", "clip", 20.0, 2.0, [3.0])
    cell("b0", "base", None, 4.0, None, [])
    out = module.cell_costs(tmp_path)
    drpo = out["rows"]["drpo / clip"]
    assert (drpo["cells"], drpo["seconds"], drpo["train_seconds"], drpo["eval_seconds"]) == (2, 30.0, 6.0, 4.0)
    assert drpo["eval_share_max"] == 0.2  # 2 of a0's 10 seconds
    assert out["rows"]["base / -"]["eval_seconds"] is None
    assert out["total_seconds"] == 34.0
