import pytest

from pic_bench.config import (Config, ConfigError, apply, build, config_hash, load_ablation, parse_cli_overrides,
                              validate)


def test_defaults_are_the_papers_main_setting():
    c = Config()
    assert (c.pic.softmax, c.pic.tau, c.pic.K, c.pic.correction, c.pic.scheduler) == ("cosine", 0.2, 65536, True,
                                                                                      "sliding")
    assert (c.pic.D, c.pic.S, c.model.head, c.model.dim, c.data.aug) == (131072, 16384, "mlp", 128, "strong")


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().pic.tau = 1.0  # type: ignore[misc]


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\noverrides: {pic.tua: 0.1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*pic\.tua"):
        load_ablation(f)


def test_wrong_type_names_key_and_file(tmp_path):
    f = tmp_path / "bad_type.yaml"
    f.write_text("name: t\nsweep:\n  pic.K: [4096, 'many']\n")
    with pytest.raises(ConfigError, match=r"bad_type\.yaml.*'pic\.K' expects int"):
        load_ablation(f)


def test_bad_choice_and_bad_section_are_refused():
    with pytest.raises(ConfigError, match="pic.softmax"):
        apply(Config(), {"pic.softmax": "cosin"}, "cli")
    with pytest.raises(ConfigError, match="unknown config key 'picc.K'"):
        apply(Config(), {"picc.K": 3}, "cli")
    with pytest.raises(ConfigError, match="unknown top-level"):
        import tempfile, pathlib
        p = pathlib.Path(tempfile.mkdtemp()) / "x.yaml"
        p.write_text("name: x\nsweeep: {}\n")
        load_ablation(p)


def test_cli_overrides_parse_yaml_scalars():
    o = parse_cli_overrides(["pic.K=1024", "pic.correction=false", "pic.tau=0.1", "data.root=/x"])
    assert o == {"pic.K": 1024, "pic.correction": False, "pic.tau": 0.1, "data.root": "/x"}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_cli_overrides(["pic.K"])


def test_sweep_product_zip_and_cells(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\ncells: [{pic.scheduler: epoch}, {pic.scheduler: sliding}]\n"
                 "sweep:\n  pic.K: [256, 0]\n  'pic.D,pic.S': [[512, 64], [1024, 128]]\nseeds: [0, 1]\n")
    a = load_ablation(f)
    cells = a.cell_overrides()
    assert len(cells) == 2 * 2 * 2
    assert {"pic.scheduler": "epoch", "pic.K": 256, "pic.D": 1024, "pic.S": 128} in cells
    resolved = a.resolve("smoke")
    assert resolved[0][1].pic.scheduler == "epoch" and resolved[0][1].data.dataset == "digits"


def test_zip_arity_is_checked(tmp_path):
    f = tmp_path / "z.yaml"
    f.write_text("name: z\nsweep:\n  'pic.D,pic.S': [[512]]\n")
    with pytest.raises(ConfigError, match="zips 2 keys"):
        load_ablation(f)


def test_config_hash_ignores_seed_but_not_settings():
    a = build("smoke")
    assert config_hash(a) == config_hash(apply(a, {"run.seed": 5}, "t"))
    assert config_hash(a) != config_hash(apply(a, {"pic.K": 32}, "t"))


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="pic.S <= pic.D"):
        validate(apply(Config(), {"pic.S": 10, "pic.D": 5}, "t"))
    with pytest.raises(ConfigError, match="smaller than the batch"):
        validate(apply(Config(), {"pic.K": 8}, "t"))


def test_presets_are_valid():
    for p in ("smoke", "small", "paper"):
        validate(build(p))
    with pytest.raises(ConfigError, match="unknown preset"):
        build("huge")


