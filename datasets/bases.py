"""Dataset base classes: split folders -> item lists, per-view training subsets, declared protocols."""
from __future__ import annotations

import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from utils.errors import UserError
from utils.vocabulary import ALL_PROTOCOLS, GROUND, MSSL_REMOVAL, SKY, VIEW_IDS, VIEW_NAMES  # noqa: F401

from .protocols import Item, Protocol

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
TRAIN_VIEW_FOLDERS = {GROUND: 'bounding_box_train_ground', SKY: 'bounding_box_train_air'}

logger = logging.getLogger(__name__)


def list_image_files(folder: str) -> list[str]:
    """Sorted paths of the image files directly inside `folder` (hidden files and subfolders ignored)."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries
                 if e.is_file() and not e.name.startswith('.') and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(folder, name) for name in sorted(names)]


def list_nested_image_files(folder: str) -> list[str]:
    """Sorted paths of the image files one level below `folder` (one subfolder per identity or camera),
    as the AG-ReID.v2, CARGO, G2APS-ReID and LAGPeR downloads store them."""
    with os.scandir(folder) as entries:
        subfolders = sorted(e.path for e in entries if e.is_dir() and not e.name.startswith('.'))
    return [path for subfolder in subfolders for path in list_image_files(subfolder)]


def check_root(root: str) -> str:
    if not os.path.isdir(root):
        raise UserError(f"DATASETS.ROOT_DIR '{root}' does not exist")
    return root


def locate_dataset_folder(root: str, folders: tuple[str, ...], markers: tuple[str, ...],
                          dataset: str) -> tuple[str, str]:
    """(dataset folder, marker): the first of `folders` under `root` ('' = `root` itself) that holds
    one of the `markers` (a split folder), tried in order. CLIP-ReID's readers take the folder that
    holds the dataset's own folder (`root/dukemtmcreid/DukeMTMC-reID`); pointing DATASETS.ROOT_DIR at
    the dataset's own folder works too."""
    for folder in folders:
        for marker in markers:
            if os.path.isdir(os.path.join(root, folder, marker)):
                return os.path.join(root, folder) if folder else root, marker
    expected = ' or '.join(os.path.join(root, folder, markers[0]) for folder in folders)
    raise UserError(f"DATASETS.ROOT_DIR '{root}' holds no {dataset} dataset: expected {expected}")


def parse_pid_camera(filename: str, pattern: re.Pattern, dataset: str, example: str,
                     num_cameras: int | None = None) -> tuple[int, int]:
    """(pid, 0-based camid) of a file name `<pid>_c<camera>...` that `pattern` (groups: pid, camera)
    matches from its start; pid -1 marks junk. Cameras count from c1, up to `num_cameras` when given."""
    name = os.path.basename(filename)
    match = pattern.match(name)
    if match is None:
        raise UserError(f"{dataset} file name '{name}' does not look like {example}")
    camera = int(match.group(2))
    if camera < 1 or (num_cameras is not None and camera > num_cameras):
        known = f"c1-c{num_cameras}" if num_cameras is not None else 'from c1'
        raise UserError(f"{dataset} file name '{name}' has the unknown camera c{camera} (known: {known})")
    return int(match.group(1)), camera - 1


