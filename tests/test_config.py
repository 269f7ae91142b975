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
