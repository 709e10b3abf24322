"""Peak training memory and step time of full fine-tuning, linear probing, SH-PEFT and FPT, side by side.

Five ways of training the same backbone on high-resolution images are measured in one run:

- ``full``: full fine-tuning of a ``build_classifier`` model (every parameter trainable);
- ``linear``: linear probing (backbone frozen and run under ``torch.no_grad()``, only the head trains);
- ``shpeft``: SH-PEFT at ``--budget`` (1%): hybrid L2 importance (lambda 1) estimated on one batch with
  :func:`~monai_shpeft.importance.estimate_importance`, a :class:`~monai_shpeft.sparse_set.SparseTrainableSet`,
  then training with the package's :class:`~monai_shpeft.handlers.GradientMaskHandler` masking the gradients;
- ``fpt``: FPT (``build_fpt``) reading the high-resolution image through its frozen branch at every step;
- ``fpt_preload``: FPT reading the frozen features from a :class:`~monai_shpeft.feature_cache.FrozenFeatureCache` filled
  beforehand with the cache's real ``fill``, outside any measurement (by the ``fpt`` process once its own
  measurement is printed, or by a preliminary process when ``fpt`` is not run); the measured process looks the
  features up with ``FrozenFeatureCache.get`` (what ``LoadFrozenFeatures`` calls) through a DataLoader. The frozen
  backbone stays in the network (it is part of the model), so its weights count in this method's peak too.

Every method runs in a fresh subprocess of its own, one after the other, so that peaks cannot mix. In that process
the baseline is taken after the imports and before anything is built; the peak is then

- on a GPU: ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``) minus the allocated baseline;
- on the CPU: the peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``, its high-water mark reset at the
  baseline through ``/proc/self/clear_refs`` where the kernel allows it) minus the resident size at the baseline.

The peak therefore covers everything allocated after the baseline: model weights, gradients, optimizer state,
activations, data batches, and (SH-PEFT) the importance estimation pass. Weights are random unless ``--pretrained``
is given: memory and time do not depend on weight or pixel values, so images are random tensors of the stated
shape. The parent writes ``<output_dir>/<name>.json``, ``<name>.md`` (a Markdown table) and ``<name>.png``.

Example (the CPU figures in docs/benchmarks/ came from this command)::

    python benchmarks/fpt_memory.py --backbone timm:vit_base_patch16_224 --image_size 512 --batch_size 4 \
        --steps 2 --warmup 1 --name fpt_memory_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = ("full", "linear", "shpeft", "fpt", "fpt_preload")
LABELS = {
    "full": "Full fine-tuning",
    "linear": "Linear probing",
    "shpeft": "SH-PEFT",
    "fpt": "FPT",
    "fpt_preload": "FPT + preloading",
}
PLOT_LABELS = {
    "full": "Full\nfine-tuning",
    "linear": "Linear\nprobing",
    "shpeft": "SH-PEFT",
    "fpt": "FPT",
    "fpt_preload": "FPT +\npreloading",
}
PREPARE_CACHE = "prepare_cache"
RESULT_MARKER = "FPT_MEMORY_RESULT "
TARGET_FRACTION = 0.10  # the target: FPT with preloading at or below 10% of full fine-tuning's peak
LEARNING_RATE = 1e-4
GPU_BATCH_SIZE = 16
CPU_BATCH_SIZE = 4
STDERR_TAIL = 4000
MB = 1024.0**2


# ---------------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backbone", default="timm:vit_base_patch16_224", help="architecture; weights are random unless --pretrained"
    )
    parser.add_argument("--pretrained", default=None, help="local weights file of the backbone (optional)")
    parser.add_argument("--image_size", type=int, default=512, help="high-resolution input size")
    parser.add_argument("--side_image_size", type=int, default=224, help="FPT side-network input size")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help=f"images per step (default {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on the CPU)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps before the timed ones")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--num_classes", type=int, default=4)
    parser.add_argument("--budget", type=float, default=0.01, help="SH-PEFT trainable ratio of the backbone")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'...")
    parser.add_argument("--output_dir", default="docs/benchmarks")
    parser.add_argument("--name", default="fpt_memory", help="prefix of the output files")
    parser.add_argument("--tiny", action="store_true", help="tiny backbones of the same family (tests)")
    parser.add_argument("--cache_dir", default=None, help="FPT feature cache (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=(*METHODS, PREPARE_CACHE), default=None, help=argparse.SUPPRESS)
    # the fpt worker fills the cache for fpt_preload once its own measurement is done (saves a process start-up)
    parser.add_argument("--fill_cache_after", action="store_true", help=argparse.SUPPRESS)
    return parser


def worker_command(
    args: argparse.Namespace, worker: str, cache_dir: str | None, fill_cache_after: bool = False
) -> list[str]:
    """The command line of the subprocess that runs (and measures) one method."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker]
    for option in (
        "backbone",
        "pretrained",
        "image_size",
        "side_image_size",
        "batch_size",
        "steps",
        "warmup",
        "num_classes",
        "budget",
        "device",
        "seed",
    ):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option}", str(value)]
    if cache_dir is not None:
        command += ["--cache_dir", cache_dir]
    if args.tiny:
        command.append("--tiny")
    if fill_cache_after:
        command.append("--fill_cache_after")
    return command


