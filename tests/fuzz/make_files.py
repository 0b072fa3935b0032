"""Write tests/fuzz/files/: hostile data and config files for `tuneloop prepare` (issue 13's corpus).

Each data file mixes good rows with broken ones. A good row carries a marker word (`keep0001`);
`expected.json` lists, per file, the task, the markers of its good rows, the lines (or JSON array
elements) that must be rejected, or `error` when the whole file must fail with one clear line.
Each config file has `ok: true` or the words its one-line error must contain.
tests/data/test_fuzz_files.py runs prepare and load_config on every file and expects: no
traceback, every good row kept, exactly the expected rows rejected, each with file, line and reason.

    python tests/fuzz/make_files.py            # rewrite the corpus (deterministic)
    python tests/fuzz/make_files.py --check    # exit 1 if the committed corpus is stale
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("files")
BOM = b"\xef\xbb\xbf"
DEEP = 2000  # past Python's recursion limit
_rng = random.Random(13)
_VOCAB = [f"w{i}" for i in range(5000)]
_count = 0


def marker() -> str:
    """A new marker word; good rows carry one so the test can find them after cleaning."""
    global _count
    _count += 1
    return f"keep{_count:04d}"


def sentence(mark: str) -> str:
    """A text no other row in the corpus is a near duplicate of."""
    return " ".join([mark] + _rng.sample(_VOCAB, 11))


class Data:
    """A data file built line by line, remembering which lines are good and which must be rejected.

    Args:
        task: `classify` or `generate`.
    """

    def __init__(self, task: str = "classify") -> None:
        self.task = task
        self.lines: list[str] = []
        self.good: list[str] = []
        self.bad: list[int] = []
        self.line = 0  # physical lines so far

    def add(self, text: str, good: bool | None = None, mark: str | None = None) -> None:
        """Append `text` (one or more physical lines); `good` True/False records it, None is neutral."""
        if good:
            self.good.append(mark or "")
        elif good is False:
            self.bad.append(self.line + 1)
        self.lines.append(text)
        self.line += text.count("\n") + 1

    def good_json(self, n: int = 3, **extra: Any) -> None:
        """`n` good rows of this task as JSON lines."""
        for _ in range(n):
            m = marker()
            self.add(json.dumps(self.record(m, **extra), ensure_ascii=False), True, m)

    def record(self, mark: str, **extra: Any) -> dict[str, Any]:
        """A good record of this task holding `mark`."""
        if self.task == "classify":
            return {"text": sentence(mark), "label": _rng.choice(["pos", "neg"]), **extra}
        return {"prompt": sentence(mark), "completion": "yes", **extra}

    def text(self, newline: str = "\n") -> str:
        return newline.join(self.lines) + newline

    def expected(self) -> dict[str, Any]:
        return {"kind": "data", "task": self.task, "good": self.good, "rejects": self.bad}


def bytes_file(data: bytes, task: str = "classify", error: str = "", good: list[str] | None = None,
               rejects: list[int] | None = None) -> tuple[bytes, dict[str, Any]]:
    """A file given as bytes, with what must happen to it."""
    exp: dict[str, Any] = {"kind": "data", "task": task, "good": good or [], "rejects": rejects or []}
    if error:
        exp["error"] = error
    return data, exp


def jsonl_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def case(name: str, build: Callable[[Data], None], task: str = "classify", prefix: bytes = b"",
             newline: str = "\n") -> None:
        d = Data(task)
        build(d)
        files[name] = (prefix + d.text(newline).encode("utf-8", "surrogatepass"), d.expected())

    def around(*bad: str) -> Callable[[Data], None]:
        def build(d: Data) -> None:
            d.good_json(2)
            for b in bad:
                d.add(b, False)
                d.good_json(1)
        return build

    case("surrogate_key.jsonl", around('{"\\ud800": "x", "text": "lone surrogate key", "label": "pos"}'))
    case("surrogate_value.jsonl", around('{"text": "lone \\udc00 low surrogate", "label": "pos"}',
                                         '{"text": "ok", "label": "pos", "meta": {"k": ["\\udbff"]}}'))
    case("surrogate_label.jsonl", around('{"text": "surrogate label", "label": "\\ud834"}'))
    case("deep_arrays.jsonl", around('{"text": "deep", "label": "pos", "x": ' + "[" * DEEP + "]" * DEEP + "}"))
    case("deep_objects.jsonl", around('{"text": "deep", "label": "pos", "x": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}"))
    case("deep_below_recursion_limit.jsonl", around('{"text": "deep", "label": "pos", "x": ' + "[" * 300 + "]" * 300 + "}"))
    case("deep_whole_row.jsonl", around("[" * 20_000 + "]" * 20_000))
    case("bom.jsonl", lambda d: d.good_json(4), prefix=BOM)
    case("crlf.jsonl", lambda d: d.good_json(4), newline="\r\n")
    case("not_json.jsonl", around('{"text": "broken', "{'text': 'single quotes', 'label': 'pos'}", "text,label",
                                  '{"text": "trailing comma", "label": "pos",}', "NaN x", "}{"))
    case("scalars.jsonl", around("1", '"a string"', "null", "[]", "true", '[{"text": "in a list", "label": "pos"}]'))
    case("wrong_types.jsonl", around('{"text": 5, "label": "pos"}', '{"text": ["a"], "label": "pos"}',
                                     '{"text": {"a": 1}, "label": "pos"}', '{"text": "list label", "label": ["pos"]}',
                                     '{"text": "dict label", "label": {"a": 1}}', '{"text": "fraction", "label": 0.5}',
                                     '{"text": "infinite", "label": 1e400}', '{"text": "nan label", "label": NaN}'))
    case("empty_values.jsonl", around('{"text": "", "label": "pos"}', '{"text": "   ", "label": "pos"}',
                                      '{"text": "empty label", "label": ""}', '{"text": null, "label": "pos"}', "{}",
                                      '{"text": "\\u0000\\u0007\\u001b", "label": "pos"}', '{"text": "<b></b><i> </i>", "label": "pos"}'))
    case("huge_integer.jsonl", around('{"text": "big", "label": ' + "9" * 5000 + "}", '{"n": ' + "1" * 4301 + "}"))
    case("too_long.jsonl", around(json.dumps({"text": "x " * 15_000, "label": "pos"})))

    def odd_but_good(d: Data) -> None:
        d.good_json(1)
        for extra in ("\u202e\u200b\ufeff", "\U0001F600 \\ud83d\\ude00", "\u0301e\u0301", "\u4e2d\u6587 \u0627\u0644"):
            m = marker()
            d.add(json.dumps({"text": f"{extra} {sentence(m)}", "label": "pos"}, ensure_ascii=False), True, m)
        m = marker()
        d.add(f'{{"text": "decoy", "text": "{sentence(m)}", "label": "neg", "extra": {{"nested": [1, 2]}}}}', True, m)
        m = marker()
        d.add(json.dumps({"text": sentence(m), "label": 10**30, "n": 1e308, "flag": None}), True, m)
    case("odd_but_good.jsonl", odd_but_good)

    def blank_lines(d: Data) -> None:
        d.add("")
        d.good_json(1)
        d.add("   \t ")
        d.add("\u00a0", False)  # a no-break space is not JSON whitespace
        d.good_json(1)
        d.add("")
    case("blank_lines.jsonl", blank_lines)

    def mixed(d: Data) -> None:
        for build in (lambda s: {"messages": [{"role": "user", "content": s}, {"role": "assistant", "content": "a"}]},
                      lambda s: {"instruction": s, "input": "", "output": "b"},
                      lambda s: {"conversations": [{"from": "human", "value": s}, {"from": "gpt", "value": "c"}]},
                      lambda s: {"prompt": s, "completion": "d"},
                      lambda s: {"system": "be brief", "instruction": s, "output": "e"}):
            m = marker()
            d.add(json.dumps(build(sentence(m))), True, m)
        d.add('{"question": "no known format", "answer": "x"}', False)
        d.add('{"text": "classification row", "label": "pos"}', False)
        d.good_json(1)
    case("mixed_formats.jsonl", mixed, task="generate")

    def bad_chat(d: Data) -> None:
        d.good_json(1)
        for bad in ({"messages": "not a list"}, {"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
                    {"messages": [{"role": "user", "content": "no answer"}]},
                    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                                  {"role": "assistant", "content": "a"}]},
                    {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
                    {"messages": [None, 1]}, {"conversations": [{"from": "alien", "value": "x"}]},
                    {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": ""}]},
                    {"instruction": "", "output": "x"}, {"instruction": "x", "input": 5, "output": "y"},
                    {"prompt": "x"}, {"messages": [{"role": "user", "content": "x" + "[" * 10},
                                                   {"role": "assistant", "content": [[[[["deep"]]]]]}]}):
            d.add(json.dumps(bad), False)
            d.good_json(1)
        d.add('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": '
              + "[" * DEEP + "]" * DEEP + "}]}", False)
        d.good_json(1)
    case("bad_chat.jsonl", bad_chat, task="generate")

    # Bytes that are not UTF-8, and files that are not JSON Lines at all.
    g = Data()
    g.good_json(2)
    lines = [ln.encode() for ln in g.lines]
    latin = '{"text": "caf\xe9 cr\xe8me", "label": "pos"}'.encode("latin-1")
    nul = b'{"text": "nul\x00byte", "label": "pos"}'
    more = Data()
    more.good_json(2)
    body = b"\n".join(lines + [latin, nul] + [ln.encode() for ln in more.lines]) + b"\n"
    files["not_utf8_lines.jsonl"] = bytes_file(body, good=g.good + more.good, rejects=[3, 4])
    truncated = Data()
    truncated.good_json(3)
    files["truncated.jsonl"] = bytes_file((truncated.text() + '{"text": "cut off he').encode(),
                                          good=truncated.good, rejects=[4])
    utf16 = Data()
    utf16.good_json(3)
    files["utf16.jsonl"] = bytes_file(utf16.text().encode("utf-16"), error="0 of 1 rows valid: 1 not UTF-8")
    files["utf16.csv"] = bytes_file("text,label\nhello,pos\n".encode("utf-16"), error="is UTF-16")
    files["empty.jsonl"] = bytes_file(b"", error="0 rows read")
    files["only_blank.jsonl"] = bytes_file(b"\n\n  \n\r\n", error="0 rows read")
    files["binary.jsonl"] = bytes_file(bytes(range(256)) * 4, error="0 of")
    return files


def json_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def array(name: str, items: list[str | None], prefix: bytes = b"", tail: str = "]", sep: str = ",\n",
              error: str = "", rejects: list[int] | None = None) -> None:
        """A JSON array; None items become good rows, strings are the bad elements given."""
        good, bad, parts = [], [], []
        for i, item in enumerate(items, 1):
            if item is None:
                m = marker()
                good.append(m)
                parts.append(json.dumps({"text": sentence(m), "label": _rng.choice(["pos", "neg"])}))
            else:
                bad.append(i)
                parts.append(item)
        data = prefix + ("[" + sep.join(parts) + tail).encode()
        files[name] = bytes_file(data, good=good, rejects=bad if rejects is None else rejects, error=error)

    array("bom.json", [None] * 4, prefix=BOM)
    array("surrogate.json", [None, '{"text": "x", "label": "\\udfff"}', None, '{"\\udbff\\udbff": 1}', None])
    array("deep_element.json", [None, '{"text": "deep", "x": ' + "[" * DEEP + "]" * DEEP + "}", None,
                                '{"x": ' + '{"a": ' * DEEP + "0" + "}" * DEEP + "}", None])
    array("deep_element_200.json", [None, "[" * 200 + "]" * 200, None])
    array("huge_integer.json", [None, '{"text": "big", "label": ' + "9" * 5000 + "}", None])
    array("not_objects.json", [None, "1", '"s"', "null", "[]", None])
    # A broken array keeps the elements before the break; the break itself is one reject.
    array("truncated.json", [None, None], tail=',\n{"text": "cut', rejects=[3])
    array("missing_comma.json", [None, None], tail='\n{"text": "x", "label": "pos"}]', rejects=[3])
    array("trailing_garbage.json", [None, None], tail="] and then some", rejects=[2])
    one = marker()
    files["single_object.json"] = bytes_file(json.dumps({"text": sentence(one), "label": "pos"}).encode(), good=[one])
    files["scalar.json"] = bytes_file(b"42", error="0 of 1 rows valid: 1 not an object")
    files["empty_array.json"] = bytes_file(b"[ ]", error="0 rows read")
    files["not_utf8.json"] = bytes_file(b'[{"text": "caf\xe9", "label": "pos"}]', error="0 of 1 rows valid: 1 not UTF-8")
    files["deep_whole_file.json"] = bytes_file(b"[" * 20_000, error="0 of 1 rows valid: 1 too deeply nested")
    lines = Data()
    lines.good_json(3)
    files["really_jsonl.json"] = bytes_file(lines.text().encode(), good=lines.good)
    return files


def csv_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def table(name: str, rows: list[str | None], sep: str = ",", prefix: bytes = b"", header: str = "text{s}label",
              newline: str = "\n", encoding: str = "utf-8", error: str = "") -> None:
        """A CSV/TSV file; None rows become good rows, strings are the bad lines (marked by a leading '!')."""
        d = Data()
        d.add(header.format(s=sep))
        for row in rows:
            if row is None:
                m = marker()
                d.add(f"{sentence(m)}{sep}{_rng.choice(['pos', 'neg'])}", True, m)
            elif row.startswith("!"):
                d.add(row[1:].format(s=sep), False)
            else:  # a good row written by hand: its marker is the first word
                m = marker()
                d.add(row.format(s=sep, m=m), True, m)
        data = prefix + d.text(newline).encode(encoding, "surrogateescape")
        exp = d.expected()
        if error:
            exp = {**exp, "good": [], "rejects": [], "error": error}
        files[name] = (data, exp)

    table("unterminated_quote.csv", [None, '!"no closing quote{s}pos', None, None, None])
    table("unterminated_quote_closed_later.csv", [None, '!"no closing quote{s}pos', None, '"{m} closed later"{s}neg', None])
    table("unterminated_quote_at_eof.csv", [None, None, '!"no closing quote{s}pos'])
    table("unterminated_quote_in_label.csv", [None, '!text here{s}"pos', None, None])
    table("quote_mid_field.csv", [None, '!"quoted"then text{s}pos', None])
    table("field_count.csv", [None, "!one field only", "!too{s}many{s}fields", None, "!{s}{s}{s}", None])
    table("multiline_quoted_good.csv", [None, '"{m} first line\nsecond, with a comma\nthird"{s}pos', None])
    table("escaped_quotes_good.csv", [None, '"{m} says ""hi"", twice"{s}neg', '{m} a "bare" quote{s}pos', None])
    table("bom_quoted_header.csv", [None, None], prefix=BOM, header='"text"{s}"label"')
    table("crlf.csv", [None, None, '"{m} multi\r\nline"{s}pos', None], newline="\r\n")
    table("not_utf8.csv", [None, "!caf\udce9{s}pos", None])
    table("nul_byte.csv", [None, "{m} nul\x00byte{s}pos", None])  # cleaning removes the NUL
    table("empty_fields.csv", [None, "!{s}pos", "!text with no label{s}", "!   {s}pos", None])
    table("too_long.csv", [None, "!" + "x " * 15_000 + "{s}pos", None])
    table("pandas_index.csv", ["0,{m} indexed row{s}pos", "1,{m} second{s}neg"], header=",text{s}label")
    table("header_only.csv", [], error="0 rows read")
    table("broken_header.csv", [None, None], header='"text{s}label', error="0 of 1 rows valid: 1 malformed CSV")
    table("unterminated_quote.tsv", [None, '!"no closing quote{s}pos', None, None], sep="\t")
    table("bom.tsv", [None, None], sep="\t", prefix=BOM)
    table("comma_in_tsv.tsv", [None, '{m} a, b, c{s}pos', "!a\tb\tc"], sep="\t")
    return files


def other_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    return {"notes.txt": bytes_file(b'{"text": "x", "label": "pos"}\n', error="unknown file type '.txt'")}


LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def config_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Config files: `ok` ones must load, the others fail with one short message saying `says`."""
    cases: dict[str, tuple[bytes, bool, str]] = {
        "ok_bom.yaml": (BOM + b"task: classify\nseed: 3\n", True, ""),
        "ok_empty.yaml": (b"", True, ""),
        "ok_comments_only.yaml": (b"# nothing here\n", True, ""),
        "ok_small_aliases.yaml": (b"seed: &s 4\nprepare:\n  near_dup_ngram: *s\n  inputs: &in [a.jsonl]\n", True, ""),
        "ok_crlf.yaml": (b"task: generate\r\ntrain:\r\n  lr: 0.001\r\n", True, ""),
        "latin1.yaml": ("task: classify\nbase: caf\xe9\n".encode("latin-1"), False, "not UTF-8"),
        "utf16.yaml": ("task: classify\n".encode("utf-16"), False, "not UTF-8"),
        "billion_laughs.yaml": (LAUGHS.encode(), False, "aliases"),
        "recursive_alias.yaml": (b"prepare:\n  inputs: &x [*x]\n", False, "refers to itself"),
        "recursive_mapping.yaml": (b"train: &t\n  lora: *t\n", False, "refers to itself"),
        "deep_lists.yaml": (b"seed: " + b"[" * 5000 + b"]" * 5000 + b"\n", False, "nested"),
        "deep_block.yaml": ("".join(" " * i + "a:\n" for i in range(600)).encode(), False, "nested"),
        "nul_bytes.yaml": (b"task: \x00\x01\x02\n", False, "not valid YAML"),
        "bad_indent.yaml": (b"train:\n  lr: 0.1\n - oops\n", False, "not valid YAML"),
        "tabs.yaml": (b"train:\n\tlr: 0.1\n", False, "not valid YAML"),
        "unclosed_quote.yaml": (b'base: "never closed\n', False, "not valid YAML"),
        "top_level_list.yaml": (b"- task\n- classify\n", False, "mapping"),
        "top_level_scalar.yaml": (b"classify\n", False, "mapping"),
        "python_tag.yaml": (b"base: !!python/object/apply:os.system [echo pwned]\n", False, "not valid YAML"),
        "unknown_field.yaml": (b"trian:\n  lr: 0.1\n", False, "trian"),
        "huge_value.yaml": (b"train:\n  lr: " + b"x" * 50_000 + b"\n", False, "train.lr"),
        "many_unknown_fields.yaml": ("".join(f"field{i}: {i}\n" for i in range(3000)).encode(), False, "more"),
        "binary_tag.yaml": (b"base: !!binary aGVsbG8=\n", True, ""),  # bytes b"hello": a harmless string
        "inf_seed.yaml": (b"seed: .inf\n", False, "seed"),
        "huge_int.yaml": (b"seed: " + b"9" * 5000 + b"\n", False, "put it in quotes"),
        "bad_date.yaml": (b"base: 2024-13-45\n", False, "month must be in 1..12"),
        "wrong_section_type.yaml": (b"train: 5\n", False, "train"),
    }
    return {name: (data, {"kind": "config", "ok": ok, "says": says}) for name, (data, ok, says) in cases.items()}


def build() -> dict[str, bytes]:
    """Every file of the corpus by name, `expected.json` included (deterministic)."""
    global _count, _rng
    _count, _rng = 0, random.Random(13)
    cases = {**jsonl_files(), **json_files(), **csv_files(), **other_files(), **config_files()}
    out = {name: data for name, (data, _) in cases.items()}
    expected = {name: exp for name, (_, exp) in sorted(cases.items())}
    out["expected.json"] = (json.dumps(expected, indent=1, ensure_ascii=True) + "\n").encode()
    return out


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [n for n, data in files.items() if not (OUT / n).is_file() or (OUT / n).read_bytes() != data]
        extra = [p.name for p in OUT.iterdir() if p.name not in files] if OUT.is_dir() else []
        if stale or extra:
            print(f"stale corpus: {len(stale)} files differ, {len(extra)} extra; run python {__file__}")
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for p in OUT.iterdir():
        if p.name not in files:
            p.unlink()
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(files) - 1} files to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
