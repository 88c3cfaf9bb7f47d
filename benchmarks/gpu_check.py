"""The one GPU check: rsna.yaml's recipe measured on the hardware it is written for, in one call.

``benchmarks/gpu_check.sh OUT`` on a GPU machine (about 8 minutes; ``--toy`` runs the same steps at toy sizes on a
CPU, as a test does). It writes at most 8 files to OUT:

- ``nvidia_smi.csv``: utilisation and memory, sampled each second while the check runs (GPU only);
- ``step.json``: a training step of rsna.yaml's model against stock torchvision ``maskrcnn_resnet50_fpn_v2`` at the
  same batch and precision (step time, images/s, peak memory), with channels-last and ``torch.compile`` of the
  backbone as variants on a GPU; inference images/s at a batch and the latency of one image;
- ``loader.json``: what the training loader delivers (rsna.yaml's augmentation at its size) per worker count;
- ``pipeline.json`` and ``pipeline.log``: ``synth`` -> ``prepare`` -> ``train --config rsna`` (random weights, a few
  hundred steps) -> ``evaluate`` -> ``predict``, each stage timed, the training loop's data-wait share, predict's
  DICOMs/s; the commands' output;
- ``summary.json``: the figures against the goals, and rsna.yaml's full schedule extrapolated in hours;
- ``env.txt``: versions, the GPU, the CPU.

Each part is timed against a deadline: what would not fit is skipped and named in summary.json, so the call
returns within its limit with what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: the real data's schedule in rsna.yaml: 20 epochs of 26,684 images, and its 5 folds
EPOCHS, EPOCH_IMAGES, FOLDS = 20, 26_684, 5
GOALS = {"train_vs_stock": 1.5, "data_wait_share": 0.05, "schedule_hours": 1.0, "predict_dicoms_per_s": 500}
SIZES = {  # full: the recipe on a GPU; toy: the same steps, small enough for a CPU in a test
    "full": dict(size=512, batch=16, infer_batch=32, warmup=3, timed=15, train_images=1200, test_images=2000,
                 steps=300, loader_batches=20, workers=(1, 2, 4, 8), deadline_s=460),
    "toy": dict(size=64, batch=2, infer_batch=2, warmup=1, timed=2, train_images=12, test_images=4,
                steps=2, loader_batches=2, workers=(0, 1), deadline_s=600),
}


class Clock:
    """Seconds since the check started, and whether a part that takes ``need_s`` still fits the deadline."""

    def __init__(self, deadline_s: float):
        self.start, self.deadline_s, self.skipped = time.perf_counter(), deadline_s, []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, part: str, need_s: float) -> bool:
        if self.elapsed() + need_s <= self.deadline_s:
            return True
        self.skipped.append(part)
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    """Return the peak memory so far: the GPU's allocator on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_of(n: int, size: int, device: torch.device):
    """Return n images (1 channel, [0, 1]) with one box and its mask each, as the cache and dataset give them."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(1, size, size, generator=generator).to(device) for _ in range(n)]
    targets = []
    for _ in range(n):
        x0, y0 = (torch.rand(2, generator=generator) * size / 2).tolist()
        w, h = size / 4, size / 3
        mask = torch.zeros(1, size, size, dtype=torch.uint8)
        mask[0, int(y0):int(y0 + h), int(x0):int(x0 + w)] = 1
        targets.append({"boxes": torch.tensor([[x0, y0, x0 + w, y0 + h]], device=device),
                        "labels": torch.ones(1, dtype=torch.int64, device=device), "masks": mask.to(device)})
    return images, targets


def models(size: int):
    """Yield (label, model builder): rsna.yaml's model (random weights) and stock torchvision v2."""
    import torchvision

    from pneumodet.config_files import load_config
    from pneumodet.model import build_model

    config = load_config("rsna", ["model.weights=none", f"data.image_size={size}"])
    yield "pneumodet rsna.yaml", lambda: build_model(config.model, size)
    yield "stock torchvision maskrcnn_resnet50_fpn_v2", lambda: torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=2, min_size=size, max_size=size)


