"""The in-memory dataset handed to training and attribution."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime.validation import check_channel_names, check_images, check_labels


@dataclass
class ImageSet:
    """Images (N, C, H, W) with class labels, channel and class names and split groups.

    ``groups`` holds a key per image (e.g. the well) so that train/validation splits
    never put images of one group on both sides. ``masks`` optionally holds a
    ground-truth relevance mask per image (N, H, W) for synthetic and annotated data.
    """

    images: np.ndarray
    labels: np.ndarray
    channel_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None
    masks: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = check_images(self.images)
        self.labels = check_labels(self.labels, self.images.shape[0])
        self.channel_names = check_channel_names(self.channel_names or None, self.n_channels)
        n_classes = int(self.labels.max()) + 1
        if not self.class_names:
            self.class_names = [f"class{i}" for i in range(n_classes)]
        self.class_names = [str(c) for c in self.class_names]
        if len(self.class_names) < n_classes:
            from ..runtime.errors import InputError

            raise InputError(
                f"labels go up to {n_classes - 1} but only {len(self.class_names)} class "
                "names were given"
            )
        if self.groups is not None:
            self.groups = np.asarray(self.groups)
            if self.groups.shape[0] != self.images.shape[0]:
                from ..runtime.errors import InputError

                raise InputError(f"{self.groups.shape[0]} group keys for "
                                 f"{self.images.shape[0]} images")

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> ImageSet:
        """The images at ``index``; keeps names and metadata, slicing the per-image
        metadata arrays listed in ``metadata["per_crop_keys"]``."""
        index = np.asarray(index)
        metadata = dict(self.metadata)
        for key in metadata.get("per_crop_keys", []):
            metadata[key] = np.asarray(metadata[key])[index]
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            channel_names=list(self.channel_names),
            class_names=list(self.class_names),
            groups=None if self.groups is None else self.groups[index],
            masks=None if self.masks is None else self.masks[index],
            metadata=metadata,
        )

    def select_channels(self, channels: list[int] | list[str]) -> ImageSet:
        """A copy keeping only the given channels (by index or name)."""
        idx = [self.channel_names.index(c) if isinstance(c, str) else int(c) for c in channels]
        out = self.subset(np.arange(len(self)))
        out.images = np.ascontiguousarray(self.images[:, idx])
        out.channel_names = [self.channel_names[i] for i in idx]
        return out
