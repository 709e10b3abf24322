"""The model-zoo checks that run the bundle (checks 8 to 11 of :mod:`monai_shpeft.zoo.check`), as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from monai_shpeft.zoo.check_result import CheckResult, parse_overrides

_COMMAND_CHECKS = ("verify_net_in_out", "ckpt_export", "properties", "inference")


#: run in the bundle's folder: initialise the inference workflow and list the properties it lacks
_PROPERTIES_SCRIPT = """
import json, sys
from monai.bundle import ConfigWorkflow
workflow = ConfigWorkflow(config_file="configs/inference.json", workflow_type="infer", **json.loads(sys.argv[1]))
workflow.initialize()
missing = workflow.check_properties()
print("missing properties:", json.dumps(missing))
sys.exit(1 if missing else 0)
"""


def _check_network(
    bundle: Path, metadata: dict[str, Any], overrides: list[str], device: str, timeout: int
) -> list[CheckResult]:
    meta, config = "configs/metadata.json", "configs/inference.json"
    results = []
    verify = _run_bundle_command(
        ["verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", config, "--device", device],
        overrides,
        bundle,
        timeout,
    )
    if verify is None:
        results.append(CheckResult("verify_net_in_out", True, "network input/output shapes and dtypes match"))
    else:
        results.append(CheckResult("verify_net_in_out", False, verify))
    results.append(_check_export(bundle, metadata, overrides, timeout))
    with tempfile.TemporaryDirectory() as workdir:
        images = _sample_images(Path(workdir) / "images", metadata)
        results.append(_check_properties(bundle, overrides, images, Path(workdir) / "properties", timeout))
        results.append(_check_inference(bundle, overrides, images, Path(workdir) / "inference", timeout))
    return results


def _sample_images(folder: Path, metadata: dict[str, Any]) -> Path:
    """Two RGB PNGs of the network's input size, written with PIL (a bundle's inference reads real files)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    size = _input_shape(metadata)[2:]
    rng = np.random.default_rng(0)
    for index in range(2):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"sample_{index}.png")
    return folder


def _check_properties(bundle: Path, overrides: list[str], images: Path, output: Path, timeout: int) -> CheckResult:
    knobs = {**parse_overrides(overrides), "input_dir": str(images), "output_dir": str(output)}
    command = [sys.executable, "-c", _PROPERTIES_SCRIPT, json.dumps(knobs)]
    try:
        done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CheckResult("properties", False, f"the inference workflow did not initialise in {timeout} s")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0:
        found = [line for line in lines if line.startswith("missing properties:")]
        return CheckResult("properties", False, found[-1] if found else (lines[-1] if lines else "no output"))
    return CheckResult("properties", True, "the inference workflow has every InferProperties id")


def _check_inference(bundle: Path, overrides: list[str], images: Path, output: Path, timeout: int) -> CheckResult:
    arguments = ["run", "--config_file", "configs/inference.json", "--input_dir", str(images)]
    failure = _run_bundle_command([*arguments, "--output_dir", str(output)], overrides, bundle, timeout)
    if failure is not None:
        return CheckResult("inference", False, failure)
    predictions = output / "predictions.csv"
    rows = predictions.read_text(encoding="utf-8").splitlines()[1:] if predictions.is_file() else []
    if len(rows) != 2:
        return CheckResult("inference", False, f"expected 2 predictions in {predictions}, found {len(rows)}")
    return CheckResult("inference", True, f"2 images predicted ({rows[0].split(',')[1]}, {rows[1].split(',')[1]})")


def _check_export(bundle: Path, metadata: dict[str, Any], overrides: list[str], timeout: int) -> CheckResult:
    import torch

    from monai_shpeft.zoo.export import bundle_parser, load_checkpoint

    shape = _input_shape(metadata)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            parser = bundle_parser(bundle, ("inference.json",), parse_overrides(overrides))
            parser["device"] = "$torch.device('cpu')"
            network = parser.get_parsed_content("network_def").to("cpu")
        except Exception as error:  # any build failure is this check's finding
            return CheckResult("ckpt_export", False, f"network_def cannot be built: {error}")
        checkpoint = bundle / "models" / "model.pt"
        if checkpoint.is_file():
            load_checkpoint(network, checkpoint)
        else:  # a delta-only bundle: export the rebuilt network's weights
            checkpoint = Path(workdir) / "model.pt"
            torch.save(network.state_dict(), checkpoint)
        scripted_file = Path(workdir) / "model.ts"
        failure = _run_bundle_command(
            [
                "ckpt_export",
                "network_def",
                "--filepath",
                str(scripted_file),
                "--ckpt_file",
                str(checkpoint),
                "--meta_file",
                "configs/metadata.json",
                "--config_file",
                "configs/inference.json",
                "--use_trace",
                "True",
                "--input_shape",
                json.dumps(shape),
            ],
            overrides,
            bundle,
            timeout,
        )
        if failure is not None:
            return CheckResult("ckpt_export", False, failure)
        scripted = torch.jit.load(str(scripted_file), map_location="cpu")
        network.eval()
        generator = torch.Generator().manual_seed(0)
        image = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected, exported = network(image), scripted(image)
        difference = float((expected - exported).abs().max())
        if not torch.allclose(expected, exported, rtol=1e-4, atol=1e-5):
            return CheckResult("ckpt_export", False, f"TorchScript output differs from the network by {difference:.2e}")
        size = scripted_file.stat().st_size
    detail = f"TorchScript ({size / 2**20:.1f} MB) gives the network's outputs (max diff {difference:.1e})"
    return CheckResult("ckpt_export", True, detail)


def _run_bundle_command(arguments: list[str], overrides: list[str], cwd: Path, timeout: int) -> str | None:
    command = [sys.executable, "-m", "monai.bundle", *arguments, *overrides]
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"'{' '.join(arguments[:2])}' did not finish in {timeout} s"
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return f"'{' '.join(arguments[:2])}' exited {done.returncode}: {lines[-1] if lines else 'no output'}"


def _input_shape(metadata: dict[str, Any]) -> list[int]:
    spec: dict[str, Any] = next(iter(metadata.get("network_data_format", {}).get("inputs", {}).values()), {})
    return [1, int(spec.get("num_channels", 3)), *[int(s) for s in spec.get("spatial_shape", [224, 224])]]
