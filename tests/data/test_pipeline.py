import json
import subprocess
import sys
from pathlib import Path

import pytest
from datafixtures import make_cfg, read_jsonl, sentences, write_jsonl
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.data import content_id, run
from tuneloop.errors import TuneloopError

OUTPUTS = ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl", "manifest.json", "report.html")


def classify_rows(n: int = 60, seed: int = 0) -> list[dict]:
    return [{"text": t, "label": ["spam", "ham"][i % 2], "gender": ["f", "m"][i % 3 % 2]}
            for i, t in enumerate(sentences(n, seed=seed))]


def all_rows(out: Path) -> list[dict]:
    return [r for name in ("train", "val", "test") for r in read_jsonl(out / f"{name}.jsonl")]


def test_classify_end_to_end_output_contract(tmp_path: Path) -> None:
    rows = classify_rows(60)
    rows[0]["label"] = 1  # ints become strings
    rows[1]["text"] = "Café <b>déjà</b> vu, mail me at ann@example.com " + rows[1]["text"]
    data = write_jsonl(tmp_path / "d.jsonl", rows + [{"text": "no label here"}, "{broken"])
    result = run(make_cfg(tmp_path / "out", [data], val_fraction=0.2, test_fraction=0.2))
    out = result.out
    assert all((out / name).is_file() for name in OUTPUTS)
    lines = [line for s in ("train", "val", "test") for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 60 and result.splits == {"train": 36, "val": 12, "test": 12}
    for line in lines:
        rec = json.loads(line)
        assert list(rec) == ["id", "label", "meta", "text"]  # keys sorted
        assert line == json.dumps(rec, sort_keys=True, ensure_ascii=False)
        assert isinstance(rec["label"], str) and rec["id"] == content_id(text=rec["text"])
        assert rec["meta"]["source"] == str(data) and rec["meta"]["gender"] in ("f", "m")
    by_line = {json.loads(x)["meta"]["line"]: json.loads(x) for x in lines}
    assert by_line[1]["label"] == "1"
    assert by_line[2]["text"].startswith("Café déjà vu, mail me at [EMAIL] ")  # HTML stripped, PII redacted, not ASCII-escaped
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [(r["line"], r["kind"]) for r in rejects] == [(61, "missing field 'label'"), (62, "invalid JSON")]
    assert rejects[0]["raw"] == {"text": "no label here"} and rejects[0]["source"] == str(data)
    assert "--label-field" in rejects[0]["reason"]
    m = json.loads((out / "manifest.json").read_text())
    assert {"task", "labels", "counts", "inputs", "config", "seed", "length_stats"} <= set(m)
    assert m["labels"] == ["1", "ham", "spam"] and m["task"] == "classify"
    assert m["counts"]["read"] == 62 and m["counts"]["rejected_by_reason"] == {"invalid JSON": 1, "missing field 'label'": 1}
    assert m["counts"]["pii"] == {"EMAIL": 1}
    assert m["inputs"][0]["sha256"] and m["inputs"][0]["format"] == "text_label"
    assert m["length_stats"]["unit"] == "whitespace tokens" and m["length_stats"]["train"]["count"] == 36
    assert sum(m["counts"]["label_distribution"]["test"].values()) == 12
    html = (out / "report.html").read_text()
    assert 'alt="label distribution per split"' in html and 'alt="length histogram per split"' in html


def test_generate_formats_are_normalised_to_messages(tmp_path: Path) -> None:
    texts = sentences(8, seed=5)
    files = [
        write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": texts[0]},
                                                            {"role": "assistant", "content": texts[1]}], "topic": "x"}]),
        write_jsonl(tmp_path / "share.jsonl", [{"conversations": [{"from": "human", "value": texts[2]}, {"from": "gpt", "value": texts[3]}]}]),
        write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": texts[4], "input": "", "output": texts[5]}]),
        write_jsonl(tmp_path / "pc.jsonl", [{"prompt": texts[6], "completion": texts[7]}, {"prompt": "only a prompt"}]),
    ]
    result = run(make_cfg(tmp_path / "out", files, task="generate", val_fraction=0.0, test_fraction=0.0))
    train = read_jsonl(result.path("train"))
    assert [r["messages"][0]["content"] for r in train] == [texts[0], texts[2], texts[4], texts[6]]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in train)
    assert all(list(r) == ["id", "messages", "meta"] for r in train)
    assert train[0]["meta"] == {"topic": "x", "source": str(files[0]), "line": 1}
    assert [f["format"] for f in result.manifest["inputs"]] == ["messages", "sharegpt", "alpaca", "prompt_completion"]
    assert result.counts["rejected_by_reason"] == {"missing field 'completion'": 1}
    assert "labels" not in result.manifest


