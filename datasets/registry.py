"""The one registry of dataset facts: what every module needs to know about HumanML3D ("t2m") and KIT-ML ("kit").

    dataset_facts(name) -> DatasetFacts      feature width, joints, fps, lengths, units, body-part joint groups
    DATASETS                                 the known names, ("t2m", "kit")
    read_dataset_info(root) -> dict          the optional `dataset_info.json` of a dataset folder (flags such as
                                             `procedural`, written by datasets.mini)

Models, tasks and the data layer read these facts from here instead of keeping their own copies. Skeleton geometry
(offsets, kinematic chains, the foot-contact threshold) stays in `datasets.skeleton`; the joint count here is the
skeleton's (a test checks they agree).

Sources: HumanML3D (Guo et al., CVPR 2022) and its reference loaders: 263-d features of 22 joints at 20 fps, motions of
[40, 200) frames padded to 196; KIT-ML 251-d, 21 joints, 12.5 fps, minimum 24 frames; both cut sub-clips at 20 fps.
HumanML3D joints are in metres, KIT-ML's on a millimetre scale. Body parts: the Part_TMR / ParCo split the paper's
retriever uses (ReMoMask §2.1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DATASET_INFO_FILE = "dataset_info.json"

PART_NAMES = ("root", "r_leg", "l_leg", "backbone", "r_arm", "l_arm")


@dataclass(frozen=True)
class DatasetFacts:
    """Constants of one dataset. Lengths in frames."""
    name: str                 # "t2m" | "kit"
    title: str                # "HumanML3D" | "KIT-ML"
    joints: int               # J
    fps: float
    min_length: int           # motions / sub-clips shorter than this are dropped
    max_length: int = 200     # dropped if length >= this ("< 200" in the reference loader)
    pad_length: int = 196     # items are zero-padded to this (max_motion_length)
    unit_length: int = 4      # crop lengths are multiples of this
    subclip_fps: float = 20.0  # the reference cuts sub-clips at 20 fps for both datasets
    mm_per_unit: float = 1000.0  # joint coordinates × this = millimetres
    # joints (>= 1) of the five non-root body parts; the root part is the root data + root velocity
    body_parts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Feature width D = 12·J − 1 (root 4 + ric 3(J−1) + rot6d 6(J−1) + velocity 3J + contacts 4)."""
        return 12 * self.joints - 1


_FACTS: dict[str, DatasetFacts] = {
    "t2m": DatasetFacts(
        "t2m", "HumanML3D", joints=22, fps=20.0, min_length=40, mm_per_unit=1000.0,
        body_parts={"r_leg": (2, 5, 8, 11), "l_leg": (1, 4, 7, 10), "backbone": (3, 6, 9, 12, 15),
                    "r_arm": (9, 14, 17, 19, 21), "l_arm": (9, 13, 16, 18, 20)}),
    "kit": DatasetFacts(
        "kit", "KIT-ML", joints=21, fps=12.5, min_length=24, mm_per_unit=1.0,
        body_parts={"r_leg": (11, 12, 13, 14, 15), "l_leg": (16, 17, 18, 19, 20), "backbone": (1, 2, 3, 4),
                    "r_arm": (3, 5, 6, 7), "l_arm": (3, 8, 9, 10)}),
}
DATASETS: tuple[str, ...] = tuple(_FACTS)


class UnknownDatasetError(ValueError):
    """A dataset name that is not in the registry."""


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of dataset `name` ("t2m" | "kit"); a one-line UnknownDatasetError otherwise."""
    try:
        return _FACTS[name]
    except (KeyError, TypeError):
        raise UnknownDatasetError(f"datasets/registry.py: dataset must be one of {list(DATASETS)}, "
                                  f"got {name!r}") from None


def read_dataset_info(root: str | Path) -> dict:
    """`<root>/dataset_info.json` as a dict ({} when absent or unreadable).

    Known keys: `procedural` (bool: generated data, numbers are smoke tests, never comparable to paper tables),
    `name`, `note`. Code decides from these flags, never from a folder's name.
    """
    path = Path(root) / DATASET_INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def is_procedural(root: str | Path) -> bool:
    """True when the dataset folder says it holds generated (procedural) data."""
    return bool(read_dataset_info(root).get("procedural", False))