def time_steps(model, images, targets, device, bf16: bool, warmup: int, timed: int) -> float:
    """Return the mean seconds of ``timed`` training steps after ``warmup`` (SGD at lr 0: random weights with
    frozen BatchNorm diverge after one real step, and a diverged RPN proposes nothing)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
    model.train()
    times = []
    for i in range(warmup + timed):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.mean(times))


def step_benchmark(p: dict, device: torch.device, clock: Clock) -> dict:
    """Training step of each model at the recipe's batch and precision, variants on a GPU, then inference."""
    from pneumodet.forward import TorchBackend

    bf16 = device.type == "cuda"  # rsna.yaml trains bf16-mixed; the CPU toy run stays fp32
    images, targets = batch_of(p["batch"], p["size"], device)
    rows = []
    for label, build in models(p["size"]):
        variants = [("", {})]
        if device.type == "cuda":
            variants += [(", channels-last", {"channels_last": True}), (", backbone torch.compile", {"compile": True})]
        for suffix, how in variants:
            if not clock.fits(f"step: {label}{suffix}", 45 if how.get("compile") else 15):
                continue
            torch.manual_seed(0)
            model = build().to(device)
            if how.get("channels_last"):
                model = model.to(memory_format=torch.channels_last)
            if how.get("compile"):
                model.backbone = torch.compile(model.backbone)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                step_s = time_steps(model, images, targets, device, bf16, p["warmup"], p["timed"])
                rows.append({"model": label + suffix, "batch": p["batch"], "size": p["size"],
                             "precision": "bf16 autocast" if bf16 else "fp32", "step_s": round(step_s, 4),
                             "images_per_s": round(p["batch"] / step_s, 2), "peak_mb": round(peak_mb(device), 1)})
            except Exception as exc:  # a variant that fails is a finding, not the end of the check
                rows.append({"model": label + suffix, "error": f"{type(exc).__name__}: {exc}"[:300]})
            del model
    stock = next((r for r in rows if r["model"].startswith("stock") and "error" not in r), None)
    for row in rows:
        if stock and "images_per_s" in row:
            row["vs_stock"] = round(row["images_per_s"] / stock["images_per_s"], 3)
    inference = {}
    if clock.fits("inference", 20):
        torch.manual_seed(0)
        model = next(models(p["size"]))[1]()
        backend = TorchBackend(model, device, channels_last=device.type == "cuda")
        batch, _ = batch_of(p["infer_batch"], p["size"], device)
        for _ in range(2):
            backend.candidates(batch, p["size"], bf16=bf16)
        sync(device)
        start = time.perf_counter()
        for _ in range(3):
            backend.candidates(batch, p["size"], bf16=bf16)
        sync(device)
        inference["images_per_s_batch"] = round(3 * p["infer_batch"] / (time.perf_counter() - start), 2)
        one = []
        for _ in range(10):
            start = time.perf_counter()
            backend.candidates(batch[:1], p["size"], bf16=bf16)
            sync(device)
            one.append(time.perf_counter() - start)
        inference.update(batch=p["infer_batch"], latency_ms_one_image=round(1000 * float(np.median(one)), 2))
    return {"training": rows, "inference": inference}


def loader_benchmark(p: dict, cache: Path, clock: Clock) -> list[dict]:
    """Images/s the training loader delivers (rsna.yaml's augmentation, its size) for each worker count."""
    from torch.utils.data import DataLoader

    from pneumodet.config_files import load_config
    from pneumodet.data.dataset import PneumoniaDataset, collate
    from pneumodet.data.transforms import train_transforms

    config = load_config("rsna", ["model.weights=none", f"data.image_size={p['size']}"])
    dataset = PneumoniaDataset(cache, p["size"], "train", transforms=train_transforms(config.augment))
    rows = []
    for workers in p["workers"]:
        if workers > (os.cpu_count() or 1) or not clock.fits(f"loader, {workers} workers", 20):
            continue
        loader = DataLoader(dataset, batch_size=p["batch"], shuffle=True, num_workers=workers, collate_fn=collate,
                            persistent_workers=False, generator=torch.Generator().manual_seed(0))
        it, seen = iter(loader), 0
        next(it)  # workers started, first batch made
        start = time.perf_counter()
        for _ in range(p["loader_batches"]):
            try:
                seen += len(next(it)[0])
            except StopIteration:
                it = iter(loader)
        seconds = time.perf_counter() - start
        rows.append({"workers": workers, "images_per_s": round(seen / seconds, 1) if seconds else None})
        del it, loader
    return rows


def run_stage(name: str, args: list[str], log, env: dict) -> tuple[float, str, int]:
    """Run one ``pneumodet`` command; return (seconds, its stdout, exit status), both streams appended to log."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pneumodet.cli", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    log.write(f"\n$ pneumodet {' '.join(args)}   # {name}: {seconds:.1f} s, exit {proc.returncode}\n")
    log.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    log.flush()
    return seconds, proc.stdout, proc.returncode


def pipeline(p: dict, work: Path, out: Path, device: torch.device, clock: Clock) -> tuple[dict, Path | None]:
    """synth -> prepare -> train -> evaluate -> predict, each timed; return the figures and the cache."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    size, data, cache, run = p["size"], work / "data", work / "cache", work / "run"
    toy = [] if device.type == "cuda" else ["train.precision=32-true", "data.num_workers=0", "train.batch_size=2",
                                            "train.epochs=1", "train.stages=[{'until_epoch': 1}]",
                                            "train.warmup_steps=0"]
    stages = [
        ("synth", ["synth", str(data), "--train", str(p["train_images"]), "--test", str(p["test_images"])]),
        ("prepare", ["prepare", str(data), "--out", str(cache), "--size", str(size)]),
        ("train", ["train", "--config", "rsna", "--data", str(cache), "--run", str(run), "--set", "model.weights=none",
                   "--set", f"data.image_size={size}", "--set", f"train.steps={p['steps']}",
                   "--set", f"train.val_every_steps={p['steps']}", *[a for o in toy for a in ("--set", o)]]),
        ("evaluate", ["evaluate", str(run)]),
        ("predict", ["predict", str(run), str(data / "stage_2_test_images"), "--out", str(work / "submission.csv")]),
    ]
    result: dict = {"stages": {}}
    with open(out / "pipeline.log", "w") as log:
        for name, args in stages:
            if not clock.fits(f"pipeline: {name}", 10):
                break
            seconds, stdout, status = run_stage(name, args, log, env)
            result["stages"][name] = {"seconds": round(seconds, 1), "exit": status}
            if status != 0:
                break
            if name == "predict":
                line = next((line for line in stdout.splitlines() if "images/s" in line), "")
                result["predict_line"] = line.strip()
                result["stages"][name]["dicoms"] = p["test_images"]
                result["stages"][name]["dicoms_per_s_whole_command"] = round(p["test_images"] / seconds, 1)
                result["predict_images_per_s_reported"] = _rate(line)
    metrics = run / "metrics.csv"
    if metrics.is_file():
        from pneumodet.runs import read_metrics

        rows = read_metrics(metrics)
        spent = sum(r["epoch_time_s"] for r in rows if np.isfinite(r["epoch_time_s"]))
        wait = sum(r["data_wait_s"] for r in rows if np.isfinite(r["data_wait_s"]))
        result["data_wait_share"] = round(wait / spent, 4) if spent else None
        result["train_epoch_time_s"] = round(spent, 1)
    return result, cache if (cache / "split.csv").is_file() else None