def test_csv_and_parquet_inputs(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = classify_rows(20, seed=6)
    csv_path = tmp_path / "a.csv"
    csv_path.write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows[:10]), encoding="utf-8")
    pq.write_table(pa.table({"text": [r["text"] for r in rows[10:]], "label": [i % 2 for i in range(10)]}), tmp_path / "b.parquet")
    result = run(make_cfg(tmp_path / "out", [csv_path, tmp_path / "b.parquet"]))
    assert result.counts["valid"] == 20 and result.manifest["labels"] == ["0", "1", "ham", "spam"]


def test_duplicates_conflicts_and_near_duplicates_are_counted(tmp_path: Path) -> None:
    rows = classify_rows(40, seed=7)
    long_text = " ".join(sentences(1, words=30, seed=8))
    extra = [
        {"text": rows[0]["text"].upper(), "label": rows[0]["label"]},  # exact copy (case differs)
        {"text": rows[1]["text"], "label": "other"},  # label conflict with row 2
        {"text": long_text, "label": "ham"},
        {"text": long_text.replace(long_text.split()[5], "different", 1), "label": "ham"},  # near copy
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows + extra)
    result = run(make_cfg(tmp_path / "out", [data]))
    c = result.counts
    assert (c["exact_duplicates"], c["label_conflicts"], c["near_duplicates"]) == (1, 2, 1)
    conflicts = [r for r in read_jsonl(result.path("rejects")) if r["kind"] == "label conflict"]
    assert [r["line"] for r in conflicts] == [2, 42] and "'other'" in conflicts[0]["reason"]
    assert sum(result.splits.values()) == 44 - 1 - 2 - 1


def test_given_test_file_and_leakage_is_removed_from_train(tmp_path: Path) -> None:
    rows = classify_rows(50, seed=9)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [rows[3], {"text": rows[4]["text"] + " extra", "label": rows[4]["label"]}]
                       + classify_rows(5, seed=10))
    result = run(make_cfg(tmp_path / "out", [data], test_file=str(test), val_fraction=0.0, near_dup_threshold=0.7))
    assert result.splits["test"] == 7
    assert (result.counts["leaked_exact"], result.counts["leaked_near"]) == (1, 1)
    train_lines = {r["meta"]["line"] for r in read_jsonl(result.path("train"))}
    assert 4 not in train_lines and 5 not in train_lines and len(train_lines) == 48
    assert [f["role"] for f in result.manifest["inputs"]] == ["data", "test"]


def test_leakage_is_checked_even_without_dedup(tmp_path: Path) -> None:
    rows = classify_rows(30, seed=11)
    data = write_jsonl(tmp_path / "d.jsonl", rows * 4)  # every row four times
    result = run(make_cfg(tmp_path / "out", [data], dedup=False, near_dup=False, val_fraction=0.2, test_fraction=0.2))
    held = {r["id"] for name in ("val", "test") for r in read_jsonl(result.path(name))}
    train = {r["id"] for r in read_jsonl(result.path("train"))}
    assert held and not (held & train)
    assert result.counts["leaked"] > 0 and result.counts["exact_duplicates"] == 0


