"""Peer IDs: check characters catch a mistyped ID at `trust` time; old IDs still work."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltasync import identity
from deltasync.errors import ConfigError

RAW = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=52, max_size=52)


@settings(max_examples=200)
@given(RAW, st.integers(0, 62), st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"))
def test_any_single_typo_is_refused(raw, pos, ch):
    shown = identity.format_id(raw)
    assert len(shown) == 63 and shown.count("-") == 7  # eight groups of seven, like Syncthing's
    assert identity.normalise_id(shown) == raw and identity.normalise_id(shown.lower().replace("-", " ")) == raw
    if shown[pos] == "-" or shown[pos] == ch:
        return
    typo = shown[:pos] + ch + shown[pos + 1:]
    with pytest.raises(ConfigError, match="typo"):
        identity.normalise_id(typo)


@given(RAW)
def test_ids_from_before_check_characters_are_accepted(raw):
    old_style = "-".join(raw[i:i + 7] for i in range(0, 52, 7))  # what earlier versions printed
    assert identity.normalise_id(old_style) == raw


@pytest.mark.parametrize("text", ["", "ABC", "A" * 53, "A" * 57, "1" * 56, "A" * 55 + "!"])
def test_not_an_id(text):
    with pytest.raises(ConfigError):
        identity.normalise_id(text)
