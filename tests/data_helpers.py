"""Small VOC-2007 and COCO-2014 archives with the official names and inner layouts, their manifests, and
an HTTP server on 127.0.0.1 that serves them with Range support, counts what it sends, and can drop a
connection part-way or hold every GET until a test lets it go: what `ablate data fetch` meets on the
internet, without the internet."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import tarfile
import threading
import time
import zipfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

from ablate.data.classnames import COCO2014, VOC2007
from ablate.data.manifest import COCO2014 as COCO_MANIFEST
from ablate.data.manifest import VOC2007 as VOC_MANIFEST
from ablate.data.manifest import DatasetManifest

VOC_SPLITS = {"trainval": 8, "test": 6}
COCO_SPLITS = {"train2014": 6, "val2014": 4}
# COCO's 80 category ids: 1..90 without the ten it never used
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def jpeg(index: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), ((index * 40) % 256, (index * 90) % 256, 128)).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _voc_xml(classes: list[str]) -> bytes:
    objects = "".join(f"<object><name>{c}</name><difficult>0</difficult></object>" for c in classes)
    return f"<annotation><folder>VOC2007</folder>{objects}</annotation>".encode()


def build_voc(folder: Path, splits: dict[str, int] = VOC_SPLITS) -> None:
    """VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar: VOCdevkit/VOC2007/... with every class in
    each split (class i of the 20 on image i mod n, and a second one for variety)."""
    folder.mkdir(parents=True, exist_ok=True)
    start = 1
    for split, n in splits.items():
        ids = [f"{i:06d}" for i in range(start, start + n)]
        start += n
        name = "VOCtrainval_06-Nov-2007.tar" if split == "trainval" else "VOCtest_06-Nov-2007.tar"
        with tarfile.open(folder / name, "w") as tar:
            base = "VOCdevkit/VOC2007"
            _add(tar, f"{base}/ImageSets/Main/{split}.txt", "".join(f"{i}\n" for i in ids).encode())
            for k, image_id in enumerate(ids):
                classes = [VOC2007[c] for c in range(len(VOC2007)) if c % n == k] + [VOC2007[k % len(VOC2007)]]
                _add(tar, f"{base}/Annotations/{image_id}.xml", _voc_xml(classes))
                _add(tar, f"{base}/JPEGImages/{image_id}.jpg", jpeg(int(image_id)))


def build_coco(folder: Path, splits: dict[str, int] = COCO_SPLITS) -> None:
    """train2014.zip, val2014.zip and annotations_trainval2014.zip, every category in each split."""
    folder.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i, "name": name, "supercategory": "thing"} for i, name in zip(COCO_IDS, COCO2014)]
    with zipfile.ZipFile(folder / "annotations_trainval2014.zip", "w") as ann_zip:
        image_id = ann_id = 0
        for split, n in splits.items():
            images, annotations = [], []
            with zipfile.ZipFile(folder / f"{split}.zip", "w") as zf:
                for k in range(n):
                    image_id += 1
                    file_name = f"COCO_{split}_{image_id:012d}.jpg"
                    zf.writestr(f"{split}/{file_name}", jpeg(image_id))
                    images.append({"id": image_id, "file_name": file_name, "width": 24, "height": 24})
                    for cat in COCO_IDS[k::n]:
                        ann_id += 1
                        annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat,
                                            "iscrowd": 0, "bbox": [0, 0, 4, 4], "area": 16})
            doc = {"images": images, "annotations": annotations, "categories": categories}
            ann_zip.writestr(f"annotations/instances_{split}.json", json.dumps(doc))
            ann_zip.writestr(f"annotations/captions_{split}.json", json.dumps({"images": images}))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def voc_manifest(folder: Path) -> DatasetManifest:
    """The official VOC-2007 manifest with this folder's archives' counts and MD5s (the published ones
    belong to the real archives)."""
    small = VOC_MANIFEST.with_counts(**VOC_SPLITS)
    archives = tuple(dataclasses.replace(a, md5=md5(folder / a.filename)) for a in small.archives)
    return dataclasses.replace(small, archives=archives, default_root=None)


def coco_manifest() -> DatasetManifest:
    return dataclasses.replace(COCO_MANIFEST.with_counts(**COCO_SPLITS), default_root=None)


class ArchiveServer:
    """Serves `folder` on 127.0.0.1 (HEAD, GET, `Range: bytes=N-`). Records every request and the bytes
    sent per file; `drop_after[name] = n` ends the next GET of that file after n bytes (Content-Length
    promised the whole), `delay` sleeps between chunks (to make two clients overlap)."""

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        self.folder = folder
        self.delay = delay
        self.sent: dict[str, int] = defaultdict(int)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, file, Range header)
        self.drop_after: dict[str, int] = {}
        self.gate: threading.Event | None = None  # when set by a test: every GET waits for it
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, name: str) -> list[str | None]:
        """The Range header of every GET of `name`, in order."""
        return [r for m, f, r in self.requests if m == "GET" and f == name]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _start(self, send_body: bool) -> None:
                name = self.path.lstrip("/").split("?")[0]
                path = server.folder / name
                with server.lock:
                    server.requests.append((self.command, name, self.headers.get("Range")))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if (ranged := self.headers.get("Range", "")).startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if send_body:
                    self._body(name, data[start:])

            def _body(self, name: str, body: bytes) -> None:
                if server.gate is not None:
                    server.gate.wait(timeout=60)
                with server.lock:
                    limit = server.drop_after.pop(name, None)
                if limit is not None:
                    body = body[:limit]
                    self.close_connection = True  # ends the connection short of Content-Length
                for i in range(0, len(body), 16384):
                    self.wfile.write(body[i:i + 16384])
                    with server.lock:
                        server.sent[name] += len(body[i:i + 16384])
                    if server.delay:
                        time.sleep(server.delay)

            def do_HEAD(self) -> None:
                self._start(send_body=False)

            def do_GET(self) -> None:
                self._start(send_body=True)

        return Handler