def _rate(line: str) -> float | None:
    """Return the number before "images/s" in predict's closing line."""
    words = line.replace("(", " ").replace(",", " ").split()
    for before, word in zip(words, words[1:], strict=False):
        if word.startswith("images/s"):
            try:
                return float(before)
            except ValueError:
                return None
    return None


def summarize(step: dict, loader: list, pipe: dict, clock: Clock, device: torch.device) -> dict:
    """The figures against the goals, and rsna.yaml's full schedule extrapolated from the measured images/s."""
    ours = next((r for r in step.get("training", []) if r["model"] == "pneumodet rsna.yaml" and "images_per_s" in r),
                None)
    best = max((r for r in step.get("training", []) if r["model"].startswith("pneumodet") and "images_per_s" in r),
               key=lambda r: r["images_per_s"], default=None)
    summary = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
               "cpu", "elapsed_s": round(clock.elapsed(), 1), "skipped": clock.skipped, "goals": GOALS}
    if ours:
        images_per_s = best["images_per_s"]
        hours = EPOCHS * EPOCH_IMAGES / images_per_s / 3600
        summary.update(train_vs_stock=ours.get("vs_stock"), best_variant=best["model"],
                       best_vs_stock=best.get("vs_stock"), train_images_per_s=images_per_s,
                       schedule_hours_one_run=round(hours, 2), schedule_hours_five_folds=round(FOLDS * hours, 2))
    summary["data_wait_share"] = pipe.get("data_wait_share")
    summary["predict_dicoms_per_s"] = pipe.get("stages", {}).get("predict", {}).get("dicoms_per_s_whole_command")
    if loader:
        per_worker = max(r["images_per_s"] / max(r["workers"], 1) for r in loader if r["images_per_s"])
        summary["loader_images_per_s_per_worker"] = round(per_worker, 1)
        if ours:  # workers one step needs so that loading keeps up with the step at its measured rate
            summary["loader_workers_needed"] = int(np.ceil(best["images_per_s"] / per_worker))
    return summary


def write_env(out: Path, device: torch.device) -> None:
    import torchvision

    lines = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"torchvision {torchvision.__version__}", f"cpus {os.cpu_count()}", f"platform {platform.platform()}"]
    if device.type == "cuda":
        lines += [f"gpu {torch.cuda.get_device_name(device)}", f"cuda {torch.version.cuda}"]
    (out / "env.txt").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the result files (created)")
    parser.add_argument("--toy", action="store_true", help="toy sizes, on the CPU if there is no GPU (what the test "
                        "runs)")
    args = parser.parse_args(argv)
    p = SIZES["toy" if args.toy else "full"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = Clock(p["deadline_s"])
    write_env(out, device)
    sampler = None
    if device.type == "cuda" and shutil.which("nvidia-smi"):
        sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used,memory.total",
                                    "--format=csv", "-l", "1"], stdout=open(out / "nvidia_smi.csv", "w"),
                                   stderr=subprocess.DEVNULL)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"pneumodet-gpu-check-{os.getpid()}"
    try:
        step = step_benchmark(p, device, clock)
        (out / "step.json").write_text(json.dumps(step, indent=2) + "\n")
        pipe, cache = pipeline(p, work, out, device, clock)
        (out / "pipeline.json").write_text(json.dumps(pipe, indent=2) + "\n")
        loader = loader_benchmark(p, cache, clock) if cache is not None else []
        (out / "loader.json").write_text(json.dumps(loader, indent=2) + "\n")
        summary = summarize(step, loader, pipe, clock, device)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary, indent=2))
    finally:
        if sampler is not None:
            sampler.terminate()
        shutil.rmtree(work, ignore_errors=True)
    failed = [name for name, stage in pipe["stages"].items() if stage["exit"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
