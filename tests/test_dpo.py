"""DPO on tiny trained runs: the loss is the standard one, preferences move the model, files stay loadable."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import kill_cli_when, write_data
from tuneloop import dpo, losses, models, runs, train
from tuneloop.config import DpoConfig, load_config
from tuneloop.encode import IGNORE, collate
from tuneloop.errors import TuneloopError
from tuneloop.losses import Exec

SFT = {"seed": 0, "train.threads": 1, "train.precision": "fp32", "train.batch_size": 8, "train.max_steps": 2,
       "train.eval_every": 2, "train.lr": 1e-2}
# Many passes over 8 pairs at a high learning rate: enough for a tiny random model to move.
STRONG = DpoConfig(beta=0.5, lr=3e-2, epochs=10, batch_size=4)


def _sft(base: Path, data: Path, out: Path, **over: object) -> Path:
    train.run(load_config(None, {**SFT, "base": str(base), "train.data": data, "train.out": out, **over}))
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _gen_pairs(data: Path, n: int = 8) -> list[dict]:
    """Prompts from the toy data; the trained answer is chosen, an evasive one rejected (as a user's thumbs would)."""
    pairs = []
    for line in (data / "train.jsonl").read_text().splitlines()[:n]:
        msgs = json.loads(line)["messages"]
        pairs.append({"prompt": msgs[:-1], "chosen": msgs[-1]["content"], "rejected": "i am not sure"})
    return pairs


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("gen") / "data", "generate")


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, gen_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sft(tiny_llama, gen_data, tmp_path_factory.mktemp("lora") / "run")


def test_loss_is_the_dpo_formula_on_a_fixed_batch() -> None:
    pc, pr = torch.tensor([-10.0, -3.0, -7.5]), torch.tensor([-12.0, -2.0, -7.5])
    rc, rr = torch.tensor([-11.0, -3.5, -6.0]), torch.tensor([-11.5, -2.5, -9.0])
    per_pair, chosen_r, rejected_r = losses.dpo_loss(pc, pr, rc, rr, beta=0.2)
    for i in range(3):
        z = 0.2 * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        assert per_pair[i].item() == pytest.approx(math.log1p(math.exp(-z)), rel=1e-6)
    assert torch.allclose(chosen_r - rejected_r, 0.2 * ((pc - rc) - (pr - rr)))


def _toy_batch(tiny_llama: Path) -> tuple[torch.nn.Module, object, dict, list]:
    tok = models.load_tokenizer(tiny_llama)
    enc = dpo.PairEncoder(tok, load_config(), None, 64)
    pairs = [enc.pair({"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "is it good"}],
                       "chosen": "yes it is", "rejected": "no"}),
             enc.pair({"prompt": "hello there", "chosen": "hi", "rejected": "go away now"})]
    examples = [e for p in pairs for e in p]
    torch.manual_seed(0)
    return models.load_model(tiny_llama, "lm").eval(), tok, collate(examples, [[0], [2], [1], [3]], tok.pad_token_id), examples


def test_sequence_logps_sum_only_the_answer_tokens(tiny_llama: Path) -> None:
    model, tok, batch, examples = _toy_batch(tiny_llama)
    with torch.no_grad():
        ours = losses.sequence_logps(model, batch)
        for row, i in enumerate([0, 2, 1, 3]):  # naive: whole-vocabulary log-softmax of one unpadded sequence
            e = examples[i]
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            want = sum(logp[j - 1, t] for j, t in enumerate(e.labels) if t != IGNORE)
            assert ours[row].item() == pytest.approx(float(want), rel=1e-5)
    # The answer is the last assistant turn and its end-of-turn token, nothing of the prompt.
    assert tok.decode([t for t in examples[0].labels if t != IGNORE]) == "yes it is<|im_end|>"


def test_loss_equals_trl_dpo_trainer_on_the_same_batch(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tok, batch, examples = _toy_batch(tiny_llama)
    rows = [{"prompt": "hi", "chosen": "a", "rejected": "b"}] * 2
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, precompute_ref_log_probs=True, report_to="none", beta=0.3)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    ref_c, ref_r = torch.tensor([-30.0, -10.0]), torch.tensor([-25.0, -12.0])
    answer = torch.zeros_like(batch["input_ids"])
    for row, i in enumerate([0, 2, 1, 3]):
        answer[row, : len(examples[i].labels)] = torch.tensor([t != IGNORE for t in examples[i].labels])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "completion_mask": answer,
              "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    model.eval()
    with torch.no_grad():
        theirs = trainer._compute_loss(trainer.model, inputs, False)
        logps = losses.sequence_logps(model, batch)
        ours = losses.dpo_loss(logps[:2], logps[2:], ref_c, ref_r, beta=0.3)[0].mean()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)


