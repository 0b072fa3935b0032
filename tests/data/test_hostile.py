"""Hostile data files (issue 13, items 13–16): a bad row is rejected with file, line and reason; good rows stay."""

import json
from pathlib import Path

from datafixtures import make_cfg, read_jsonl, sentences

from tuneloop.data import run
from tuneloop.data.load import read_rows

BOM = b"\xef\xbb\xbf"


def good(n: int, seed: int = 0) -> list[str]:
    """`n` distinct classification rows as JSON lines."""
    return [json.dumps({"text": t, "label": "ab"[i % 2]}) for i, t in enumerate(sentences(n, seed=seed))]


def kept_texts(out: Path) -> set[str]:
    return {r["text"] for name in ("train", "val", "test") for r in read_jsonl(out / f"{name}.jsonl")}


def prepare(tmp_path: Path, data: Path, **kw: object) -> tuple[set[str], list[dict]]:
    out = tmp_path / "out"
    run(make_cfg(out, [data], near_dup=False, **kw))
    return kept_texts(out), read_jsonl(out / "rejects.jsonl")


def test_lone_surrogate_key_is_one_reject(tmp_path: Path) -> None:
    rows = good(20)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(rows[:5] + ['{"\\ud800": "x", "text": "surrogate key", "label": "a"}'] + rows[5:]) + "\n")
    kept, rejects = prepare(tmp_path, data)
    assert kept == {json.loads(r)["text"] for r in rows}
    (rej,) = rejects
    assert (rej["source"], rej["line"], rej["kind"]) == (str(data), 6, "invalid Unicode")
    assert "surrogate" in rej["reason"]


def test_lone_surrogate_in_json_array_element(tmp_path: Path) -> None:
    rows = [json.loads(r) for r in good(10)]
    data = tmp_path / "d.json"
    data.write_text("[" + ",".join([json.dumps(r) for r in rows] + ['{"text": "bad \\udc00", "label": "a"}']) + "]")
    kept, rejects = prepare(tmp_path, data)
    assert kept == {r["text"] for r in rows}
    assert [(r["line"], r["kind"]) for r in rejects] == [(11, "invalid Unicode")]


def test_deeply_nested_row_is_one_reject(tmp_path: Path) -> None:
    rows = good(20)
    deep = '{"text": "deep", "label": "a", "x": ' + "[" * 2000 + "]" * 2000 + "}"
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(rows[:3] + [deep] + rows[3:]) + "\n")
    kept, rejects = prepare(tmp_path, data)
    assert kept == {json.loads(r)["text"] for r in rows}
    assert [(r["line"], r["kind"]) for r in rejects] == [(4, "too deeply nested")]


