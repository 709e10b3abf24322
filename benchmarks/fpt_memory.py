"""Peak training memory and step time of full fine-tuning, linear probing, SH-PEFT and FPT, side by side.

Five ways of training the same backbone on high-resolution images are measured in one run, each trained the way the
bundles train it: the network from :func:`~monai_shpeft.methods.build_network`, the optimizer from
:func:`~monai_shpeft.methods.build_optimizer`, and a MONAI ``SupervisedTrainer`` with the method's handlers:

- ``full``: full fine-tuning (every parameter trainable);
- ``linear``: linear probing (backbone frozen, so autograd keeps none of its activations; only the head trains);
- ``shpeft``: SH-PEFT at ``--budget`` (1%): the :class:`~monai_shpeft.handlers.ImportanceEstimationHandler` estimates
  hybrid L2 importance (lambda 1) on the trainer's first batch when training starts, then the
  :class:`~monai_shpeft.handlers.GradientMaskHandler` masks the gradients;
- ``fpt``: FPT reading the high-resolution image through its frozen branch at every step;
- ``fpt_preload``: FPT reading the frozen features from a :class:`~monai_shpeft.feature_cache.FrozenFeatureCache` filled
  beforehand with the cache's real ``fill``, outside any measurement (by the ``fpt`` process once its own
  measurement is printed, or by a preliminary process when ``fpt`` is not run); the measured process looks the
  features up with :class:`~monai_shpeft.feature_cache.LoadFrozenFeaturesd` through a DataLoader. The frozen backbone
  is built with its weights (the cache's namespace hashes them), then released as ``FeaturePreloadHandler`` does
  once the cache is complete (:meth:`~monai_shpeft.networks.FPTNetwork.release_frozen_backbone`);
- ``full_gc``, ``shpeft_gc``: full fine-tuning and SH-PEFT with the bundles' ``grad_checkpointing`` knob, passed to
  :func:`~monai_shpeft.methods.build_network` (each block keeps only its input and runs again in backward). They are
  not run by default: name them in ``--methods``.

Every method runs in a fresh subprocess of its own, one after the other, so that peaks cannot mix. In that process
a :class:`~monai_shpeft.memory.PeakMemoryMeter` takes its baseline after the imports and before anything is built;
the peak is then

- on a GPU: ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``) minus the allocated baseline;
- on the CPU: the peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``, its high-water mark reset at the
  baseline through ``/proc/self/clear_refs`` where the kernel allows it) minus the resident size at the baseline.

The peak therefore covers everything allocated after the baseline: model weights, gradients, optimizer state,
activations, data batches, and (SH-PEFT) the importance estimation pass. Ignite events time every iteration: the
data time runs from ``GET_BATCH_STARTED`` until the batch is on the device, the step time from there to
``ITERATION_COMPLETED``; warm-up iterations are reported apart. Weights are random unless ``--pretrained`` is given:
memory and time do not depend on weight or pixel values, so images are random tensors of the stated shape. The parent
writes ``<output_dir>/<name>.json``, ``<name>.md`` (a Markdown table) and ``<name>.png``. With ``--repeats N`` every
method is measured N times, round robin (a fresh process each time, so that slow drifts of the machine's load fall on
every method alike); a method's peak and step time are then the medians over its repeats, each repeat's kept beside
them.

Example (the CPU figures in docs/benchmarks/ came from this command)::

    python benchmarks/fpt_memory.py --backbone timm:vit_base_patch16_224 --image_size 512 --batch_size 4 \
        --steps 2 --warmup 1 --name fpt_memory_cpu

and the gradient checkpointing figures (docs/benchmarks/grad_checkpointing_cpu.json)::

    python benchmarks/fpt_memory.py --backbone timm:vit_small_patch14_dinov2 \
        --pretrained ../shared/weights/vit_small_patch14_dinov2.safetensors --image_size 224 --batch_size 16 \
        --steps 2 --warmup 1 --methods full full_gc shpeft shpeft_gc --repeats 3 --name grad_checkpointing_cpu
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parent process never imports torch: the workers do
    import torch
    from monai.engines import SupervisedTrainer

DEFAULT_METHODS = ("full", "linear", "shpeft", "fpt", "fpt_preload")
CHECKPOINTED = ("full_gc", "shpeft_gc")  # with gradient checkpointing
DENSE = ("shpeft_dense",)  # SH-PEFT's mask on dense gradients, the update before the compact one (the reference)
METHODS = (*DEFAULT_METHODS, *CHECKPOINTED, *DENSE)
LABELS = dict(
    zip(
        METHODS,
        ("Full fine-tuning", "Linear probing", "SH-PEFT", "FPT", "FPT + preloading")
        + ("Full fine-tuning + checkpointing", "SH-PEFT + checkpointing", "SH-PEFT, dense masked update"),
    )
)
PLOT_LABELS = dict(
    zip(
        METHODS,
        ("Full\nfine-tuning", "Linear\nprobing", "SH-PEFT", "FPT", "FPT +\npreloading")
        + ("Full FT +\ncheckpointing", "SH-PEFT +\ncheckpointing", "SH-PEFT\ndense update"),
    )
)
PACKAGE_METHODS = {"full": "full", "linear": "linear", "shpeft": "shpeft", "fpt": "fpt", "fpt_preload": "fpt"}
PACKAGE_METHODS.update(full_gc="full", shpeft_gc="shpeft", shpeft_dense="shpeft")
PREPARE_CACHE = "prepare_cache"
RESULT_MARKER = "FPT_MEMORY_RESULT "
TARGET_FRACTION = 0.05  # issue 18: FPT with preloading at or below 5% of full fine-tuning's peak (it was 10%)
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01  # AdamW's default
GPU_BATCH_SIZE = 16
CPU_BATCH_SIZE = 4
STDERR_TAIL = 4000
MB = 1024.0**2
WORKER_OPTIONS = ("backbone", "pretrained", "image_size", "side_image_size", "batch_size", "steps", "warmup")
WORKER_OPTIONS += ("num_classes", "budget", "device", "seed", "cache_dir")


def build_parser() -> argparse.ArgumentParser:
    """The command line of the parent and of its worker processes."""
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
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    parser.add_argument("--repeats", type=int, default=1, help="measurements of each method (fresh processes)")
    parser.add_argument("--num_classes", type=int, default=4)
    parser.add_argument("--budget", type=float, default=0.01, help="SH-PEFT trainable ratio of the backbone")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'...")
    parser.add_argument("--output_dir", default="docs/benchmarks")
    parser.add_argument("--name", default="fpt_memory", help="prefix of the output files")
    parser.add_argument("--tiny", action="store_true", help="tiny backbones of the same family (tests)")
    parser.add_argument("--cache_dir", default=None, help="FPT feature cache (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--malloc_mmap_threshold",
        type=int,
        default=None,
        help="fix glibc's mmap threshold in the workers (bytes, e.g. 65536): freed tensors then leave the resident "
        "set at once, so the CPU peak follows live memory as a GPU allocator's peak does (default: glibc's own, "
        "dynamic threshold, under which freed tensors can stay resident)",
    )
    parser.add_argument("--worker", choices=(*METHODS, PREPARE_CACHE), default=None, help=argparse.SUPPRESS)
    # the fpt worker fills the cache for fpt_preload once its own measurement is done (saves a process start-up)
    parser.add_argument("--fill_cache_after", action="store_true", help=argparse.SUPPRESS)
    return parser


def worker_command(args: argparse.Namespace, worker: str, fill_cache_after: bool = False) -> list[str]:
    """The command line of the subprocess that runs (and measures) one method."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker]
    for option in WORKER_OPTIONS:
        if getattr(args, option) is not None:
            command += [f"--{option}", str(getattr(args, option))]
    return command + ["--tiny"] * args.tiny + ["--fill_cache_after"] * fill_cache_after


