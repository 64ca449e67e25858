"""rsync's `--itemize-changes` letters for a plan's items, so a daily rsync
user reads deltasync's record of a session at a glance:

    <f+++++++++ new.txt        sent, new there      >f+++++++++  received, new here
    <f.st...... big.bin        sent, changed        >f.st......  received, changed
    cf+++++++++ moved/b.bin    copied from content the receiver held (a rename)
    cd+++++++++ docs/          directory created    cL+++++++++ link -> target
    hf+++++++++ b => a         a hard link of a (rsync -H)
    .f..t...... a.txt          mode or mtime only   *deleting   old.txt

A failed file gets ` (failed: why)` after its name.
"""
from __future__ import annotations

from typing import Any


def letters(item: dict[str, Any], pulled: bool) -> str:
    """The 11 columns (or `*deleting`) for one plan item."""
    op = item["op"]
    kind = "d" if item.get("kind") == "dir" else "L" if item.get("kind") == "symlink" else "f"
    if op == "delete":
        return "*deleting  "
    if op in ("send_whole", "send_delta"):
        return ("<" if not pulled else ">") + ("f+++++++++" if item.get("new") else "f.st......")
    if op == "copy":
        return "cf+++++++++"
    if op == "hardlink":
        return "hf+++++++++"
    if op == "mkdir":
        return "cd+++++++++"
    if op == "symlink":
        return "cL+++++++++"
    if op == "meta":
        return f".{kind}..t......"
    return op  # blocked, skip_newer, skip_delete: said in words


def line(item: dict[str, Any], pulled: bool, error: str | None = None) -> str:
    """One itemized line: letters, the path (a directory with `/`, a link with its target)."""
    path = item["path"] + ("/" if item["op"] == "mkdir" or item.get("kind") == "dir" and item["op"] != "delete"
                           else "")
    if item["op"] == "symlink":
        path += f" -> {item.get('target')}"
    elif item["op"] == "hardlink":
        path += f" => {item.get('from')}"
    return f"{letters(item, pulled)} {path}" + (f" (failed: {error})" if error else "")