def test_deeply_nested_element_of_a_json_array_keeps_the_others(tmp_path: Path) -> None:
    rows = [json.loads(r) for r in good(10)]
    deep = '{"text": "deep", "label": "a", "x": ' + "[" * 2000 + "]" * 2000 + "}"
    body = [json.dumps(r) for r in rows]
    data = tmp_path / "d.json"
    data.write_text("[" + ",\n".join(body[:4] + [deep] + body[4:]) + "]")
    kept, rejects = prepare(tmp_path, data)
    assert kept == {r["text"] for r in rows}
    assert [(r["line"], r["kind"]) for r in rejects] == [(5, "too deeply nested")]
    # Nesting below Python's limit but far beyond any real record is refused too (later stages recurse).
    assert [r.error.kind for r in read_rows(str(_write(tmp_path / "e.jsonl", '{"a": ' + "[" * 200 + "]" * 200 + "}")))] == [
        "too deeply nested"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def test_bom_is_accepted_in_jsonl_json_and_csv(tmp_path: Path) -> None:
    rows = good(12)
    jl = tmp_path / "a.jsonl"
    jl.write_bytes(BOM + ("\n".join(rows) + "\n").encode())
    arr = tmp_path / "b.json"
    arr.write_bytes(BOM + ("[" + ",".join(rows) + "]").encode())
    csv_path = tmp_path / "c.csv"
    csv_path.write_bytes(BOM + b'"text","label"\n"hello there",a\n')
    assert all(r.error is None for r in read_rows(str(jl))) and len(list(read_rows(str(jl)))) == 12
    assert all(r.error is None for r in read_rows(str(arr))) and len(list(read_rows(str(arr)))) == 12
    assert [r.obj for r in read_rows(str(csv_path))] == [{"text": "hello there", "label": "a"}]


def test_unterminated_csv_quote_does_not_swallow_the_next_row(tmp_path: Path) -> None:
    texts = sentences(12, seed=3)
    lines = ["text,label"] + [f"{t},{'ab'[i % 2]}" for i, t in enumerate(texts)]
    lines.insert(4, '"an unterminated quote,a')  # line 5 of the file
    lines.insert(8, '"closed too late",b')  # its quote used to end the unterminated field, rows 6-8 inside it
    data = tmp_path / "d.csv"
    data.write_text("\n".join(lines) + "\n")
    kept, rejects = prepare(tmp_path, data)
    assert kept == set(texts) | {"closed too late"}
    assert [(r["line"], r["kind"]) for r in rejects] == [(5, "malformed CSV")]
    assert rejects[0]["raw"] == '"an unterminated quote,a'


def test_unterminated_quote_at_the_end_of_a_tsv(tmp_path: Path) -> None:
    data = tmp_path / "d.tsv"
    data.write_text('text\tlabel\none row\ta\n"two rows\tb\nthree rows\ta\n')
    rows = list(read_rows(str(data)))
    assert [(r.line, r.obj, r.error.kind if r.error else None) for r in rows] == [
        (2, {"text": "one row", "label": "a"}, None), (3, None, "malformed CSV"),
        (4, {"text": "three rows", "label": "a"}, None)]


def test_multi_line_quoted_fields_still_work(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text('text,label\n"Dear Sir,\nthanks, bye\n",a\nnext,b\n')
    assert [(r.line, r.obj) for r in read_rows(str(data))] == [
        (2, {"text": "Dear Sir,\nthanks, bye\n", "label": "a"}), (5, {"text": "next", "label": "b"})]


def test_mixed_record_formats_in_one_file_are_all_kept(tmp_path: Path) -> None:
    q = sentences(5, seed=9)
    rows = [
        {"messages": [{"role": "user", "content": q[0]}, {"role": "assistant", "content": "one"}]},
        {"instruction": q[1], "input": "", "output": "two"},
        {"conversations": [{"from": "human", "value": q[2]}, {"from": "gpt", "value": "three"}]},
        {"prompt": q[3], "completion": "four"},
        {"question": q[4], "answer": "five"},
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    result = run(make_cfg(out, [data], task="generate", near_dup=False, val_fraction=0.0, test_fraction=0.0))
    users = {m["content"] for r in read_jsonl(out / "train.jsonl") for m in r["messages"] if m["role"] == "user"}
    assert users == set(q[:4])
    (rej,) = read_jsonl(out / "rejects.jsonl")
    assert rej["line"] == 5 and rej["kind"] == "unknown format"
    assert all(name in rej["reason"] for name in ("messages", "conversations", "instruction", "prompt"))
    assert result.manifest["inputs"][0]["format"] == "messages+sharegpt+alpaca+prompt_completion"


def test_integer_too_long_for_python_is_one_reject(tmp_path: Path) -> None:
    rows = good(6)
    big = '{"text": "big", "label": ' + "9" * 5000 + "}"
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(rows[:3] + [big] + rows[3:]) + "\n")
    kept, rejects = prepare(tmp_path, data)
    assert kept == {json.loads(r)["text"] for r in rows}
    assert [(r["line"], r["kind"]) for r in rejects] == [(4, "invalid JSON")] and "4,300 digits" in rejects[0]["reason"]
    arr = tmp_path / "e.json"
    arr.write_text("[" + ",".join(rows[:2] + [big] + rows[2:4]) + "]")
    assert [r.error.kind if r.error else None for r in read_rows(str(arr))] == [None, None, "invalid JSON", None, None]
