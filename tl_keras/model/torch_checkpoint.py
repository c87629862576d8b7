"""Reads a legacy (non-zip) PyTorch checkpoint into NumPy arrays, without PyTorch.

`torch.save` before PyTorch 1.6 wrote five pickles in a row: a magic number, the protocol version,
system information, the object itself (a `state_dict`: an ordered dict of name -> tensor, where
each tensor names its storage through a pickle "persistent id"), and the list of storage keys;
then, for each key in that order, the storage's element count (int64, little-endian) and its
raw bytes. A tensor is a strided view into its storage (`torch._utils._rebuild_tensor_v2`), and
not always a contiguous one: a checkpoint converted from TensorFlow often keeps TensorFlow's
memory order under PyTorch's shape, so each array is rebuilt with its strides.

Only the classes a state dict needs are allowed when unpickling (`find_class`), so a file cannot
run code: any other global is an error, not an import.
"""

from __future__ import annotations

import collections
import pickle
from typing import BinaryIO

import numpy as np

from tl_keras.errors import BackboneError

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _TensorRef:
    """A tensor named while unpickling, made an array once the storages are read."""

    def __init__(self, storage, offset, size, stride, *_):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def array(self, data: dict[str, np.ndarray]) -> np.ndarray:
        flat = data[self.storage]
        if not self.size:
            return flat[self.offset].copy()
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], self.size, [s * item for s in self.stride], writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO):
        super().__init__(f)
        self.storages: dict[str, str] = {}  # key -> storage type

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _TensorRef
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"a state dict does not hold {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _size, view = pid
        if kind != "storage" or view is not None:
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r}")
        self.storages[str(key)] = storage_type
        return str(key)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Returns the arrays of a legacy `torch.save` state dict, by name, in the file's order.

    Raises:
      BackboneError: the file is not a legacy PyTorch state dict (a zip-format file from
        PyTorch >= 1.6 included), or it is truncated.
    """
    try:
        with open(path, "rb") as f:
            if pickle.load(f) != _MAGIC:
                raise pickle.UnpicklingError("no legacy PyTorch magic number")
            pickle.load(f)  # protocol version
            pickle.load(f)  # system information (endianness, type sizes)
            unpickler = _Unpickler(f)
            state = unpickler.load()
            keys = pickle.load(f)
            data = {}
            for key in keys:
                dtype = np.dtype(_STORAGE_DTYPES[unpickler.storages[key]])
                count = int(np.frombuffer(f.read(8), "<i8")[0])
                raw = f.read(count * dtype.itemsize)
                if len(raw) != count * dtype.itemsize:
                    raise EOFError(f"storage {key} is cut short")
                data[key] = np.frombuffer(raw, dtype.newbyteorder("<"))
    except (OSError, EOFError, ValueError, IndexError, KeyError, pickle.UnpicklingError) as e:
        raise BackboneError(
            f"{path!r} is not a legacy PyTorch state dict that tl_keras can read ({e}); "
            "reinstall the package that holds it"
        ) from None
    return {name: ref.array(data) for name, ref in state.items()}
