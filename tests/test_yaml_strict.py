"""Strict YAML for suites: duplicate keys, alias bombs and deep nesting are refused; real suites load as before."""

import os
import tracemalloc
from pathlib import Path

import pytest
import yaml

from drpo_bench.suite import yaml_strict
from drpo_bench.errors import ConfigError, UserError
from drpo_bench.suite.yaml_strict import (
    MAX_ALIAS_DEPTH,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_FILE_NODES,
    MAX_NAME_LENGTH,
    MAX_NODES,
    ensure_inside,
    load_yaml,
    read_yaml_file,
    safe_name,
)

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").rglob("*.yaml"))
FIXTURES = Path(__file__).parent / "malformed"


def refused(text: str, source: str = "suite.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        load_yaml(text, source)
    return " ".join(str(info.value).split())


def expanded_nodes(value) -> int:
    """Nodes of ``value`` with every shared object counted each time it appears (keys count too)."""
    if isinstance(value, dict):
        return 1 + sum(1 + expanded_nodes(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(expanded_nodes(v) for v in value)
    return 1


def bomb(levels: int, width: int = 10) -> str:
    """The "billion laughs": width**levels leaves from a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# ---- duplicate keys ------------------------------------------------------------------------


def test_duplicate_top_level_key_names_key_and_both_lines():
    text = "name: x\nseeds: [0]\nbudget: {steps: 1}\nseeds: [1, 2]\n"
    msg = refused(text)
    assert msg.startswith("suite.yaml, line 4: duplicate key `seeds` (first at line 2)")
    assert "each key may appear once in a mapping" in msg


def test_duplicate_key_inside_a_list_item():
    path = FIXTURES / "dup_method_key.yaml"
    msg = refused(path.read_text(), str(path))
    assert msg.startswith(f"{path}, line 11: duplicate key `method` (first at line 9)")
    assert yaml.safe_load(path.read_text())["methods"][1]["method"] == "raft", "plain YAML keeps only the last one"


def test_duplicate_key_in_one_flow_mapping_and_equal_spellings():
    assert "line 2: duplicate key `method` (first at line 2)" in refused("methods:\n  - {id: a, method: base, method: raft}\n")
    # the same key spelled two ways is still the same key
    assert "duplicate key `0x1` (first at line 1)" in refused("1: a\n0x1: b\n")
    assert "duplicate key `1` (first at line 1)" in refused("true: a\n1: b\n")  # True == 1 as a dict key
    assert load_yaml("1: a\n'1': b\n", "s")[0] == {1: "a", "1": "b"}


def test_distinct_mappings_may_reuse_keys():
    text = "a: {id: x, method: base}\nb: {id: y, method: base}\nc: [{k: 1}, {k: 2}]\n"
    assert load_yaml(text, "s")[0] == yaml.safe_load(text)


# ---- aliases and size --------------------------------------------------------------------------


@pytest.fixture()
def work(monkeypatch):
    """Counts the loader's work: nodes composed from the text, and nodes the alias checker visits or
    measures. A refusal that expanded the aliases would visit ~10^levels nodes."""
    counts = {"composed": 0, "checked": 0}
    compose, visit, measure = yaml_strict._Loader.compose_node, yaml_strict._Checker.visit, yaml_strict._Checker._measure

    def counted(name, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(yaml_strict._Loader, "compose_node", counted("composed", compose))
    monkeypatch.setattr(yaml_strict._Checker, "visit", counted("checked", visit))
    monkeypatch.setattr(yaml_strict._Checker, "_measure", counted("checked", measure))
    return counts


@pytest.mark.parametrize("levels", [10, 30])
def test_alias_bomb_is_refused_with_work_and_memory_bounded_by_the_text(levels, work):
    text = bomb(levels)
    assert len(text) < 100 * levels
    tracemalloc.start()
    try:
        msg = refused(text)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert f"more than {MAX_NODES} nodes" in msg and "line " in msg
    written = text.count(",") + text.count("&") + text.count("*") + 2 * levels + 10  # an upper bound on written nodes
    assert work["composed"] <= written, f"composed {work['composed']} nodes for a text of <= {written}"
    assert work["checked"] <= 4 * written, f"the alias check visited {work['checked']} nodes: it expanded the aliases"
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_alias_bomb_fixture_is_refused(work):
    path = FIXTURES / "alias_bomb.yaml"
    text = path.read_text()
    msg = refused(text, str(path))
    assert msg.startswith(f"{path}, line ") and f"more than {MAX_NODES} nodes" in msg
    assert work["checked"] <= 4 * (len(text) + 10), f"the alias check visited {work['checked']} nodes"


def test_node_limit_is_exact():
    """An expansion of exactly MAX_NODES loads; one more node is refused."""
    block = "a: &a [" + ", ".join(["x"] * 999) + "]\n"  # 1000 nodes, plus the key
    copies = 98
    text = block + "b: [" + ", ".join(["*a"] * copies) + "]\n"
    base = expanded_nodes(yaml.safe_load(text))
    pad = MAX_NODES - base  # scalars appended to b: one node each
    assert 0 <= pad < 1000
    fits = block + "b: [" + ", ".join(["*a"] * copies + ["y"] * pad) + "]\n"
    data, _ = load_yaml(fits, "s")
    assert expanded_nodes(data) == MAX_NODES and data == yaml.safe_load(fits)
    over = block + "b: [" + ", ".join(["*a"] * copies + ["y"] * (pad + 1)) + "]\n"
    assert f"more than {MAX_NODES} nodes" in refused(over)


def test_alias_depth_limit():
    def chain(hops: int) -> str:
        lines = ["l0: &l0 [x]"] + [f"l{i}: &l{i} [*l{i - 1}]" for i in range(1, hops + 1)]
        return "\n".join(lines) + "\n"

    ok = chain(MAX_ALIAS_DEPTH)
    assert load_yaml(ok, "s")[0] == yaml.safe_load(ok)
    assert f"aliases nested more than {MAX_ALIAS_DEPTH} deep" in refused(chain(MAX_ALIAS_DEPTH + 1))


def test_recursive_alias_is_refused():
    assert "recursive alias" in refused("a: &a [1, *a]\n")
    assert "recursive alias" in refused("a: &a {k: 1, <<: *a}\n")


def test_deep_nesting_is_a_config_error_not_a_recursion_error():
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_yaml(ok, "s")[0] == yaml.safe_load(ok)
    deep = "[" * 5000 + "]" * 5000
    assert f"nesting deeper than {MAX_DEPTH} levels" in refused(deep)
    # depth reached only through aliases counts as well
    nested = "[" * 30 + "]" * 30
    through = f"a: &a {nested}\nb: " + "[" * 25 + "*a" + "]" * 25 + "\n"
    assert f"nests deeper than {MAX_DEPTH} levels" in refused(through)


def test_file_size_and_value_count_limits(tmp_path, monkeypatch):
    big = "# " + "x" * MAX_BYTES + "\nname: x\n"
    assert f"over the {MAX_BYTES}-byte limit" in refused(big)
    many = "[" + ", ".join(["x"] * (MAX_FILE_NODES + 1)) + "]"
    assert len(many.encode()) <= MAX_BYTES
    composed = []
    compose = yaml_strict._Loader.compose_node
    monkeypatch.setattr(yaml_strict._Loader, "compose_node", lambda *a, **k: composed.append(1) or compose(*a, **k))
    assert f"more than {MAX_FILE_NODES} values" in refused(many)
    assert len(composed) <= MAX_FILE_NODES + 2, f"composed {len(composed)} nodes: the count must stop at the limit"
    monkeypatch.undo()
    # read_yaml_file refuses a large file from its size alone, without reading it
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(10 * 2**30)  # sparse: 10 GiB on paper, nothing on disk
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read the whole file"))
    with pytest.raises(ConfigError, match="over the"):
        read_yaml_file(path)


# ---- what still loads --------------------------------------------------------------------------


@pytest.mark.parametrize("path", SUITES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_suite_loads_as_safe_load_does(path):
    text = path.read_text()
    data, node = load_yaml(text, str(path))
    assert data == yaml.safe_load(text)
    assert isinstance(node, yaml.MappingNode)
    assert yaml.compose(text, Loader=yaml.SafeLoader).value[0][0].value == node.value[0][0].value


def test_quickstart_anchor_loads_and_is_not_shared():
    path = ROOT / "suites/quickstart.yaml"
    text = path.read_text()
    assert "&drpo" in text and "*drpo" in text, "the test relies on quickstart's anchor"
    data, node = load_yaml(text, str(path))
    plain = yaml.safe_load(text)
    assert data == plain
    ids = [m["id"] for m in data["methods"]]
    drpo, checker = data["methods"][ids.index("drpo")], data["methods"][ids.index("drpo-checker")]
    assert drpo["args"] == checker["args"] and drpo["args"]["n_pos"] == 4
    # PyYAML shares one dict between the anchor and its alias; an override must change only one
    assert plain["methods"][ids.index("drpo")]["args"] is plain["methods"][ids.index("drpo-checker")]["args"]
    drpo["args"]["n_pos"] = 2
    assert checker["args"]["n_pos"] == 4
    # the node tree gives the lines the config loader reports
    keys = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    assert text.splitlines()[keys["methods"] - 1].startswith("methods:")


def test_merge_keys_are_supported_and_bounded():
    text = (
        "base: &b {n_pos: 4, n_neg: 4}\n"
        "methods:\n"
        "  - {id: a, args: {<<: *b, n_pos: 2}}\n"
        "  - {id: c, args: {<<: [*b, {extra: 1}]}}\n"
    )
    data, _ = load_yaml(text, "s")
    assert data == yaml.safe_load(text)
    assert data["methods"][0]["args"] == {"n_pos": 2, "n_neg": 4}
    # a merge bomb: each level merges the previous one ten times (charged in full, whatever PyYAML dedups)
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(50)) + "}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}], z{i}: 0}}" for i in range(1, 5)]
    assert f"more than {MAX_NODES} nodes" in refused("\n".join(lines) + "\n")
    assert "duplicate key `<<`" in refused("a: &a {x: 1}\nb: {<<: *a, <<: *a}\n")


def test_parses_once_without_yaml_module_helpers(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("load_yaml must compose once with its own loader")

    for name in ("compose", "load", "safe_load", "full_load"):
        monkeypatch.setattr(yaml, name, forbidden)
    composed = []
    original = yaml_strict._Loader.get_single_node
    monkeypatch.setattr(yaml_strict._Loader, "get_single_node", lambda self: composed.append(1) or original(self))
    assert load_yaml("a: &x [1]\nb: *x\n", "s")[0] == {"a": [1], "b": [1]}
    assert composed == [1]


def test_syntax_errors_stay_yaml_errors_and_empty_is_none():
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [1, 2\nb: 3\n", "s")
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: *undefined\n", "s")
    assert load_yaml("", "s") == (None, None)
    assert load_yaml("# only a comment\n", "s") == (None, None)


# ---- names and paths ------------------------------------------------------------------------------


def repo_names() -> set[str]:
    names = set()
    for path in SUITES:
        data = yaml.safe_load(path.read_text())
        names.add(data["name"])
        names.update(m["id"] for m in data["methods"])
        names.update(data.get("rewards", {}))
        for gen in data["generators"]:
            names.add(gen.get("id") or gen["name"].replace(":", ".") if isinstance(gen, dict) else gen.replace(":", "."))
    return names


def test_safe_name_accepts_every_name_in_the_shipped_suites():
    names = repo_names()
    assert {"quickstart", "drpo-checker", "base"} <= names
    for name in names:
        assert safe_name(name, "method id") == name
    assert safe_name("a" * MAX_NAME_LENGTH, "id") == "a" * MAX_NAME_LENGTH
    assert safe_name("v1.2+exp_3-b", "id") == "v1.2+exp_3-b"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("../x", "contains `..`"),
        ("..", "contains `..`"),
        ("a..b", "contains `..`"),
        ("/abs", "is a path"),
        ("a/b", "is a path"),
        ("a\\b", "is a path"),
        ("", "is empty"),
        (".hidden", "not allowed"),
        ("-flag", "not allowed"),
        ("sp ace", "not allowed"),
        ("a" * (MAX_NAME_LENGTH + 1), "characters long"),
        ("naïve", "not allowed"),
    ],
)
def test_safe_name_rejects(value, problem):
    with pytest.raises(ConfigError) as info:
        safe_name(value, "method id")
    msg = str(info.value)
    assert msg.startswith(f"method id {value!r} ") and problem in msg
    assert "letters, digits and `_ . + -`" in msg and f"1-{MAX_NAME_LENGTH}" in msg


def test_safe_name_rejects_non_strings():
    with pytest.raises(ConfigError, match="reward alias must be a string"):
        safe_name(3, "reward alias")


def test_ensure_inside(tmp_path):
    root = tmp_path / "runs"
    (root / "cell").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert ensure_inside(root, Path("cell/ckpt.pt")) == (root / "cell/ckpt.pt").resolve()
    assert ensure_inside(root, root / "not/yet/made") == (root / "not/yet/made").resolve()
    assert ensure_inside(root, Path(".")) == root.resolve()
    for bad in (Path("../outside"), Path("cell/../../outside/x"), outside, Path("/etc/passwd")):
        with pytest.raises(UserError, match="outside"):
            ensure_inside(root, bad)
    os.symlink(outside, root / "escape")
    with pytest.raises(UserError, match="outside"):
        ensure_inside(root, Path("escape/file"))
    os.symlink(root / "cell", root / "alias")  # a symlink that stays inside is fine
    assert ensure_inside(root, Path("alias/x")) == (root / "cell/x").resolve()
    sibling = tmp_path / "runs-other"  # a shared prefix is not containment
    sibling.mkdir()
    with pytest.raises(UserError):
        ensure_inside(root, sibling)
