"""EPIC-KITCHENS-100 hand-object detections (Shan et al. 2020), as EPIC publishes them.

``P01/hand-objects/P01_01.pkl`` is a pickled list with one serialized ``Detections`` protobuf message per
frame (coordinates in [0, 1]). The messages are decoded here with a small wire-format codec, so no protobuf
package is needed. The same content can be given as JSONL, one frame per line (see ``FrameDetections.to_dict``).

    message BBox { float left = 1; float top = 2; float right = 3; float bottom = 4; }
    message FloatVector { float x = 1; float y = 2; }
    message HandDetection { BBox bbox = 1; float score = 2; HandState state = 3;
                            FloatVector object_offset = 4; HandSide side = 5; }
    message ObjectDetection { BBox bbox = 1; float score = 2; }
    message Detections { string video_id = 1; int32 frame_number = 2;
                         repeated HandDetection hands = 3; repeated ObjectDetection objects = 4; }
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from leap_cli.errors import LeapError
from leap_cli.io import atomic_write_bytes, atomic_write_text


class HandSide(IntEnum):
    LEFT = 0
    RIGHT = 1


class HandState(IntEnum):
    NO_CONTACT = 0
    SELF_CONTACT = 1
    ANOTHER_PERSON = 2
    PORTABLE_OBJECT = 3
    STATIONARY_OBJECT = 4


@dataclass
class BBox:
    left: float
    top: float
    right: float
    bottom: float

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2, (self.top + self.bottom) / 2)

    def iou(self, other: "BBox") -> float:
        ix = max(0.0, min(self.right, other.right) - max(self.left, other.left))
        iy = max(0.0, min(self.bottom, other.bottom) - max(self.top, other.top))
        inter = ix * iy
        area = lambda b: max(0.0, b.right - b.left) * max(0.0, b.bottom - b.top)  # noqa: E731
        union = area(self) + area(other) - inter
        return inter / union if union > 0 else 0.0


@dataclass
class HandDetection:
    bbox: BBox
    score: float
    state: HandState
    object_offset: tuple[float, float]
    side: HandSide


@dataclass
class ObjectDetection:
    bbox: BBox
    score: float


@dataclass
class FrameDetections:
    video_id: str
    frame_number: int  # 1-based
    hands: list[HandDetection] = field(default_factory=list)
    objects: list[ObjectDetection] = field(default_factory=list)

    def to_dict(self) -> dict:
        box = lambda b: {"left": b.left, "top": b.top, "right": b.right, "bottom": b.bottom}  # noqa: E731
        return {"video_id": self.video_id, "frame_number": self.frame_number,
                "hands": [{"bbox": box(h.bbox), "score": h.score, "state": h.state.name,
                           "object_offset": {"x": h.object_offset[0], "y": h.object_offset[1]},
                           "side": h.side.name} for h in self.hands],
                "objects": [{"bbox": box(o.bbox), "score": o.score} for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameDetections":
        """The JSONL form (``to_dict``); ``state`` and ``side`` by name (``PORTABLE_OBJECT``, ``RIGHT``) or by
        the number EPIC's protobuf and its Python library use (3, 1)."""
        box = lambda b: BBox(float(b["left"]), float(b["top"]), float(b["right"]), float(b["bottom"]))  # noqa: E731
        return cls(str(d["video_id"]), frame_number_of(d["frame_number"]),
                   [HandDetection(box(h["bbox"]), float(h["score"]), _enum(HandState, h["state"], "state"),
                                  (float(h["object_offset"]["x"]), float(h["object_offset"]["y"])),
                                  _enum(HandSide, h["side"], "side")) for h in d.get("hands", [])],
                   [ObjectDetection(box(o["bbox"]), float(o["score"])) for o in d.get("objects", [])])

    # --- protobuf wire format -------------------------------------------------------------------
    def to_protobuf(self) -> bytes:
        out = bytearray()
        _put_bytes(out, 1, self.video_id.encode())
        _put_varint_field(out, 2, self.frame_number)
        for h in self.hands:
            m = bytearray()
            _put_bytes(m, 1, _bbox_bytes(h.bbox))
            _put_float(m, 2, h.score)
            _put_varint_field(m, 3, int(h.state))
            v = bytearray()
            _put_float(v, 1, h.object_offset[0])
            _put_float(v, 2, h.object_offset[1])
            _put_bytes(m, 4, bytes(v))
            _put_varint_field(m, 5, int(h.side))
            _put_bytes(out, 3, bytes(m))
        for o in self.objects:
            m = bytearray()
            _put_bytes(m, 1, _bbox_bytes(o.bbox))
            _put_float(m, 2, o.score)
            _put_bytes(out, 4, bytes(m))
        return bytes(out)

    @classmethod
    def from_protobuf(cls, data: bytes) -> "FrameDetections":
        f = _fields(data)
        hands, objects = [], []
        for raw in f.get(3, ()):
            h = _fields(raw)
            off = _pair(_one(h, 4, b""))
            state, side = _one(h, 3, 0), _one(h, 5, 0)
            hands.append(HandDetection(_bbox(_one(h, 1, b"")), _float(_one(h, 2, 0)),
                                       _STATES[state] if state < len(_STATES) else HandState(state), off,
                                       _SIDES[side] if side < len(_SIDES) else HandSide(side)))
        for raw in f.get(4, ()):
            o = _fields(raw)
            objects.append(ObjectDetection(_bbox(_one(o, 1, b"")), _float(_one(o, 2, 0))))
        return cls(_one(f, 1, b"").decode(), _signed32(_one(f, 2, 0)), hands, objects)