def test_a_preset_can_replace_sweep_cells_default_and_seeds(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("name: p\nsweep: {pic.K: [256, 0]}\ndefault_cell: {pic.K: 0}\nseeds: [0, 1, 2]\n"
                 "presets:\n  paper:\n    pic.tau: 0.1\n    sweep: {pic.K: [65536, 0]}\n    seeds: [7]\n"
                 "    default_cell: {pic.K: 65536}\n")
    a = load_ablation(f)
    small, paper = a.for_preset("small"), a.for_preset("paper")
    assert [c["pic.K"] for c in small.cell_overrides()] == [256, 0] and small.seeds == [0, 1, 2]
    assert [c["pic.K"] for c in paper.cell_overrides()] == [65536, 0] and paper.seeds == [7]
    assert paper.default_cell == {"pic.K": 65536}
    cfgs = paper.resolve("paper")
    assert cfgs[0][1].pic.K == 65536 and cfgs[0][1].pic.tau == 0.1
    g = tmp_path / "q.yaml"
    g.write_text("name: q\npresets:\n  paper:\n    sweep: {pic.KK: [1]}\n")
    with pytest.raises(ConfigError, match=r"q\.yaml.*pic\.KK"):
        load_ablation(g)


def test_plain_sections_is_to_dict_on_random_configs():
    """config_hash's fast path (plain_sections) against its reference (dataclasses.asdict via to_dict), on
    configs with fresh random values of every field's type, -0.0 and nan among the floats."""
    import dataclasses
    import json
    import math
    import random

    from pic_bench.config import _field_types, plain_sections, to_dict

    rng = random.Random()
    for _ in range(50):
        cfg = Config()
        for section in dataclasses.fields(cfg):
            part = getattr(cfg, section.name)
            values = {}
            for name, typ in _field_types(type(part)).items():
                if typ is bool:
                    values[name] = rng.random() < 0.5
                elif typ is int:
                    values[name] = rng.randint(-10**6, 10**6)
                elif typ is float:
                    values[name] = rng.choice([rng.uniform(-1e3, 1e3), -0.0, 0.0, math.nan, math.inf])
                else:
                    values[name] = "".join(rng.choice("abc/é ") for _ in range(rng.randint(0, 8)))
            cfg = dataclasses.replace(cfg, **{section.name: dataclasses.replace(part, **values)})
        fast, ref = plain_sections(cfg), to_dict(cfg)
        assert json.dumps(fast, sort_keys=True) == json.dumps(ref, sort_keys=True)
        assert list(fast) == list(ref) and all(list(fast[s]) == list(ref[s]) for s in ref)
# ------------------------------------------------------------------------------------- issue 22: what is read
ABL_TEXT = "name: enc\n# K of the recent negatives, 'épreuve'\nsweep: {pic.K: [64, 0]}\nseeds: [0]\n"


def test_an_ablation_file_in_utf8_with_or_without_a_bom_loads(tmp_path):
    for i, data in enumerate((ABL_TEXT.encode("utf-8"), b"\xef\xbb\xbf" + ABL_TEXT.encode("utf-8"))):
        f = tmp_path / f"u{i}.yaml"
        f.write_bytes(data)
        a = load_ablation(f)
        assert a.name == "enc" and [c["pic.K"] for c in a.cell_overrides()] == [64, 0]


@pytest.mark.parametrize("codec, named", [
    ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32"),
    ("latin-1", "Latin-1"), ("cp1252", "Windows-1252"),
])
def test_an_ablation_file_in_another_encoding_is_refused_naming_file_and_encoding(tmp_path, codec, named):
    f = tmp_path / "enc.yaml"
    f.write_bytes(ABL_TEXT.encode(codec))
    with pytest.raises(ConfigError) as e:
        load_ablation(f)
    assert str(f) in str(e.value) and named in str(e.value) and "UTF-8" in str(e.value)


def test_yaml_merge_keys_share_settings_between_cells(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("name: m\ncells:\n  - &base {pic.K: 64, pic.tau: 0.1}\n  - {<<: *base, pic.correction: false}\n"
                 "  - {<<: *base, pic.tau: 0.3}\nseeds: [0]\n")
    cells = load_ablation(f).cell_overrides()
    assert cells == [{"pic.K": 64, "pic.tau": 0.1}, {"pic.K": 64, "pic.tau": 0.1, "pic.correction": False},
                     {"pic.K": 64, "pic.tau": 0.3}]  # a key written beside the merge overrides the merged one


def test_the_strict_loader_still_refuses_real_duplicates_beside_a_merge(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("name: d\ncells:\n  - &base {pic.K: 64}\n  - <<: *base\n    pic.tau: 0.1\n    pic.tau: 0.2\n")
    with pytest.raises(ConfigError, match=r"d\.yaml.*duplicate key 'pic\.tau' at line 6"):
        load_ablation(f)


@pytest.mark.parametrize("text, where", [
    ("name: n\noverrides:\n  optim: {base_lr: 1}\n  optim.base_lr: 2\n", "overrides"),
    ("name: n\ncells:\n  - {optim: {base_lr: 1}, optim.base_lr: 2}\n", "cells"),
    ("name: n\ndefault_cell: {pic: {K: 0}, pic.K: 0}\nsweep: {pic.K: [0]}\n", "default_cell"),
    ("name: n\npresets:\n  smoke: {pic: {tau: 0.1}, pic.tau: 0.3}\n", "presets.smoke"),
])
def test_a_key_given_nested_and_dotted_in_one_mapping_is_refused(tmp_path, text, where):
    f = tmp_path / "n.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_ablation(f)
    msg = str(e.value)
    assert str(f) in msg and where in msg and "given twice" in msg


def test_nested_and_dotted_on_the_command_line_too():
    with pytest.raises(ConfigError, match="command line.*'optim.base_lr' is given twice"):
        apply(Config(), {"optim": {"base_lr": 1.0}, "optim.base_lr": 2.0}, "command line")


@pytest.mark.parametrize("name", ["", None, True, 3, ".", "..", ".hidden", "a/b", "x y", "../up"])
def test_the_name_rule_refuses_what_tables_could_not_write(name):
    from pic_bench.config import name_problem
    from pic_bench.report.tables import TableError, resolve

    assert name_problem(name)
    if isinstance(name, str):  # the table writer applies the same rule to a bare name ('a/b' reads as a path)
        with pytest.raises((TableError, ConfigError)):
            resolve(name)


@pytest.mark.parametrize("name", ["negatives_k", "a.b-c_1", "T2"])
def test_the_name_rule_takes_plain_names(name):
    from pic_bench.config import name_problem

    assert name_problem(name) == ""


@pytest.mark.parametrize("key, bad, good", [
    ("optim.momentum", [1.0, 1.5, -0.1], [0.0, 0.99]), ("eval.sgd_momentum", [1.0, -0.5], [0.0, 0.9]),
    ("optim.weight_decay", [-1e-4], [0.0, 5e-4]), ("eval.sgd_weight_decay", [-1.0], [0.0]),
    ("eval.linear_lr", [0.0, -1.0], [1e-3]), ("eval.sgd_lr", [0.0, -30.0], [30.0]),
    ("optim.warmup_epochs", [1.5, 1000.0], [0.0, 1.0]), ("eval.sgd_warmup_epochs", [101.0], [100.0]),
    ("optim.final_lr_ratio", [-0.1, 1.5], [0.0, 0.1, 1.0]),
    ("pic.w_init_std", [-0.01, 0.0], [0.01]), ("run.seed", [-1, 2**63, 2**64], [0, 2**63 - 1]),
])
def test_value_ranges_name_key_value_and_origin(key, bad, good):
    """smoke: optim.epochs=1, eval.sgd_epochs=100."""
    base = build("smoke")
    for v in bad:
        with pytest.raises(ConfigError) as e:
            validate(apply(base, {key: v}, "t"), where="origin-x")
        assert f"{key}={v}" in str(e.value) and "origin-x" in str(e.value)
    for v in good:
        validate(apply(base, {key: v}, "t"))


def test_a_zero_classifier_init_is_fine_for_the_plain_softmax():
    validate(build("smoke", {"pic.softmax": "plain", "pic.w_init_std": 0.0}))


def test_seeds_beyond_what_the_rngs_take_are_refused_and_the_limit_is_what_torch_takes():
    import torch

    from pic_bench.config import SEED_LIMIT, parse_seeds

    with pytest.raises(ConfigError, match=r"--seeds 18446744073709551616.*2\*\*63"):
        parse_seeds(str(2**64))
    assert parse_seeds(str(SEED_LIMIT - 1)) == [SEED_LIMIT - 1]
    # the largest seed passes every seeding the code does: torch with the evaluation's offset (+31)
    torch.Generator().manual_seed(SEED_LIMIT - 1 + 31)
    from pic_bench.pic.train import seed_everything

    seed_everything(SEED_LIMIT - 1)


def test_merge_keys_chain_and_list_without_false_duplicates():
    from pic_bench.config import load_yaml

    got = load_yaml("base: &a {k: 1, j: 1}\nmid: &b {<<: *a, k: 2}\ntop: {<<: *b, j: 3}\nboth: {<<: [*b, *a], j: 4}\n")
    assert got["mid"] == {"k": 2, "j": 1} and got["top"] == {"k": 2, "j": 3} and got["both"] == {"k": 2, "j": 4}
