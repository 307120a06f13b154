"""What one iteration costs: the fixed costs of our stages measured at three model sizes,
fitted against bytes, and fed to the cost model (rlver/cost.py) that prices a run at 7B.

    python bench/scale.py                      # q90m q180m q250m on the CPU (~12 min)
    python bench/scale.py --update-data        # ... and write the fits into the model's data
    python bench/scale.py --sizes q90m q450m   # other sizes (SIZES below)
    python bench/scale.py --from-json results/scale/scale.json   # fits of an earlier run
    python bench/scale.py --disk results/smoke --update-data     # bytes a stored token
    python bench/scale.py --model-only         # the model's tables from its data alone

Every size is a Qwen2-architecture model with random weights made from a config (the
SmolLM2 tokenizer of the test model, so its vocabulary: 49,152), saved as the policy
directory our stages read. Each measurement is a fresh process doing what the stage's
job does, through the stage's own functions, with the files evicted from the page cache
first (posix_fadvise, so a read costs the disk as a new job on another node would):

- rollout job, hf engine: process start + imports, `rlver.engines.make_engine("hf")`
  (loads the policy), tokens generated/s;
- rollout job, vLLM engine: process start + imports, `VLLMEngine(...)` start (the CPU
  defaults of rlver.engines.vllm_cpu: eager), tokens generated/s;
- update job: process start + imports, `rlver.models.load_policy` (policy load), the
  update's DeepSpeed set-up (`rlver.train.engines.make_engine` with its `deepspeed_config`
  of the algorithm),
  one training step (tokens trained/s; a first step before it allocates Adam's state),
  `save_checkpoint` (state save), the policy export (`save_pretrained` of the trained
  weights, as the update's export), `load_checkpoint` of that state (state load);
- update job with LoRA (`model.lora`, rank `--lora-rank`, every projection): the same
  set-up through `rlver.train.adapters.policy`, one training step, `save_checkpoint` of
  the adapter's state alone (state save), the adapter's export (`rlver.lora.save_adapter`),
  `load_checkpoint` (state load), and `rlver export --merge`'s merge (`rlver.models.merge`);
- submitit's local launcher: submission to job start, and job end to result.

`--embedded` runs only the two update probes on the embedded model (SmolLM2-135M): the
bytes an iteration writes, its policy and the state carried to the next update, full
weights against LoRA (docs/scale.md, "LoRA policies"); the last line is
`lora_bytes_ratio=<full / LoRA>`.

Each cost is fitted as seconds = a + bytes / rate (`fits`); `--update-data` writes the
fits and submitit's start into rlver/data/cost/measured.yaml, the measured inputs of the
cost model (the stated ones, storage bandwidth and GPU rates with their sources, are
rlver/data/cost/stated.yaml). The tables end with the model's price of an iteration of
the paper's GRPO and PPO experiments at 7B, with full weights and with LoRA (`rlver
budget`, docs/scale.md); the last line is `fixed_cost_share_7b=<paper_grpo_think_vanilla,
per stage, 4x8>`. Writes scale.json
in --out. Peak memory: about 28 bytes a parameter in the update probe (DeepSpeed fp32
Adam, 16, plus the state being loaded), 7 GB for q250m.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the results
sys.path.insert(0, str(ROOT))

#: (hidden, layers, intermediate, attention heads, key/value heads). CPU sizes: head dim 64,
#: spaced by 3x in parameters, the largest one whose update probe stays under ~8 GB.
#: The Qwen2.5 shapes (head dim 128) with this vocabulary are for machines with a GPU.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 2, 384, 2, 1),
    "q90m": (512, 12, 1536, 8, 2),
    "q180m": (768, 16, 2304, 12, 2),
    "q250m": (768, 20, 3072, 12, 2),
    "q450m": (896, 24, 4864, 14, 2),
    "qwen2.5-1.5b-shape": (1536, 28, 8960, 12, 2),
    "qwen2.5-3b-shape": (2048, 36, 11008, 16, 2),
    "qwen2.5-7b-shape": (3584, 28, 18944, 28, 4),
}
DEFAULT_SIZES = ["q90m", "q180m", "q250m"]


def param_count(size: str, vocab: int = 49152) -> int:
    """Parameters of `size` (untied embeddings, q/k/v biases as Qwen2 has)."""
    hidden, layers, inter, heads, kv = SIZES[size]
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv * head_dim + hidden + 2 * kv * head_dim
    return 2 * vocab * hidden + layers * (attention + 3 * hidden * inter + 2 * hidden) + hidden


def make_random_model(size: str, out: Path, dtype: str = "float32") -> int:
    """A seeded random Qwen2 model of `size` with the test model's tokenizer, saved as a
    policy directory; returns its parameter count."""
    from bench.models import Shape, random_qwen2

    return random_qwen2(out, Shape(*SIZES[size]), dtype)


def child(a: argparse.Namespace) -> None:
    """A probe's own process: runs it, prints its results as one `RESULT <json>` line."""
    from bench.scale_probes import probe_rollout, probe_submitit, probe_update, probe_update_lora

    out: dict[str, Any] = {}
    if a.probe in ("hf", "vllm"):
        probe_rollout(a.probe, Path(a.model), a.device, out, a.batch, a.new_tokens)
    elif a.probe == "update":
        probe_update(Path(a.model), a.device, out, Path(a.work), a.rows, a.seq)
    elif a.probe == "update-lora":
        probe_update_lora(Path(a.model), a.device, out, Path(a.work), a.rows, a.seq,
                          a.lora_rank)
    else:
        probe_submitit(Path(a.work), out)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def run_probe(probe: str, args: list[str]) -> dict[str, Any]:
    """A probe in a fresh process; its process start + imports are timed from here."""
    t = time.time()
    done = subprocess.run([sys.executable, __file__, "--probe", probe, *args],
                          capture_output=True, text=True, env=os.environ | {
                              "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        # vLLM's root cause sits far above its last traceback: the error lines, then the end.
        errors = [ln for ln in done.stderr.splitlines() if "Error" in ln]
        sys.stderr.write("\n".join(errors[-10:]) + "\n" + done.stderr[-3000:])
        raise SystemExit(f"scale: probe {probe} {' '.join(args)} failed ({done.returncode})")
    out = json.loads(lines[-1][len("RESULT "):])
    out["wall_s"] = time.time() - t
    print(f"scale: probe {probe}: {out['wall_s']:.0f} s", flush=True)
    if "imported" in out:
        out["process_start_imports_s"] = out.pop("imported") - t
    return out


def measure(sizes: list[str], work: Path, device: str, engines: list[str],
            batch: int, new_tokens: int, rows: int, seq: int,
            lora_rank: Optional[int] = None) -> dict[str, Any]:
    """Submitit's start, then at each size the engines' and the update's probes (and the
    LoRA update's at `lora_rank`, when given)."""
    results: dict[str, Any] = {"device": device, "sizes": {},
                               "load_average_at_start": os.getloadavg()}
    sub = run_probe("submitit", ["--work", str(work / "submitit")])
    results["submitit"] = sub
    print(f"scale: submitit local: submit->start {sub['submit_to_start_s']:.2f} s", flush=True)
    for size in sizes:
        model = work / size / "policy"
        if not (model / "config.json").is_file():
            t = time.perf_counter()
            make_random_model(size, model, "bfloat16" if device == "cuda" else "float32")
            print(f"scale: {size}: random model in {time.perf_counter() - t:.0f} s",
                  flush=True)
        r: dict[str, Any] = {"model_bytes": sum(f.stat().st_size for f in model.iterdir())}
        common = ["--model", str(model), "--device", device, "--work", str(work / size)]
        for engine in engines:
            r[engine] = run_probe(engine, [*common, "--batch", str(batch),
                                           "--new-tokens", str(new_tokens)])
        r |= update_probes(common, rows, seq, lora_rank)
        r["params"] = r["update"]["params"]
        results["sizes"][size] = r
        print(f"scale: {size}: " + json.dumps(r), flush=True)
    results["lora_rank"] = lora_rank
    return results


def update_probes(common: list[str], rows: int, seq: int, lora_rank: Optional[int]
                  ) -> dict[str, Any]:
    """The update probe with full weights, and with LoRA of `lora_rank` unless None, on
    one model."""
    steps = ["--rows", str(rows), "--seq", str(seq)]
    out = {"update": run_probe("update", [*common, *steps])}
    if lora_rank is not None:
        out["update_lora"] = run_probe("update-lora", [*common, *steps, "--lora-rank",
                                                       str(lora_rank)])
    return out


def measure_embedded(work: Path, device: str, rows: int, seq: int, lora_rank: int
                     ) -> dict[str, Any]:
    """Both update probes on the embedded model (converted once from its package)."""
    from bench.models import embedded_model

    model = embedded_model()
    (work / "embedded").mkdir(parents=True, exist_ok=True)
    common = ["--model", str(model), "--device", device, "--work", str(work / "embedded")]
    return {"device": device, "lora_rank": lora_rank,
            "load_average_at_start": os.getloadavg(),
            "model_bytes": sum(f.stat().st_size for f in model.iterdir() if f.is_file()),
            **update_probes(common, rows, seq, lora_rank)}


# ------------------------------------------------------------------------ fits and data

GB = 1e9


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def fits(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each measured cost against the bytes it moves or the parameters it allocates:
    seconds = a + x * slope by least squares. Where load on the machine made the slope
    come out negative, and for the costs that do not depend on the model (process start
    and imports), a is the smallest measurement (`how: min`): an upper bound of the
    fixed part, the least disturbed by other processes."""
    sizes = list(results["sizes"].values())
    params = [s["params"] for s in sizes]
    model_bytes = [s["model_bytes"] for s in sizes]
    state_bytes = [s["update"]["state_bytes"] for s in sizes]
    export_bytes = [s["update"]["export_bytes"] for s in sizes]
    u = [s["update"] for s in sizes]
    table: dict[str, tuple[list[float], list[float], str]] = {
        "policy load": (model_bytes, [x["policy_load_s"] for x in u], "bytes"),
        "DeepSpeed init": (params, [x["deepspeed_init_s"] for x in u], "params"),
        "state save": (state_bytes, [x["state_save_s"] for x in u], "bytes"),
        "state load": (state_bytes, [x["state_load_s"] for x in u], "bytes"),
        "policy export": (export_bytes, [x["policy_export_s"] for x in u], "bytes"),
        "update process start + imports": (params, [x["process_start_imports_s"] for x in u],
                                           "const"),
    }
    for engine in ("hf", "vllm"):
        if all(engine in s for s in sizes):
            table[f"{engine} engine start"] = (
                model_bytes, [s[engine]["engine_start_s"] for s in sizes], "bytes")
            table[f"{engine} process start + imports"] = (
                params, [s[engine]["process_start_imports_s"] for s in sizes], "const")
    out = {}
    for name, (xs, ys, unit) in table.items():
        a, b = fit(xs, ys)
        how = "fit"
        if unit == "const" or b <= 0:
            a, b, how = min(ys), 0.0, "min"
        out[name] = {"intercept_s": a, "slope_s": b, "per": unit, "how": how,
                     "rate_per_s": (1 / b) if b > 0 else float("inf")}
    return out


#: The cost model's measured inputs, which this script writes.
MEASURED = ROOT / "rlver" / "data" / "cost" / "measured.yaml"


def write_measured(results: dict[str, Any], f: dict[str, dict[str, Any]],
                   path: Path = MEASURED) -> Path:
    """Write the fits and submitit's start into the cost model's measured inputs
    (`path`), keeping its other constants."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["command"] = results.get("command", "python bench/scale.py")
    data["date"] = results.get("date", time.strftime("%Y-%m-%d"))
    load = results.get("load_average_at_start", [0])[0]
    data["machine"] = f"{os.cpu_count()} cores, load average {load:.1f} at the start"
    data["fits"] = {name: {k: round(v[k], 12) for k in ("intercept_s", "slope_s")}
                    | {"per": v["per"], "how": v["how"]} for name, v in f.items()}
    data["constants"]["submitit_submit_to_start_s"] = {
        "value": round(results["submitit"]["submit_to_start_s"], 3),
        "source": f"{data['command']} ({data['date']}): submitit's local launcher, "
                  "submission to the job's first line"}
    return _write_data(data, path)


def measure_disk(run_dir: Path) -> dict[str, Any]:
    """Bytes a stored token of a run's trajectory files (rollout shards): the file sizes
    over their tokens, the cost model's `stored_bytes_per_token`."""
    import pyarrow.parquet as pq

    files = sorted(run_dir.glob("iter_*/rollouts/shard_*.parquet"))
    if not files:
        raise SystemExit(f"scale: {run_dir}: no rollout shards (iter_*/rollouts/*.parquet)")
    size = sum(f.stat().st_size for f in files)
    tokens = sum(len(ids) for f in files for ids in
                 pq.read_table(f, columns=["input_ids"]).column("input_ids").to_pylist())
    return {"bytes": size, "tokens": tokens, "files": len(files)}


def write_disk(run_dir: Path, d: dict[str, Any], path: Path = MEASURED) -> Path:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["constants"]["stored_bytes_per_token"] = {
        "value": round(d["bytes"] / d["tokens"], 2),
        "source": f"python bench/scale.py --disk {run_dir} ({time.strftime('%Y-%m-%d')}): "
                  f"{d['bytes']:,} bytes of rollout shards for {d['tokens']:,} tokens"}
    return _write_data(data, path)


def _write_data(data: dict[str, Any], path: Path) -> Path:
    import yaml

    head = path.read_text(encoding="utf-8").split("\ncommand:")[0]  # the header comment
    body = yaml.safe_dump(data, sort_keys=False, width=1000, default_flow_style=None)
    path.write_text(head + "\n" + body, encoding="utf-8")
    return path


def print_model() -> float:
    """The cost model's tables for the paper's GRPO and PPO think experiments (what
    `rlver budget --items` prints); returns GRPO's fixed-cost share, per stage."""
    from rlver import budget
    from rlver import config as config_mod

    share = 0.0
    for exp, over in (("paper_grpo_think_vanilla", ""), ("paper_ppo_think_vanilla", ""),
                      ("paper_grpo_think_vanilla", LORA_7B),
                      ("paper_ppo_think_vanilla", LORA_7B)):
        b = budget.make_budget(config_mod.compose(exp, over.split(), require_user_keys=False))
        command = " ".join(filter(None, ["rlver budget --experiment", exp, over, "--items"]))
        print(f"\n### {exp} at 7B ({command})\n")
        print(budget.to_text(b))
        print(budget.items_text(b.own))
        share = share or b.own.fixed_share()
    return share


#: The 7B LoRA rows: rank 64 on one node (the one GPU with vLLM asleep is among its layouts).
LORA_7B = "model/lora=r64 cluster.nodes=1"


def print_measured(results: dict[str, Any]) -> None:
    """The measured table: one column per size."""
    sizes = results["sizes"]
    print(f"\n### Measured on {results['device']} (seconds; rates in tokens/s)\n")
    print("| cost | " + " | ".join(f"{k} ({v['params'] / 1e6:.0f}M)" for k, v in sizes.items())
          + " |")
    print("| --- |" + " ---: |" * len(sizes))
    rows = [("update process start + imports", "update", "process_start_imports_s"),
            ("torch.distributed init (gloo / nccl)", "update", "init_distributed_s"),
            ("policy load (load_policy)", "update", "policy_load_s"),
            ("DeepSpeed init (make_engine)", "update", "deepspeed_init_s"),
            ("state save (save_checkpoint)", "update", "state_save_s"),
            ("state load (load_checkpoint)", "update", "state_load_s"),
            ("policy export (save_pretrained)", "update", "policy_export_s"),
            ("tokens trained/s", "update", "tokens_trained_per_s"),
            ("hf process start + imports", "hf", "process_start_imports_s"),
            ("hf engine start (make_engine)", "hf", "engine_start_s"),
            ("hf tokens generated/s", "hf", "tokens_generated_per_s"),
            ("vLLM process start + imports", "vllm", "process_start_imports_s"),
            ("vLLM engine start (VLLMEngine)", "vllm", "engine_start_s"),
            ("vLLM tokens generated/s", "vllm", "tokens_generated_per_s"),
            ("peak RSS of the update probe (GiB)", "update", "peak_rss_gib")]
    for label, probe, key in rows:
        if all(probe in v for v in sizes.values()):
            print(f"| {label} | " + " | ".join(f"{v[probe][key]:.2f}" for v in sizes.values())
                  + " |")
    print("| policy bytes (GB) | " + " | ".join(f"{v['model_bytes'] / GB:.2f}"
                                              for v in sizes.values()) + " |")
    print("| state bytes (GB) | " + " | ".join(f"{v['update']['state_bytes'] / GB:.2f}"
                                             for v in sizes.values()) + " |")
    if all("update_lora" in v for v in sizes.values()):
        print(f"\nWith LoRA (rank {results['lora_rank']}, every projection):\n")
        print("| cost | " + " | ".join(sizes) + " |\n| --- |" + " ---: |" * len(sizes))
        for label, key in (("adapter parameters (M)", "adapter_params"),
                           ("base + adapter load (adapters.policy)", "policy_load_s"),
                           ("DeepSpeed init", "deepspeed_init_s"),
                           ("state save (adapter's state alone)", "state_save_s"),
                           ("state load", "state_load_s"),
                           ("adapter export (lora.save_adapter)", "adapter_export_s"),
                           ("merged export (rlver.models.merge)", "merge_export_s"),
                           ("tokens trained/s", "tokens_trained_per_s"),
                           ("state bytes (MB)", "state_bytes"),
                           ("adapter bytes (MB)", "export_bytes")):
            scale = 1e6 if key in ("adapter_params", "state_bytes", "export_bytes") else 1
            print(f"| {label} | " + " | ".join(
                f"{v['update_lora'][key] / scale:.2f}" for v in sizes.values()) + " |")
    sub = results["submitit"]
    print(f"\nsubmitit local launcher: submission to job start {sub['submit_to_start_s']:.2f} s,"
          f" job end to result {sub['start_to_result_s']:.2f} s")


def print_embedded(e: dict[str, Any]) -> float:
    """Bytes an iteration writes at the embedded model's size: its policy and the state
    carried to the next update, full weights against LoRA; returns full / LoRA."""
    full, lo = e["update"], e["update_lora"]
    print(f"\n### Bytes written per iteration, SmolLM2-135M ({full['params'] / 1e6:.0f}M, "
          f"{'bf16' if e['device'] == 'cuda' else 'fp32'}), full weights against LoRA rank "
          f"{e['lora_rank']}\n")
    print("| | policy (MB) | state (MB) | both (MB) | state save (s) | export (s) |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r, export in (("full weights", full, "policy_export_s"),
                            (f"LoRA rank {e['lora_rank']}", lo, "adapter_export_s")):
        print(f"| {name} | {r['export_bytes'] / 1e6:,.1f} | {r['state_bytes'] / 1e6:,.1f} | "
              f"{(r['export_bytes'] + r['state_bytes']) / 1e6:,.1f} | "
              f"{r['state_save_s']:.2f} | {r[export]:.2f} |")
    ratio: float = ((full["export_bytes"] + full["state_bytes"])
                    / (lo["export_bytes"] + lo["state_bytes"]))
    print(f"\nLoRA writes {ratio:.1f}x fewer bytes an iteration (adapter parameters: "
          f"{lo['adapter_params'] / 1e6:.2f}M of {full['params'] / 1e6:.0f}M)")
    return ratio


def print_tables(results: dict[str, Any], f: dict[str, dict[str, float]]) -> None:
    print_measured(results)
    print("\n### Fits: seconds = a + x / rate\n\n| cost | a (s) | rate | x | a from |\n"
          "| --- | ---: | ---: | --- | --- |")
    for name, v in f.items():
        rate = v["rate_per_s"]
        shown = ("-" if rate == float("inf") else f"{rate / GB:.2f} GB/s"
                 if v["per"] == "bytes" else f"{rate:.3g} params/s")
        print(f"| {name} | {v['intercept_s']:.2f} | {shown} | {v['per']} | {v['how']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, choices=list(SIZES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--engines", nargs="*", default=["hf", "vllm"], choices=["hf", "vllm"])
    p.add_argument("--out", default=str(ROOT / "results" / "scale"))
    p.add_argument("--from-json", help="a scale.json of an earlier run: its fits, no probe")
    p.add_argument("--update-data", action="store_true",
                   help="write the fits (or --disk's bytes) into rlver/data/cost/measured.yaml")
    p.add_argument("--disk", metavar="RUN_DIR", help="measure bytes a stored token of a run")
    p.add_argument("--model-only", action="store_true", help="the model's tables alone")
    p.add_argument("--batch", type=int, default=8, help="sequences generated together")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rows", type=int, default=2, help="sequences of a training step")
    p.add_argument("--seq", type=int, default=256, help="tokens of each")
    p.add_argument("--lora-rank", type=int, default=64, help="the LoRA probes' rank")
    p.add_argument("--embedded", action="store_true",
                   help="only the update probes on the embedded model (bytes an iteration "
                        "writes, full weights against LoRA)")
    # a probe's own process (internal)
    p.add_argument("--probe", choices=["hf", "vllm", "update", "update-lora", "submitit"])
    p.add_argument("--model")
    p.add_argument("--work")
    a = p.parse_args()
    if a.probe:
        child(a)
        return
    if a.disk:
        d = measure_disk(Path(a.disk))
        print(f"scale: {a.disk}: {d['bytes']:,} bytes for {d['tokens']:,} tokens in "
              f"{d['files']} shards")
        if a.update_data:
            print(f"scale: wrote {write_disk(Path(a.disk), d)}")
        print(f"stored_bytes_per_token={d['bytes'] / d['tokens']:.2f}")
        return
    if a.embedded:
        out = Path(a.out)
        e = measure_embedded(out, a.device, a.rows, a.seq, a.lora_rank)
        e["command"], e["date"] = "python " + " ".join(sys.argv), time.strftime("%Y-%m-%d")
        e["load_average_at_end"] = os.getloadavg()
        (out / "embedded.json").write_text(json.dumps(e, indent=1))
        print(f"lora_bytes_ratio={print_embedded(e):.2f}")
        return
    if not a.model_only:
        out = Path(a.out)
        if a.from_json:
            results = json.loads(Path(a.from_json).read_text())
        else:
            out.mkdir(parents=True, exist_ok=True)
            results = measure(a.sizes, out, a.device, a.engines, a.batch, a.new_tokens,
                              a.rows, a.seq, a.lora_rank)
            results["command"] = "python " + " ".join(sys.argv)
            results["date"] = time.strftime("%Y-%m-%d")
            results["load_average_at_end"] = os.getloadavg()
        f = fits(results)
        results["fits"] = f
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(results, indent=1))
        print_tables(results, f)
        if a.update_data:
            print(f"\nscale: wrote {write_measured(results, f)}")
    share = print_model()
    print(f"fixed_cost_share_7b={share:.3f}")


if __name__ == "__main__":
    main()
