"""The one output path: info once (rank 0), warnings on every rank with a rank prefix."""

from __future__ import annotations

from kdistill.log import get_logger, say


def test_info_on_rank_0_only_and_warnings_everywhere(monkeypatch, capsys):
    log = get_logger("kdistill.test")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    log.info("hello")
    log.warning("careful")
    say("a table")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["[kdistill] hello", "a table"]
    assert err == "[rank 0] [kdistill] careful\n"
    monkeypatch.setenv("RANK", "1")
    log.info("hello")
    say("a table")
    log.error("broken")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "[rank 1] [kdistill] broken\n"


def test_single_process_has_no_rank_prefix(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    get_logger(__name__).warning("w")
    assert capsys.readouterr().err == "[kdistill] w\n"
