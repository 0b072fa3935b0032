"""Base model resolution, the GGUF cache, tiny model builders and `tuneloop models`."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from tuneloop import models
from tuneloop.errors import TuneloopError


def test_cache_dir_honours_tuneloop_cache_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TUNELOOP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "tuneloop"
    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"


def test_default_means_minilm_for_a_head_and_smollm2_otherwise() -> None:
    assert models.default_alias("classify", "head") == "minilm"
    assert models.default_alias("classify", "generate") == "smollm2"
    assert models.default_alias("generate", "head") == "smollm2"
    minilm = models.resolve("default", task="classify", classify_as="head")
    assert minilm == models.resolve("minilm") and (minilm / "model.safetensors").is_file()


def test_local_folder_and_bad_paths(tiny_llama: Path, tmp_path: Path) -> None:
    assert models.resolve(str(tiny_llama)) == tiny_llama
    with pytest.raises(TuneloopError, match="is not a model folder"):
        models.resolve(str(tmp_path))
    with pytest.raises(TuneloopError, match="GGUF file does not exist"):
        models.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(TuneloopError, match="could not be loaded"):
        models.load_model("no-such-org/no-such-model", "lm")  # offline: not in the cache


def test_gguf_is_converted_once_and_a_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(Exception):
        models.resolve(str(bad))
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no half-converted folder
    # A finished conversion is found by its key and reused without touching the GGUF loader.
    done = tmp_path / "cache" / "models" / models._gguf_key(bad)
    done.mkdir()
    (done / "config.json").write_text("{}")
    assert models.resolve(str(bad)) == done


def test_tiny_models_load_with_tokenizer_and_chat_template(tiny_llama: Path, tiny_bert: Path) -> None:
    tok = models.load_tokenizer(tiny_llama)
    assert tok.chat_template and tok.pad_token == "<|im_end|>"
    lm = models.load_model(tiny_llama, "lm")
    assert lm.config.num_hidden_layers == 2 and lm.config.hidden_size == 32
    head = models.load_model(tiny_bert, "head", labels=["a", "b", "c"])
    assert head.config.id2label == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(TuneloopError, match="not a causal language model.*--classify-as head"):
        models.load_model(tiny_bert, "lm")
    assert models.count_parameters(tiny_llama) == sum(p.numel() for p in lm.parameters())


def test_summary_lists_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path))
    console = Console(record=True, width=250)
    console.print(models.summary())
    text = console.export_text()
    assert "smollm2" in text and "minilm" in text and "22,713,728" in text  # MiniLM's stored parameters (incl. pooler)
    assert "not yet" in text  # SmolLM2 is not converted in this empty cache


@pytest.mark.integration
def test_default_smollm2_converts_and_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from tuneloop.encode import render_prompt

    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path))
    folder = models.resolve("default")
    assert (folder / "model.safetensors").is_file() and models.resolve("smollm2") == folder
    assert not list(folder.parent.glob(".convert-*"))
    tok = models.load_tokenizer(folder)
    model = models.load_model(folder, "lm").eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = render_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
