"""Is a dataset's tree complete? Its layout, every annotation file parsed (with the loaders' own
readers), the image counts against the manifest's split sizes, every class present in every split,
and with `deep` every image decoded. Every problem names its file; nothing stops at the first one.

Used by `ablate data check`, by the fetch (on the extracted tree, before it is moved into the root)
and by a sweep's pre-flight (fast: no decoding).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .base import DataError
from .classnames import class_names
from .manifest import DatasetManifest
from .progress import Progress

SHOWN = 10  # problems of one kind printed per split; --json lists all


@dataclass
class SplitCheck:
    """One split's findings; paths are relative to the checked root."""

    split: str
    expected: int | None  # official image count (None: none published)
    listed: int = 0  # images its annotations / list file name
    missing: list[str] = field(default_factory=list)  # listed, not on disk
    bad_annotations: list[str] = field(default_factory=list)  # "file: what is wrong"
    unreadable: list[str] | None = None  # "file: decoder error"; None unless deep
    classes: int = 0
    absent_classes: list[str] = field(default_factory=list)  # no object of the class in this split

    def problems(self) -> list[str]:
        lines = [f"{self.split}: {self.listed:,} images listed, {self.expected:,} expected"] \
            if self.expected is not None and self.listed != self.expected else []
        lines += [f"{self.split}: bad annotation: {a}" for a in self.bad_annotations]
        lines += [f"{self.split}: image missing: {p}" for p in self.missing]
        lines += [f"{self.split}: image unreadable: {p}" for p in self.unreadable or []]
        if self.absent_classes:
            lines.append(f"{self.split}: no object of {len(self.absent_classes)} class(es): "
                         f"{', '.join(self.absent_classes)}")
        return lines


@dataclass
class CheckReport:
    dataset: str
    root: str
    deep: bool
    layout: list[str] = field(default_factory=list)  # missing folders / list files, not tied to one split
    splits: list[SplitCheck] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        return [*self.layout, *(line for s in self.splits for line in s.problems())]

    def as_dict(self) -> dict:
        return {**asdict(self), "complete": self.complete, "problems": self.problems()}

    def summary(self, shown: int = 3) -> str:
        """One line: the dataset, the root and the first problems (for errors)."""
        problems = self.problems()
        more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
        return f"{self.dataset} at {self.root}: {'; '.join(problems[:shown])}{more}"

    def table(self) -> str:
        """The short table `ablate data check` prints, then the problems (SHOWN of each kind a split)."""
        rows = [("split", "images", "expected", "missing", "bad annotations", "unreadable", "classes")]
        for s in self.splits:
            rows.append((s.split, f"{s.listed:,}", "-" if s.expected is None else f"{s.expected:,}",
                         f"{len(s.missing):,}", f"{len(s.bad_annotations):,}",
                         "not decoded" if s.unreadable is None else f"{len(s.unreadable):,}",
                         f"{s.classes - len(s.absent_classes)}/{s.classes}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.dataset} at {self.root}"]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
        shown = [*self.layout, *(line for s in self.splits for line in _first_of_each_kind(s.problems()))]
        lines += [f"  {line}" for line in shown]
        hidden = len(self.problems()) - len(shown)
        if hidden:
            lines.append(f"  ... and {hidden:,} more (--json lists every one)")
        problems = self.problems()
        lines.append("complete" if not problems else f"INCOMPLETE: {len(problems):,} problem(s)")
        return "\n".join(lines)


def _first_of_each_kind(lines: list[str]) -> list[str]:
    """At most SHOWN lines of each kind ("split: kind: file ...")."""
    seen: dict[str, int] = {}
    kept = []
    for line in lines:
        kind = ": ".join(line.split(": ")[:2])
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] <= SHOWN:
            kept.append(line)
    return kept


