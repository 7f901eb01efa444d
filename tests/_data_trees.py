"""Tiny dataset trees in the exact on-disk layouts of the real datasets (a few generated images each)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def image(path: Path, value: int, size=(24, 20)) -> Path:
    """A (W, H) = size RGB image of noise around grey level `value` (JPEG or PNG by the suffix)."""
    rng = np.random.default_rng(value * 7919 + len(str(path)))
    a = np.clip(rng.normal(value, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def cub(root: Path, classes=(1, 2, 101, 102), per_class=3, sub="") -> Path:
    d = root / sub if sub else root
    lines, labels, n = [], [], 0
    for c in classes:
        for i in range(per_class):
            n += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{i:04d}.jpg"
            image(d / "images" / rel, 40 + c % 200)
            lines.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    (d / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def cars_mat(root: Path, classes=(1, 2, 99, 100), per_class=2) -> Path:
    from scipy.io import savemat

    rows, n = [], 0
    for c in classes:
        for _ in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            image(root / rel, 30 + c)
            rows.append((rel, 1, 2, 20, 18, c, n % 2))
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("test", "O")]
    ann = np.array([tuple(r) for r in rows], dtype=dtype).reshape(1, -1)
    savemat(str(root / "cars_annos.mat"), {"annotations": ann})
    return root


def class_folders(root: Path, names=("a", "b", "c", "d"), per_class=3, ext=".png") -> Path:
    for k, name in enumerate(names):
        for i in range(per_class):
            image(root / name / f"{i}{ext}", 40 + 50 * k)
    return root


def sop(root: Path, train=((1, 2), (2, 2)), test=((3, 2), (4, 1))) -> Path:
    for fname, part in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        lines, n = ["image_id class_id super_class_id path"], 0
        for cls, count in part:
            for i in range(count):
                n += 1
                rel = f"bicycle_final/{cls}_{i}.JPG"
                image(root / rel, 30 * cls)
                lines.append(f"{n} {cls} 1 {rel}")
        (root / fname).write_text("\n".join(lines) + "\n")
    return root


def inshop(root: Path) -> Path:
    rows = [("id_00000001", "train"), ("id_00000001", "train"), ("id_00000002", "train"), ("id_00000002", "train"),
            ("id_00000007", "query"), ("id_00000007", "gallery"), ("id_00000009", "query"), ("id_00000009", "gallery"),
            ("id_00000009", "gallery")]
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    for n, (item, status) in enumerate(rows):
        rel = f"img/WOMEN/Dresses/{item}/{n:02d}_1_front.jpg"
        image(root / rel, 20 + int(item[3:]) * 20)
        lines.append(f"{rel} {item} {status}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def gldv2(root: Path, landmarks=((5, 3), (9, 1), (12, 2))) -> Path:
    lines, clean = ["id,url,landmark_id"], ["landmark_id,images"]
    n = 0
    for lid, count in landmarks:
        ids = []
        for _ in range(count):
            n += 1
            iid = f"{n:03x}abcdef{n:04d}"
            image(root / "train" / iid[0] / iid[1] / iid[2] / f"{iid}.jpg", 20 * lid % 255)
            lines.append(f"{iid},http://example.invalid/{iid}.jpg,{lid}")
            ids.append(iid)
        clean.append(f"{lid},{' '.join(ids)}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "train_clean.csv").write_text("\n".join(clean) + "\n")
    return root


def revisitop(root: Path, name="roxford5k", arrays=True) -> Path:
    d = root / name
    imlist = [f"db_{i}" for i in range(5)]
    qimlist = ["q_0", "q_1"]
    for i, n in enumerate(imlist):
        image(d / "jpg" / f"{n}.jpg", 30 + 40 * i, size=(40, 30))
    for n in qimlist:
        image(d / "jpg" / f"{n}.jpg", 100, size=(64, 48))
    arr = (lambda v: np.array(v)) if arrays else (lambda v: v)
    gnd = [{"bbx": [4.0, 6.0, 36.0, 30.0], "easy": arr([0, 1]), "hard": arr([2]), "junk": arr([3])},
           {"bbx": [10.3, 2.0, 50.0, 40.0], "easy": arr([4]), "hard": arr([]), "junk": arr([])}]
    with open(d / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f, protocol=2)
    return root