def frame_number_of(value) -> int:
    """A JSON line's frame number: an integer, its string ("12"), or a float with no fraction (12.0, as pandas
    writes a column with a gap); 12.7 or ``true`` is a ValueError (``int`` read 12.7 as frame 12)."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"frame_number {value!r} is not a whole number")
    return int(value)


def _enum(kind: type[IntEnum], value, key: str) -> IntEnum:
    """A hand's state or side from its name or its number; anything else a ValueError naming the choices."""
    try:
        return kind(value) if isinstance(value, int) and not isinstance(value, bool) else kind[value]
    except (KeyError, ValueError, TypeError):
        choices = ", ".join(f"{m.name} ({m.value})" for m in kind)
        raise ValueError(f"{key} {value!r} is none of {choices}") from None


def _put_varint(out: bytearray, value: int) -> None:
    value &= (1 << 64) - 1
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _put_varint_field(out: bytearray, num: int, value: int) -> None:
    if value:  # proto3 omits default values
        _put_varint(out, num << 3 | 0)
        _put_varint(out, value)


def _put_float(out: bytearray, num: int, value: float) -> None:
    if value:
        _put_varint(out, num << 3 | 5)
        out += struct.pack("<f", value)


def _put_bytes(out: bytearray, num: int, value: bytes) -> None:
    _put_varint(out, num << 3 | 2)
    _put_varint(out, len(value))
    out += value


def _bbox_bytes(b: BBox) -> bytes:
    m = bytearray()
    for i, v in enumerate((b.left, b.top, b.right, b.bottom), start=1):
        _put_float(m, i, v)
    return bytes(m)