def check_dataset(manifest: DatasetManifest, root: Path, deep: bool = False,
                  progress: Progress | None = None) -> CheckReport:
    """Check the tree at `root` against `manifest` (counts, layout, classes; `deep`: decode every image)."""
    root = Path(root).expanduser().absolute()
    report = CheckReport(manifest.dataset, str(root), deep)
    if not root.is_dir():
        report.layout.append(f"{root}: {'is a file, not a folder' if root.exists() else 'does not exist'}")
        return report
    inspect = {"voc": _voc, "coco": _coco, "nuswide": _nuswide}[manifest.layout]
    images_of = inspect(manifest, root, report)
    if deep:
        _decode_all(report, root, images_of, progress)
    return report


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _files_in(folder: Path) -> set[str]:
    """Names in a folder, listed once: one directory read instead of a stat per image (shared storage)."""
    with os.scandir(folder) as entries:
        return {e.name for e in entries}


def _listed(split: SplitCheck, images: list[Path], root: Path) -> list[Path]:
    """Record the listed images and the missing ones; return those on disk."""
    split.listed = len(images)
    on_disk: dict[Path, set[str]] = {}
    present = []
    for path in images:
        if path.parent not in on_disk:
            on_disk[path.parent] = _files_in(path.parent) if path.parent.is_dir() else set()
        if path.name in on_disk[path.parent]:
            present.append(path)
        else:
            split.missing.append(_relative(path, root))
    return present


def _absent(split: SplitCheck, names: list[str], seen: Iterable[str]) -> None:
    split.classes = len(names)
    found = set(seen)
    split.absent_classes = [n for n in names if n not in found]


# ---- the layouts ----------------------------------------------------------------------------------

ImagesOf = dict[str, list[Path]]  # split -> listed images present on disk, for the deep pass


def _voc(manifest: DatasetManifest, root: Path, report: CheckReport) -> ImagesOf:
    from .voc import read_objects

    base = next((b for b in (root / "VOCdevkit" / "VOC2007", root / "VOC2007", root) if (b / "Annotations").is_dir()),
                None)
    if base is None:
        report.layout.append("VOCdevkit/VOC2007/Annotations: missing (is this the folder holding VOCdevkit?)")
        return {}
    if not (base / "JPEGImages").is_dir():
        report.layout.append(f"{_relative(base / 'JPEGImages', root)}: missing")
    images_of = {}
    annotations = _files_in(base / "Annotations")
    for name, expected in manifest.splits.items():
        split = SplitCheck(name, expected)
        report.splits.append(split)
        list_file = base / "ImageSets" / "Main" / f"{name}.txt"
        if not list_file.is_file():
            split.bad_annotations.append(f"{_relative(list_file, root)}: missing")
            continue
        ids = list_file.read_text().split()
        seen: set[str] = set()
        for image_id in ids:
            xml = base / "Annotations" / f"{image_id}.xml"
            if xml.name not in annotations:
                split.bad_annotations.append(f"{_relative(xml, root)}: missing")
                continue
            try:
                seen.update(cls for cls, _ in read_objects(xml))
            except DataError as err:
                split.bad_annotations.append(f"{_relative(xml, root)}: {_reason(err, xml, manifest.dataset)}")
        images_of[name] = _listed(split, [base / "JPEGImages" / f"{i}{manifest.image_suffix}" for i in ids], root)
        _absent(split, class_names(manifest.dataset), seen)
    return images_of


def _coco(manifest: DatasetManifest, root: Path, report: CheckReport) -> ImagesOf:
    from .coco import folder_files, read_instances

    images_of = {}
    for name, expected in manifest.splits.items():
        split = SplitCheck(name, expected)
        report.splits.append(split)
        ann, folder = folder_files(root, name)
        if not folder.is_dir():
            report.layout.append(f"{name}/: missing")
        if not ann.is_file():
            split.bad_annotations.append(f"{_relative(ann, root)}: missing")
            continue
        try:
            coco = read_instances(ann, manifest.dataset)
        except DataError as err:
            split.bad_annotations.append(f"{_relative(ann, root)}: {_reason(err, ann, manifest.dataset)}")
            continue
        names = [c["name"] for _, c in sorted(coco.cats.items())]
        if len(names) != len(class_names(manifest.dataset)):
            split.bad_annotations.append(f"{_relative(ann, root)}: {len(names)} categories, "
                                         f"{len(class_names(manifest.dataset))} expected")
        images_of[name] = _listed(split, [folder / img["file_name"] for img in coco.imgs.values()], root)
        _absent(split, names, (coco.cats[a["category_id"]]["name"] for a in coco.anns.values()
                               if a.get("category_id") in coco.cats))
    return images_of