# ---------------------------------------------------------------------------------------------------------------------
# worker: one method in a fresh process


class RandomImages:
    """Item ``i``: a random high-resolution image, a random low-resolution image and a label, all fixed by the seed.

    Each image has its own generator, so any process regenerates exactly the same tensors (the feature cache keys
    them by content). Pixel values do not affect memory or time.
    """

    def __init__(self, args: argparse.Namespace, count: int, lr: bool) -> None:
        self.args, self.count, self.lr = args, count, lr

    def __len__(self) -> int:
        """The number of images."""
        return self.count

    def _random(self, index: int, stream: int, size: int) -> torch.Tensor:
        import torch

        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + index * 2 + stream)
        return torch.rand((3, size, size), generator=generator)

    def fill_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """Transform for ``FrozenFeatureCache.fill``: ``{"index": i}`` -> ``{"image": high-res image i}``."""
        return {"image": self._random(int(item["index"]), 0, self.args.image_size)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image", "label"}`` and, for FPT, ``"image_lr"``."""
        import torch

        item = {**self.fill_item({"index": index}), "label": torch.tensor(index % self.args.num_classes)}
        if self.lr:
            item["image_lr"] = self._random(index, 1, self.args.side_image_size)
        return item


class StepTimer:
    """Ignite hooks timing each iteration: fetching the batch and moving it to the device, then the training step.

    The step is the rest of the ``SupervisedTrainer`` iteration: zero_grad, forward, loss, backward, the optimizer step
    and the handlers' hooks around it. On a GPU every mark synchronizes first.

    Args:
        device: the training device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.prepare: Callable[..., Any] | None = None
        self.started = self.loaded = self.loaded_cpu = 0.0
        self.data_seconds: list[float] = []
        self.step_seconds: list[float] = []
        # the process's CPU time of each step: less sensitive than wall time to other work on a shared machine
        self.step_cpu_seconds: list[float] = []
        self.losses: list[float] = []

    def attach(self, engine: SupervisedTrainer) -> None:
        """Time ``engine``'s iterations; its ``prepare_batch`` is wrapped to mark when a batch is on the device."""
        from ignite.engine import Events

        self.prepare, engine.prepare_batch = engine.prepare_batch, self.prepare_batch
        engine.add_event_handler(Events.GET_BATCH_STARTED, self.fetching)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.completed)

    def now(self) -> float:
        """``time.perf_counter()`` once the device is done."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def prepare_batch(self, batch: Any, device: torch.device, non_blocking: bool = False, **kwargs: Any) -> Any:
        """The trainer's own ``prepare_batch``, then the mark."""
        prepared = self.prepare(batch, device, non_blocking, **kwargs)
        self.loaded, self.loaded_cpu = self.now(), time.process_time()
        return prepared

    def fetching(self, engine: SupervisedTrainer) -> None:
        """Mark the start of an iteration (``GET_BATCH_STARTED``)."""
        self.started = self.now()

    def completed(self, engine: SupervisedTrainer) -> None:
        """Record the iteration's data and step times and its loss (``ITERATION_COMPLETED``)."""
        done = self.now()
        self.data_seconds.append(self.loaded - self.started)
        self.step_seconds.append(done - self.loaded)
        self.step_cpu_seconds.append(time.process_time() - self.loaded_cpu)
        self.losses.append(float(engine.state.output["loss"].detach()))


