"""SaliencyHandler in a real MONAI SupervisedEvaluator: one overlay per image, named in the predictions CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput, SupervisedEvaluator
from PIL import Image

from monai_shpeft.backbones import build_classifier
from monai_shpeft.errors import SettingsError
from monai_shpeft.handlers import PredictionWriter, SaliencyHandler
from monai_shpeft.networks import build_fpt
from tests.helpers import TINY_TIMM, tiny_classifier

CLASSES = ["a", "b", "c"]
NORMALIZATION = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def evaluate(
    tmp_path: Path,
    network: torch.nn.Module,
    items: list[dict],
    saliency: SaliencyHandler | None,
    saliency_first: bool = True,
    **evaluator_args: object,
) -> list[dict[str, str]]:
    """Run an evaluator over ``items`` with the writer and the saliency handler; returns the CSV's rows."""
    writer = PredictionWriter(tmp_path / "predictions.csv", CLASSES)
    handlers = [saliency, writer] if saliency_first else [writer, saliency]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=2),
        network=network,
        val_handlers=[h for h in handlers if h is not None],
        decollate=False,
        **evaluator_args,  # type: ignore[arg-type]
    )
    evaluator.run()
    return list(csv.DictReader((tmp_path / "predictions.csv").open()))


def images(count: int, size: int, names: list[str] | None = None) -> list[dict]:
    """``count`` random images named ``d/<index>.png`` (or ``names``)."""
    generator = torch.Generator().manual_seed(0)
    names = names or [f"d/{index}.png" for index in range(count)]
    return [{"image": torch.randn(3, size, size, generator=generator), "image_path": name} for name in names]


@pytest.mark.parametrize("saliency_first", [True, False])
@pytest.mark.parametrize("method", ["gradcam", "rollout"])
def test_one_overlay_per_image_named_in_the_csv(tmp_path: Path, method: str, saliency_first: bool) -> None:
    handler = SaliencyHandler(method, tmp_path / "saliency", CLASSES, NORMALIZATION)
    rows = evaluate(tmp_path, tiny_classifier(TINY_TIMM, image_size=56), images(3, 56), handler, saliency_first)
    files = sorted((tmp_path / "saliency").glob("*.png"))
    expected = [tmp_path / "saliency" / f"{index}_{row['predicted_class']}.png" for index, row in enumerate(rows)]
    assert len(files) == 3 and [row["saliency"] for row in rows] == [str(path) for path in expected]
    for path in files:
        with Image.open(path) as picture:
            assert picture.size == (56, 56) and picture.mode == "RGB"
    assert handler.seconds > 0 and set(handler.files) == {"d/0.png", "d/1.png", "d/2.png"}


def test_a_name_met_twice_gets_a_number(tmp_path: Path) -> None:
    handler = SaliencyHandler("gradcam", tmp_path / "saliency", CLASSES)
    model = tiny_classifier(TINY_TIMM, image_size=56)
    with torch.no_grad():
        model.head.linear.bias.copy_(torch.tensor([100.0, 0.0, 0.0]))  # every image: class a
    rows = evaluate(tmp_path, model, images(3, 56, ["x/same.png", "y/same.png", "z/other.png"]), handler)
    assert [Path(r["saliency"]).name for r in rows] == ["same_a.png", "same_a_2.png", "other_a.png"]


def test_without_a_method_nothing_is_written_and_the_csv_is_as_before(tmp_path: Path) -> None:
    rows = evaluate(
        tmp_path, tiny_classifier(TINY_TIMM, image_size=56), images(2, 56), SaliencyHandler("", tmp_path / "s", CLASSES)
    )
    assert not (tmp_path / "s").exists()
    assert list(rows[0]) == ["image", "predicted_class", "p_a", "p_b", "p_c"]


def test_fpt_overlays_cover_the_high_resolution_image(tmp_path: Path) -> None:
    network = build_fpt(TINY_TIMM, 3, image_size=56, side_image_size=28, tiny=True)
    items = [dict(item, image_lr=item["image"][:, ::2, ::2].clone()) for item in images(2, 56)]
    handler = SaliencyHandler("gradcam", tmp_path / "saliency", CLASSES, NORMALIZATION)
    rows = evaluate(
        tmp_path, network, items, handler, prepare_batch=PrepareBatchExtraInput(extra_keys={"image_lr": "image_lr"})
    )
    assert len(rows) == 2
    for row in rows:
        with Image.open(row["saliency"]) as picture:
            assert picture.size == (56, 56)


def test_rollout_on_a_cnn_stops_before_the_first_batch(tmp_path: Path) -> None:
    handler = SaliencyHandler("rollout", tmp_path / "saliency", CLASSES)
    with pytest.raises(SettingsError, match="use --saliency gradcam"):
        evaluate(tmp_path, build_classifier("timm:resnet18", 3, image_size=32), images(2, 32), handler)
    assert not (tmp_path / "saliency").exists()


def test_an_unknown_method_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="use one of: gradcam, rollout"):
        SaliencyHandler("cam", tmp_path, CLASSES)