def _nuswide(manifest: DatasetManifest, root: Path, report: CheckReport) -> ImagesOf:
    from .nuswide import nuswide_files, read_labels

    if not (root / "images").is_dir():
        report.layout.append("images/: missing")
    images_of = {}
    names = class_names(manifest.dataset)
    for name, expected in manifest.splits.items():
        split = SplitCheck(name, expected)
        report.splits.append(split)
        list_file, label_file = nuswide_files(root, name)  # type: ignore[arg-type]  # the manifest's split names
        missing = [f for f in (list_file, label_file) if not f.is_file()]
        if missing:
            split.bad_annotations += [f"{_relative(f, root)}: missing" for f in missing]
            continue
        rel_paths = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        try:
            labels = read_labels(label_file, len(rel_paths))
        except DataError as err:
            split.bad_annotations.append(f"{_relative(label_file, root)}: {_reason(err, label_file, manifest.dataset)}")
            continue
        images_of[name] = _listed(split, [root / "images" / p for p in rel_paths], root)
        _absent(split, names, (n for n, present in zip(names, (labels == 1).any(axis=0)) if present))
    return images_of


def _reason(err: DataError, path: Path, dataset: str) -> str:
    """The loader's message without what the line already says (dataset, file) or the layout hint."""
    text = str(err).split("; expected layout")[0].removeprefix(f"{dataset}: ")
    return text.replace(f" {path}", "", 1)


# ---- decoding -------------------------------------------------------------------------------------

def decode_error(path: Path) -> str | None:
    """None if the image decodes as training reads it (PIL, RGB), else the decoder's message."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL: unreadable, truncated,
        # not an image, or more pixels than its limit (the message says how many and the limit)
        return str(err) or type(err).__name__
    return None


def _decode_all(report: CheckReport, root: Path, images_of: ImagesOf, progress: Progress | None) -> None:
    """Decode every present image of every split (threads: PIL decodes without the GIL)."""
    total = sum(map(len, images_of.values()))
    done = 0
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for split in report.splits:
            split.unreadable = []
            for path, error in zip(images_of.get(split.split, []), pool.map(decode_error,
                                                                            images_of.get(split.split, []))):
                done += 1
                if error is not None:
                    split.unreadable.append(f"{_relative(path, root)} ({error})")
                if progress and (done % 256 == 0 or done == total):
                    progress("decode images", done, total, "img")


def require_complete(dataset: str, root: Path | None) -> bool:
    """A sweep's pre-flight: DataError naming the dataset, the root and what is missing unless the root of
    a dataset with a manifest is complete (fast: no decoding, but every listed image looked up). Other
    datasets (generated, plugins'), and an unset root (the loader's own error names the layout), pass
    through. True when the root was checked."""
    from .manifest import MANIFESTS, fetchable

    if dataset not in MANIFESTS or root is None:
        return False
    report = check_dataset(MANIFESTS[dataset], root)
    if not report.complete:
        fix = f"`ablate data fetch {dataset} --root {root}` (or `data: {{{dataset}: {{fetch: true}}}}` in the spec)" \
            if dataset in fetchable() else "the README's 'Data sets' section says how to assemble it"
        raise DataError(f"{report.summary()}; `ablate data check {dataset} --root {root}` lists every problem; "
                        f"to complete it: {fix}")
    return True
