"""Write the DENet golden files by running the release's own dataset and model code on the toy raw data.

    python tests/golden/make_denet_golden.py /path/to/DENet-checkout [--work DIR] [--out tests/data]

The checkout must be lizhaoliu-Lec/DENet at denet_release.RELEASE_COMMIT (checked). Nothing here copies
the release's code: its modules are imported from the checkout and run as they are. The release was
written for torch 1.3 / torchvision 0.4 / scipy 1.1 / numpy 1.18; three removed APIs are provided
around it (never by editing the checkout):
- `np.int` (removed in numpy 1.24) is the builtin `int` it aliased;
- `scipy.misc.toimage` / `imsave` (removed in scipy 1.2) are re-implemented below from scipy 1.1's
  documented behaviour: integer arrays are rescaled linearly from [cmin, cmax] to [low, high] (the
  release passes low=min, high=max, an identity), uint8 arrays pass unchanged, mode "L" PNG;
- torchvision's `VOCSegmentation.masks` became a read-only property (the release assigns it), and
  `resnet50(pretrained=True)` became `weights=` (the release's ResNet-50 gets fixed-seed random
  weights here anyway, never ImageNet ones).
The release writes its fold masks and pair caches into its data root, so the toy data is copied into
`--work` first. What is recorded, and how the tests use it: tests/golden/test_denet_parity.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import types
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # the project, for pipeline.toy

import denet_release as G  # noqa: E402

from pipeline import toy  # noqa: E402

FLIP_EPISODES = 12  # episodes whose flip decisions are recorded, per setting


# ---------------------------------------------------------------- shims for APIs removed since the release


def _bytescale(
    data: np.ndarray, cmin: Any = None, cmax: Any = None, high: int = 255, low: int = 0
) -> np.ndarray:
    if data.dtype == np.uint8:
        return data
    cmin = data.min() if cmin is None else cmin
    cmax = data.max() if cmax is None else cmax
    cscale = (cmax - cmin) or 1
    scale = float(high - low) / cscale
    return ((data - cmin) * scale + low).clip(low, high).__add__(0.5).astype(np.uint8)


def _toimage(
    arr: Any, high: int = 255, low: int = 0, cmin: Any = None, cmax: Any = None, **_: Any
) -> Image.Image:
    data = np.asarray(arr)
    if data.ndim != 2:
        raise ValueError("the shim handles the release's 2-D label maps only")
    return Image.fromarray(_bytescale(data, cmin, cmax, high, low), mode="L")


def _imsave(name: str, arr: Any) -> None:
    _toimage(arr).save(name)


def import_release(release: Path) -> types.SimpleNamespace:
    """The release's modules, imported from the checkout with the shims in place."""
    import scipy.misc
    import torchvision.datasets as tvd
    import torchvision.models as tvm

    head = subprocess.run(["git", "-C", str(release), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.stdout.strip() != G.RELEASE_COMMIT:
        raise SystemExit(f"{release} is at {head.stdout.strip() or '?'}, expected {G.RELEASE_COMMIT}")
    if not hasattr(np, "int"):
        np.int = int  # type: ignore[attr-defined]
    scipy.misc.toimage = _toimage  # type: ignore[attr-defined]
    scipy.misc.imsave = _imsave  # type: ignore[attr-defined]
    tvd.VOCSegmentation.masks = property(  # type: ignore[method-assign]
        lambda self: self.targets, lambda self, value: setattr(self, "targets", value)
    )
    sys.path.append(str(release))  # appended: the release's top-level `train.py` must not shadow train/
    import augmentation.augmentations as aug
    import dataset.coco as coco
    import dataset.voc_sbd as voc_sbd
    import model.backbone.backbones as backbones
    import model.head.denet as denet
    from loss import loss_denet

    backbones.resnet50 = lambda pretrained=False, **kw: tvm.resnet50(weights=None, **kw)
    # trainer/__init__ imports tensorboardX and matplotlib: load trainer/utils.py on its own
    spec = importlib.util.spec_from_file_location("denet_trainer_utils", release / "trainer" / "utils.py")
    assert spec is not None and spec.loader is not None
    trainer_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer_utils)
    return types.SimpleNamespace(
        aug=aug, voc_sbd=voc_sbd, coco=coco, denet=denet, loss_denet=loss_denet, trainer_utils=trainer_utils
    )


# ---------------------------------------------------------------- data roots in the release's layouts


def pascal_root(raw: Path, work: Path) -> Path:
    """VOC2012 and SBD under one root, as the release's `roots` argument expects (SBD files at the top)."""
    root = work / "release_pascal"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(raw / "VOCdevkit", root / "VOCdevkit")
    for item in (raw / "benchmark_RELEASE" / "dataset").iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, root / item.name)
    return root