def test_pii_drop_mode_rejects_rows_without_leaking_the_data(tmp_path: Path) -> None:
    rows = classify_rows(10, seed=12)
    rows[0]["text"] += " call me on (415) 555-2671"
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = run(make_cfg(tmp_path / "out", [data], pii="drop"))
    (reject,) = read_jsonl(result.path("rejects"))
    assert reject["kind"] == "contains PII" and "PHONE" in reject["reason"]
    assert "555-2671" not in json.dumps(reject) and "[PHONE]" in reject["raw"]["text"]
    assert "555-2671" not in "".join(p.read_text() for p in result.out.iterdir())


def test_length_limits(tmp_path: Path) -> None:
    rows = classify_rows(10, seed=13)
    rows[0]["text"] = "word " * 50
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = run(make_cfg(tmp_path / "out", [data], max_tokens=20))
    assert result.counts["rejected_by_reason"] == {"too many tokens": 1}
    result = run(make_cfg(tmp_path / "out2", [data], max_chars=100))
    assert result.counts["rejected_by_reason"] == {"too long": 1}


def test_rerun_is_byte_identical_and_seed_changes_the_split(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(80, seed=14) + ["{bad"])
    out = run(make_cfg(tmp_path / "out", [data])).out
    first = {name: (out / name).read_bytes() for name in OUTPUTS}
    run(make_cfg(tmp_path / "out", [data]))
    for name in OUTPUTS:
        assert (out / name).read_bytes() == first[name], name
    other = run(make_cfg(tmp_path / "other", [data], seed=1)).out
    assert (other / "train.jsonl").read_bytes() != first["train.jsonl"]
    assert not list(out.glob(".*"))  # the spill file is gone


def test_nothing_valid_says_why(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(120)])
    with pytest.raises(TuneloopError, match=r"^0 of 120 rows valid: 120 missing field 'label'"):
        run(make_cfg(tmp_path / "out", [data]))
    assert len(read_jsonl(tmp_path / "out" / "rejects.jsonl")) == 120


def test_chat_data_with_task_classify_and_vice_versa(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(5))
    with pytest.raises(TuneloopError, match="use --task classify"):
        run(make_cfg(tmp_path / "out", [data], task="generate"))


def test_tokenizer_lengths(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "a": 1, "b": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "ab ab", "label": "x"}, {"text": "abc", "label": "y"}])
    result = run(make_cfg(tmp_path / "out", [data], tokenizer=str(tmp_path / "tok"), max_tokens=4,
                          val_fraction=0.0, test_fraction=0.0))
    assert result.counts["rejected_by_reason"] == {"too many tokens": 1}  # "ab ab" is 5 characters
    assert result.manifest["length_stats"]["train"]["max"] == 3
    assert result.manifest["length_stats"]["unit"].startswith("tokens")


def test_cli_prepare(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"body": t, "y": i % 2} for i, t in enumerate(sentences(30, seed=15))])
    res = CliRunner().invoke(app, ["prepare", str(data), "--task", "classify", "--out", str(tmp_path / "out"),
                                   "--text-field", "body", "--label-field", "y", "--seed", "3",
                                   "--label-conflicts", "keep_majority", "--near-dup-ngram", "3", "--pii-region", "GB"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "near duplicates" in res.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["seed"] == 3 and m["labels"] == ["0", "1"] and m["config"]["text_field"] == "body"
    assert (m["config"]["label_conflicts"], m["near_dup"]["ngram"], m["config"]["pii_region"]) == ("keep_majority", 3, "GB")


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}] * 3)
    proc = subprocess.run([sys.executable, "-m", "tuneloop.cli", "prepare", str(data), "--task", "classify",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "0 of 3 rows valid: 3 missing field 'label'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
def test_lengths_with_the_default_base_models_tokenizer(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", classify_rows(20, seed=16))
    result = run(make_cfg(tmp_path / "out", [data], tokenizer="default", val_fraction=0.0, test_fraction=0.0))
    stats = result.manifest["length_stats"]
    assert stats["unit"] == "tokens (default)"
    assert stats["train"]["min"] > 12  # 12 made-up words are more than 12 subword tokens
