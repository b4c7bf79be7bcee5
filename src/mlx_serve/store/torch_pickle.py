"""Reading a PyTorch state dict of plain tensors (`torch.save(linear.state_dict())`, as BGE-M3 ships its
`sparse_linear.pt` and `colbert_linear.pt`) without PyTorch and without running a pickle's code.

A .pt file is a zip: `*/data.pkl` (a pickle naming each tensor's storage, offset, shape and strides) and
`*/data/<key>` (each storage's raw little-endian bytes). A pickle can name any callable, so the unpickler
here resolves only the four names a state dict of tensors uses; anything else is refused, never called.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# torch's storage classes, by the name the pickle gives them. bfloat16 has no numpy type: its bits are
# the top half of a float32's.
STORAGES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "DoubleStorage": np.dtype("<f8"),
}
MAX_BYTES = 1 << 30  # a head is a Linear layer: megabytes, never a gigabyte


class NotTensors(ValueError):
    """The file is not a state dict of plain float tensors (or is damaged): the message says what."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _Storage:
    name: str
    key: str


def load(path: Path) -> dict[str, np.ndarray]:
    """The file's tensors as float32 arrays, by name."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise NotTensors(f"{path.name} is not a PyTorch zip file (no data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            blobs: dict[str, bytes] = {}

            def storage(s: _Storage) -> bytes:
                if s.key not in blobs:
                    info = archive.getinfo(f"{prefix}data/{s.key}")
                    if info.file_size > MAX_BYTES:
                        raise NotTensors(f"{path.name}: a tensor of {info.file_size} bytes is not a head's")
                    blobs[s.key] = archive.read(info)
                return blobs[s.key]

            raw = _Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
            if not isinstance(raw, dict):
                raise NotTensors(f"{path.name} does not hold a dict of tensors")
            return {str(k): _array(v, storage, path.name) for k, v in raw.items()}
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, TypeError, ValueError) as exc:
        if isinstance(exc, NotTensors):
            raise
        raise NotTensors(f"{path.name} is not a readable PyTorch state dict: {exc}") from None


def _array(value: Any, storage: Any, name: str) -> np.ndarray:
    if not isinstance(value, tuple) or len(value) != 4 or not isinstance(value[0], _Storage):
        raise NotTensors(f"{name} holds something other than tensors")
    source, offset, shape, strides = value
    dtype = STORAGES[source.name]
    data = storage(source)
    try:
        view = np.ndarray(
            shape=tuple(shape),
            dtype=dtype,
            buffer=data,
            offset=int(offset) * dtype.itemsize,
            strides=tuple(int(s) * dtype.itemsize for s in strides),
        )
    except (TypeError, ValueError) as exc:  # shape and strides reach past the storage's bytes
        raise NotTensors(f"{name}: a tensor does not fit its storage ({exc})") from None
    if source.name == "BFloat16Storage":
        return (view.astype(np.uint32) << 16).view(np.float32).copy()
    return np.array(view, dtype=np.float32)


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, strides: Any, *_: Any) -> tuple:
    # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
    return (storage, offset, tuple(shape), tuple(strides))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict of float tensors; not loaded")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, element count)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"an unexpected persistent id {pid!r}")
        return _Storage(pid[1].name, str(pid[2]))
