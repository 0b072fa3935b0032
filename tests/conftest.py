"""Test-wide settings: offline, quiet, few threads (the machine has 2 cores)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


# Tiny random models (2 layers, hidden 32, a tokenizer built here), shared by every stage's tests.
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory):
    """A tiny causal LM folder (Llama, ChatML template) built from a config."""
    from tuneloop.models import build_tiny

    return build_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory):
    """A tiny encoder folder (BERT without a head) built from a config."""
    from tuneloop.models import build_tiny

    return build_tiny("bert", tmp_path_factory.mktemp("models") / "tiny-bert")