# ---------------------------------------------------------------------------------------------------------------------
# worker: one method in a fresh process


def _release_freed_heap() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


class RandomImages:
    """Item ``i``: a random high-resolution image, a random low-resolution image and a label, all fixed by the seed.

    Each image has its own generator, so any process regenerates exactly the same tensors (the feature cache keys
    them by content). Pixel values do not affect memory or time.
    """

    def __init__(self, count: int, image_size: int, side_image_size: int, num_classes: int, seed: int, lr: bool):
        self.count = count
        self.image_size = image_size
        self.side_image_size = side_image_size
        self.num_classes = num_classes
        self.seed = seed
        self.lr = lr

    def __len__(self) -> int:
        return self.count

    def _generator(self, index: int, stream: int):
        import torch

        return torch.Generator().manual_seed(self.seed * 1_000_003 + index * 2 + stream)

    def high_res(self, index: int):
        import torch

        size = (3, self.image_size, self.image_size)
        return torch.rand(size, generator=self._generator(index, 0))

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        item = {"image": self.high_res(index), "label": torch.tensor(index % self.num_classes)}
        if self.lr:
            size = (3, self.side_image_size, self.side_image_size)
            item["image_lr"] = torch.rand(size, generator=self._generator(index, 1))
        return item


class CachedFeatures:
    """Training items of FPT with preloading: the high-resolution image is replaced by its cached frozen features.

    As in a real pipeline, the (preprocessed) high-resolution image is made first, because the cache is keyed by its
    content, and ``FrozenFeatureCache.get`` reads its features (what
    :class:`~monai_shpeft.feature_cache.LoadFrozenFeatures` does; that transform is not imported because
    ``monai_shpeft.transforms`` pulls in all of ``monai.transforms``, seconds of start-up per run). A miss is an
    error, as in the transform: it would mean the cache was filled for other images or another network.
    """

    def __init__(self, images: RandomImages, cache) -> None:
        self.images = images
        self.cache = cache

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from monai_shpeft.feature_cache.store import FeatureCacheError

        item = self.images[index]
        features = self.cache.get(item["image"])
        if features is None:
            raise FeatureCacheError(f"No preloaded FPT features for random image {index} in '{self.cache.root}'.")
        item["image"] = features
        return item


class FillItems:
    """Datalist transform for ``FrozenFeatureCache.fill``: ``{"index": i}`` -> ``{"image": high-res image i}``."""

    def __init__(self, images: RandomImages) -> None:
        self.images = images

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"image": self.images.high_res(int(item["index"]))}


def _resolve_device(name: str):
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _device_description(device) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 1024**3:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU: {_cpu_description()}; torch threads {torch.get_num_threads()}"


def _import_for(method: str, backbone: str) -> None:
    """Import every module the method needs before the baseline, so that no import lands inside the peak."""
    import torch  # noqa: F401

    import monai_shpeft.backbones  # noqa: F401

    if backbone.startswith("open_clip:"):
        import open_clip  # noqa: F401
    else:
        import timm  # noqa: F401
        import timm.models  # noqa: F401
    if method == "shpeft":
        import monai.engines.utils  # noqa: F401  (the default prepare_batch of the estimation)

        import monai_shpeft.handlers.gradient_mask_handler  # noqa: F401
        import monai_shpeft.importance  # noqa: F401
        import monai_shpeft.sparse_set  # noqa: F401
    if method in ("fpt", "fpt_preload", PREPARE_CACHE):
        import monai_shpeft.networks  # noqa: F401
    if method in ("fpt_preload", PREPARE_CACHE):
        import safetensors.torch  # noqa: F401

        import monai_shpeft.feature_cache.store  # noqa: F401
    if method == PREPARE_CACHE:
        import monai.data  # noqa: F401


