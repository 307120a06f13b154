"""LoRA policies: PEFT adapters on a frozen base model, as policy folders.

With `model.lora` set, iteration 0's policy is the base model (iter_0000/policy, as
without LoRA) and iteration i's policy is an adapter folder:

    adapter_model.safetensors   the adapter's weights (PEFT's file)
    adapter_config.json         its PEFT config (rank, alpha, target modules)
    base.json                   the base it applies to: {"path": relative to the folder,
                                "sha256": the base's weights sha256}
    weights.sha256              the policy's sha256: the adapter's file and the base's digest

Any PEFT or vLLM tool opens the adapter as it is; `rlver export --merge` writes it folded
into its base as a plain HF model. The base's digest is checked whenever an adapter is
loaded: against the base's own record (`weights.sha256`, no read of its weights) by
every loader, and against its weights by the stages' input check
(`rlver.models.verified_policy_sha256`), as a full policy's weights are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rlver import faults
from rlver.errors import RlverInputError
from rlver.io import (
    ADAPTER_CONFIG,
    BASE_RECORD,
    WEIGHTS_RECORD,
    atomic_path,
    read_json_object,
    record_weights_sha256,
    weights_sha256,
)

#: The ranks vLLM's `max_lora_rank` accepts (vllm.config.lora.MaxLoRARanks).
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

_REMAKE = "delete the policy folder and rerun the update that wrote it."


def is_adapter(path: str | os.PathLike[str]) -> bool:
    """Whether the policy folder at `path` is a LoRA adapter (not a whole model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def peft_config(lora: Any) -> Any:
    """PEFT's LoraConfig for `model.lora`."""
    from peft import LoraConfig

    return LoraConfig(r=int(lora.rank), lora_alpha=int(lora.alpha),
                      lora_dropout=float(lora.dropout),
                      target_modules=list(lora.target_modules), bias="none",
                      task_type="CAUSAL_LM")


def vllm_max_rank(rank: int) -> int:
    """vLLM's `max_lora_rank` for adapters of `rank`: the smallest it accepts above it."""
    return next(r for r in VLLM_RANKS if r >= rank)


def adapter_rank(policy: str | os.PathLike[str]) -> int:
    """The rank of the adapter at `policy` (its adapter_config.json's `r`)."""
    config = read_json_object(Path(policy) / ADAPTER_CONFIG, _REMAKE)
    return int(config.get("r", 0))


def base_sha256(base: Path) -> str:
    """The base's weights sha256: its record (prepare_model and every export write one),
    else hashed from its weights."""
    record = base / WEIGHTS_RECORD
    return record.read_text().strip() if record.is_file() else weights_sha256(base)


def base_of(policy: str | os.PathLike[str]) -> Path:
    """The base model folder of the adapter at `policy`, refused (naming base.json) when
    it is missing or its digest is not the one the adapter was trained on."""
    policy = Path(policy)
    record = read_json_object(policy / BASE_RECORD, _REMAKE)
    if not isinstance(record.get("path"), str) or not isinstance(record.get("sha256"), str):
        raise RlverInputError(f"{policy / BASE_RECORD}: fields path and sha256 must be strings. "
                              f"Fix: {_REMAKE}")
    base = (policy / record["path"]).resolve()
    if not (base / "config.json").is_file():
        raise RlverInputError(
            f"{policy / BASE_RECORD}: its base model {base} (field path) is not there. Fix: "
            "restore the run's iter_0000/policy (the base; prepare_model and init_policy "
            "write it), or keep the adapter beside the run it was trained in.")
    if (got := base_sha256(base)) != record["sha256"]:
        raise RlverInputError(
            f"{policy / BASE_RECORD}: the adapter was trained on a base whose weights hash to "
            f"{record['sha256'][:12]} (field sha256), but {base} hashes to {got[:12]}. "
            "Fix: point the run at the base it was trained on, or retrain the adapter.")
    return base


def verified_base(policy: str | os.PathLike[str]) -> Path:
    """`base_of`, with the base's weights hashed against its digest (a stage's input
    check: as much reading as a full policy's check)."""
    from rlver.io import checked_weights_sha256

    base = base_of(policy)
    checked_weights_sha256(base)
    return base


def new_adapter(model: Any, lora: Any) -> Any:
    """`model` (the base) with a new adapter of `model.lora`, trainable: A drawn from
    torch's generator (seeded by the caller), B zero, so the policy is still the base."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config(lora))


def write_base_record(folder: Path, base: str | os.PathLike[str],
                      final: str | os.PathLike[str]) -> None:
    """base.json in `folder`, which will be renamed to `final`: the base's path relative
    to `final`, and its digest."""
    rel = os.path.relpath(Path(base).resolve(), Path(final).resolve())
    (folder / BASE_RECORD).write_text(json.dumps(
        {"path": rel, "sha256": base_sha256(Path(base))}, indent=2, sort_keys=True) + "\n")


def write_adapter(peft_model: Any, folder: Path, base: str | os.PathLike[str],
                  final: str | os.PathLike[str]) -> None:
    """PEFT's adapter files and the base's record in `folder` (to be renamed `final`)."""
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's model card template
    write_base_record(folder, base, final)


def save_adapter(peft_model: Any, out_dir: str | os.PathLike[str], base: str | os.PathLike[str],
                 iteration: int) -> str:
    """Write an adapter policy whole or not at all (the update's export with model.lora):
    PEFT's adapter files, the base's record and the policy's sha256, renamed into place;
    returns that sha256."""
    with atomic_path(out_dir) as tmp:
        write_adapter(peft_model, tmp, base, out_dir)
        sha = record_weights_sha256(tmp)
        faults.point("update.export_before_rename", iteration)
    return sha


def stored_dtype(model_dir: Path) -> str:
    """The dtype a model folder's config.json names (`dtype`; older transformers wrote
    `torch_dtype`), as rlver names dtypes: bfloat16, else float32."""
    config = read_json_object(model_dir / "config.json", "restore the base model.")
    named = config.get("dtype", config.get("torch_dtype"))
    return "bfloat16" if named == "bfloat16" else "float32"
