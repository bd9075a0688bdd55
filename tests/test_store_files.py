"""The cell folder's files byte by byte: what the runner writes is what the report reads back.

Each check compares ``drpo_bench.store`` against a plain computation in the test (``json.dumps``,
``hashlib``, PIL, the process umask read here), on a tmp folder: the atomic write (mode, temp
names, no temp left on failure), the JSON and JSONL layouts, every reader's answer for a missing,
corrupt or odd file, the eval history's order and truncation, the eval images' names and pixels,
and the typed records' derived fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch

from drpo_bench import store
from drpo_bench.store import CellFolder, CellRecord, CorruptCellError, EvalRecord, MetricRecord


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- atomic writes --------------------------------------------------------------------------------


def test_write_json_is_indented_json_with_a_newline_and_str_for_other_types(tmp_path):
    obj = {"b": 1, "a": [1.5, None], "path": Path("/x/y")}  # key order kept, a Path written as its str
    target = tmp_path / "new" / "deeper" / "f.json"  # parent folders are made
    store.write_json(target, obj)
    assert target.read_text() == json.dumps({"b": 1, "a": [1.5, None], "path": "/x/y"}, indent=2) + "\n"
    assert store.read_json(target) == {"b": 1, "a": [1.5, None], "path": "/x/y"}


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    store.write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_bytes() == b"hello"
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert store._current_umask() == _umask(), "the umask read at import must be the process's"
    assert store._UMASK == _umask()


def test_an_atomic_write_goes_through_a_dot_temp_file_that_remove_leftovers_matches(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src).name, Path(src).parent, Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", spy)
    store.write_text(tmp_path / "eval.json", "{}")
    (name, parent, dst), = seen
    assert parent == tmp_path and dst == tmp_path / "eval.json"
    assert re.fullmatch(r"\.eval\.json\..+\.tmp", name), name


def test_a_failed_atomic_write_leaves_neither_the_file_nor_a_temp(tmp_path, monkeypatch):
    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write_text(tmp_path / "scores.jsonl", "row\n")
    assert list(tmp_path.iterdir()) == []


def test_save_safetensors_and_torch_save_round_trip(tmp_path):
    from safetensors import safe_open

    tensors = {"w": torch.arange(6, dtype=torch.float32).view(2, 3)}
    store.save_safetensors(tensors, tmp_path / "a.safetensors", metadata={"rank": "4"})
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert f.metadata() == {"rank": "4"}
        torch.testing.assert_close(f.get_tensor("w"), tensors["w"])
    store.torch_save_atomic({"step": 3, "t": torch.ones(2)}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt")
    assert back["step"] == 3 and torch.equal(back["t"], torch.ones(2))


def test_sha256_file_equals_hashlib_on_a_file_larger_than_one_block(tmp_path):
    data = bytes(range(256)) * ((1 << 20) // 256 + 7)  # one MiB block and a bit
    (tmp_path / "big").write_bytes(data)
    assert store.sha256_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert store.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


# ---- readers: missing, corrupt, odd ---------------------------------------------------------------


def _cell_record(**update) -> CellRecord:
    fields = dict(status="complete", cell_id="c", fingerprint="f", suite="s", generator={"name": "g"}, seed=0,
                  method={"id": "m-tuned", "method": "m"}, trains=True, eval={})
    return CellRecord(**{**fields, **update})


def test_cell_record_derived_fields():
    record = _cell_record(train_reward={"alias": "pick"}, budget={"effective_batch": 8})
    assert (record.generator_label, record.method_id, record.method_name) == ("g", "m-tuned", "m")
    assert (record.reward_alias, record.effective_batch) == ("pick", 8)
    assert _cell_record(generator={"name": "g", "id": "g-lora"}).generator_label == "g-lora"
    assert (_cell_record().reward_alias, _cell_record().effective_batch) == (None, None)
    assert _cell_record(budget={"steps": 2}).effective_batch is None


def test_read_cell_and_is_complete(tmp_path):
    folder = CellFolder(tmp_path)
    assert folder.read_cell() is None and not folder.is_complete()
    folder.write_cell(_cell_record(status="running"))
    assert folder.read_cell().status == "running" and not folder.is_complete()
    folder.write_cell(_cell_record())
    assert folder.is_complete()
    assert json.loads(folder.file("cell.json").read_text())["method"] == {"id": "m-tuned", "method": "m"}


def test_a_corrupt_record_names_the_file_the_error_and_how_to_recover(tmp_path):
    folder = CellFolder(tmp_path / "cell")
    folder.path.mkdir()
    folder.file("eval.json").write_text("{not json")
    with pytest.raises(CorruptCellError) as info:
        folder.read_eval()
    path = folder.file("eval.json")
    assert info.value.path == path
    assert str(info.value) == (f"{path} is corrupt (JSONDecodeError: Expecting property name enclosed in double quotes: "
                               f"line 1 column 2 (char 1)). Delete the cell folder {folder.path} to rerun that cell "
                               "(`drpo-bench run` redoes only missing cells).")
    folder.file("eval.json").write_text('{"n_prompts": 1}')
    with pytest.raises(CorruptCellError, match=r"\(ValidationError: \d+ validation errors for EvalRecord\)"):
        folder.read_eval()
    folder.file("cell.json").write_bytes(b"\xff\xfe")
    with pytest.raises(CorruptCellError, match=r"cell\.json is corrupt \(UnicodeDecodeError: "):
        folder.read_cell()


def test_read_kept_stale(tmp_path):
    folder = CellFolder(tmp_path)
    assert folder.read_kept_stale() is None
    folder.file("kept_stale.json").write_text('{"code": "abc"}')
    assert folder.read_kept_stale() == {"code": "abc"}
    folder.file("kept_stale.json").write_text("[1]")
    assert folder.read_kept_stale() is None
    folder.file("kept_stale.json").write_text("{")
    with pytest.raises(CorruptCellError, match=r"kept_stale\.json is corrupt \(Expecting property name enclosed in "
                                               r"double quotes: line 1 column 2 \(char 1\)\)\.") as info:
        folder.read_kept_stale()
    assert info.value.path == folder.file("kept_stale.json")


def test_read_ledger_summary(tmp_path):
    folder = CellFolder(tmp_path)
    assert folder.read_ledger_summary() == {}
    folder.write_ledger({"summary": {"updates": 2, "seconds_per_update": 1.5}, "updates": []})
    assert folder.read_ledger_summary() == {"updates": 2, "seconds_per_update": 1.5}
    folder.write_ledger({"updates": []})
    assert folder.read_ledger_summary() == {}
    for bad, detail in (("[1, 2]", r"\(no summary mapping\)"), ('{"summary": 3}', r"\(no summary mapping\)"),
                        ("{", r"\(Expecting property name")):
        folder.file("ledger.json").write_text(bad)
        with pytest.raises(CorruptCellError, match=detail) as info:
            folder.read_ledger_summary()
        assert info.value.path == folder.file("ledger.json")


def test_jsonl_readers_skip_blank_lines_and_name_a_bad_line(tmp_path):
    folder = CellFolder(tmp_path)
    assert folder.read_scores() == [] and folder.read_train_log() == [] and folder.read_eval_history() == []
    folder.file("scores.jsonl").write_text('{"image": 0}\n\n  \n{"image": 1}\n')
    assert folder.read_scores() == [{"image": 0}, {"image": 1}]
    folder.file("train.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert folder.read_train_log() == [{"step": 1}, {"step": 2}]
    folder.file("train.jsonl").write_text('{"step": 1}\n\n{"step": \n')
    with pytest.raises(CorruptCellError, match=r"train\.jsonl is corrupt \(line 3: Expecting value") as info:
        folder.read_train_log()
    assert info.value.path == folder.file("train.jsonl")


def test_eval_history_is_sorted_by_step_and_keeps_only_rows_with_an_integer_step(tmp_path):
    folder = CellFolder(tmp_path)
    rows = [{"step": 20, "fid": 3.0}, {"step": 0, "fid": 9.0}, {"step": "x"}, [1], {"fid": 1.0}, {"step": 10, "fid": 5.0}]
    folder.file("eval_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert folder.read_eval_history() == [{"step": 0, "fid": 9.0}, {"step": 10, "fid": 5.0}, {"step": 20, "fid": 3.0}]


def test_append_eval_history_replaces_a_repeated_step_and_keeps_the_order(tmp_path):
    folder = CellFolder(tmp_path)
    folder.append_eval_history({"step": 10, "fid": 5.0})
    folder.append_eval_history({"step": 0, "fid": 9.0})
    folder.append_eval_history({"step": 10, "fid": 4.0})  # a resumed run evaluates step 10 again
    text = folder.file("eval_history.jsonl").read_text()
    assert text == json.dumps({"step": 0, "fid": 9.0}) + "\n" + json.dumps({"step": 10, "fid": 4.0}) + "\n"


def test_truncate_eval_history_keeps_steps_up_to_the_checkpoint(tmp_path):
    folder = CellFolder(tmp_path)
    folder.truncate_eval_history(5)
    assert not folder.file("eval_history.jsonl").exists(), "nothing to truncate: no file is made"
    for step in (0, 5, 10):
        folder.append_eval_history({"step": step, "fid": float(step)})
    folder.truncate_eval_history(5)
    assert folder.file("eval_history.jsonl").read_text() == "".join(
        json.dumps({"step": s, "fid": float(s)}) + "\n" for s in (0, 5))


def test_write_scores_is_one_json_row_per_line(tmp_path):
    folder = CellFolder(tmp_path)
    rows = [{"image": 0, "prompt": "a red ball", "score": 0.25}, {"image": 1, "prompt": "b", "score": None}]
    folder.write_scores(rows)
    assert folder.file("scores.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    assert folder.read_scores() == rows


def test_write_eval_images_names_by_prompt_and_image_and_keeps_the_pixels(tmp_path):
    from PIL import Image

    folder = CellFolder(tmp_path)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 4, 5, generator=g) * 1.4 - 0.2  # some values outside [0, 1]: clamped
    folder.write_eval_images(images, groups=[3, 3, 3, 12, 12, 12], per_prompt=3)
    names = sorted(p.name for p in folder.file("eval_images").iterdir())
    assert names == ["00003-000.png", "00003-001.png", "00003-002.png", "00012-000.png", "00012-001.png", "00012-002.png"]
    import numpy as np

    for i, name in enumerate(["00003-000.png", "00003-001.png", "00003-002.png", "00012-000.png", "00012-001.png",
                              "00012-002.png"]):
        got = np.asarray(Image.open(folder.file("eval_images") / name))  # (H, W, 3) uint8
        want = [[[int(round(min(max(float(images[i, c, y, x]), 0.0), 1.0) * 255)) for c in range(3)]
                 for x in range(5)] for y in range(4)]
        assert got.tolist() == want, name
    folder.write_eval_images(images[:1], groups=[0], per_prompt=1)  # the folder exists already: no error
    assert (folder.file("eval_images") / "00000-000.png").exists()


def test_remove_leftovers_deletes_only_temp_files(tmp_path):
    folder = CellFolder(tmp_path)
    (tmp_path / ".eval.json.ab12.tmp").write_text("half")
    (tmp_path / ".scores.jsonl.x.tmp").write_text("half")
    folder.write_eval(EvalRecord(n_prompts=1, images_per_prompt=1, split="eval",
                                 metrics={"s": MetricRecord(mean=None, higher_is_better=False, error="no weights")}))
    folder.remove_leftovers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
    back = folder.read_eval()
    assert back.metrics["s"].mean is None and back.metrics["s"].error == "no weights"
    assert not back.metrics["s"].higher_is_better


def test_checksums_cover_exactly_the_checked_files_that_exist(tmp_path):
    folder = CellFolder(tmp_path)
    for name in ("eval.json", "ledger.json", "train.jsonl", "adapter.safetensors", "samples.png", "scores.jsonl",
                 "eval_history.jsonl", "cell.json", "error.txt", "checkpoint.json"):
        folder.file(name).write_text(name)
    want = {name: hashlib.sha256(name.encode()).hexdigest()
            for name in ("eval.json", "ledger.json", "train.jsonl", "adapter.safetensors", "samples.png", "scores.jsonl",
                         "eval_history.jsonl")}
    assert folder.checksums() == want


def test_verify_refuses_an_eval_json_that_does_not_parse_though_its_checksum_matches(tmp_path):
    folder = CellFolder(tmp_path)
    folder.file("eval.json").write_text('{"n_prompts": 2}')  # recorded as it is, but not an EvalRecord
    record = _cell_record(checksums=folder.checksums())
    with pytest.raises(CorruptCellError, match="ValidationError") as info:
        folder.verify(record)
    assert info.value.path == folder.file("eval.json")


def test_each_refusal_of_verify_says_what_is_wrong_with_the_file(tmp_path):
    folder = CellFolder(tmp_path)
    folder.write_eval(EvalRecord(n_prompts=1, images_per_prompt=1, split="eval", metrics={}))
    folder.write_scores([{"image": 0}])
    record = _cell_record(checksums=folder.checksums())
    tail = f". Delete the cell folder {tmp_path} to rerun that cell (`drpo-bench run` redoes only missing cells)."
    folder.file("scores.jsonl").write_text("changed\n")
    with pytest.raises(CorruptCellError) as info:
        folder.verify(record)
    assert str(info.value) == f"{folder.file('scores.jsonl')} is corrupt (its checksum differs from the one recorded in cell.json){tail}"
    folder.file("scores.jsonl").unlink()
    with pytest.raises(CorruptCellError) as info:
        folder.verify(record)
    assert str(info.value) == f"{folder.file('scores.jsonl')} is corrupt (missing, though the finished cell recorded it){tail}"
    folder.write_ledger({"summary": {}})
    with pytest.raises(CorruptCellError) as info:
        folder.verify(_cell_record(checksums={"eval.json": record.checksums["eval.json"]}))
    assert str(info.value) == f"{folder.file('ledger.json')} is corrupt (cell.json records no checksum for it){tail}"
