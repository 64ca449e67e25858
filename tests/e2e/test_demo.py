import json

from conftest import ds


def test_demo_small_scale_every_md5_matches(tmp_path):
    p = ds("demo", "--scale", "0.02", "--keep", tmp_path / "demo", "--json", timeout=300)
    out = json.loads(p.stdout)
    assert out["ok"] is True
    names = [s["name"] for s in out["steps"]]
    assert len(names) == 5 and names[0].startswith("File_1")
    assert "kept to resume" in names[1], "the kill lands while File_2 is moving, not after"
    assert out["steps"][2]["bytes_sent"] < (tmp_path / "demo" / "B" / "File_2").stat().st_size, \
        "the resumed push sends less than the whole File_2"
    checked = [s["md5_match"] for s in out["steps"] if s["md5_match"] is not None]
    assert checked and all(checked)
    assert (tmp_path / "demo" / "A" / "File_2").stat().st_size == (tmp_path / "demo" / "B" / "File_2").stat().st_size
