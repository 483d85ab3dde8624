"""Labelled JSONL: every bad line reported by number, nothing dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router_training.data import DataError, read_jsonl, write_jsonl

GOOD = '{"prompt": "fix my python", "category": "code", "skills": ["python"]}'


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_lines_are_all_reported_with_their_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD,
        "{not json",
        "",
        '{"prompt": "x"}',
        '["a list"]',
        '{"prompt": "x", "category": "c", "scores": {"e": "high"}}',
        GOOD,
    )
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    msg = str(err.value)
    assert "4 bad line(s)" in msg
    for n, why in [
        (2, "not valid JSON"),
        (4, "'category'"),
        (5, "not a JSON object"),
        (6, "'scores'"),
    ]:
        assert f"d.jsonl:{n}: " in msg
        assert why in msg


def test_skip_bad_keeps_the_good_lines_and_returns_the_problems(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, "{oops", GOOD)
    rows, problems = read_jsonl(path, skip_bad=True)
    assert len(rows) == 2
    assert [r.line for r in rows] == [1, 3]
    assert len(problems) == 1
    assert problems[0].endswith(
        ":2: not valid JSON (Expecting property name enclosed in double quotes)"
    )


def test_messages_replace_prompt_and_are_kept(tmp_path: Path) -> None:
    line = json.dumps(
        {
            "category": "math",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and 3+3?"},
            ],
        }
    )
    (row,), _ = read_jsonl(write(tmp_path, line))
    assert row.prompt == "2+2?\n\nand 3+3?"
    assert row.extra["messages"][0]["role"] == "system"
    assert "prompt" not in row.to_json()


def test_line_separator_inside_a_string_is_not_a_line_break(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"prompt": "a\u2028b", "category": "x"}, ensure_ascii=False))
    rows, _ = read_jsonl(path)
    assert rows[0].prompt == "a\u2028b"


def test_round_trip(tmp_path: Path) -> None:
    rows, _ = read_jsonl(write(tmp_path, GOOD))
    write_jsonl(tmp_path / "out.jsonl", rows)
    again, _ = read_jsonl(tmp_path / "out.jsonl")
    assert again[0].to_json() == rows[0].to_json()


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no examples"):
        read_jsonl(write(tmp_path, ""))
    with pytest.raises(DataError, match="cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")