def read_labelled_list(list_path: str, dataset: str) -> list[tuple[str, int]]:
    """(image name, identity) of each line `<name> <identity>` of a dataset's list file (MSMT17,
    VehicleID); blank lines are skipped, anything else stops with the file and line."""
    if not os.path.isfile(list_path):
        raise UserError(f"list file '{list_path}' does not exist ({dataset} needs it)")
    entries = []
    with open(list_path, encoding='utf-8') as handle:
        for number, line in enumerate(handle.read().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip('-').isdigit():
                raise UserError(f"{list_path} line {number}: expected '<image> <identity number>', "
                                f"got {line.strip()!r}")
            entries.append((fields[0], int(fields[1])))
    if not entries:
        raise UserError(f"list file '{list_path}' names no images")
    return entries


@dataclass(frozen=True)
class DatasetOptions:
    """The config values a dataset may need besides its folder (processor/test_sets.dataset_options)."""
    vehicleid_test_size: int = 800   # DATASETS.VEHICLEID_TEST_SIZE
    vehicleid_trials: int = 10       # TEST.VEHICLEID_TRIALS
    seed: int = 0                    # SOLVER.SEED: VehicleID's gallery draws


class ReIDDataset:
    """A re-ID dataset: `train`, `query`, `gallery` item lists plus the evaluation protocols it declares.

    Subclasses implement `parse_name` and call `_read_split` / `_finish` from their constructor.
    Train pids are relabelled to 0..N-1 in sorted order of the original pid; query/gallery keep theirs.
    """

    name: str = 'reid'
    # Every protocol name the dataset can declare (config validation checks TEST.EVAL_MODE against it);
    # None when the dataset's files decide (csv).
    protocol_names: tuple[str, ...] | None = None
    num_train_views: int = 2
    # Its view ids are the vocabulary's GROUND / SKY, so the sky and ground text views apply. False for
    # datasets whose views are something else (VeRi-776's viewpoints) or a single unnamed view.
    sky_ground_views: bool = True
    # The text prompt of its identities when MODEL.PROMPT_TEMPLATE is empty (vehicles: "vehicle").
    prompt_template: str = 'A photo of a X X X X person.'

    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    train_by_view: dict[int, list[Item]]
    num_train_pids: int
    num_train_cams: int

    @staticmethod
    def parse_name(filename: str) -> tuple[Hashable, int, int]:
        """(raw pid, camid, viewid) from a file name; raw pid -1 marks a junk image."""
        raise NotImplementedError

    # Datasets whose file names say when an image was taken (MSSL): file name -> hour 0-23, or -1.
    capture_hour: Callable[[str], int] | None = None

    @staticmethod
    def camera_name(camid: int) -> str:
        """The camera's name as the dataset's files write it (for pictures, tables and checkpoints)."""
        return f'cam{camid}'

    @staticmethod
    def view_name(viewid: int) -> str:
        """The view's name in pictures and tables."""
        return VIEW_NAMES.get(viewid, f'view{viewid}')

    def __init__(self, root: str):
        self.root = check_root(root)
        self.protocols: dict[str, Protocol] = {}
        # Named groups of protocols reported as the mean and sample standard deviation of their members.
        self.summaries: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_options(cls, root: str, options: DatasetOptions) -> 'ReIDDataset':
        """The dataset at `root`; the datasets that take config values besides the folder override this."""
        return cls(root)

    @property
    def view_names(self) -> dict[int, str]:
        """{view id: name} of the views its items carry (statistics)."""
        return {view: VIEW_NAMES[view] for view in range(self.num_train_views)}

    @property
    def supported_modes(self) -> tuple[str, ...]:
        """The names of the protocols this dataset declares, in declaration order."""
        return tuple(self.protocols)

    def _read_split(self, folder: str, required: bool = True,
                    parse: Callable[[str], tuple[Hashable, int, int]] | None = None,
                    nested: bool = False) -> list | None:
        """Items of one split folder with raw pids, junk skipped; None when optional and absent.
        `nested`: the images sit in subfolders of the split folder, not directly in it."""
        path = os.path.join(self.root, folder)
        if not os.path.isdir(path):
            if required:
                raise UserError(f"dataset folder '{path}' does not exist ({self.name} needs it under DATASETS.ROOT_DIR)")
            return None
        parse = parse or self.parse_name
        items = []
        for img_path in (list_nested_image_files(path) if nested else list_image_files(path)):
            pid, camid, viewid = parse(os.path.basename(img_path))
            if pid == -1:
                continue
            items.append((img_path, pid, camid, viewid))
        if not items:
            raise UserError(f"dataset folder '{path}' contains no usable images")
        return items

    def _finish(self, train_raw: list, query: list[Item], gallery: list[Item],
                protocols: dict[str, Protocol | tuple[list[Item], list[Item]]]) -> None:
        """Relabel train, build train_by_view, declare the protocols and set the counts.

        A protocol given as a (query, gallery) pair takes its MSSL namesake's removal rule."""
        pid2label = {pid: label for label, pid in enumerate(sorted({item[1] for item in train_raw}))}
        self.train = [(path, pid2label[pid], camid, viewid) for path, pid, camid, viewid in train_raw]
        self.query = query
        self.gallery = gallery
        self.train_by_view = self._build_train_by_view(pid2label)
        self.num_train_pids = len(pid2label)
        all_items = self.train + self.query + self.gallery
        self.num_train_cams = max(item[2] for item in all_items) + 1
        self.protocols = {name: protocol if isinstance(protocol, Protocol)
                          else Protocol(*protocol, removal=MSSL_REMOVAL[name])
                          for name, protocol in protocols.items()}

    def _build_train_by_view(self, pid2label: dict) -> dict[int, list[Item]]:
        by_view = {}
        for view, folder in TRAIN_VIEW_FOLDERS.items():
            raw = self._read_split(folder, required=False)
            if raw is None:
                by_view[view] = [item for item in self.train if item[3] == view]
                continue
            items = []
            for path, pid, camid, _ in raw:
                if pid not in pid2label:
                    raise UserError(f"'{path}' in {folder} has identity {pid}, which is not in bounding_box_train")
                # The folder, not the camera, says which view these images stand for.
                items.append((path, pid2label[pid], camid, view))
            by_view[view] = items
        return by_view

    def image_paths(self) -> list[str]:
        """Every image path the dataset uses (training, per-view training, query, gallery, eval splits), once."""
        groups = [self.train, self.query, self.gallery, *self.train_by_view.values()]
        groups += [items for protocol in self.protocols.values() for items in (protocol.query, protocol.gallery)]
        return list(dict.fromkeys(item[0] for items in groups for item in items))

    def drop_images(self, paths: set[str]) -> None:
        """Remove the items of `paths` from every list, so loaders never meet them and features stay
        aligned with labels. Identity labels (and num_train_pids) are kept as they are."""
        def keep(items: list[Item]) -> list[Item]:
            return [item for item in items if item[0] not in paths]

        self.train, self.query, self.gallery = keep(self.train), keep(self.query), keep(self.gallery)
        self.train_by_view = {view: keep(items) for view, items in self.train_by_view.items()}
        self.protocols = {name: Protocol(keep(p.query), keep(p.gallery), p.removal)
                          for name, p in self.protocols.items()}

    def protocol(self, name: str) -> Protocol:
        """The declared protocol `name`; an unknown name is one error listing the declared ones."""
        if name not in self.protocols:
            raise UserError(f"TEST.EVAL_MODE '{name}' is not a protocol of dataset '{self.name}'; "
                            f"choose one of {', '.join(self.protocols)} or {ALL_PROTOCOLS}")
        return self.protocols[name]

    def eval_split(self, mode: str) -> tuple[list[Item], list[Item]]:
        """(query items, gallery items) of the declared protocol `mode`."""
        protocol = self.protocol(mode)
        if not protocol.query or not protocol.gallery:
            which = 'query' if not protocol.query else 'gallery'
            raise UserError(f"dataset '{self.name}' has no {which} images for protocol {mode}")
        return list(protocol.query), list(protocol.gallery)

    def removal_rule(self, mode: str) -> str:
        """Which gallery images protocol `mode` removes for a query (utils/vocabulary.py)."""
        return self.protocol(mode).removal

    def statistics_table(self) -> str:
        """Per split (and per view within it): #ids, #images, #cameras, as a multi-line string."""
        rows = []
        for split, items in (('train', self.train), ('query', self.query), ('gallery', self.gallery)):
            rows.append((split, items))
            if len(self.view_names) > 1:
                for view, view_name in self.view_names.items():
                    rows.append((f'  {view_name}', [item for item in items if item[3] == view]))
        width = max(10, *(len(label) + 1 for label, _ in rows))
        header = f"{'subset':<{width}}| {'# ids':>6} | {'# images':>9} | {'# cameras':>9}"
        rule = '-' * len(header)
        lines = [f"Dataset statistics ({self.name}):", rule, header, rule]
        for label, items in rows:
            num_ids = len({item[1] for item in items})
            num_cams = len({item[2] for item in items})
            lines.append(f"{label:<{width}}| {num_ids:>6} | {len(items):>9} | {num_cams:>9}")
        lines.append(rule)
        return '\n'.join(lines)


def read_image(path: str) -> Image.Image:
    """The image as 8-bit RGB, or a UserError naming the file and why it cannot be read.

    Whatever the file holds becomes 8-bit RGB: greyscale and palette images are expanded, the alpha of
    RGBA / LA / PA is dropped and CMYK is converted (all as PIL's convert('RGB'), which the published
    code uses); 16-bit greyscale (PNG, TIFF) is scaled from its full 0-65535 range, where PIL alone
    would clip it to white; 16-bit colour PNGs keep their high byte (PIL's own reading). The EXIF
    orientation is NOT applied: the stored pixels are used, as by the published code, which re-ID crops
    (written without EXIF by detectors and dataset tools) are made for. A JPEG cut off part-way loads
    with its missing part grey, as in the published code (PIL's LOAD_TRUNCATED_IMAGES); a file with
    nothing decodable, a floating-point image or a mode PIL cannot turn into RGB is refused.
    """
    try:
        try:
            return _decode_rgb8(path)
        except OSError as err:
            if 'truncated' not in str(err):
                raise
        with _truncated_images_allowed():
            image = _decode_rgb8(path)
        logger.warning("'%s' is cut off part-way; its decodable part is used, the rest is grey", path)
        return image
    except UserError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # PIL reports damaged files through many exception types
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot read image '{path}': {reason}") from err


_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')
_truncation_switch = threading.Lock()


@contextmanager
def _truncated_images_allowed():
    # PIL has only a module-wide switch; it is on for as short a time as one image's decoding.
    with _truncation_switch:
        before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def _decode_rgb8(path: str) -> Image.Image:
    with Image.open(path) as img:
        if img.mode == 'F':
            raise UserError(f"cannot read image '{path}': it holds 32-bit floating-point pixels, which have no "
                            f"standard brightness range; save it as an 8-bit image")
        if img.mode in _SIXTEEN_BIT_MODES or img.mode == 'I':
            values = np.asarray(img).astype(np.int64)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise UserError(f"cannot read image '{path}': it holds 32-bit integer pixels outside the 16-bit "
                                f"range; save it as an 8-bit image")
            eight_bit = ((values * 255 + 32767) // 65535).astype(np.uint8)
            return Image.fromarray(eight_bit, mode='L').convert('RGB')
        return img.convert('RGB')


class ImageDataset(Dataset):
    """Items -> (img_tensor, pid, camid, viewid, path).

    With skip_bad_images, an unreadable image is replaced by the next readable item and its path is
    recorded in `bad_paths` (per process: DataLoader workers keep their own copies).
    """

    def __init__(self, items: list[Item], transform: Callable | None = None, skip_bad_images: bool = False):
        self.items = list(items)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.bad_paths: set[str] = set()

    @property
    def num_bad_images(self) -> int:
        return len(self.bad_paths)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        for offset in range(len(self.items)):
            path, pid, camid, viewid = self.items[(index + offset) % len(self.items)]
            try:
                img = read_image(path)
            except UserError as err:
                if not self.skip_bad_images:
                    raise
                if path not in self.bad_paths:
                    self.bad_paths.add(path)
                    logger.warning("skipping a bad image: %s", err)
                continue
            img = self.transform(img) if self.transform is not None else to_tensor(img)
            return img, pid, camid, viewid, path
        raise UserError(f"none of the {len(self.items)} images of this dataset can be read")
