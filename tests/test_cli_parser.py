"""The command line parsed by a parser of only the named command reads as the whole one does; the entry
that runs it exits at once, losing nothing."""
import subprocess
import sys

import pytest

from deltasync import cli

LINES = [
    ["init", "A", "--json"], ["id", "A"], ["trust", "A", "ID", "--name", "b", "--address", "h:1"],
    ["untrust", "A", "b"], ["serve", "A", "--listen", "0.0.0.0:0", "-vv"],
    ["push", "A", "h:1", "--delete", "-n", "--exclude", "*.tmp", "--bwlimit", "10M", "-z", "--max-delete", "3",
     "-u", "--force", "--json"],
    ["pull", "A", "b", "-i", "--stats", "-h"], ["sync", "A", "b", "--no-compress", "-q"],
    ["watch", "A", "--peer", "b", "--peer", "c:2", "--json"], ["status", "A", "--json"],
    ["versions", "A", "x/y"], ["restore", "A", "x", "--version", "2"], ["demo", "--scale", "0.01"],
]


@pytest.mark.parametrize("line", LINES, ids=lambda line: line[0])
def test_one_commands_parser_reads_a_line_as_the_whole_parser_does(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "A").mkdir()
    assert vars(cli.parser(line[0]).parse_args(line)) == vars(cli.parser().parse_args(line))


def test_every_command_is_in_the_table_and_help_lists_them_all(capsys):
    assert [c[0] for c in cli._COMMANDS] == ["init", "id", "trust", "untrust", "serve", "push", "pull", "sync",
                                             "watch", "status", "versions", "restore", "demo"]
    with pytest.raises(SystemExit):
        cli.parser(None).parse_args(["--help"])
    shown = capsys.readouterr().out
    assert all(f"    {c[0]} " in shown or f"    {c[0]}\n" in shown for c in cli._COMMANDS) and "rdiff" in shown


def test_a_mistyped_command_or_option_is_a_usage_error(capsys):
    for line in (["pusj", "A"], ["push", "A", "h:1", "--delte"]):
        with pytest.raises(SystemExit) as e:
            cli.parser(line[0]).parse_args(line)
        assert e.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "invalid choice: 'pusj'" in err and "'demo'" in err and "unrecognized arguments: --delte" in err


def test_help_is_as_wide_as_shutil_says_the_terminal_is(monkeypatch):
    import shutil

    for columns in ("57", "", "junk"):
        monkeypatch.setenv("COLUMNS", columns)
        assert cli._columns() == shutil.get_terminal_size().columns
    monkeypatch.setenv("COLUMNS", "57")
    assert max(len(line) for line in cli.parser("push").format_help().splitlines()) <= 55


def _entry(body: str) -> subprocess.CompletedProcess[str]:
    """`cli.run` in a process of its own, with `main` replaced by `body`'s."""
    code = f"import sys, threading, time\nfrom deltasync import cli\ndef main():\n    {body}\ncli.main = main\ncli.run()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_entry_exits_at_once_with_every_byte_written_and_the_exit_code_kept():
    r = _entry("print('x' * 200000, end='')")  # buffered: written only if flushed before the process ends
    assert (r.returncode, len(r.stdout)) == (0, 200000)
    r = _entry("print('partial'); sys.exit(3)")
    assert (r.returncode, r.stdout) == (3, "partial\n")
    r = _entry("sys.exit('deltasync: a message')")  # not a number: Python's own exit prints it, code 1
    assert (r.returncode, r.stderr.strip()) == (1, "deltasync: a message")


def test_the_entry_waits_for_a_thread_still_running():
    r = _entry("threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', flush=True))).start()")
    assert (r.returncode, r.stdout) == (0, "thread done\n")