def coco_root(raw: Path, work: Path) -> Path:
    """COCO 2014 as the release's COCO14 expects: images/<split>2014/, annotations/."""
    root = work / "release_coco"
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    for split in ("train", "val"):
        os.symlink(raw / f"{split}2014", root / "images" / f"{split}2014")
    os.symlink(raw / "annotations", root / "annotations")
    return root


def stem(path: str) -> str:
    return os.path.basename(path).split(".")[0]


# ---------------------------------------------------------------- pools


def pools_of(item_class: list[tuple[str, str, int]]) -> dict[str, list[str]]:
    """The release's (image, mask, class) pair list -> class -> sorted image ids."""
    out: dict[int, set[str]] = defaultdict(set)
    for image, _mask, cls in item_class:
        out[int(cls)].add(stem(image))
    return {str(c): sorted(v) for c, v in sorted(out.items())}


def two_way_query_pools(ds: Any) -> dict[str, list[str]]:
    """Per ordered pair "c-o": the images of c's unlimited pool that the release accepts as a 2-way query
    for classes [c, o]: its own test (`tuple(items[random_q]) in self.whole_item_class[i]` for every novel
    class i outside the episode, voc_sbd.py:436-446), evaluated on its own structures."""
    novel = list(ds.ignore_classes)
    by_class: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for image, mask, cls in ds.item_class:
        by_class[int(cls)].append((image, mask))
    out = {}
    for c in sorted(by_class):
        for o in novel:
            if o == c:
                continue
            exclude = set(novel) - {c, o}
            ok = {
                stem(item[0])
                for item in by_class[c]
                if not any(tuple(item) in ds.whole_item_class.get(i, []) for i in exclude)
            }
            out[f"{c}-{o}"] = sorted(ok)
    return out


def presence_counts(rel: Any, dataset: str, ds: Any) -> dict[str, dict[str, int]]:
    """Class pixels of every test mask as the release's threshold sees them: read through the dataset's
    own __getitem__ and transforms (SquareScale to img_size), counted as its Counter does (voc_sbd.py:332)."""
    getitem = (
        rel.voc_sbd.VOCSBDSegmentation5.__getitem__ if dataset == "pascal" else rel.coco.COCO1480.__getitem__
    )
    out = {}
    for index in range(len(ds.images)):
        _, mask = getitem(ds, index)
        values, counts = np.unique(np.asarray(mask), return_counts=True)
        out[stem(ds.images[index])] = {
            str(v): int(n) for v, n in zip(values, counts, strict=True) if 0 < v < 255
        }
    return out


def no_episodes(self: Any) -> list:
    """Stands in for construct_support_query while pools are read: the release's draw loops for ever
    when a class has fewer than shot + 1 images or no valid 2-way query (it never happens on the real
    data; it can on a small toy index), and the pools are complete before it runs."""
    return []


