import json

from conftest import ds


def test_demo_small_scale_every_md5_matches(tmp_path):
    p = ds("demo", "--scale", "0.05", "--keep", tmp_path / "demo", "--json", timeout=300)
    out = json.loads(p.stdout)
    assert out["ok"] is True
    names = [s["name"] for s in out["steps"]]
    assert len(names) == 5 and names[0].startswith("File_1")
    assert "kept to resume" in names[1], "the kill lands while File_2 is moving, not after"
    kept = out["steps"][1]["bytes_sent"]  # the killed step reports what A kept of File_2
    size = (tmp_path / "demo" / "B" / "File_2").stat().st_size
    assert 0 < kept < size, "verified segments of File_2 were kept when A was killed"
    assert out["steps"][2]["bytes_sent"] <= size - kept + 64 * 1024, \
        "the resumed push sends only what A had not kept (the small files already arrived)"
    checked = [s["md5_match"] for s in out["steps"] if s["md5_match"] is not None]
    assert checked and all(checked)
    assert (tmp_path / "demo" / "A" / "File_2").stat().st_size == (tmp_path / "demo" / "B" / "File_2").stat().st_size
