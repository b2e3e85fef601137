"""The official archives: names, URLs and published digests (as torchvision lists them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One file to fetch; `name` is also its name on a mirror (a lab server or a local folder)."""

    name: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes; checked when no digest is pinned
    extract: bool = True  # False: copy the file into `place` instead of unpacking it
    place: str = ""  # folder (relative to the raw root) for files that are not archives
    max_size: int | None = None  # bytes a download may reach when `size` is not pinned
    tops: tuple[str, ...] = ()  # the top-level folders the archive creates (any other is refused)
    # what an extracted copy must hold (a trailing "/" = a non-empty folder): checked offline when the
    # folders are there but the archive is not
    layout: tuple[str, ...] = ()


# Sizes are the bytes the official hosts serve (the Content-Length of their replies); a download
# stops there, so a mirror streaming without end cannot fill the disk.
VOC2012 = Source(
    name="VOCtrainval_11-May-2012.tar",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    size=1_999_639_040,
    tops=("VOCdevkit",),
    layout=(
        "VOCdevkit/VOC2012/JPEGImages/",
        "VOCdevkit/VOC2012/SegmentationClass/",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
    ),
)
SBD = Source(
    name="benchmark.tgz",
    url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    size=1_419_539_633,
    tops=("benchmark_RELEASE",),
    layout=(
        "benchmark_RELEASE/dataset/img/",
        "benchmark_RELEASE/dataset/cls/",
        "benchmark_RELEASE/dataset/train.txt",
        "benchmark_RELEASE/dataset/val.txt",
    ),
)
# The list of SBD train images that are not in VOC2012 val; published beside the archive, not in it.
# Its size is not published: 5,623 ids of 12 bytes make ~67 kB, so 1 MiB bounds the download.
SBD_TRAIN_NOVAL = Source(
    name="train_noval.txt",
    url="http://home.bharathh.info/pubs/codes/SBD/train_noval.txt",
    md5="79bff800c5f0b1ec6b21080a3c066722",
    extract=False,
    place="benchmark_RELEASE/dataset",
    max_size=1 << 20,
)
# COCO publishes no checksum file; these md5s are the ones download scripts across public
# projects agree on (the annotations md5 is also the S3 ETag), with the sizes served.
COCO_TRAIN2014 = Source(
    name="train2014.zip",
    url="http://images.cocodataset.org/zips/train2014.zip",
    md5="0da8c0bd3d6becc4dcb32757491aca88",
    size=13_510_573_713,
    tops=("train2014",),
    layout=("train2014/",),
)
COCO_VAL2014 = Source(
    name="val2014.zip",
    url="http://images.cocodataset.org/zips/val2014.zip",
    md5="a3d79f5ed8d289b7a7554ce06a5782b3",
    size=6_645_013_297,
    tops=("val2014",),
    layout=("val2014/",),
)
COCO_ANN2014 = Source(
    name="annotations_trainval2014.zip",
    url="http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    md5="0a379cfc70b0e71301e0f377548639bd",
    size=252_872_794,
    tops=("annotations",),
    layout=("annotations/instances_train2014.json", "annotations/instances_val2014.json"),
)

# Order matters: train_noval.txt goes inside the folder that benchmark.tgz creates.
SOURCES: dict[str, tuple[Source, ...]] = {
    "voc": (VOC2012,),
    "sbd": (SBD, SBD_TRAIN_NOVAL),
    "coco": (COCO_TRAIN2014, COCO_VAL2014, COCO_ANN2014),
}
# params.yaml `dataset` -> the downloads it needs.
DATASET_SOURCES: dict[str, tuple[str, ...]] = {"pascal": ("voc", "sbd"), "coco": ("coco",)}


def sources_for(name: str) -> tuple[Source, ...]:
    """The files of a download name (voc | sbd | coco) or a params dataset (pascal | coco)."""
    if name in SOURCES:
        return SOURCES[name]
    if name in DATASET_SOURCES:
        return tuple(s for key in DATASET_SOURCES[name] for s in SOURCES[key])
    known = ", ".join([*SOURCES, *DATASET_SOURCES])
    raise ValueError(f"unknown dataset {name!r} (known: {known})")