def test_preferences_raise_the_margin_and_keep_the_sft_model(lora_run: Path, gen_data: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    old = load_file(run / "model" / "adapter_model.safetensors")
    result = dpo.run(run, _write(tmp_path / "pairs.jsonl", _gen_pairs(gen_data)), STRONG)
    assert result.info["val_is_train"] and result.info["train_pairs"] == 8  # few pairs: they all validate
    assert result.after["logp_margin"] > result.before["logp_margin"] + 1.0
    assert result.after["reward_accuracy"] >= 0.75 > result.before["reward_accuracy"]
    assert result.after["loss"] < result.before["loss"] == pytest.approx(math.log(2))
    # model_sft holds the old adapter; only LoRA weights changed, the base is untouched.
    assert all(torch.equal(v, old[k]) for k, v in load_file(run / "model_sft" / "adapter_model.safetensors").items())
    new = load_file(run / "model" / "adapter_model.safetensors")
    assert new.keys() == old.keys() and all("lora_" in k for k in new)
    assert any(not torch.equal(v, old[k]) for k, v in new.items())
    loaded = runs.load_trained(run)
    base = models.load_model(json.loads((run / "model" / runs.META).read_text())["base"], "lm")
    assert torch.equal(loaded.model.get_input_embeddings().weight, base.get_input_embeddings().weight)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") == "dpo_val"] == [0, result.steps]
    assert json.loads((run / "dpo_summary.json").read_text())["after"] == result.after


def test_the_saved_model_scores_what_was_reported_and_undo_restores_sft(lora_run: Path, gen_data: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    pairs = _write(tmp_path / "pairs.jsonl", _gen_pairs(gen_data))
    result = dpo.run(run, pairs, STRONG)
    again = dpo.run(run, pairs, STRONG)  # a rerun starts from model_sft: same result, records not doubled
    assert again.after == pytest.approx(result.after, rel=1e-4)
    assert sum('"dpo_val"' in line for line in (run / "metrics.jsonl").read_text().splitlines()) == 2

    def logps(loaded: runs.Loaded) -> torch.Tensor:
        loaded.tokenizer.padding_side = "right"
        enc = dpo.PairEncoder(loaded.tokenizer, loaded.cfg, None, 512)
        return dpo.all_logps(loaded.model, dpo.flat(dpo.read_pairs(pairs, enc)[0]), 4, _fp32(loaded))

    tuned = logps(runs.load_trained(run))
    dpo.undo(run)
    assert not (run / "dpo_summary.json").exists()
    ref = logps(runs.load_trained(run))
    # The merged, reloaded model reproduces the reported numbers.
    assert losses.pair_metrics(tuned, ref, STRONG.beta) == pytest.approx(result.after, rel=1e-3, abs=1e-5)
    assert losses.pair_metrics(ref, ref, STRONG.beta)["logp_margin"] == pytest.approx(result.before["logp_margin"], rel=1e-4)


def _fp32(loaded: runs.Loaded) -> Exec:
    return Exec("lm", torch.device("cpu"), False, loaded.tokenizer.pad_token_id, True)


def test_bad_rows_are_reported_with_line_and_reason_and_good_rows_train(lora_run: Path, gen_data: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    good = _gen_pairs(gen_data, 2)
    rows = [good[0], "{not json", {"prompt": "q", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "  "},
            {"prompt": "q", "chosen": "same", "rejected": "same "}, {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
            {"text": "is it good", "chosen": "a", "rejected": "b"}, good[1]]
    result = dpo.run(run, _write(tmp_path / "pairs.jsonl", rows), DpoConfig(epochs=1))
    reasons = {r.line: r.reason for r in result.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7] and result.info["train_pairs"] == 2
    assert "not valid JSON" in reasons[2] and "'chosen'" in reasons[3] and "'rejected' is empty" in reasons[4]
    assert "same answer" in reasons[5] and "ends with an assistant" in reasons[6] and "classify run" in reasons[7]
    saved = [json.loads(line) for line in (run / "dpo_rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in saved] == [2, 3, 4, 5, 6, 7] and saved[0]["source"].endswith("pairs.jsonl")


def test_a_file_without_good_pairs_is_an_error_and_leaves_the_run_alone(lora_run: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(TuneloopError, match=r"bad.jsonl holds no usable preference pair .*line 1: 'chosen' and 'rejected' are the same"):
        dpo.run(run, bad)
    with pytest.raises(TuneloopError, match="does not exist"):
        dpo.run(run, tmp_path / "missing.jsonl")
    assert not (run / "model_sft").exists()
    with pytest.raises(TuneloopError, match="nothing to undo"):
        dpo.undo(run)


def test_full_classify_as_generate_run_tunes_all_weights_on_label_pairs(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", "classify")
    run = _sft(tiny_llama, data, tmp_path / "run", **{"train.method": "full", "train.lr": 3e-3})
    old = load_file(run / "model" / "model.safetensors")
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()[:8]]
    # `feedback export` writes the classified text as a string prompt; {"text": ...} works too.
    pairs = [{("prompt" if i % 2 else "text"): r["text"], "chosen": r["label"],
              "rejected": "negative" if r["label"] == "positive" else "positive"} for i, r in enumerate(rows)]
    pairs.append({"text": "fine", "chosen": "positive", "rejected": "meh"})
    enc = dpo.PairEncoder(models.load_tokenizer(run / "model"), load_config(run / "config.yaml"), ["negative", "positive"], 512)
    one = {"chosen": "positive", "rejected": "negative"}
    assert enc.pair({"prompt": "so good", **one}) == enc.pair({"text": "so good", **one})
    assert "Answer with exactly one of: negative, positive" in enc.tokenizer.decode(enc.pair({"prompt": "so good", **one})[0].input_ids)
    result = dpo.run(run, _write(tmp_path / "pairs.jsonl", pairs), DpoConfig(beta=0.5, lr=1e-3, epochs=8, batch_size=4))
    assert [(r.line, "not one of the run's labels" in r.reason) for r in result.rejected] == [(9, True)]
    assert result.after["logp_margin"] > result.before["logp_margin"] + 0.1 and result.after["reward_accuracy"] > 0.5
    assert all(torch.equal(v, old[k]) for k, v in load_file(run / "model_sft" / "model.safetensors").items())
    assert any(not torch.equal(v, old[k]) for k, v in load_file(run / "model" / "model.safetensors").items())
    assert runs.load_trained(run).labels == ["negative", "positive"]


def test_a_classification_head_run_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", "classify", n_train=16, n_val=8)
    run = _sft(tiny_llama, data, tmp_path / "run", **{"train.classify_as": "head"})
    with pytest.raises(TuneloopError, match="classification head; DPO needs a causal LM"):
        dpo.run(run, _write(tmp_path / "p.jsonl", [{"text": "x", "chosen": "positive", "rejected": "negative"}]))


def test_many_pairs_hold_out_a_tenth_for_validation(lora_run: Path, gen_data: Path, tmp_path: Path) -> None:
    run = _copy(lora_run, tmp_path)
    result = dpo.run(run, _write(tmp_path / "pairs.jsonl", _gen_pairs(gen_data, 64) * 2), DpoConfig(epochs=0.1, batch_size=8))
    assert (result.info["train_pairs"], result.info["val_pairs"], result.info["val_is_train"]) == (115, 13, False)  # 128 pairs


@pytest.mark.integration
def test_dpo_on_the_default_model(tmp_path: Path) -> None:
    """SmolLM2 (bundled): a 2-step LoRA SFT run, then 1 epoch of DPO on 32 label pairs; prints the numbers."""
    data = write_data(tmp_path / "data", "classify", n_train=48, n_val=16)
    run = train.run(load_config(None, {
        "base": "default", "train.data": data, "train.out": tmp_path / "run", "train.max_steps": 2,
        "train.batch_size": 8, "train.lr": 1e-3, "train.max_length": 64})).run_dir
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()[:32]]
    pairs = [{"text": r["text"], "chosen": r["label"], "rejected": "negative" if r["label"] == "positive" else "positive"} for r in rows]
    result = dpo.run(run, _write(tmp_path / "pairs.jsonl", pairs))
    print(json.dumps({"before": result.before, "after": result.after, **result.info}, indent=1))
    assert result.info["val_is_train"] and result.info["train_pairs"] == 32 and result.steps == 8
    assert result.after["loss"] < result.before["loss"] and result.after["reward_accuracy"] > 0.5
    assert runs.load_trained(run).kind == "lm"


def test_dpo_resumes_after_sigkill_as_if_never_stopped(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    # The same loop as SFT: accumulation, checkpoints, and a rerun on the same pairs continues exactly.
    sft = _sft(tiny_llama, gen_data, tmp_path / "sft", **{
        "seed": 3, "train.lora.dropout": 0.1, "train.dpo.epochs": 6, "train.dpo.batch_size": 2, "train.dpo.grad_accum": 2,
        "train.dpo.save_every": 5, "train.dpo.eval_every": 10, "train.dpo.lr": 1e-2})
    killed, whole = Path(shutil.copytree(sft, tmp_path / "killed")), Path(shutil.copytree(sft, tmp_path / "whole"))
    pairs = _write(tmp_path / "pairs.jsonl", _gen_pairs(gen_data, 16))
    kill_cli_when(["dpo", str(killed), "--pairs", str(pairs)], killed / "dpo" / "checkpoints" / "step-000010")
    assert not (killed / "dpo_summary.json").exists(), "DPO finished before it was killed"
    resumed, reference = dpo.run(killed, pairs), dpo.run(whole, pairs)
    assert resumed.steps == reference.steps == 24  # 16 pairs, 4 a step, 6 epochs
    a = load_file(killed / "dpo" / "checkpoints" / "step-000024" / "adapter.safetensors")
    b = load_file(whole / "dpo" / "checkpoints" / "step-000024" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    records = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (killed, whole)]
    dpo_losses = [[r["loss"] for r in rs if r.get("phase") == "dpo"] for rs in records]
    assert dpo_losses[0] == pytest.approx(dpo_losses[1], rel=1e-5)  # same steps, logged once each
    assert [r["step"] for r in records[0] if r.get("kind") == "dpo_val"] == [0, 10, 20, 24]
    assert resumed.after == pytest.approx(reference.after, rel=1e-5)