def _start_runtime(device) -> None:
    """One tiny training step, so that thread pools and kernel libraries are set up before the baseline.

    Their one-off start-up cost (tens of MB of resident memory on the CPU) belongs to any torch process, not to a
    training method; on a GPU it is outside ``max_memory_allocated`` anyway.
    """
    import torch

    layer = torch.nn.Linear(8, 8).to(device)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=LEARNING_RATE)
    for _ in range(2):
        torch.nn.functional.cross_entropy(
            layer(torch.rand(4, 8, device=device)), torch.zeros(4, 8, device=device).argmax(1)
        ).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    del layer, optimizer


def _num_images(args: argparse.Namespace, batch_size: int) -> int:
    return batch_size * (args.warmup + args.steps)


def _build_fpt(args: argparse.Namespace, device):
    import torch

    from monai_shpeft.networks import build_fpt

    torch.manual_seed(args.seed)  # the same frozen weights in the filling and the measured process: same cache
    return build_fpt(
        args.backbone,
        args.num_classes,
        pretrained=args.pretrained,
        image_size=args.image_size,
        side_image_size=args.side_image_size,
        tiny=args.tiny,
    ).to(device)


def _build_classifier(args: argparse.Namespace, device):
    import torch

    from monai_shpeft.backbones import build_classifier

    torch.manual_seed(args.seed)
    return build_classifier(
        args.backbone, args.num_classes, pretrained=args.pretrained, image_size=args.image_size, tiny=args.tiny
    ).to(device)


