"""Side-by-side cost of a training step in float32 and under CPU bfloat16 autocast, and what ``amp=auto`` picks.

One process, one backbone, the same random batch: for each image size, ``--steps`` timed training steps
(forward through :class:`monai_shpeft.amp.AutocastInferer`, float32 loss, backward, AdamW step) in float32, then
the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``, interleaved so that load on the machine hits both
alike. It records the CPU's native bfloat16 support (:func:`monai_shpeft.amp.cpu_supports_bf16`), the median step
times, their ratio and the policy ``amp=auto`` resolves to. On CPUs with AVX512-BF16 or AMX autocast pays off; on
others PyTorch emulates bfloat16 and the step is slower, which is why ``auto`` only enables it on the former.

Example (docs/benchmarks/amp_cpu.json came from this command)::

    python benchmarks/amp_cpu.py --weights ../shared/weights/vit_small_patch14_dinov2.safetensors \
        --image_sizes 112,224 --steps 3 --output docs/benchmarks/amp_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from monai_shpeft.amp import AmpPolicy, AutocastInferer, cpu_supports_bf16, resolve_amp
from monai_shpeft.backbones import build_classifier


def _step_seconds(
    model: torch.nn.Module, inferer: AutocastInferer, images: torch.Tensor, labels: torch.Tensor
) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(inferer(images, model), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement and write the JSON record.

    Args:
        argv: command-line arguments (``--help``).

    Returns:
        the record.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2")
    parser.add_argument("--weights", default=None, help="local weights file (default: random weights, same cost)")
    parser.add_argument("--image_sizes", default="112,224")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision and size (after a warm-up)")
    parser.add_argument("--output", default="docs/benchmarks/amp_cpu.json")
    args = parser.parse_args(argv)

    float32 = AutocastInferer(None)
    bf16 = AutocastInferer(AmpPolicy(False, torch.bfloat16, "cpu", "bfloat16 autocast on the CPU"))
    record: dict = {
        "command": "python benchmarks/amp_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_supports_bf16(),
        "auto_policy": resolve_amp("auto", "cpu").description,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "sizes": {},
    }
    for size in (int(s) for s in args.image_sizes.split(",")):
        model = build_classifier(args.backbone, 3, pretrained=args.weights, image_size=size)
        model.train()
        images = torch.randn(args.batch_size, 3, size, size)
        labels = torch.randint(0, 3, (args.batch_size,))
        times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        for inferer in (float32, bf16):  # one untimed step each: allocations, kernel selection
            _step_seconds(model, inferer, images, labels)
        for _ in range(args.steps):
            times["float32"].append(_step_seconds(model, float32, images, labels))
            times["bfloat16"].append(_step_seconds(model, bf16, images, labels))
        medians = {name: statistics.median(values) for name, values in times.items()}
        record["sizes"][str(size)] = {
            "step_seconds": times,
            "median_seconds": medians,
            "bf16_speedup": medians["float32"] / medians["bfloat16"],
        }
        print(
            f"{size} px: float32 {medians['float32']:.2f} s/step, bfloat16 {medians['bfloat16']:.2f} s/step, "
            f"speed-up x{medians['float32'] / medians['bfloat16']:.2f}"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"native bfloat16: {record['native_bf16']}; amp=auto on this CPU: {record['auto_policy']}. -> {output}")
    return record


if __name__ == "__main__":
    main()
