import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafixtures import write_jsonl

from tuneloop.data.load import expand_inputs, read_rows
from tuneloop.errors import TuneloopError


def test_jsonl_rows_keep_line_numbers_and_bad_lines_do_not_stop_the_file(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, '{"text": "broken', "", "[1, 2]", {"text": "four"}])
    rows = list(read_rows(str(p)))
    assert [r.line for r in rows] == [1, 2, 4, 5]  # the blank line 3 is no row
    assert rows[0].obj == {"text": "one"} and rows[0].error is None
    assert rows[1].error.kind == "invalid JSON" and "column" in rows[1].error.reason
    assert rows[1].raw == '{"text": "broken'
    assert rows[2].error.kind == "not an object" and "array" in rows[2].error.reason
    assert rows[3].obj == {"text": "four"}


def test_undecodable_bytes_reject_only_that_line(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n{"text": "fine"}\n')
    rows = list(read_rows(str(p)))
    assert [r.error.kind if r.error else None for r in rows] == [None, "not UTF-8", None]
    assert "0xe9" in rows[1].error.reason and rows[1].line == 2
    assert "caf\\xe9" in rows[1].raw


def test_json_array_and_json_that_is_really_jsonl(tmp_path: Path) -> None:
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([{"text": "a"}, {"text": "b"}, 3]))
    rows = list(read_rows(str(arr)))
    assert [r.line for r in rows] == [1, 2, 3] and rows[2].error.kind == "not an object"
    lines = write_jsonl(tmp_path / "b.json", [{"text": "a"}, {"text": "b"}])
    assert [r.obj for r in read_rows(str(lines))] == [{"text": "a"}, {"text": "b"}]


def test_broken_json_file_keeps_the_elements_before_the_break(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('[{"text": "a"},\n {"text": ]')
    first, broken = read_rows(str(p))
    assert first.obj == {"text": "a"}
    assert broken.error.kind == "invalid JSON" and broken.line == 2 and "line 2" in broken.error.reason
    p.write_text('{"text": ]')
    (row,) = read_rows(str(p))
    assert row.error.kind == "invalid JSON" and row.line == 1


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(',text,label\n0,"hello, ""world""",spam\n1,"two\nlines",ham\n2,too,many,fields\n', encoding="utf-8")
    rows = list(read_rows(str(csv_path)))
    assert rows[0].obj == {"text": 'hello, "world"', "label": "spam"}  # the unnamed pandas index column is dropped
    assert rows[1].obj["text"] == "two\nlines" and rows[1].line == 3
    assert rows[2].line == 5 and rows[2].error.kind == "wrong field count"
    tsv = tmp_path / "a.tsv"
    tsv.write_text("text\tlabel\nhi there\t1\n", encoding="utf-8")
    assert [r.obj for r in read_rows(str(tsv))] == [{"text": "hi there", "label": "1"}]


def test_csv_with_bom_and_undecodable_row(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_bytes("\ufefftext,label\n".encode() + b"ok,1\nbad \xff,0\n")
    rows = list(read_rows(str(p)))
    assert rows[0].obj == {"text": "ok", "label": "1"}
    assert rows[1].error.kind == "not UTF-8" and rows[1].line == 3


def test_parquet(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1], "blob": [b"ok", b"\xff"]}), p)
    rows = list(read_rows(str(p)))
    assert rows[0].obj == {"text": "a", "label": 0, "blob": "ok"} and rows[0].line == 1
    assert rows[1].error.kind == "not UTF-8" and "blob" in rows[1].error.reason


def test_globs_are_expanded_sorted_and_errors_name_the_problem(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl"):
        write_jsonl(tmp_path / name, [{"text": "x"}])
    assert expand_inputs([str(tmp_path / "*.jsonl")]) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    with pytest.raises(TuneloopError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.csv")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TuneloopError, match="unknown file type '.txt'"):
        expand_inputs([str(tmp_path / "notes.txt")])
    with pytest.raises(TuneloopError, match="no input files"):
        expand_inputs([])
