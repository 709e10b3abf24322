"""The linear probe: a scikit-learn fit on L2-normalised features that loads exactly into the L2-norm head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from monai_shpeft.backbones import L2NormLinearHead
from monai_shpeft.linear_probe import extract_features, fit_probe, load_probe_into_head
from tests.helpers import image_label_loader, tiny_classifier


def _features(num_classes: int, per_class: int = 30, width: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, width)) * 2
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centres[labels] + rng.normal(size=(labels.size, width))
    return features * rng.uniform(0.5, 5, size=(labels.size, 1)), labels  # norms vary: the fit must not care


def _head_logits(head: L2NormLinearHead, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.as_tensor(features, dtype=torch.float32)).double().numpy()


@pytest.mark.parametrize("logit_scale", [1.0, 30.0])
def test_a_multiclass_probe_loads_into_the_head_exactly(logit_scale: float) -> None:
    features, labels = _features(3)
    fit = fit_probe(features, labels, num_classes=3)
    head = L2NormLinearHead(features.shape[1], 3, logit_scale=logit_scale)
    load_probe_into_head(head, fit)
    np.testing.assert_allclose(_head_logits(head, features), fit.logits(features), rtol=1e-4, atol=1e-4)
    # it is scikit-learn's model at the chosen C, on normalised features
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    reference = LogisticRegression(C=fit.C, max_iter=5000).fit(normalised, labels)
    np.testing.assert_array_equal(_head_logits(head, features).argmax(1), reference.predict(normalised))
    assert fit.C in (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0) and np.isfinite(fit.cv_log_loss)


def test_a_binary_probe_becomes_a_two_logit_softmax_with_the_same_probabilities() -> None:
    features, labels = _features(2)
    fit = fit_probe(features, labels, num_classes=2, Cs=(10.0,))
    head = L2NormLinearHead(features.shape[1], 2, logit_scale=30.0)
    load_probe_into_head(head, fit)
    probabilities = torch.softmax(torch.as_tensor(_head_logits(head, features)), dim=1).numpy()
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    reference = LogisticRegression(C=10.0, max_iter=5000).fit(normalised, labels)
    np.testing.assert_allclose(probabilities, reference.predict_proba(normalised), atol=1e-5)
    assert fit.C == 10.0


def test_the_penalty_is_chosen_by_cross_validation_on_the_training_features() -> None:
    features, labels = _features(3, seed=1)
    fits = {cs: fit_probe(features, labels, num_classes=3, Cs=cs) for cs in [(0.01,), (0.01, 100.0)]}
    assert fits[(0.01,)].C == 0.01 and fits[(0.01, 100.0)].C == 100.0  # separable clusters: weak penalty wins
    assert fits[(0.01, 100.0)].cv_log_loss < 0.5


def test_a_class_missing_from_training_is_never_predicted_and_one_class_is_an_error() -> None:
    features, labels = _features(2)
    fit = fit_probe(features, labels, num_classes=3)
    assert (fit.logits(features).argmax(1) != 2).all()
    with pytest.raises(ValueError, match="at least two classes"):
        fit_probe(features[labels == 0], labels[labels == 0], num_classes=3)


def test_the_head_rejects_what_does_not_fit() -> None:
    features, labels = _features(3)
    fit = fit_probe(features, labels, num_classes=3, Cs=(1.0,))
    with pytest.raises(ValueError, match="does not fit"):
        load_probe_into_head(L2NormLinearHead(8, 3), fit)
    with pytest.raises(TypeError, match="L2NormLinearHead"):
        load_probe_into_head(torch.nn.Linear(16, 3), fit)
    with pytest.raises(ValueError, match="logit_scale"):
        L2NormLinearHead(16, 3, logit_scale=0)


def test_the_logit_scale_multiplies_the_logits_and_travels_with_the_state_dict() -> None:
    plain, scaled = L2NormLinearHead(16, 3), L2NormLinearHead(16, 3, logit_scale=30.0)
    scaled.linear.load_state_dict(plain.linear.state_dict())
    x = torch.randn(5, 16)
    torch.testing.assert_close(scaled(x), 30.0 * plain(x))
    assert float(scaled.state_dict()["logit_scale"]) == 30.0
    plain.load_state_dict(scaled.state_dict())  # a checkpoint restores the scale it was trained with
    torch.testing.assert_close(plain(x), scaled(x))
    assert "logit_scale=30" in repr(scaled)


def test_features_come_from_the_backbone_in_eval_mode_and_the_mode_is_restored() -> None:
    network = tiny_classifier(seed=0).train()
    loader = image_label_loader(num_samples=10)
    features, labels = extract_features(network, loader, "cpu", progress=False)
    assert network.training
    assert features.shape == (10, network.feature_dim) and labels.tolist() == [i % 3 for i in range(10)]
    network.eval()
    with torch.no_grad():
        expected = torch.cat([network.forward_features(batch["image"]) for batch in loader]).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


class _AutocastRecorder(torch.utils.data.Dataset):
    """Items whose label says whether CPU autocast was on while the item was made (a transform's view)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.randn(3, 28, 28), "label": torch.tensor(int(torch.is_autocast_enabled("cpu")))}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_bfloat16_autocast_reaches_the_network_and_not_the_loaders_transforms(num_workers: int) -> None:
    # around the loop, autocast resized the images of the probe's pass in bfloat16 (and forked workers inherit
    # it), so a model that is the probe scored other pixels than the probe did
    loader = torch.utils.data.DataLoader(_AutocastRecorder(), batch_size=4, num_workers=num_workers)
    network = tiny_classifier()
    dtypes = []
    qkv = network.backbone.blocks[0].attn.qkv  # a linear layer: bfloat16 under autocast (the final norm is float32)
    hook = qkv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    features, labels = extract_features(network, loader, "cpu", autocast_dtype=torch.bfloat16, progress=False)
    hook.remove()
    assert labels.tolist() == [0] * 8  # no item was made under autocast
    assert dtypes == [torch.bfloat16, torch.bfloat16] and features.dtype == np.float32


def test_recipe_classifier_builds_the_network_a_probe_record_names() -> None:
    from monai_shpeft.linear_probe import recipe_classifier

    recipe = {"backbone": "timm:vit_small_patch14_dinov2", "image_size": 28, "num_classes": 3, "tiny": True}
    network = recipe_classifier(recipe)
    assert network.head.num_classes == 3 and network.backbone_name == recipe["backbone"]
    assert network(torch.rand(2, 3, 28, 28)).shape == (2, 3)
    assert recipe_classifier(recipe, num_classes=5).head.num_classes == 5  # the record's weight decides
    with pytest.raises(FileNotFoundError):
        recipe_classifier(recipe, pretrained="/nowhere/weights.safetensors")
