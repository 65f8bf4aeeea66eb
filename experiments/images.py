"""An ImageFolder read per sample: file paths in memory, pixels decoded by the ``DataLoader``'s workers.

A split is ``<root>/<split>/<class>/<image>`` (ImageNet's ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``); the
folders are checked before a run, each image's content when it is read (reading 1.28 M files first would take long).
Only the paths are held, as one numpy byte array per split (~40 bytes an ImageNet image, and no per-path Python
objects, whose reference counts would make every worker copy the pages it reads); each image is opened, converted to
RGB (ImageNet holds grayscale and CMYK JPEGs too) and transformed when the loader asks for it. So a run's memory does
not grow with the number of images.

Transforms are timm's, from the model's ``pretrained_cfg`` (mean, std, interpolation, crop_pct): training images get
RandomResizedCrop, a horizontal flip and RandAugment (``dataset.train_augment``, timm's string, e.g.
``rand-m9-mstd0.5-inc1``), as the paper trains ViT-B/16; evaluation images the checkpoint's own resize and centre crop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
EVAL_FOLDERS = ("val", "validation", "test")


def class_folders(root: Path) -> list[str]:
    """The class folders of ``root/train``, sorted (their order gives the labels, as torchvision's ImageFolder)."""
    return sorted(entry.name for entry in os.scandir(root / "train") if entry.is_dir())


def eval_folder(root: Path) -> Path | None:
    return next((root / name for name in EVAL_FOLDERS if (root / name).is_dir()), None)


def is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def check_classes_hold_images(folder: Path, classes: list[str]) -> None:
    """One-line ValueError naming the first class folder without an image (stops at each folder's first image)."""
    for name in classes:
        if not any(entry.is_file() and is_image(entry.name) for entry in os.scandir(folder / name)):
            raise ValueError(f"{folder / name}: a class folder without images; expected files ending in "
                             f"{', '.join(EXTENSIONS)} (any case)")


def data_config(arch: str, image_size: int) -> dict[str, Any]:
    """timm's data config of ``arch``'s pretrained_cfg (the one ``timm.create_model(arch)`` attaches), at
    ``image_size``."""
    import timm
    from timm.data import resolve_data_config

    pretrained_cfg = timm.models.get_pretrained_cfg(arch)
    if pretrained_cfg is None:
        raise ValueError(f"model.arch={arch!r} has no pretrained_cfg in timm: its data config (mean, std, crop) is "
                         "unknown")
    return resolve_data_config({"input_size": (3, image_size, image_size)}, pretrained_cfg=pretrained_cfg.to_dict())


def check_augment(train_augment: str | None) -> None:
    """One-line ValueError for a string timm does not read as an augmentation policy."""
    from timm.data import create_transform

    if train_augment is None:
        return
    try:
        create_transform(input_size=8, is_training=True, auto_augment=train_augment)
    except (AssertionError, KeyError, ValueError) as error:
        reason = f" ({error})" if str(error) else ""
        raise ValueError(f"dataset.train_augment={train_augment!r} is not a timm augmentation policy{reason}; "
                         "expected e.g. rand-m9-mstd0.5-inc1 (RandAugment) or null") from None


def transforms(config: dict[str, Any], train_augment: str | None) -> tuple[Callable, Callable]:
    """(training transform, evaluation transform) from timm's data ``config``."""
    from timm.data import create_transform

    train = create_transform(**config, is_training=True, auto_augment=train_augment)
    return train, create_transform(**config)


def describe(config: dict[str, Any], train_augment: str | None, arch: str) -> str:
    """The transforms in one line, for the run's notes."""
    size = config["input_size"][-1]
    return (f"images: train RandomResizedCrop {size} + flip + {train_augment or 'no RandAugment'}; eval resize "
            f"{int(size / config['crop_pct'])} {config['interpolation']} + centre crop {size} (crop_pct "
            f"{config['crop_pct']}); mean {tuple(config['mean'])} std {tuple(config['std'])} from timm's "
            f"pretrained_cfg of {arch}")


class UnreadableImageError(ValueError):
    """A file PIL cannot decode, named in one line. Raised in a loader worker, it reaches the training process as
    ``UnreadableImageError(text)``, where torch's text is the worker's whole traceback (``ExceptionWrapper.reraise``):
    only its last line, this error's own message, is kept."""

    def __init__(self, message: str) -> None:
        *traceback, last = message.rstrip().split("\n")  # last: "experiments.images.UnreadableImageError: <message>"
        _, marker, own = last.partition(f"{type(self).__name__}: ")
        super().__init__(own if traceback and marker else message)


class ImageFolderSplit(Dataset):
    """The images of ``folder`` (one sub-folder per class, labelled by its index in ``classes``)."""

    def __init__(self, folder: Path, classes: list[str], transform: Callable) -> None:
        self.folder, self.transform = folder, transform
        paths, labels = [], []
        for label, name in enumerate(classes):
            if not (folder / name).is_dir():
                continue  # an evaluation split may hold a subset of the classes
            names = sorted(entry.name for entry in os.scandir(folder / name)
                           if entry.is_file() and is_image(entry.name))
            paths.append(np.array([f"{name}/{file}".encode() for file in names], dtype=np.bytes_))
            labels.append(np.full(len(names), label, dtype=np.int32))
        self.paths = np.concatenate(paths) if paths else np.array([], dtype=np.bytes_)
        self.labels = np.concatenate(labels) if labels else np.array([], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        path = self.folder / self.paths[index].decode()
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except OSError as error:  # a file whose content PIL cannot read: the run stops, naming it
            raise UnreadableImageError(f"{path}: cannot be read as an image ({type(error).__name__}); expected a "
                                       "JPEG, PNG or another format PIL reads") from None
        pixels = self.transform(image)
        return {"pixel_values": pixels, "labels": torch.tensor(int(self.labels[index]))}