@contextlib.contextmanager
def episodes_disabled(rel: Any) -> Iterator[None]:
    """Datasets built inside skip the release's episode draw (`no_episodes`)."""
    classes = (rel.voc_sbd.VOCSBDSegmentation5i, rel.coco.COCOStuff20i)
    originals = [c.construct_support_query for c in classes]
    for c in classes:
        c.construct_support_query = no_episodes
    try:
        yield
    finally:
        for c, original in zip(classes, originals, strict=True):
            c.construct_support_query = original


def release_pools(rel: Any, dataset: str, root: Path) -> dict[str, Any]:
    """train, test 1-way, test 2-way and 2-way query pools of every fold, from the release's datasets."""
    wrapped = rel.voc_sbd.WrappedVOCSBDSegmentation5i if dataset == "pascal" else rel.coco.WrappedCOCOStuff20i
    with episodes_disabled(rel):
        out: dict[str, Any] = {}
        for fold in range(4):
            train = wrapped(root=str(root), fold=fold, split="train", img_size=G.IMAGE_SIZE, shot=1)
            test1 = wrapped(root=str(root), fold=fold, split="test", img_size=G.IMAGE_SIZE, shot=1, way=1)
            test2 = wrapped(root=str(root), fold=fold, split="test", img_size=G.IMAGE_SIZE, shot=1, way=2)
            out[f"fold{fold}"] = {
                "novel": [int(c) for c in test1.ignore_classes],
                "train": pools_of(train.item_class),
                "test_1way": pools_of(test1.item_class),
                "test_2way": pools_of(test2.item_class),
                "test_any_pixel": {
                    str(c): sorted({stem(i) for i, _ in v}) for c, v in sorted(test2.whole_item_class.items())
                },
            }
            if dataset == "pascal":  # COCO's 380 ordered pairs per fold follow from the two lists above
                out[f"fold{fold}"]["test_2way_query"] = two_way_query_pools(test2)
            if fold == 0:
                out["test_presence_px"] = presence_counts(rel, dataset, test1)
            counts = (len(train.item_class), len(test1.item_class), len(test2.item_class))
            print(f"{dataset} fold {fold}: %d train pairs, %d 1-way and %d 2-way test pairs" % counts)
    return out


# ---------------------------------------------------------------- flips


def flip_fold(pools: dict[str, Any]) -> int:
    """The first fold whose pools let the release's episode draw finish for 1w1s, 1w5s and 2w1s."""
    for fold in range(4):
        p = pools[f"fold{fold}"]
        if min(map(len, p["test_1way"].values())) >= 6 and min(map(len, p["test_2way_query"].values())) >= 1:
            return fold
    raise SystemExit("no toy fold has 6 test images per novel class: raise TOY['pascal']['scale']")


def release_flips(rel: Any, root: Path, fold: int) -> dict[str, Any]:
    """Flip decisions of the first test episodes, as the release's test() makes them: random.seed(0)
    (trainer.py fix_randomness), then each episode's supports and query through RandomHorizontallyFlip."""
    flip_cls = rel.aug.RandomHorizontallyFlip
    original = flip_cls.__call__
    log: list[bool] = []

    def recording(self: Any, img: Any, mask: Any) -> Any:
        out = original(self, img, mask)
        log.append(out[0] is not img)  # the release returns its inputs unchanged when it does not flip
        return out

    out = {}
    for name, (way, shot) in G.FORWARD_CASES.items():
        ds = rel.voc_sbd.WrappedVOCSBDSegmentation5i(
            root=str(root), fold=fold, split="test", img_size=G.IMAGE_SIZE, shot=shot, way=way, test_size=60
        )
        flip_cls.__call__ = recording
        try:
            log.clear()
            random.seed(0)
            per_episode = []
            for i in range(FLIP_EPISODES):
                ds[i]
                per_episode.append(list(log))
                log.clear()
        finally:
            flip_cls.__call__ = original
        out[name] = {"fold": fold, "way": way, "shot": shot, "order": "supports (way-major), then the query",
                     "flips": per_episode}  # fmt: skip
    return out


