"""A finished cell is skipped on rerun only if its files are the ones cell.json recorded.

CellFolder.verify on a hand-made finished cell: intact (accepted), a recorded file deleted, a
recorded file changed by one byte, a file whose checksum cell.json does not record (each refused,
naming the file), and the fingerprint's sensitivity to each setting that changes a result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from drpo_bench.suite.config import load_suite
from drpo_bench.suite.planning import plan_cells
from drpo_bench.store import CellFolder, CellRecord, CorruptCellError, EvalRecord, MetricRecord

TOY = Path(__file__).resolve().parents[1] / "suites" / "toy" / "harness.yaml"


def _finished(tmp_path: Path) -> tuple[CellFolder, CellRecord]:
    folder = CellFolder(tmp_path / "cell")
    folder.path.mkdir()
    folder.write_eval(EvalRecord(n_prompts=2, images_per_prompt=1, split="eval",
                                 metrics={"score": MetricRecord(mean=0.5, higher_is_better=True)}))
    folder.write_ledger({"summary": {"updates": 2}, "updates": []})
    folder.write_scores([{"image": 0, "prompt_index": 0, "score": 0.4}, {"image": 1, "prompt_index": 1, "score": 0.6}])
    checksums = folder.checksums()
    for name, digest in checksums.items():  # the recorded checksums are the files' sha256, computed here plainly
        assert digest == hashlib.sha256(folder.file(name).read_bytes()).hexdigest(), name
    record = CellRecord(status="complete", cell_id="c", fingerprint="f", suite="s", generator={"name": "g"}, seed=0,
                        method={"id": "m", "method": "m"}, trains=True, eval={}, checksums=checksums)
    folder.write_cell(record)
    return folder, record


def test_an_intact_finished_cell_verifies(tmp_path):
    folder, record = _finished(tmp_path)
    assert set(record.checksums) == {CellFolder.EVAL, CellFolder.LEDGER, CellFolder.SCORES}
    folder.verify(record)


@pytest.mark.parametrize("name", [CellFolder.EVAL, CellFolder.LEDGER, CellFolder.SCORES])
def test_a_recorded_file_deleted_since_is_refused(tmp_path, name):
    folder, record = _finished(tmp_path)
    folder.file(name).unlink()
    with pytest.raises(CorruptCellError, match="missing") as info:
        folder.verify(record)
    assert info.value.path == folder.file(name), f"{name} was listed in cell.json and deleted: verify must name it"


@pytest.mark.parametrize("name", [CellFolder.EVAL, CellFolder.LEDGER, CellFolder.SCORES])
def test_a_recorded_file_changed_since_is_refused(tmp_path, name):
    folder, record = _finished(tmp_path)
    path = folder.file(name)
    text = path.read_text()
    path.write_text(text.replace("0.", "1.", 1) if name != CellFolder.LEDGER else text.replace("2", "3", 1))
    with pytest.raises(CorruptCellError, match="checksum differs") as info:
        folder.verify(record)
    assert info.value.path == path


def test_a_file_without_a_recorded_checksum_is_refused(tmp_path):
    """A checked file that cell.json does not vouch for (added or swapped in after the cell finished)."""
    folder, record = _finished(tmp_path)
    unvouched = record.model_copy(update={"checksums": {k: v for k, v in record.checksums.items() if k != CellFolder.SCORES}})
    with pytest.raises(CorruptCellError, match="no checksum") as info:
        folder.verify(unvouched)
    assert info.value.path == folder.file(CellFolder.SCORES)


def test_a_written_cell_json_round_trips_its_checksums(tmp_path):
    folder, record = _finished(tmp_path)
    assert json.loads(folder.file(CellFolder.CELL).read_text())["checksums"] == record.checksums
    folder.verify(folder.read_cell())


# ---- planning's fingerprint ------------------------------------------------------------------------


def _fingerprints(overrides: list[str]) -> dict[str, str]:
    return {c.id: c.fingerprint for c in plan_cells(load_suite(TOY, ["seeds=[0]", *overrides]))}


@pytest.mark.parametrize("override", ["budget.steps=3", "train.lr=0.123", "eval.images_per_prompt=3",
                                      "budget.candidates_per_prompt=6"])
def test_the_fingerprint_changes_with_every_setting_that_changes_a_result(override):
    plain, changed = _fingerprints([]), _fingerprints([override])
    trained = [cid for cid in plain if "--base--" not in cid]
    assert trained and all(plain[c] != changed[c] for c in trained), f"{override} must change trained cells' fingerprints"


@pytest.mark.parametrize("override", ["train.checkpoint_every=7", "train.count_flops=true"])
def test_the_fingerprint_ignores_bookkeeping(override):
    assert _fingerprints([]) == _fingerprints([override]), f"{override} cannot change a result"


def test_fingerprints_are_16_hex_digits_and_differ_across_cells():
    prints = _fingerprints([])
    assert all(len(f) == 16 and int(f, 16) >= 0 for f in prints.values())
    assert len(set(prints.values())) == len(prints)
