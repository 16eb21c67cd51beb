"""The offline model's first-use conversion across processes, on an empty cache: it happens once,
the other process waits and uses it, and nothing partial is left in the models folder (the demo
and a worker it started used to race here and leave a 538 MB ``.tmp*`` file)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.backends.local import SMOLLM2_NAME, STAGING_PREFIX, default_model_dir

pytestmark = pytest.mark.slow  # converts and loads the real model in subprocesses

REPO = Path(__file__).resolve().parents[1]
LOCK = f"{SMOLLM2_NAME}.lock"

# Asks for the model, says whether this process converted it, then loads model and tokenizer.
ASK = """
import json, sys, time
from pathlib import Path
import runtime.backends.local as local
converted = []
convert = local._convert
local._convert = lambda target: (converted.append(1), convert(target))[1]
started = time.time()
folder = local.default_model_dir(Path(sys.argv[1]))
returned = time.time()
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(folder)
tokenizer = local.load_tokenizer(folder)
ids = tokenizer("The capital of France is")["input_ids"]
assert ids and max(ids) < model.config.vocab_size, ids
print(json.dumps({"folder": str(folder), "converted": bool(converted),
                  "started": started, "returned": returned}))
"""


def test_two_processes_on_an_empty_cache_convert_once_and_share_the_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    began = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ASK, str(cache)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=540) for p in procs]
    elapsed = time.perf_counter() - began
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    first, second = sorted(results, key=lambda r: r["returned"])
    converting = first["returned"] - first["started"]
    waited = second["returned"] - first["returned"]
    print(
        f"\nconversion: {converting:.1f} s; the waiting process got the folder {waited:.1f} s "
        f"after the converting one; both started, converted and loaded: {elapsed:.1f} s"
    )
    target = cache / "models" / SMOLLM2_NAME
    assert {r["folder"] for r in results} == {str(target)}
    assert second["started"] < first["returned"], "the two asked one after the other, not at once"
    assert [r["converted"] for r in (first, second)] == [True, False]
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([SMOLLM2_NAME, LOCK])
    files = sorted(p.name for p in target.iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not [f for f in files if f.startswith(".")], files


def test_the_next_conversion_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    models = tmp_path / "models"
    killed = models / f"{STAGING_PREFIX}k1ll3d" / SMOLLM2_NAME  # as a SIGKILL mid-save leaves it
    killed.mkdir(parents=True)
    (killed / ".tmpAbC123").write_bytes(b"\0" * 4096)
    (killed / "config.json").write_text("{}")
    legacy = models / f"{SMOLLM2_NAME}.partial"  # the previous code's shared staging folder
    legacy.mkdir()
    (legacy / ".tmpXyZ789").write_bytes(b"\0" * 4096)

    began = time.perf_counter()
    target = default_model_dir(tmp_path)
    print(f"\nconversion with leftovers to remove: {time.perf_counter() - began:.1f} s")

    assert target == models / SMOLLM2_NAME
    assert sorted(p.name for p in models.iterdir()) == sorted([SMOLLM2_NAME, LOCK])
    assert not [p.name for p in target.iterdir() if p.name.startswith(".")]
    assert (target / "model.safetensors").stat().st_size > 500_000_000
