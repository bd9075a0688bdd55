"""Real prompt sets from local files in each benchmark's format."""

from __future__ import annotations

import json

import pytest

from drpo_bench.errors import UserError
from drpo_bench.prompts.base import Prompt
from drpo_bench.prompts.real import DrawBench, GenEvalPrompts, HPDv2Test, PartiPrompts, PickAPicV2


def test_registered_names():
    assert [c.registry_name for c in (PickAPicV2, PartiPrompts, DrawBench, HPDv2Test, GenEvalPrompts)] == [
        "pickapic-v2", "parti", "drawbench", "hpdv2", "geneval"]


def test_pickapic_txt_splits_and_limit(tmp_path):
    (tmp_path / "train.txt").write_text("a cat\n\n a dog \n")
    (tmp_path / "test.txt").write_text("a bird\na fish\na cow\n")
    cfg = PickAPicV2.Config(train=str(tmp_path / "train.txt"), eval=str(tmp_path / "test.txt"), limit=2)
    prompts = PickAPicV2(cfg)
    assert prompts.split("train") == [Prompt("a cat"), Prompt("a dog")]
    assert [p.text for p in prompts.split("eval")] == ["a bird", "a fish"]
    with pytest.raises(UserError, match="unknown split"):
        prompts.split("validation")


def test_parti_tsv_with_categories(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\nbond\tAbstract\tBasic\na red apple\tFood\tColors\n")
    prompts = PartiPrompts(PartiPrompts.Config(eval=str(path))).split("eval")
    assert prompts == [Prompt("bond", "Abstract"), Prompt("a red apple", "Food")]
    with pytest.raises(UserError, match="no 'train' split"):
        PartiPrompts(PartiPrompts.Config(eval=str(path))).split("train")


def test_drawbench_csv_and_wrong_column(tmp_path):
    path = tmp_path / "db.csv"
    path.write_text('Prompts,Category\n"A red colored car.",Colors\n')
    assert DrawBench(DrawBench.Config(eval=str(path))).split("eval") == [Prompt("A red colored car.", "Colors")]
    with pytest.raises(UserError, match="no column 'text'"):
        DrawBench(DrawBench.Config(eval=str(path), column="text")).split("eval")


def test_hpdv2_folder_of_json_lists(tmp_path):
    folder = tmp_path / "hpdv2"
    folder.mkdir()
    (folder / "anime.json").write_text(json.dumps(["an anime girl", "a dragon"]))
    (folder / "photo.json").write_text(json.dumps([{"prompt": "a photo of a lake"}]))
    texts = [p.text for p in HPDv2Test(HPDv2Test.Config(eval=str(folder))).split("eval")]
    assert texts == ["an anime girl", "a dragon", "a photo of a lake"]


def test_geneval_jsonl_tasks(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    rows = [{"tag": "counting", "include": [{"class": "cat", "count": 3}], "prompt": "a photo of three cats"},
            {"tag": "position", "prompt": "a photo of a dog right of a bench"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = GenEvalPrompts(GenEvalPrompts.Config(eval=str(path))).split("eval")
    assert prompts == [Prompt("a photo of three cats", "counting"), Prompt("a photo of a dog right of a bench", "position")]


def test_missing_file_names_it_and_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="djghosh13/geneval") as info:
        GenEvalPrompts(GenEvalPrompts.Config(eval=str(tmp_path / "nope.jsonl"))).split("eval")
    assert "nope.jsonl" in str(info.value)
    with pytest.raises(UserError, match="UGVly/DrPO"):
        PickAPicV2(PickAPicV2.Config(train=str(tmp_path / "none.txt"))).split("train")
    bad = tmp_path / "prompts.xml"
    bad.write_text("<x/>")
    with pytest.raises(UserError, match="unsupported prompt file type"):
        PickAPicV2(PickAPicV2.Config(eval=str(bad))).split("eval")


def _file_prompt_sets() -> list[type]:
    from drpo_bench.prompts.real import FilePromptSet
    from drpo_bench.registry import PROMPTS, load_builtins

    load_builtins()
    return [PROMPTS.get(n).cls for n in sorted(PROMPTS.names()) if issubclass(PROMPTS.get(n).cls, FilePromptSet)]


@pytest.mark.parametrize("cls", _file_prompt_sets(), ids=lambda c: c.registry_name)
def test_missing_default_eval_file_is_an_error_naming_it_and_the_fix(cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(UserError) as info:
        cls(cls.Config()).split("eval")
    message = str(info.value)
    assert cls.default_files["eval"] in message and str(tmp_path) in message  # the file, resolved
    assert f"prompts: {{name: {cls.registry_name}, args: {{eval: /path/to/file}}}}" in message  # the suite key
    assert cls.how and cls.how in message  # where the public file comes from


def test_pickapic_eval_never_falls_back_to_a_hub_dataset(tmp_path, monkeypatch):
    """Even with a `datasets` that would serve Pick-a-Pic's hub test split, a missing file stops the run."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda *a, **k: calls.append((a, k)) or [{"caption": "a hub prompt"}]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"data/pickscore/test\.txt") as info:
        PickAPicV2(PickAPicV2.Config()).split("eval")
    assert "UGVly/DrPO" in str(info.value) and "2048" in str(info.value)
    assert calls == []
    assert not hasattr(PickAPicV2, "hub_dataset") and not hasattr(PickAPicV2, "_from_hub")
    # the file where the message says: read, all of it
    (tmp_path / "data" / "pickscore").mkdir(parents=True)
    (tmp_path / "data" / "pickscore" / "test.txt").write_text("".join(f"prompt {i}\n" for i in range(2048)))
    assert len(PickAPicV2(PickAPicV2.Config()).split("eval")) == 2048