def _device_description(device: torch.device) -> str:
    """The GPU's name and memory, or the CPU's model, cores and torch threads."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 1024**3:.0f} GiB), CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}"


def _import_all(backbone: str) -> None:
    """Import every module a worker uses before the baseline, so that no import lands inside the peak."""
    import importlib

    from monai_shpeft.methods import method_info

    for name in ("open_clip" if backbone.startswith("open_clip:") else "timm.models", "safetensors.torch"):
        importlib.import_module(name)
    for name in ("monai.engines", "monai.data", "monai_shpeft.feature_cache", "monai_shpeft.handlers"):
        importlib.import_module(name)
    for method in set(PACKAGE_METHODS.values()):
        method_info(method)  # the methods' modules load lazily


def _trainer(
    device: torch.device, loader: Any, network: torch.nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` for one epoch of ``loader``, as the bundles build it, without decollation."""
    import torch
    from monai.engines import SupervisedTrainer

    return SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.CrossEntropyLoss(),
        decollate=False,
        optim_set_to_none=True,  # gradients are freed between steps, not kept zeroed
        **kwargs,
    )


def _start_runtime(device: torch.device) -> None:
    """Two tiny trainer iterations, so that thread pools, kernel libraries and ignite are set up before the baseline.

    Their one-off start-up cost (tens of MB of resident memory on the CPU) belongs to any torch process, not to a
    training method; on a GPU it is outside ``max_memory_allocated`` anyway.
    """
    import torch

    layer = torch.nn.Linear(8, 8).to(device)
    data = [{"image": torch.rand(8), "label": torch.tensor(i % 8)} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    _trainer(device, loader, layer, torch.optim.AdamW(layer.parameters(), lr=LEARNING_RATE)).run()


def _resolve(args: argparse.Namespace) -> tuple[torch.device, int]:
    """The worker's device and batch size."""
    import torch

    name = args.device
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    return device, args.batch_size or (GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE)


def _build_network(args: argparse.Namespace, method: str, device: torch.device) -> torch.nn.Module:
    """The bundles' network of ``method`` (``fpt`` for both FPT variants), seeded."""
    import torch

    from monai_shpeft.methods import build_network

    torch.manual_seed(args.seed)  # the same frozen weights in the filling and the measured process: same cache
    return build_network(
        PACKAGE_METHODS[method],
        args.backbone,
        args.num_classes,
        pretrained=args.pretrained,
        image_size=args.image_size,
        tiny=args.tiny,
        fpt_image_size=args.image_size,
        fpt_side_image_size=args.side_image_size,
        grad_checkpointing=method in CHECKPOINTED,
    ).to(device)


def prepare_cache(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the feature cache for the benchmark's images, outside any measurement.

    Runs in a preliminary process of its own, or in the ``fpt`` process once that one's measurement is printed.
    """
    import torch

    from monai_shpeft.feature_cache import feature_cache_for

    device, batch_size = _resolve(args)
    images = RandomImages(args, batch_size * (args.warmup + args.steps), lr=False)
    network = _build_network(args, "fpt", device).eval()
    cache = feature_cache_for(network, args.cache_dir)
    items = [{"index": i} for i in range(len(images))]
    report = cache.fill(items, images.fill_item, network, device=device, batch_size=batch_size, progress=False)
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
    method, fpt = args.worker, args.worker in ("fpt", "fpt_preload")
    shpeft = PACKAGE_METHODS[method] == "shpeft"
    _import_all(args.backbone)
    import torch
    from ignite.engine import Events
    from monai.data import Dataset
    from monai.engines import PrepareBatchExtraInput, default_prepare_batch

    from monai_shpeft.feature_cache import LoadFrozenFeaturesd, feature_cache_for
    from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler
    from monai_shpeft.memory import PeakMemoryMeter, max_rss_bytes, release_freed_heap
    from monai_shpeft.methods import build_optimizer

    device, batch_size = _resolve(args)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.init()
    _start_runtime(device)

    # ---- baseline: imports done, runtime started, nothing built
    release_freed_heap()
    meter = PeakMemoryMeter(device)
    meter.start()
    baseline_maxrss = max_rss_bytes()

    images = RandomImages(args, batch_size * (args.warmup + args.steps), lr=fpt)
    network = _build_network(args, method, device)
    optimizer = build_optimizer(
        network,
        PACKAGE_METHODS[method],
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        fpt_learning_rate=LEARNING_RATE,
        fpt_weight_decay=WEIGHT_DECAY,
    )
    total_params = sum(p.numel() for p in network.parameters())
    head_params = sum(p.numel() for p in network.head.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    dataset: Any = images
    handlers: list[Any] = []
    extra: dict[str, Any] = {}
    if shpeft:  # as in the bundles' train.json: the optimizer holds every parameter, the mask decides
        estimation = ImportanceEstimationHandler(
            budget=args.budget, num_iterations=1, backbone_name=args.backbone, progress=False
        )
        handlers = [estimation, GradientMaskHandler(compact=method not in DENSE)]
    if fpt:
        frozen = list(network.extractor.parameters())
        extra = {
            "feature_shape": list(network.extractor.feature_shape),
            "frozen_backbone_params": sum(p.numel() for p in frozen),
            "frozen_backbone_weight_bytes": sum(p.numel() * p.element_size() for p in frozen),
        }
    if method == "fpt_preload":
        cache = feature_cache_for(network, args.cache_dir)
        dataset = Dataset(images, LoadFrozenFeaturesd("image", cache, source_key=None))
        # as FeaturePreloadHandler does once the cache is complete: the frozen backbone's weights are freed
        released = network.release_frozen_backbone(Path(args.cache_dir) / "frozen_backbones")
        extra.update({"cache_root": str(cache.root), "cache_dtype": cache.dtype_name, "released": released})
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    # as in the bundles: FPT's side image reaches the network as its image_lr argument
    prepare = PrepareBatchExtraInput(extra_keys={"image_lr": "image_lr"}) if fpt else default_prepare_batch
    trainer = _trainer(device, loader, network, optimizer, prepare_batch=prepare, train_handlers=handlers)
    timer = StepTimer(device)
    timer.attach(trainer)
    setup: dict[str, float] = {}

    @trainer.on(Events.STARTED)  # after the handlers' own STARTED hooks (SH-PEFT: the estimation, the mask)
    def _built(_: Any) -> None:  # the peak of building (and, for SH-PEFT, of the estimation) alone
        setup.update(peak=meter.peak_bytes(), load=os.getloadavg()[0])

    trainer.run()
    memory = meter.record()
    if device.type == "cpu":
        memory["baseline_maxrss_bytes"] = baseline_maxrss
    else:
        memory.pop("high_water_mark_reset")
    if shpeft:
        trainable_set = estimation.trainable_set
        trainable = trainable_set.num_selected + head_params
        extra = {
            "budget": args.budget,
            "selected_backbone_weights": trainable_set.num_selected,
            "backbone_weights": trainable_set.num_total,
            "tensors_with_trainable_entries": len(trainable_set.trainable_names()),
            "tensors_in_scope": len(trainable_set.shapes),
            "frozen_entries_restored_after_step": handlers[1].restores_frozen_entries,
            "compact_update": method not in DENSE,
            "estimation_seconds": estimation.elapsed_seconds,
            "estimation_batches": 1,
        }
    timed, timed_data = timer.step_seconds[args.warmup :], timer.data_seconds[args.warmup :]
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
        "weight_bytes": sum(p.numel() * p.element_size() for p in network.parameters()),
        "grad_checkpointing": bool(getattr(network, "grad_checkpointing", False)),
        **memory,
        "peak_before_training_bytes": setup["peak"],
        "step_seconds": timed,
        "step_seconds_median": statistics.median(timed),
        "step_cpu_seconds": timer.step_cpu_seconds[args.warmup :],
        "step_cpu_seconds_median": statistics.median(timer.step_cpu_seconds[args.warmup :]),
        "data_seconds": timed_data,
        "data_seconds_median": statistics.median(timed_data),
        "warmup_step_seconds": timer.step_seconds[: args.warmup],
        "losses": timer.losses,
        "distinct_images": len(images),
        # other work on the machine slows the steps down (not the memory): the 1-minute load before and after them
        "load_average_1min": [setup["load"], os.getloadavg()[0]],
        "logical_cores": os.cpu_count(),
        **extra,
    }


def worker_main(args: argparse.Namespace) -> int:
    """Measure one method (or fill the cache) and print the result on a marked line."""
    filled_by = "a preliminary process"
    if args.worker != PREPARE_CACHE:  # the measurement is complete (and printed) before anything else happens
        print(RESULT_MARKER + json.dumps(measure(args)), flush=True)
        filled_by = f"the {args.worker} process, after its own measurement"
    if args.worker == PREPARE_CACHE or args.fill_cache_after:
        print(RESULT_MARKER + json.dumps({**prepare_cache(args), "filled_by": filled_by}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# parent: one subprocess per method, then the report


def run_worker(command: list[str], mmap_threshold: int | None = None) -> dict[str, Any]:
    """Run a worker process (with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed to ``mmap_threshold`` bytes when given).

    Returns:
        ``{"measurement": ..., "preparation": ..., "failure": ...}``: the method's result and the cache fill's report
        (each ``None`` when the process printed none), and an error record with the end of its stderr when the
        process failed (``None`` otherwise).
    """
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {"measurement": None, "preparation": None, "failure": None}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            payload = {**json.loads(line[len(RESULT_MARKER) :]), "process_seconds": elapsed}
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
    """The worker's payload, else its failure record."""
    if payload is not None:
        return payload
    return out["failure"] or {"ok": False, "error": f"the worker printed no {what}", "stderr_tail": ""}


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Each method's peak and step time relative to full fine-tuning's (``None`` without a full run)."""
    full = results.get("full", {})
    full_peak = full.get("peak_bytes") if full.get("ok") else None
    full_step = full.get("step_seconds_median") if full.get("ok") else None
    for result in (r for r in results.values() if r.get("ok")):
        result["peak_fraction_of_full"] = result["peak_bytes"] / full_peak if full_peak else None
        result["step_time_relative_to_full"] = result["step_seconds_median"] / full_step if full_step else None
        full_cpu, cpu = full.get("step_cpu_seconds_median"), result.get("step_cpu_seconds_median")
        result["step_cpu_time_relative_to_full"] = cpu / full_cpu if full_step and full_cpu and cpu else None


def settings_of(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's settings, with the device and versions the workers reported."""
    first = next((r for r in results.values() if r.get("ok")), {})
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
        "optimizer": f"AdamW(lr={LEARNING_RATE}, default weight_decay=0.01), float32, no AMP",
        "grad_checkpointing": [m for m in results if m in CHECKPOINTED],
        "repeats": args.repeats,
        "malloc_mmap_threshold": getattr(args, "malloc_mmap_threshold", None),
        "seed": args.seed,
        "device": first.get("device", args.device),
        **{key: first.get(key) for key in ("device_description", "torch_version", "torch_threads")},
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _ratio(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per method."""
    lines = [
        "| Method | Trainable params | Trainable % | Weights MB | Peak memory MB | % of full FT | Step s | "
        "Time vs full | Data s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for method, r in results.items():
        if not r.get("ok"):
            lines.append(f"| {LABELS[method]} | failed | | | | | | | |")
            continue
        fraction = r.get("peak_fraction_of_full")
        lines.append(
            f"| {LABELS[method]} | {r['trainable_params']:,} | {100 * r['trainable_ratio']:.3f}% | "
            f"{r['weight_bytes'] / MB:,.1f} | {r['peak_bytes'] / MB:,.1f} | "
            f"{_ratio(None if fraction is None else 100 * fraction, 1, '%')} | {r['step_seconds_median']:.3f} | "
            f"{_ratio(r.get('step_time_relative_to_full'), 2, 'x')} | {r['data_seconds_median']:.3f} |"
        )
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    """The table, the target and the notes that say what was measured."""
    settings, results = report["settings"], report["results"]
    cpu = settings["device"] == "cpu"
    lines = [f"# Peak training memory and step time: {settings['backbone']} at {settings['image_size']} px", ""]
    lines += [markdown_table(results), ""]
    if report.get("target") is not None:
        target = report["target"]
        lines += [
            f"**Target** (FPT with preloading at or below {100 * TARGET_FRACTION:.0f}% of full fine-tuning's peak): "
            f"{'met' if target['met'] else 'not met'}, {100 * target['fpt_preload_fraction_of_full']:.1f}%.",
            "",
        ]
    batch = settings["batch_size"]
    batch_note = f"batch {batch}" + (
        f" (smaller than the GPU setting of {GPU_BATCH_SIZE}: a CPU run)" if cpu and batch != GPU_BATCH_SIZE else ""
    )
    if cpu:
        memory_note = (
            "Peak memory is the peak resident set size (`getrusage` `ru_maxrss`, its high-water mark reset after the "
            "imports) of a fresh process per method, minus that process's resident size at the baseline (imports "
            "done, nothing built), measured by `monai_shpeft.memory.PeakMemoryMeter`."
        )
        if settings.get("malloc_mmap_threshold"):
            memory_note += (
                f" The workers ran with glibc's mmap threshold fixed at {settings['malloc_mmap_threshold']:,} bytes "
                "(`MALLOC_MMAP_THRESHOLD_`): every larger tensor is its own mapping, returned when freed, so the "
                "resident peak follows the live tensors as `torch.cuda.max_memory_allocated` does on a GPU."
            )
        runs = [run for r in results.values() if r.get("ok") for run in r.get("repeats", [r]) if run.get("ok")]
        loads = [v for run in runs for v in run.get("load_average_1min", [])]
        load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "unknown"
        time_note = (
            "Absolute CPU times are not meaningful for GPU training; compare the ratios only. The 1-minute load "
            f"average around the timed steps was {load} on {os.cpu_count()} logical cores (above the core count, "
            "other work was competing for the CPU and the times are noisy)."
        )
        cpu_times = [
            f"{LABELS[m]} {r['step_cpu_seconds_median']:.2f} s "
            f"({_ratio(r.get('step_cpu_time_relative_to_full'), 2, 'x')})"
            for m, r in results.items()
            if r.get("ok") and r.get("step_cpu_seconds_median")
        ]
        if cpu_times:
            time_note += (
                " The process's CPU time per step (all its threads; less sensitive to other work than wall time), "
                f"median, and its ratio to full fine-tuning's: {'; '.join(cpu_times)}."
            )
    else:
        memory_note = (
            "Peak memory is `torch.cuda.max_memory_allocated` of a fresh process per method (the CUDA context and "
            "the allocator's cache are not included), measured by `monai_shpeft.memory.PeakMemoryMeter`."
        )
        time_note = "Step times are medians of the timed steps, with `torch.cuda.synchronize` at each mark."
    notes = ""
    shpeft = results.get("shpeft", {})
    if shpeft.get("ok"):
        notes += (
            f" SH-PEFT's peak includes its importance estimation pass (one batch, hybrid L2, lambda 1, "
            f"{shpeft['estimation_seconds']:.1f} s; the peak up to the end of the estimation was "
            f"{shpeft['peak_before_training_bytes'] / MB:,.1f} MB); {shpeft['tensors_with_trainable_entries']} of "
            f"{shpeft['tensors_in_scope']} backbone tensors hold at least one of the selected weights"
            + (
                "; they train through the compact update (gradients and AdamW state for the selected entries only, "
                "each dense gradient dropped as soon as backward has produced it)."
                if shpeft.get("compact_update", False)
                else ", and those keep full-size gradients and AdamW state (the mask is applied to gradients)"
                + (
                    ", plus a copy used to restore their frozen entries after each step (AdamW's decoupled weight "
                    "decay would move them otherwise)."
                    if shpeft.get("frozen_entries_restored_after_step")
                    else "."
                )
            )
        )
    dense = results.get("shpeft_dense", {})
    if dense.get("ok"):
        notes += (
            " SH-PEFT, dense masked update is the same training with `GradientMaskHandler(compact=False)`: full-size "
            "gradients and AdamW state for every tensor holding a selected weight, masked after backward"
            + (
                ", frozen entries restored from a copy after each step."
                if dense.get("frozen_entries_restored_after_step")
                else "."
            )
        )
    shpeft_gc = results.get("shpeft_gc", {})
    if shpeft_gc.get("ok"):
        notes += (
            " With gradient checkpointing, SH-PEFT's peak up to the end of the estimation was "
            f"{shpeft_gc['peak_before_training_bytes'] / MB:,.1f} MB."
        )
    checkpointed = [LABELS[m] for m in results if m in CHECKPOINTED]
    if checkpointed:
        notes += (
            f" The networks of {' and '.join(checkpointed)} are built with `grad_checkpointing=True` (the bundles' "
            "knob): each transformer block keeps only its input for backward and runs its forward again there."
        )
    if settings.get("repeats", 1) > 1:
        notes += (
            f" Each method was measured {settings['repeats']} times, round robin, each time in a fresh process; the "
            "peak and the step time are the medians over those repeats (each repeat's figures are in the JSON)."
        )
    preload, fpt = results.get("fpt_preload", {}), results.get("fpt", {})
    if preload.get("ok"):
        notes += (
            " FPT with preloading reads the frozen features "
            f"{tuple(preload['feature_shape'])} per image ({preload['cache_dtype']}) from a cache filled beforehand, "
            f"outside its measurement, by {report['cache_preparation']['filled_by']} (its files just written, so "
            "probably read from the OS page cache); its frozen backbone is built with its weights "
            f"({preload['frozen_backbone_weight_bytes'] / MB:,.1f} MB, counted in the peak while they are held), then "
            "released before training, as `FeaturePreloadHandler` does once the cache is complete."
        )
    if preload.get("ok") and fpt.get("ok"):
        notes += (
            f" Check of the cache: on the same images and initial weights, FPT's first-step loss is "
            f"{fpt['losses'][0]:.5f} and FPT with preloading's {preload['losses'][0]:.5f} (equal up to the "
            f"{preload['cache_dtype']} storage of the features)."
        )
    side = settings["side_image_size"]
    side_note = f" (FPT side network {side}x{side})" if any(m.startswith("fpt") for m in results) else ""
    lines.append(
        f"Settings: backbone `{settings['backbone']}`"
        + (" (tiny test configuration)" if settings["tiny"] else "")
        + f", weights: {settings['weights']} (memory and time do not depend on weight or pixel values, so images "
        f"are random tensors); {settings['image_size']}x{settings['image_size']} images{side_note}, {batch_note}, "
        f"{settings['num_classes']} "
        f"classes; {settings['optimizer']}; {settings['warmup_steps']} warm-up step(s) then "
        f"{settings['timed_steps']} timed step(s), every step on distinct images; training by MONAI's "
        f"`SupervisedTrainer` with the bundles' network, optimizer and handlers; device: "
        f"{settings['device_description']}; torch {settings['torch_version']}. {memory_note} It covers everything "
        "allocated after the baseline: weights, gradients, optimizer state, activations and data. "
        "Step s is the median time of a trainer iteration once its batch is on the device (zero_grad, forward, loss, "
        "backward, optimizer step and the handlers' hooks); Data s is the median time to fetch a batch and move it to "
        f"the device (for FPT with preloading, the feature-cache reads). {time_note}" + notes
    )
    lines += ["", f"Command: `{report['command']}`", ""]
    failed = [m for m, r in results.items() if not r.get("ok")]
    if failed:
        lines += ["Failed methods:", "", *(f"- {LABELS[m]}: {results[m]['error']}" for m in failed), ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Peak memory (with the target line) and step time relative to full fine-tuning, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_shpeft.plots import save_figure

    results = report["results"]
    methods = list(results)
    ok = {m: bool(results[m].get("ok")) for m in methods}
    peaks = [results[m]["peak_bytes"] / MB if ok[m] else 0.0 for m in methods]
    times = [(results[m].get("step_time_relative_to_full") or 0.0) if ok[m] else 0.0 for m in methods]
    colours = ("#4c72b0", "#8c8c8c", "#55a868", "#dd8452", "#c44e52", "#8172b3", "#64b5cd", "#937860")
    palette = dict(zip(METHODS, colours))
    colors, x, labels = [palette[m] for m in methods], list(range(len(methods))), [PLOT_LABELS[m] for m in methods]
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.8))
    for bar, method in zip(ax_mem.bar(x, peaks, color=colors), methods):
        fraction = results[method].get("peak_fraction_of_full")
        text = "failed" if not ok[method] else f"{results[method]['peak_bytes'] / MB:,.0f} MB"
        text += f"\n{100 * fraction:.1f}% of full" if ok[method] and fraction is not None else ""
        ax_mem.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    if results.get("full", {}).get("ok") and "fpt_preload" in results:  # the target is FPT's
        target = TARGET_FRACTION * results["full"]["peak_bytes"] / MB
        label = f"target: {100 * TARGET_FRACTION:.0f}% of full fine-tuning"
        ax_mem.axhline(target, color="black", linestyle="--", linewidth=1, label=label)
        ax_mem.legend(loc="upper right")
    ax_mem.set(ylabel="peak training memory (MB)", ylim=(0, max(peaks + [1.0]) * 1.25), title="Peak memory")
    for bar, method, value in zip(ax_time.bar(x, times, color=colors), methods, times):
        text = f"{value:.2f}x" if ok[method] and value else "n/a"
        ax_time.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax_time.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ylabel = "step time relative to full fine-tuning"
    ax_time.set(ylabel=ylabel, ylim=(0, max(times + [1.0]) * 1.2), title="Training step time")
    for axis in (ax_mem, ax_time):
        axis.set_xticks(x, labels)
    settings = report["settings"]
    fig.suptitle(
        f"{settings['backbone']}{' (tiny)' if settings['tiny'] else ''}, {settings['image_size']} px, "
        f"batch {settings['batch_size']}, {settings['device']}"
    )
    fig.tight_layout()
    save_figure(fig, path)


def _print_preparation(preparation: dict[str, Any]) -> None:
    if preparation.get("ok"):
        print(
            f"[prep] feature cache filled by {preparation['filled_by']}: {preparation['cache_entries']} entries, "
            f"{preparation['cache_bytes'] / MB:,.1f} MB, {preparation['fill']['seconds']:.1f} s",
            flush=True,
        )
    else:
        print(f"[prep] FAILED: {preparation['error']}\n{preparation['stderr_tail']}", flush=True)


def run_methods(
    workers: argparse.Namespace, methods: list[str], started: float
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Measure each method in a worker process of its own, one after the other, ``--repeats`` rounds.

    The cache for ``fpt_preload`` is filled once, outside any measurement: by the first ``fpt`` process once its own
    measurement is printed, or (``fpt`` not run, or its fill missing) by a preliminary process of its own.

    Returns:
        the results by method (medians over the repeats, see :func:`combine_repeats`) and the cache fill's report
        (``None`` when no method needed the cache).
    """
    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    preparation: dict[str, Any] | None = None
    fill_in_fpt = "fpt" in methods and "fpt_preload" in methods
    total = len(methods) * workers.repeats
    for index, (repeat, method) in enumerate(((r, m) for r in range(workers.repeats) for m in methods), 1):
        tag = f"[{index}/{total}] {method}" + (f" (repeat {repeat + 1})" if workers.repeats > 1 else "")
        if method == "fpt_preload" and preparation is None:
            print(f"[prep] filling the FPT feature cache in {workers.cache_dir} (not measured) ...", flush=True)
            out = run_worker(worker_command(workers, PREPARE_CACHE), workers.malloc_mmap_threshold)
            preparation = _or_failure(out["preparation"], out, "cache report")
            _print_preparation(preparation)
        print(f"{tag}: started (elapsed {time.perf_counter() - started:.0f} s)", flush=True)
        fill_after = method == "fpt" and fill_in_fpt and preparation is None
        if method == "fpt_preload" and not preparation.get("ok"):
            error = f"the feature cache could not be filled: {preparation['error']}"
            result = {"ok": False, "error": error, "stderr_tail": preparation.get("stderr_tail", "")}
        else:
            out = run_worker(
                worker_command(workers, method, fill_cache_after=fill_after), workers.malloc_mmap_threshold
            )
            result = _or_failure(out["measurement"], out, "measurement")
            if fill_after and out["preparation"] is not None:
                preparation = out["preparation"]
            elif fill_after and out["measurement"] is not None and out["failure"] is not None:
                preparation = {**out["failure"], "error": "filling the cache after the fpt measurement failed"}
        runs[method].append(result)
        if result.get("ok"):
            print(
                f"{tag}: done in {result['process_seconds']:.1f} s"
                + (" (process time, including the cache fill)" if fill_after else "")
                + f": peak {result['peak_bytes'] / MB:,.1f} MB, step {result['step_seconds_median']:.3f} s "
                f"(elapsed {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        else:
            print(f"{tag}: FAILED: {result['error']}\n{result['stderr_tail']}", flush=True)
        if fill_after and preparation is not None:
            _print_preparation(preparation)
    return {method: combine_repeats(results) for method, results in runs.items()}, preparation


#: what each repeat keeps in a combined record
REPEAT_KEYS = ("ok", "peak_bytes", "peak_before_training_bytes", "step_seconds", "step_seconds_median")
REPEAT_KEYS += ("step_cpu_seconds_median", "data_seconds_median", "estimation_seconds", "load_average_1min")
REPEAT_KEYS += ("losses", "error")
#: the figures a combined record gives as medians over its repeats
MEDIAN_KEYS = ("peak_bytes", "peak_before_training_bytes", "step_seconds_median", "step_cpu_seconds_median")
MEDIAN_KEYS += ("data_seconds_median", "estimation_seconds")


def combine_repeats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's record from its repeats: the first successful one, with medians over the successful ones.

    The figures of :data:`MEDIAN_KEYS` become the medians over the successful repeats; ``repeats`` keeps each
    repeat's figures. A single measurement is returned as it is; a method whose every repeat failed is its first
    failure.
    """
    succeeded = [r for r in results if r.get("ok")]
    if len(results) == 1 or not succeeded:
        return results[0]
    combined = dict(succeeded[0])
    for key in MEDIAN_KEYS:
        if all(key in r for r in succeeded):
            combined[key] = statistics.median(r[key] for r in succeeded)
    combined["repeats"] = [{key: r[key] for key in REPEAT_KEYS if key in r} for r in results]
    combined["failed_repeats"] = len(results) - len(succeeded)
    return combined


def main(argv: list[str] | None = None) -> int:
    """Measure every method in a process of its own; write the JSON, Markdown and PNG reports."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        raise SystemExit("--steps and --repeats must be >= 1 and --warmup >= 0.")

    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    methods = [m for m in METHODS if m in args.methods]
    temporary_cache = args.cache_dir is None and "fpt_preload" in methods
    workers = argparse.Namespace(**vars(args))
    if temporary_cache:
        workers.cache_dir = tempfile.mkdtemp(prefix="fpt_memory_cache_")
    print(
        f"FPT memory benchmark: {args.backbone}{' (tiny)' if args.tiny else ''}, {args.image_size} px, batch "
        f"{args.batch_size or 'default'}, {args.warmup} warm-up + {args.steps} timed steps, device {args.device}; "
        f"methods: {', '.join(methods)}",
        flush=True,
    )
    try:
        results, preparation = run_methods(workers, methods, started)
    finally:
        if temporary_cache:
            shutil.rmtree(workers.cache_dir, ignore_errors=True)

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
    print(f"\n{markdown}\nWrote {stem}.json, {stem}.md and {stem}.png in {report['total_seconds']:.0f} s.", flush=True)
    failed = [m for m, r in results.items() if not r.get("ok")]
    if failed:
        print(f"FAILED methods: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
