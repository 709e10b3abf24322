from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monai_shpeft.handlers import GradientMaskHandler, ImportanceEstimationHandler, SparseSetRecordHandler
from monai_shpeft.handlers.sparse_set_record_handler import COUNT_HEATMAP_TAG, RATIO_HEATMAP_TAG
from monai_shpeft.utils import sha256_of_file
from tests.helpers import image_label_loader, make_trainer, tiny_classifier

SGD = partial(torch.optim.SGD, lr=0.01)


def test_record_is_written_with_counts_and_hash(tmp_path: Path) -> None:
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"version": "0.1.0", "name": "kept"}))
    set_file = tmp_path / "models" / "set.safetensors"
    record_handler = SparseSetRecordHandler(metadata, set_file=set_file, tensorboard_dir=tmp_path / "tb")
    handlers = [
        record_handler,
        ImportanceEstimationHandler(budget=30, save_path=set_file, progress=False),
        GradientMaskHandler(),
    ]
    trainer = make_trainer(tiny_classifier(), image_label_loader(num_samples=8), SGD, handlers)
    trainer.run()  # the record handler comes first in the list: it waits for the set
    written = json.loads(metadata.read_text())
    assert written["name"] == "kept"  # the rest of the metadata survives
    record = written["sparse_trainable_set"]
    assert record["selected"] == 30 and record["budget"] == 30 and record["strategy"] == "l2"
    assert sum(record["counts_per_block"].values()) == 30
    assert record["file"] == "set.safetensors" and record["sha256"] == sha256_of_file(set_file)
    event_files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert event_files, "the heatmaps were not logged"
    images = EventAccumulator(str(event_files[0]), size_guidance={"images": 0}).Reload().Tags()["images"]
    assert set(images) == {RATIO_HEATMAP_TAG, COUNT_HEATMAP_TAG}
    assert COUNT_HEATMAP_TAG == "sparse_trainable_set/count_per_block_and_layer"


def test_broken_metadata_is_reported(tmp_path: Path) -> None:
    metadata = tmp_path / "metadata.json"
    metadata.write_text("{not json")
    handlers = [
        ImportanceEstimationHandler(budget=5, progress=False),
        GradientMaskHandler(),
        SparseSetRecordHandler(metadata),
    ]
    trainer = make_trainer(tiny_classifier(), image_label_loader(num_samples=4), SGD, handlers)
    with pytest.raises(ValueError, match="metadata.json is not valid JSON"):
        trainer.run()
    assert metadata.read_text() == "{not json"  # left as it was


def test_record_starts_from_the_template_and_leaves_it_untouched(tmp_path: Path) -> None:
    template = tmp_path / "configs" / "metadata.json"
    template.parent.mkdir()
    template.write_text(json.dumps({"version": "0.2.0", "name": "bundle"}))
    before = template.read_bytes()
    run_metadata = tmp_path / "models" / "metadata.json"  # does not exist yet: the run starts it
    handlers = [
        ImportanceEstimationHandler(budget=12, progress=False),
        GradientMaskHandler(),
        SparseSetRecordHandler(run_metadata, template_file=template),
    ]
    make_trainer(tiny_classifier(), image_label_loader(num_samples=4), SGD, handlers).run()
    assert template.read_bytes() == before  # the bundle's own metadata is never written
    written = json.loads(run_metadata.read_text())
    assert written["name"] == "bundle" and written["version"] == "0.2.0"
    assert written["sparse_trainable_set"]["selected"] == 12


def test_missing_metadata_and_template_name_the_file(tmp_path: Path) -> None:
    handlers = [
        ImportanceEstimationHandler(budget=5, progress=False),
        GradientMaskHandler(),
        SparseSetRecordHandler(tmp_path / "models" / "metadata.json", template_file=tmp_path / "nowhere.json"),
    ]
    trainer = make_trainer(tiny_classifier(), image_label_loader(num_samples=4), SGD, handlers)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        trainer.run()