# ---------------------------------------------------------------- label maps


def _no_flip(rel: Any) -> Any:
    from dataset.transforms import ToTensor

    return rel.aug.Compose([rel.aug.SquareScale(size=G.IMAGE_SIZE), ToTensor()])


def release_labels(rel: Any, pascal: Path, coco: Path) -> dict[str, np.ndarray]:
    """Fold masks the release writes (original size) and the label tensors of a few training episodes.

    Training episodes are read through the release's __getitem__ with SquareScale + ToTensor (its flip
    left out, so the maps are deterministic): full query label, binary query mask, binary support masks.
    """
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"pascal": {}, "coco": {}}
    for dataset, root, wrapped in (
        ("pascal", pascal, rel.voc_sbd.WrappedVOCSBDSegmentation5i),
        ("coco", coco, rel.coco.WrappedCOCOStuff20i),
    ):
        for fold in (0, 1):
            # train_size: the release's 1000 episodes per class need >= 32 images per class (n^2 >= 1000)
            train = wrapped(
                root=str(root), fold=fold, split="train", img_size=G.IMAGE_SIZE, shot=1, train_size=300
            )
            novel = set(train.ignore_classes)
            # queries showing a novel class (255 in the fold mask) and, on COCO, a crowd region
            crowd = crowd_images(root) if dataset == "coco" else None
            picked: list[tuple[int, str]] = []
            for k, (_imgs, _masks_s, _img_q, mask_q, _cls) in enumerate(train.support_query):
                full = np.asarray(Image.open(mask_q))
                wanted = (full == 255).any() and (crowd is None or stem(mask_q) in crowd)
                if wanted and len(picked) < 3 and stem(mask_q) not in {p[1] for p in picked}:
                    picked.append((k, stem(mask_q)))
            train.transforms = _no_flip(rel)
            episodes = []
            for k, key in picked:
                _images_s, shot_masks_s, _iq, shot_masks_q, cls, _masks_s, mask_q = train[k]
                support = stem(train.support_query[k][1][0])
                prefix = f"{dataset}/fold{fold}/{key}"
                arrays[f"{prefix}/fold_mask"] = np.asarray(Image.open(train.support_query[k][3]))
                arrays[f"{prefix}/query_full"] = np.asarray(mask_q, dtype=np.uint8)
                arrays[f"{prefix}/query_binary"] = np.asarray(shot_masks_q, dtype=np.uint8)
                arrays[f"{prefix}/support_binary"] = np.asarray(shot_masks_s, dtype=np.uint8).reshape(
                    G.IMAGE_SIZE, G.IMAGE_SIZE
                )
                episodes.append({"query": key, "support": support, "class": int(cls)})
            meta[dataset][f"fold{fold}"] = {"novel": sorted(int(c) for c in novel), "episodes": episodes}
        # test masks (void and crowd handling, and which file a PASCAL test image's mask came from)
        with episodes_disabled(rel):
            test = wrapped(root=str(root), fold=0, split="test", img_size=G.IMAGE_SIZE, shot=1)
        test_masks = {stem(m): m for m in test.masks}
        keys = sorted(test_masks)
        if dataset == "pascal":
            from_mat = sorted(k for k, m in test_masks.items() if os.sep + "cls" + os.sep in m)
            voc_train = set(
                (pascal / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text().split()
            )
            chosen = [k for k in from_mat if k in voc_train][:3] + keys[:3]
            meta[dataset]["sbd_val_with_voc_train_png"] = [k for k in from_mat if k in voc_train]
        else:
            crowd = crowd_images(root)
            chosen = [k for k in keys if k in crowd][:4] + keys[:2]
        for key in chosen:
            arrays[f"{dataset}/test/{key}"] = np.asarray(Image.open(test_masks[key]))
        meta[dataset]["test_masks"] = chosen
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def crowd_images(root: Path) -> set[str]:
    """COCO image names (no extension) with at least one iscrowd annotation, train and val."""
    out = set()
    for split in ("train", "val"):
        doc = json.loads((root / "annotations" / f"instances_{split}2014.json").read_text())
        names = {im["id"]: stem(im["file_name"]) for im in doc["images"]}
        out |= {names[a["image_id"]] for a in doc["annotations"] if a["iscrowd"]}
    return out


# ---------------------------------------------------------------- the model


def forward_inputs(way: int, shot: int, seed: int) -> dict[str, np.ndarray]:
    """uint8 images, binary masks with a few 255 pixels, class ids of a batch of 2 tiny episodes."""
    rng = np.random.default_rng([G.WEIGHT_SEED, seed])
    s = G.FORWARD_SIZE
    masks = np.zeros((2, way, shot, s, s), np.uint8)
    for idx in np.ndindex(2, way, shot):
        y0, x0 = rng.integers(0, s // 2, 2)
        h, w = rng.integers(s // 4, s // 2, 2)
        masks[idx][y0 : y0 + h, x0 : x0 + w] = 1
    ids = np.array([[3, 17], [12, 1]], np.int64)[:, :way]
    label = rng.integers(0, G.NUM_CLASSES, (2, s, s)).astype(np.uint8)
    # ignored rows, more in the second episode: the two episodes have different valid-pixel counts, so
    # the release's per-episode CE mean and a mean over all pixels of the batch differ
    for b, rows in enumerate(G.VOID_ROWS):
        label[b, :rows] = 255
    for b in range(2):  # the episode class where its query mask would be
        label[b, 10:25, 10:30] = ids[b, 0]
    return {
        "query_img": rng.integers(0, 256, (2, 3, s, s), dtype=np.uint8),
        "support_imgs": rng.integers(0, 256, (2, way, shot, 3, s, s), dtype=np.uint8),
        "support_masks": masks,
        "class_ids": ids,
        "query_full_label": label,
    }


def normalized(img: np.ndarray) -> torch.Tensor:
    """ImageNet normalisation, as both the release's transforms and the project's `normalize` apply."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    return (torch.from_numpy(img).float() / 255.0 - mean) / std


def release_forward(rel: Any) -> dict[str, np.ndarray]:
    """Logits of the release's DENet (ResNet-50, fixed-seed weights) in eval and train mode (dropout p = 0,
    BatchNorm in train mode), its losses, and the neck BatchNorm's running mean after the train pass."""
    arrays: dict[str, np.ndarray] = {}
    shapes = None
    for index, (case, (way, shot)) in enumerate(G.FORWARD_CASES.items()):
        inputs = forward_inputs(way, shot, seed=index)
        arrays.update({f"{case}/input/{k}": v for k, v in inputs.items()})
        q = normalized(inputs["query_img"])
        s = normalized(inputs["support_imgs"])
        ys = torch.from_numpy(inputs["support_masks"]).long()
        label = torch.from_numpy(inputs["class_ids"])
        label = label[:, 0] if way == 1 else label  # the release's 1-way episodes carry [N] class ids
        for mode in ("eval", "train"):
            model = rel.denet.DENet(backbone="ResNet50", maximum_num_classes=G.NUM_CLASSES)
            state = G.seeded_release_state(model.state_dict())
            model.load_state_dict(state)
            shapes = {k: list(v.shape) for k, v in state.items()}
            G.disable_dropout(model)
            model.train(mode == "train")
            logits_full, logits_binary = model(s, ys, q, label)
            arrays[f"{case}/{mode}/logits_full"] = logits_full.detach().numpy()
            arrays[f"{case}/{mode}/logits_binary"] = logits_binary.detach().numpy()
            if mode == "train":
                arrays[f"{case}/train/neck_bn_running_mean"] = (
                    model.deeplab_head.bn.running_mean.numpy().copy()
                )
                arrays[f"{case}/train/backbone_bn1_running_mean"] = (
                    model.backbone.bn1.running_mean.numpy().copy()
                )
                if way == 1:
                    arrays.update(release_losses(rel, logits_full, logits_binary, inputs))
    arrays["release_shapes"] = np.array(json.dumps(shapes, sort_keys=True))
    return arrays


def release_losses(rel: Any, logits_full: torch.Tensor, logits_binary: torch.Tensor, inputs: dict) -> dict:
    """The release's DENet loss terms on a train-mode output (trainers.py:954-967: bilinear upsampling to
    the label size, then DENet_loss_wrapper(loss_denet) with per-class weights of 1 = lambda 1.0)."""
    full = torch.from_numpy(inputs["query_full_label"]).long()
    cls = torch.from_numpy(inputs["class_ids"][:, 0])
    binary = (full == cls.view(-1, 1, 1)).long()
    size = full.shape[-2:]
    yq_pre = F.interpolate(logits_binary.float(), size=size, mode="bilinear", align_corners=True)
    yq_full_pre = F.interpolate(logits_full, size=size, mode="bilinear", align_corners=True)
    weight = torch.ones(yq_full_pre.shape[:2])
    wrapper = rel.trainer_utils.DENet_loss_wrapper(rel.loss_denet, arch="DENet")
    loss_k, loss_p = wrapper(yq_pre, binary, None, None, yq_full_pre, full, None, None, weight)
    case = "1w5s" if inputs["support_imgs"].shape[2] == 5 else "1w1s"
    return {
        f"{case}/train/loss_k": np.array(float(loss_k.detach())),
        f"{case}/train/loss_p": np.array(float(loss_p.detach())),
        f"{case}/train/query_binary_label": binary.numpy().astype(np.uint8),
    }


# ---------------------------------------------------------------- F-IOU


def fiou_inputs(num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Three test batches of 2 episodes: low-resolution full logits and full labels at FORWARD_SIZE with a
    void band, drawn from a few classes only (most classes never occur: the release counts them as 0)."""
    rng = np.random.default_rng([G.WEIGHT_SEED, seed])
    s, low = G.FORWARD_SIZE, 11
    out = {}
    for b in range(3):
        present = rng.choice(np.arange(1, num_classes), size=4, replace=False)
        label = rng.choice(np.concatenate([[0, 0], present]), size=(2, s, s)).astype(np.uint8)
        label[:, : 2 + 3 * b] = 255
        logits = rng.normal(size=(2, num_classes, low, low)).astype(np.float32)
        logits[:, present] += 3.0  # predictions mostly among the classes present, a few elsewhere
        out[f"batch{b}/logits_full"], out[f"batch{b}/label"] = logits, label
    return out


def release_fiou(release: Path) -> dict[str, np.ndarray]:
    """The release's F-IOU (utils/metrics.py FullIOU) on `fiou_inputs`, updated as its test() does: the
    full logits upsampled (bilinear, align_corners) to the label size, then `update(Yq_full, Yq_full_pre)`;
    21 classes (PASCAL) and 81 (COCO)."""
    spec = importlib.util.spec_from_file_location("denet_utils_metrics", release / "utils" / "metrics.py")
    assert spec is not None and spec.loader is not None
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    arrays: dict[str, np.ndarray] = {}
    for dataset, n in (("pascal", 21), ("coco", 81)):
        inputs = fiou_inputs(n, seed=n)
        f_iou = metrics.FullIOU(num_classes=n)
        for b in range(3):
            logits = torch.from_numpy(inputs[f"batch{b}/logits_full"])
            label = torch.from_numpy(inputs[f"batch{b}/label"]).long()
            f_iou.update(
                label, F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=True)
            )
        arrays.update({f"{dataset}/{k}": v for k, v in inputs.items()})
        arrays[f"{dataset}/confusion"] = f_iou.mat.astype(np.int64)
        arrays[f"{dataset}/f_iou"] = np.array(float(f_iou.mean_iou()))
    return arrays


# ---------------------------------------------------------------- main


def dump_json(path: Path, doc: dict[str, Any]) -> None:
    """Indented JSON with every flat list (image ids, class ids, flips) on one line: diffable and small."""
    text = json.dumps(doc, indent=1, sort_keys=True)
    text = re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    path.write_text(text + "\n")


def header(what: str, command: str, fingerprints: dict[str, str]) -> dict[str, Any]:
    return {
        "what": what,
        "release": f"{G.RELEASE_REPO}@{G.RELEASE_COMMIT}",
        "made_by": command,
        "toy": G.TOY,
        "toy_fingerprint": fingerprints,
        "image_size": G.IMAGE_SIZE,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", type=Path, help=f"checkout of {G.RELEASE_REPO} at {G.RELEASE_COMMIT}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/denet_golden"), help="scratch folder (emptied)")
    ap.add_argument("--out", type=Path, default=G.DATA)
    args = ap.parse_args(argv)
    command = "python tests/golden/make_denet_golden.py <DENet checkout>"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    shutil.rmtree(args.work, ignore_errors=True)
    raw = {d: args.work / "raw" / d for d in G.TOY}
    for dataset, settings in G.TOY.items():
        toy.generate(raw[dataset], dataset, seed=settings["seed"], scale=settings["scale"])
    fingerprints = {d: G.toy_fingerprint(raw[d], d) for d in G.TOY}
    rel = import_release(args.release.resolve())
    pascal, coco = pascal_root(raw["pascal"], args.work), coco_root(raw["coco"], args.work)
    args.out.mkdir(parents=True, exist_ok=True)

    pools = {"pascal": release_pools(rel, "pascal", pascal), "coco": release_pools(rel, "coco", coco)}
    what = (
        "per fold: the release's training pairs (base class >= threshold), 1-way test pool "
        "(item_class.pair), 2-way test pool (unlimited_item_class.pair), 2-way query pool per ordered "
        "class pair (PASCAL), and the images holding any pixel of each novel class (whole_item_class.pair); "
        "test_presence_px: class pixels of every test mask at image_size, as the release counts them"
    )
    doc = {"header": header(what, command, fingerprints), **pools}
    dump_json(args.out / G.GOLDEN["pools"].name, doc)

    flips = release_flips(rel, pascal, flip_fold(pools["pascal"]))
    doc = {"header": header("flip decisions of the first test episodes (PASCAL)", command, fingerprints),
           **flips}  # fmt: skip
    dump_json(args.out / G.GOLDEN["flips"].name, doc)

    labels = release_labels(rel, pascal, coco)
    what = "fold masks and training-episode label maps (void, novel, crowd handling); test masks"
    labels["header"] = np.array(json.dumps(header(what, command, fingerprints), sort_keys=True))
    np.savez_compressed(args.out / G.GOLDEN["labels"].name, **labels)

    torch.manual_seed(0)
    forward = release_forward(rel)
    what = (
        "DENet forward (ResNet-50 dilated, 21 classes, depth 256, fixed-seed weights: "
        "denet_release.seeded_tensor), eval and train mode (dropout p=0, BN train mode), 1w1s 1w5s 2w1s"
    )
    forward["header"] = np.array(json.dumps(header(what, command, fingerprints), sort_keys=True))
    np.savez_compressed(args.out / G.GOLDEN["forward"].name, **forward)
    fiou = release_fiou(args.release.resolve())
    what = "F-IOU (utils/metrics.py FullIOU) of three test batches per dataset, 21 and 81 classes"
    fiou["header"] = np.array(json.dumps(header(what, command, fingerprints), sort_keys=True))
    np.savez_compressed(args.out / G.GOLDEN["fiou"].name, **fiou)
    for path in G.GOLDEN.values():
        print(f"{path.name}: {(args.out / path.name).stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