def _fields(data: bytes) -> dict[int, list]:
    """Decode one message into {field number: [values]}; fixed32 kept as raw 4 bytes. Keys, lengths and
    varints under 128 (nearly all of EPIC's) take a fast path without ``_varint``'s loop."""
    out: dict[int, list] = {}
    i, n = 0, len(data)
    while i < n:
        key = data[i]
        if key < 0x80:
            i += 1
        else:
            key, i = _varint(data, i)
        wire = key & 7
        if wire == 5:
            if i + 4 > n:
                raise ValueError("truncated fixed32")
            val, i = data[i:i + 4], i + 4
        elif wire == 2:
            length = data[i] if i < n else 0x80
            if length < 0x80:
                i += 1
            else:
                length, i = _varint(data, i)
            if i + length > n:
                raise ValueError("truncated length-delimited field")
            val, i = data[i:i + length], i + length
        elif wire == 0:
            val = data[i] if i < n else 0x80
            if val < 0x80:
                i += 1
            else:
                val, i = _varint(data, i)
        elif wire == 1:
            if i + 8 > n:
                raise ValueError("truncated fixed64")
            val, i = data[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        num = key >> 3
        if num in out:
            out[num].append(val)
        else:
            out[num] = [val]
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _one(f: dict, num: int, default):
    return f[num][-1] if num in f else default


_STATES, _SIDES = tuple(HandState), tuple(HandSide)  # by value (0, 1, ...): an index instead of an enum call
_F32 = struct.Struct("<f")
_BOX = struct.Struct("<xfxfxfxf")  # a BBox with its 4 fields in order: key byte, float, key byte, float...
_PAIR = struct.Struct("<xfxf")  # a FloatVector with x and y


def _float(v) -> float:
    return _F32.unpack(v)[0] if isinstance(v, (bytes, bytearray)) else float(v)


def _signed32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _bbox(data: bytes) -> BBox:
    if len(data) == 20 and data[0] == 0x0D and data[5] == 0x15 and data[10] == 0x1D and data[15] == 0x25:
        return BBox(*_BOX.unpack(data))  # all four fields, in order (what a serializer writes): one unpack
    f = _fields(data)
    return BBox(*(_float(_one(f, i, 0)) for i in (1, 2, 3, 4)))


def _pair(data: bytes) -> tuple[float, float]:
    if len(data) == 10 and data[0] == 0x0D and data[5] == 0x15:
        return _PAIR.unpack(data)
    f = _fields(data)
    return _float(_one(f, 1, 0)), _float(_one(f, 2, 0))


class _ListOfBytesUnpickler(pickle.Unpickler):
    """EPIC's files hold only a list of bytes: refuse any class so a pickle cannot run code."""

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


_EXPECTED = ("EPIC's hand-object format: a .pkl holding a list of serialized Detections protobuf messages, "
             "or .jsonl with one {video_id, frame_number, hands, objects} object per line")


def read_hand_objects(path: str | Path) -> list[FrameDetections]:
    """Read EPIC's ``.pkl`` (list of serialized protobuf messages) or the JSONL equivalent."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    return [_decode(msg, path, i) for i, msg in enumerate(_messages(path))]


def open_hand_objects(path: str | Path, video_id: str | None = None) -> "Mapping[int, FrameDetections]":
    """A video's detections by frame number (the last message of a frame wins), for looking up the frames of
    segments: a ``.pkl``'s messages are decoded when first asked for (``HandObjectFrames``), so a run over some
    segments of a video (or a worker's share of them) decodes only their frames. ``video_id``: the video the
    file is of; a frame of another (a file copied under the wrong name) is a ``LeapError`` when looked up."""
    path = Path(path)
    if path.suffix == ".jsonl":
        frames = _read_jsonl(path)
        for f in frames[:1]:
            _check_video(f, path, video_id)
        return {f.frame_number: f for f in frames}
    return HandObjectFrames(path, _messages(path), video_id)


def _check_video(det: "FrameDetections", path: Path, video_id: str | None) -> None:
    if video_id and det.video_id and det.video_id != video_id:
        raise LeapError(f"holds the detections of video {det.video_id}, not of {video_id}", path=path,
                        record=f"frame {det.frame_number}",
                        fix=f"place {video_id}'s own file there (EPIC's P01_01.pkl holds P01_01's frames)")


class HandObjectFrames(Mapping):
    """{frame number: FrameDetections} over a list of serialized messages: each frame number is read when the
    file is opened (field 2, near each message's start), each message decoded once, on its first lookup; a
    malformed message is a ``LeapError`` naming the file and the message then."""

    def __init__(self, path: Path, messages: list[bytes], video_id: str | None = None):
        self.path, self.video_id = path, video_id
        self._raw: dict[int, int] = {}  # frame number -> index of its (last) message
        for i, msg in enumerate(messages):
            try:
                self._raw[_frame_number(msg)] = i
            except (ValueError, IndexError) as e:
                raise _bad_message(path, i, e) from None
        self._messages = messages
        self._decoded: dict[int, FrameDetections] = {}
        self.keys_sorted = sorted(self._raw)

    def __getitem__(self, frame: int) -> FrameDetections:
        hit = self._decoded.get(frame)
        if hit is None:
            i = self._raw[frame]
            hit = self._decoded[frame] = _decode(self._messages[i], self.path, i, frame)
            _check_video(hit, self.path, self.video_id)
        return hit

    def __contains__(self, frame) -> bool:
        return frame in self._raw

    def __iter__(self):
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _frame_number(msg: bytes) -> int:
    """Field 2 (``frame_number``) of a Detections message without decoding the rest (0 when absent, as proto3
    omits a default; the last where the field is repeated, as decoding takes it: the other fields are skipped by
    their lengths). A message damaged after a frame number is filed under it: its frame's decoding says the damage
    where that frame is read (the rest of the file stays usable); one damaged before any raises here."""
    i, n, number = 0, len(msg), None
    try:
        while i < n:
            key = msg[i]  # (one byte for the fields of EPIC's messages: _varint only for longer ones)
            key, i = (key, i + 1) if key < 0x80 else _varint(msg, i)
            wire = key & 7
            if wire == 0:
                val, i = _varint(msg, i)
                if key >> 3 == 2:
                    number = _signed32(val)
            elif wire == 2:
                length = msg[i]
                length, i = (length, i + 1) if length < 0x80 else _varint(msg, i)
                i += length
            elif wire == 5:
                i += 4
            elif wire == 1:
                i += 8
            else:
                raise ValueError(f"unsupported wire type {wire}")
        if i > n:
            raise ValueError("truncated field")
    except (ValueError, IndexError) as e:
        if number is None:  # (IndexError: a varint or a field cut at the message's end, "index out of range")
            raise ValueError("truncated field") if isinstance(e, IndexError) else e from None
    return 0 if number is None else number


def _decode(msg: bytes, path: Path, i: int, frame: int | None = None) -> FrameDetections:
    try:
        return FrameDetections.from_protobuf(bytes(msg))
    except (ValueError, IndexError, struct.error) as e:
        raise _bad_message(path, i, e, frame) from None


def _bad_message(path: Path, i: int, e: Exception, frame: int | None = None) -> LeapError:
    """``i``: the message's place in the file; ``frame``: its frame number where it could be read."""
    return LeapError(f"message {i} is not a Detections protobuf ({e})", path=path,
                     record=f"message {i}" if frame is None else f"frame {frame} (message {i})",
                     fix=f"expected {_EXPECTED}")


def _messages(path: Path) -> list[bytes]:
    """The list of serialized messages of EPIC's ``.pkl``."""
    if not path.exists():
        raise LeapError("hand-object detections not found", path=path, fix=_EXPECTED)
    try:
        with open(path, "rb") as f:
            raw = _ListOfBytesUnpickler(io.BytesIO(f.read())).load()
    except Exception as e:  # any unpickling failure is the file's fault, not a bug
        raise LeapError(f"not a hand-object detections pickle ({type(e).__name__}: {e})", path=path,
                        fix=f"expected {_EXPECTED}") from None
    if not isinstance(raw, list) or not all(isinstance(x, (bytes, bytearray)) for x in raw):
        raise LeapError("the pickle does not hold a list of serialized messages", path=path, fix=f"expected {_EXPECTED}")
    return raw


def _read_jsonl(path: Path) -> list[FrameDetections]:
    if not path.exists():
        raise LeapError("hand-object detections not found", path=path, fix=_EXPECTED)
    frames = []
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), start=1):  # (U+2028: no line break)
        if not line.strip():
            continue
        try:
            frames.append(FrameDetections.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise LeapError(f"line {i} is not a frame of detections ({type(e).__name__}: {e})", path=path,
                            record=f"line {i}", fix=f"expected {_EXPECTED}") from None
    return frames


def write_hand_objects(path: str | Path, frames: list[FrameDetections]) -> None:
    """Write ``.pkl`` in EPIC's format, or JSONL when the path ends in ``.jsonl``."""
    path = Path(path)
    if path.suffix == ".jsonl":
        atomic_write_text(path, "".join(json.dumps(fr.to_dict()) + "\n" for fr in frames))
    else:
        atomic_write_bytes(path, pickle.dumps([fr.to_protobuf() for fr in frames], protocol=4))
