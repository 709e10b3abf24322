"""Three colour channels for every image: grey is repeated, alpha is dropped."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, cast

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RepeatChannel, Transform
from monai.utils import TransformBackends

from monai_shpeft.transforms._checks import as_image_tensor, invalid_image

__all__ = ["ToRGB", "ToRGBd"]


class ToRGB(Transform):
    """Give a channel-first image exactly three channels, for backbones pretrained on RGB.

    1 channel (grey) is repeated three times (MONAI ``RepeatChannel``); 2 channels (grey + alpha) keep the grey
    one, repeated; 3 channels are kept; 4 channels (RGBA) lose the alpha channel. Values and dtype are unchanged
    (16-bit data loaded as float stays as it is; scale separately). Palette and CMYK images are converted to RGB
    when they are loaded (:func:`~monai_shpeft.transforms.to_supported_mode`,
    :class:`~monai_shpeft.transforms.PydicomImageReader`). The photometric interpretation in the metadata is not
    changed, so :class:`~monai_shpeft.transforms.InvertMonochrome1` gives the same result before or after.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Convert ``img`` to three channels.

        Args:
            img: channel-first image ``[C, *spatial]`` with C in 1..4.

        Returns:
            ``[3, *spatial]`` tensor of the input's dtype.

        Raises:
            InvalidImageError: for another channel count (e.g. a channel-last ``[H, W, 3]`` array) or an invalid
                image.
        """
        tensor, _ = as_image_tensor(img, type(self).__name__)
        channels = tensor.shape[0]
        if channels == 3:
            return tensor
        # RepeatChannel returns the type it is given: a tensor here
        if channels == 1:
            return cast(torch.Tensor, RepeatChannel(repeats=3)(tensor))
        if channels == 2:
            return cast(torch.Tensor, RepeatChannel(repeats=3)(tensor[:1]))
        if channels == 4:
            return tensor[:3]
        raise invalid_image(
            f"ToRGB expects a channel-first image with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels, "
            f"got shape {tuple(tensor.shape)}; is it channel-last? (load with ensure_channel_first)",
            tensor,
        )


class ToRGBd(MapTransform):
    """Dictionary version of :class:`ToRGB`.

    Args:
        keys: keys of the images.
        allow_missing_keys: do not fail when a key is absent.
    """

    backend = ToRGB.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToRGB()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Convert the image of every key to three channels.

        Args:
            data: a dictionary of images.

        Returns:
            a copy of ``data`` with three-channel images.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