def prepare_cache(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the feature cache for the benchmark's images, outside any measurement.

    Runs in a preliminary process of its own, or in the ``fpt`` process once that one's measurement is printed.
    """
    import torch

    from monai_shpeft.feature_cache.store import feature_cache_for

    device = _resolve_device(args.device)
    batch_size = args.batch_size or (GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE)
    images = RandomImages(
        _num_images(args, batch_size), args.image_size, args.side_image_size, args.num_classes, args.seed, lr=False
    )
    network = _build_fpt(args, device).eval()
    cache = feature_cache_for(network, args.cache_dir)
    report = cache.fill(
        [{"index": i} for i in range(len(images))],
        FillItems(images),
        network,
        device=device,
        batch_size=batch_size,
        progress=False,
    )
    return {
        "worker": PREPARE_CACHE,
        "ok": True,
        "images": len(images),
        "fill": report,
        "cache_root": str(cache.root),
        "cache_entries": cache.num_entries(),
        "cache_bytes": cache.size_bytes(),
        "cache_dtype": cache.dtype_name,
        "feature_shape": list(cache.feature_shape),
        "torch_version": torch.__version__,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build, train and measure one method; everything allocated after the baseline counts towards the peak."""
    method = args.worker
    _import_for(method, args.backbone)
    import torch
    from torch.utils.data import DataLoader

    from monai_shpeft.memory import current_rss_bytes, max_rss_bytes, reset_peak_rss

    device = _resolve_device(args.device)
    batch_size = args.batch_size or (GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.init()

    _start_runtime(device)

    # ---- baseline: imports done, runtime started, nothing built
    _release_freed_heap()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        peak_reset = True
    else:
        peak_reset = reset_peak_rss()
        baseline = current_rss_bytes()
        baseline_maxrss = max_rss_bytes()

    images = RandomImages(
        _num_images(args, batch_size),
        args.image_size,
        args.side_image_size,
        args.num_classes,
        args.seed,
        lr=method in ("fpt", "fpt_preload"),
    )
    dataset: Any = images
    extra: dict[str, Any] = {}
    after_backward = after_step = None

    if method in ("full", "linear", "shpeft"):
        model = _build_classifier(args, device)
        total_params = sum(p.numel() for p in model.parameters())
        head_params = sum(p.numel() for p in model.head.parameters())
        if method == "full":
            trainable = total_params
            optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)

            def forward(batch):
                return model(batch["image"])

        elif method == "linear":
            for param in model.backbone.parameters():
                param.requires_grad_(False)
            trainable = head_params
            optimizer = torch.optim.AdamW(model.head.parameters(), lr=LEARNING_RATE)

            def forward(batch):
                with torch.no_grad():
                    features = model.forward_features(batch["image"])
                return model.head(features)

        else:
            from types import SimpleNamespace

            from monai_shpeft.handlers.gradient_mask_handler import GradientMaskHandler
            from monai_shpeft.importance import estimate_importance
            from monai_shpeft.sparse_set import SparseTrainableSet

            # as in the package's trainers: the optimizer holds every parameter, the mask decides what moves
            optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
            first = [images[i] for i in range(batch_size)]
            estimation_batch = (
                torch.stack([item["image"] for item in first]),
                torch.stack([item["label"] for item in first]),
            )
            start = time.perf_counter()
            importance = estimate_importance(
                model,
                [estimation_batch],
                torch.nn.CrossEntropyLoss(),
                strategy="l2",
                lambda_=1.0,
                mode="hybrid",
                device=device,
            )
            header = {"backbone": args.backbone, "strategy": "l2", "mode": "hybrid", "lambda": 1.0}
            trainable_set = SparseTrainableSet.from_importance(importance, args.budget, header=header)
            del importance, estimation_batch, first
            estimation_seconds = time.perf_counter() - start
            handler = GradientMaskHandler(trainable_set)
            # the handler's hooks, called at the points where a MONAI SupervisedTrainer fires their events
            engine = SimpleNamespace(network=model, optimizer=optimizer, state=SimpleNamespace())
            handler.activate(engine, trainable_set)

            def after_backward():  # IterationEvents.BACKWARD_COMPLETED
                handler(engine)

            def after_step():  # IterationEvents.MODEL_COMPLETED
                handler.restore_frozen_entries(engine)

            trainable = trainable_set.num_selected + head_params
            extra = {
                "budget": args.budget,
                "selected_backbone_weights": trainable_set.num_selected,
                "backbone_weights": trainable_set.num_total,
                "tensors_with_trainable_entries": len(trainable_set.trainable_names()),
                "tensors_in_scope": len(trainable_set.shapes),
                "frozen_entries_restored_after_step": handler.restores_frozen_entries,
                "estimation_seconds": estimation_seconds,
                "estimation_batches": 1,
            }

            def forward(batch):
                return model(batch["image"])

    else:
        model = _build_fpt(args, device)
        total_params = sum(p.numel() for p in model.parameters())
        head_params = sum(p.numel() for p in model.head.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
        frozen = sum(p.numel() for p in model.extractor.parameters())
        extra = {
            "feature_shape": list(model.extractor.feature_shape),
            "frozen_backbone_params": frozen,
            "frozen_backbone_weight_bytes": sum(p.numel() * p.element_size() for p in model.extractor.parameters()),
        }
        if method == "fpt_preload":
            from monai_shpeft.feature_cache.store import feature_cache_for

            cache = feature_cache_for(model, args.cache_dir)
            dataset = CachedFeatures(images, cache)
            extra.update({"cache_root": str(cache.root), "cache_dtype": cache.dtype_name})

        def forward(batch):
            return model(batch["image"], batch["image_lr"])

    model.train()
    if method == "linear":
        model.backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    loss_function = torch.nn.CrossEntropyLoss()

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    # the peak of building the model (and, for SH-PEFT, of the estimation pass) alone, before any training step
    synchronize()
    setup_peak = (torch.cuda.max_memory_allocated(device) if cuda else max_rss_bytes()) - baseline
    load_before = os.getloadavg()[0]
    step_seconds: list[float] = []
    data_seconds: list[float] = []
    losses: list[float] = []
    batches = iter(loader)
    for _ in range(args.warmup + args.steps):
        synchronize()
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        synchronize()
        loaded = time.perf_counter()
        loss = loss_function(forward(batch), batch["label"])
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        done = time.perf_counter()
        data_seconds.append(loaded - start)
        step_seconds.append(done - loaded)
        losses.append(float(loss.detach()))
        del batch, loss

    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - baseline
        memory = {
            "peak_bytes": peak,
            "peak_source": "torch.cuda.max_memory_allocated - allocated at baseline",
            "baseline_bytes": baseline,
            "max_memory_reserved_bytes": torch.cuda.max_memory_reserved(device),
        }
    else:
        maxrss = max_rss_bytes()
        memory = {
            "peak_bytes": maxrss - baseline,
            "peak_source": "getrusage ru_maxrss - RSS at baseline"
            + (" (high-water mark reset at baseline)" if peak_reset else " (high-water mark NOT reset)"),
            "baseline_bytes": baseline,
            "baseline_maxrss_bytes": baseline_maxrss,
            "peak_rss_bytes": maxrss,
            "high_water_mark_reset": peak_reset,
        }
    timed = step_seconds[args.warmup :]
    timed_data = data_seconds[args.warmup :]
    return {
        "method": method,
        "ok": True,
        "device": str(device),
        "device_description": _device_description(device),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "total_params": total_params,
        "head_params": head_params,
        "trainable_params": trainable,
        "trainable_ratio": trainable / total_params,
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        **memory,
        "peak_before_training_bytes": setup_peak,
        "step_seconds": timed,
        "step_seconds_median": statistics.median(timed),
        "data_seconds": timed_data,
        "data_seconds_median": statistics.median(timed_data),
        "warmup_step_seconds": step_seconds[: args.warmup],
        "losses": losses,
        "distinct_images": len(images),
        # other work on the machine slows the steps down (not the memory): the 1-minute load before and after them
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "logical_cores": os.cpu_count(),
        **extra,
    }


def worker_main(args: argparse.Namespace) -> int:
    if args.worker == PREPARE_CACHE:
        result = {**prepare_cache(args), "filled_by": "a preliminary process"}
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    # the measurement is complete (and printed) before anything else happens in this process
    print(RESULT_MARKER + json.dumps(measure(args)), flush=True)
    if args.fill_cache_after:
        import gc

        gc.collect()
        _import_for(PREPARE_CACHE, args.backbone)
        result = {**prepare_cache(args), "filled_by": f"the {args.worker} process, after its own measurement"}
        print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# parent: one subprocess per method, then the report


def run_worker(command: list[str]) -> dict[str, Any]:
    """Run a worker process.

    Returns:
        ``{"measurement": ..., "preparation": ..., "failure": ...}``: the method's result and the cache fill's report
        (each ``None`` when the process printed none), and an error record with the end of its stderr when the
        process failed (``None`` otherwise).
    """
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {"measurement": None, "preparation": None, "failure": None}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            payload = json.loads(line[len(RESULT_MARKER) :])
            payload["process_seconds"] = elapsed
            out["preparation" if payload.get("worker") == PREPARE_CACHE else "measurement"] = payload
    if done.returncode != 0:
        out["failure"] = {
            "ok": False,
            "error": f"worker exited with code {done.returncode}: {shlex.join(command)}",
            "stderr_tail": (done.stderr or done.stdout)[-STDERR_TAIL:],
            "process_seconds": elapsed,
        }
    return out


def _or_failure(payload: dict[str, Any] | None, out: dict[str, Any], what: str) -> dict[str, Any]:
    if payload is not None:
        return payload
    return out["failure"] or {"ok": False, "error": f"the worker printed no {what}", "stderr_tail": ""}


def _fmt_int(value: int) -> str:
    return f"{value:,}"


def _fmt_ratio(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    full = results.get("full", {})
    full_peak = full.get("peak_bytes") if full.get("ok") else None
    full_step = full.get("step_seconds_median") if full.get("ok") else None
    for result in results.values():
        if not result.get("ok"):
            continue
        result["peak_fraction_of_full"] = result["peak_bytes"] / full_peak if full_peak else None
        result["step_time_relative_to_full"] = result["step_seconds_median"] / full_step if full_step else None


def settings_of(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in results.values() if r.get("ok")]
    first = done[0] if done else {}
    return {
        "backbone": args.backbone,
        "weights": args.pretrained or "random initialisation (architecture only)",
        "tiny": args.tiny,
        "image_size": args.image_size,
        "side_image_size": args.side_image_size,
        "batch_size": first.get("batch_size", args.batch_size),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "num_classes": args.num_classes,
        "shpeft_budget": args.budget,
        "optimizer": f"AdamW(lr={LEARNING_RATE}, default weight_decay=0.01), float32, no AMP, no checkpointing",
        "seed": args.seed,
        "device": first.get("device", args.device),
        "device_description": first.get("device_description"),
        "torch_version": first.get("torch_version"),
        "torch_threads": first.get("torch_threads"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    header = (
        "| Method | Trainable params | Trainable % | Weights MB | Peak memory MB | % of full FT | Step s | "
        "Time vs full | Data s |"
    )
    lines = [header, "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for method, result in results.items():
        label = LABELS[method]
        if not result.get("ok"):
            lines.append(f"| {label} | failed | | | | | | | |")
            continue
        fraction = result.get("peak_fraction_of_full")
        relative = result.get("step_time_relative_to_full")
        lines.append(
            f"| {label} | {_fmt_int(result['trainable_params'])} | {100 * result['trainable_ratio']:.3f}% | "
            f"{result['weight_bytes'] / MB:,.1f} | {result['peak_bytes'] / MB:,.1f} | "
            f"{_fmt_ratio(None if fraction is None else 100 * fraction, 1, '%')} | "
            f"{result['step_seconds_median']:.3f} | {_fmt_ratio(relative, 2, 'x')} | "
            f"{result['data_seconds_median']:.3f} |"
        )
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    settings = report["settings"]
    results = report["results"]
    cpu = settings["device"] == "cpu"
    lines = [
        f"# Peak training memory and step time: {settings['backbone']} at {settings['image_size']} px",
        "",
        markdown_table(results),
        "",
    ]
    target = report.get("target")
    if target is not None:
        verdict = "met" if target["met"] else "not met"
        lines += [
            f"**Target** (FPT with preloading at or below {100 * TARGET_FRACTION:.0f}% of full fine-tuning's peak): "
            f"{verdict}, {100 * target['fpt_preload_fraction_of_full']:.1f}%.",
            "",
        ]
    batch = settings["batch_size"]
    batch_note = (
        f"batch {batch} (smaller than the GPU setting of {GPU_BATCH_SIZE}: a CPU run)"
        if cpu and batch != GPU_BATCH_SIZE
        else f"batch {batch}"
    )
    if cpu:
        memory_note = (
            "Peak memory is the peak resident set size (`getrusage` `ru_maxrss`, its high-water mark reset after the "
            "imports) of a fresh process per method, minus that process's resident size at the baseline (imports "
            "done, nothing built)."
        )
        loads = [v for r in results.values() if r.get("ok") for v in r.get("load_average_1min", [])]
        load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "unknown"
        time_note = (
            "Absolute CPU times are not meaningful for GPU training; compare the ratios only. The 1-minute load "
            f"average around the timed steps was {load} on {os.cpu_count()} logical cores (above the core count, "
            "other work was competing for the CPU and the times are noisy)."
        )
    else:
        memory_note = (
            "Peak memory is `torch.cuda.max_memory_allocated` of a fresh process per method (the CUDA context and "
            "the allocator's cache are not included)."
        )
        time_note = "Step times are medians of the timed steps, with `torch.cuda.synchronize` around each."
    shpeft = results.get("shpeft", {})
    shpeft_note = ""
    if shpeft.get("ok"):
        shpeft_note = (
            f" SH-PEFT's peak includes its importance estimation pass (one batch, hybrid L2, lambda 1, "
            f"{shpeft['estimation_seconds']:.1f} s; the peak up to the end of the estimation was "
            f"{shpeft['peak_before_training_bytes'] / MB:,.1f} MB); {shpeft['tensors_with_trainable_entries']} of "
            f"{shpeft['tensors_in_scope']} backbone tensors hold at least one of the selected weights, and those "
            "keep full-size gradients and AdamW state (the mask is applied to gradients)"
            + (
                ", plus a copy used to restore their frozen entries after each step (AdamW's decoupled weight decay "
                "would move them otherwise)."
                if shpeft.get("frozen_entries_restored_after_step")
                else "."
            )
        )
    preload = results.get("fpt_preload", {})
    preload_note = ""
    if preload.get("ok"):
        preload_note = (
            " FPT with preloading reads the frozen features "
            f"{tuple(preload['feature_shape'])} per image ({preload['cache_dtype']}) from a cache filled beforehand, "
            f"outside its measurement, by {report['cache_preparation']['filled_by']} (its files just written, so "
            "probably read from the OS page cache); its frozen backbone stays in the network "
            f"({preload['frozen_backbone_weight_bytes'] / MB:,.1f} MB of weights, counted in its peak) although it "
            "does not run."
        )
        fpt = results.get("fpt", {})
        if fpt.get("ok"):
            preload_note += (
                f" Check of the cache: on the same images and initial weights, FPT's first-step loss is "
                f"{fpt['losses'][0]:.5f} and FPT with preloading's {preload['losses'][0]:.5f} (equal up to the "
                f"{preload['cache_dtype']} storage of the features)."
            )
    lines.append(
        f"Settings: backbone `{settings['backbone']}`"
        + (" (tiny test configuration)" if settings["tiny"] else "")
        + f", weights: {settings['weights']} (memory and time do not depend on weight or pixel values, so images "
        f"are random tensors); {settings['image_size']}x{settings['image_size']} images (FPT side network "
        f"{settings['side_image_size']}x{settings['side_image_size']}), {batch_note}, {settings['num_classes']} "
        f"classes; {settings['optimizer']}; {settings['warmup_steps']} warm-up step(s) then "
        f"{settings['timed_steps']} timed step(s), every step on distinct images; device: "
        f"{settings['device_description']}; torch {settings['torch_version']}. {memory_note} It covers everything "
        "allocated after the baseline: weights, gradients, optimizer state, activations and data. "
        f"Step s is the median time of forward, loss, backward, optimizer step and zero_grad; Data s is the median "
        f"time to fetch a batch (for FPT with preloading, the feature-cache reads). {time_note}"
        + shpeft_note
        + preload_note
    )
    lines += ["", f"Command: `{report['command']}`", ""]
    failed = [m for m, r in results.items() if not r.get("ok")]
    if failed:
        lines += ["Failed methods:", ""]
        for method in failed:
            lines.append(f"- {LABELS[method]}: {results[method]['error']}")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    methods = list(results)
    labels = [PLOT_LABELS[m] for m in methods]
    peaks = [results[m]["peak_bytes"] / MB if results[m].get("ok") else 0.0 for m in methods]
    times = [(results[m].get("step_time_relative_to_full") or 0.0) if results[m].get("ok") else 0.0 for m in methods]
    colors = ["#4c72b0", "#8c8c8c", "#55a868", "#dd8452", "#c44e52"]
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.8))
    x = range(len(methods))
    bars = ax_mem.bar(x, peaks, color=[colors[METHODS.index(m)] for m in methods])
    for bar, method in zip(bars, methods):
        result = results[method]
        if not result.get("ok"):
            text = "failed"
        elif result.get("peak_fraction_of_full") is not None:
            text = f"{result['peak_bytes'] / MB:,.0f} MB\n{100 * result['peak_fraction_of_full']:.1f}% of full"
        else:
            text = f"{result['peak_bytes'] / MB:,.0f} MB"
        ax_mem.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    full = results.get("full", {})
    if full.get("ok"):
        ax_mem.axhline(
            TARGET_FRACTION * full["peak_bytes"] / MB,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"target: {100 * TARGET_FRACTION:.0f}% of full fine-tuning",
        )
        ax_mem.legend(loc="upper right")
    ax_mem.set_xticks(list(x), labels)
    ax_mem.set_ylabel("peak training memory (MB)")
    ax_mem.set_ylim(0, max(peaks + [1.0]) * 1.25)
    ax_mem.set_title("Peak memory")
    bars = ax_time.bar(x, times, color=[colors[METHODS.index(m)] for m in methods])
    for bar, method, value in zip(bars, methods, times):
        text = f"{value:.2f}x" if results[method].get("ok") and value else "n/a"
        ax_time.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax_time.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax_time.set_xticks(list(x), labels)
    ax_time.set_ylabel("step time relative to full fine-tuning")
    ax_time.set_ylim(0, max(times + [1.0]) * 1.2)
    ax_time.set_title("Training step time")
    settings = report["settings"]
    fig.suptitle(
        f"{settings['backbone']}{' (tiny)' if settings['tiny'] else ''}, {settings['image_size']} px, "
        f"batch {settings['batch_size']}, {settings['device']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0.")

    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    methods = [m for m in METHODS if m in args.methods]
    temporary_cache = args.cache_dir is None and "fpt_preload" in methods
    cache_dir = tempfile.mkdtemp(prefix="fpt_memory_cache_") if temporary_cache else args.cache_dir
    print(
        f"FPT memory benchmark: {args.backbone}{' (tiny)' if args.tiny else ''}, {args.image_size} px, batch "
        f"{args.batch_size or 'default'}, {args.warmup} warm-up + {args.steps} timed steps, device {args.device}; "
        f"methods: {', '.join(methods)}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    preparation: dict[str, Any] | None = None
    # the cache for fpt_preload is filled outside any measurement: by the fpt process once its own measurement is
    # printed, or (fpt not run, or its fill missing) by a preliminary process of its own
    fill_in_fpt = "fpt" in methods and "fpt_preload" in methods

    def report_preparation(preparation: dict[str, Any]) -> None:
        if preparation.get("ok"):
            print(
                f"[prep] feature cache filled by {preparation['filled_by']}: {preparation['cache_entries']} entries, "
                f"{preparation['cache_bytes'] / MB:,.1f} MB, {preparation['fill']['seconds']:.1f} s",
                flush=True,
            )
        else:
            print(f"[prep] FAILED: {preparation['error']}\n{preparation['stderr_tail']}", flush=True)

    def prepare() -> dict[str, Any]:
        print(f"[prep] filling the FPT feature cache in {cache_dir} (not measured) ...", flush=True)
        out = run_worker(worker_command(args, PREPARE_CACHE, cache_dir))
        preparation = _or_failure(out["preparation"], out, "cache report")
        report_preparation(preparation)
        return preparation

    try:
        if "fpt_preload" in methods and not fill_in_fpt:
            preparation = prepare()
        for index, method in enumerate(methods, 1):
            tag = f"[{index}/{len(methods)}] {method}"
            if method == "fpt_preload" and preparation is None:
                preparation = prepare()
            print(f"{tag}: started (elapsed {time.perf_counter() - started:.0f} s)", flush=True)
            if method == "fpt_preload" and not preparation.get("ok"):
                result = {
                    "ok": False,
                    "error": f"the feature cache could not be filled: {preparation['error']}",
                    "stderr_tail": preparation.get("stderr_tail", ""),
                }
            else:
                fill_after = method == "fpt" and fill_in_fpt
                out = run_worker(worker_command(args, method, cache_dir, fill_cache_after=fill_after))
                result = _or_failure(out["measurement"], out, "measurement")
                if fill_after and out["preparation"] is not None:
                    preparation = out["preparation"]
                elif fill_after and out["measurement"] is not None and out["failure"] is not None:
                    preparation = {**out["failure"], "error": "filling the cache after the fpt measurement failed"}
            results[method] = result
            if result.get("ok"):
                print(
                    f"{tag}: done in {result['process_seconds']:.1f} s"
                    + (" (process time, including the cache fill)" if method == "fpt" and fill_in_fpt else "")
                    + f": peak {result['peak_bytes'] / MB:,.1f} MB, step {result['step_seconds_median']:.3f} s "
                    f"(elapsed {time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            else:
                print(f"{tag}: FAILED: {result['error']}\n{result['stderr_tail']}", flush=True)
            if method == "fpt" and preparation is not None:
                report_preparation(preparation)
    finally:
        if temporary_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)

    add_ratios(results)
    report: dict[str, Any] = {
        "command": "python benchmarks/fpt_memory.py " + shlex.join(argv),
        "settings": settings_of(args, results),
        "results": results,
        "cache_preparation": preparation,
        "total_seconds": time.perf_counter() - started,
    }
    preload, full = results.get("fpt_preload", {}), results.get("full", {})
    if preload.get("ok") and full.get("ok"):
        fraction = preload["peak_bytes"] / full["peak_bytes"]
        report["target"] = {
            "fpt_preload_fraction_of_full": fraction,
            "threshold": TARGET_FRACTION,
            "met": fraction <= TARGET_FRACTION,
        }
    stem = output_dir / args.name
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = markdown_report(report)
    Path(f"{stem}.md").write_text(markdown)
    plot(report, Path(f"{stem}.png"))
    print()
    print(markdown)
    print(f"Wrote {stem}.json, {stem}.md and {stem}.png in {report['total_seconds']:.0f} s.", flush=True)
    failed = [m for m, r in results.items() if not r.get("ok")]
    if failed:
        print(f"FAILED methods: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
