"""Semantic similarity of a generated answer to the reference: cosine of sentence embeddings.

Word-overlap metrics (token F1, ROUGE-L) miss paraphrases; an answer that says the same thing in
other words should still score well. The embeddings are those of a sentence encoder —
all-MiniLM-L6-v2, bundled (`eval.semantic_model: minilm`) — with mean pooling over the tokens and L2
normalisation, as sentence-transformers computes them for that model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

#: Texts per forward pass, and the encoder's token limit (MiniLM was trained on 256-token inputs).
BATCH, MAX_TOKENS = 32, 256


class SentenceEncoder:
    """A transformers encoder that turns texts into unit-length mean-pooled embeddings."""

    def __init__(self, model: str | Path) -> None:
        """Load the encoder (a folder, or `minilm` for the bundled all-MiniLM-L6-v2)."""
        from transformers import AutoModel, AutoTokenizer

        from tuneloop.models import resolve

        path = resolve(str(model))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of the texts, shape (texts, dim), each of L2 norm 1."""
        out = []
        for i in range(0, len(texts), BATCH):
            enc = self.tokenizer(list(texts[i : i + BATCH]), padding=True, truncation=True, max_length=MAX_TOKENS,
                                 return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            # Mean over real tokens only: padding must not pull short texts towards each other.
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 0)

    def similarity(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """Per-example cosine similarity of each prediction to its reference (−1..1; 1: same meaning).

        An empty prediction scores 0.0: it says nothing, whatever the encoder makes of no tokens.
        """
        if len(predictions) != len(references):
            raise ValueError(f"need equally many predictions and references, got {len(predictions)} and {len(references)}")
        cos = (self.encode(predictions) * self.encode(references)).sum(-1).tolist() if predictions else []
        return [c if p.strip() else 0.0 for c, p in zip(cos, predictions)]
