"""Keys added after rows were committed keep old hashes and read old rows as what they ran."""
import dataclasses
import json

from pic_bench import config as C
from pic_bench.report.results import read_rows


def test_added_key_at_its_earlier_value_keeps_the_hash(monkeypatch):
    cfg = C.build("smoke")
    before = C.config_hash(cfg)
    # pretend pic.scheduler was added later and earlier code always ran 'sliding'
    monkeypatch.setitem(C.ADDED_KEYS, "pic.scheduler", "sliding")
    assert C.config_hash(cfg) != before  # the hash now omits it ...
    a = C.config_hash(cfg)
    b = C.config_hash(C.apply(cfg, {"pic.scheduler": "epoch"}, "test"))
    assert a != b  # ... and a config at another value hashes apart
    d = C.to_dict(cfg)
    del d["pic"]["scheduler"]
    assert C.with_added_keys(d)["pic"]["scheduler"] == "sliding"


def test_rows_without_an_added_key_read_as_its_earlier_value(tmp_path, monkeypatch):
    cfg = C.to_dict(C.build("smoke"))
    del cfg["pic"]["softmax"]
    row = {"ablation": "a", "preset": "smoke", "config_hash": "x", "seed": 0, "status": "ok", "metrics": {},
           "config": cfg}
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "a.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setitem(C.ADDED_KEYS, "pic.softmax", "plain")
    rows, problems = read_rows(tmp_path, "a")
    assert not problems and rows[0]["config"]["pic"]["softmax"] == "plain"
    assert dataclasses.asdict(C.build("smoke"))["pic"]["softmax"] == "cosine"


def test_recent_plays_no_part_at_K_0_so_it_is_one_cell():
    """pic.recent means nothing when all N instances are in the softmax: one hash, one cell in tables."""
    a = C.build("small", {"pic.K": 0, "pic.recent": "positions"})
    b = C.build("small", {"pic.K": 0, "pic.recent": "instances"})
    assert C.config_hash(a) == C.config_hash(b)
    k = C.build("small", {"pic.K": 512, "pic.recent": "positions"})
    assert C.config_hash(k) != C.config_hash(C.apply(k, {"pic.recent": "instances"}, "test"))
    assert C.canonical_cell({"pic.K": 0, "pic.recent": "positions"}) == {"pic.K": 0}
    assert C.canonical_cell({"pic.K": 2048, "pic.recent": "positions"}) == {"pic.K": 2048, "pic.recent": "positions"}
