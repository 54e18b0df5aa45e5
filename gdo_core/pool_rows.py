"""Parsing one pool row (docs/method.md, Pool ingestion): its turn pairs, its media list, the
frames of a video file, and the uniform frame resampling.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from gdo_core import schema as S
from gdo_core.pool_lines import _KEY_SAFE

USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt"})


@functools.lru_cache(maxsize=4096)
def _resample_indices(n: int, target: int) -> tuple[int, ...]:
    if n <= target:
        return tuple(range(n))
    if target <= 1:
        return (0,)
    # Python's round (half to even) is what the published code uses.
    return tuple(round(i * (n - 1) / (target - 1)) for i in range(target))


def resample_indices(n: int, target: int) -> list[int]:
    """Indices of `target` frames sampled uniformly from `n`: round(i*(n-1)/(T-1)) when n > T."""
    return list(_resample_indices(n, target))


def resample_frames(frames: list[str], target: int) -> list[str]:
    """The frame list resampled uniformly to at most `target` frames."""
    if len(frames) <= target:
        return frames
    return [frames[i] for i in _resample_indices(len(frames), target)]


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _text_of(content: Any, where: str) -> str:
    """Message content as text: a string, or the text parts of a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise _Reject(S.REJECT_WRONG_TYPE, f"{where}: content must be a string, got {type(content).__name__}")


def _turn_pairs(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(raw user text, raw assistant text) per user turn answered by an assistant turn."""
    key = "messages" if "messages" in obj else "conversations"
    messages = obj.get(key)
    if messages is None:
        raise _Reject(S.REJECT_NO_MESSAGES, "no 'messages' or 'conversations' field")
    if not isinstance(messages, list):
        raise _Reject(S.REJECT_WRONG_TYPE, f"'{key}' must be a list, got {type(messages).__name__}")
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Reject(S.REJECT_WRONG_TYPE, f"{key}[{i}] must be an object")
        # A null role or content counts as missing, so the ShareGPT key is used (as in the fast path).
        role = message.get("role")
        if role is None:
            role = message.get("from")
        role = role.lower() if isinstance(role, str) else None
        content = message.get("content")
        if content is None:
            content = message.get("value")
        if role in USER_ROLES:
            pending = _text_of(content, f"{key}[{i}]")
        elif role in ASSISTANT_ROLES and pending is not None:
            pairs.append((pending, _text_of(content, f"{key}[{i}]")))
            pending = None
    return pairs


def _str_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _Reject(S.REJECT_WRONG_TYPE, f"'{name}' must be a list of paths, got {type(value).__name__}")
    return value


def _resolve(paths: list[str], media_root: Path | None) -> list[str]:
    if media_root is None:
        return paths
    return [p if os.path.isabs(p) else str(media_root / p) for p in paths]


class VideoFrameStore:
    """Decodes video files with decord into JPEG frames, once per file, under one folder."""

    def __init__(self, root: Path, target_frames: int) -> None:
        self.root = Path(root)
        self.target_frames = target_frames

    def frames_of(self, video_path: Path) -> list[str]:
        """Paths of the uniformly sampled frames of a video file (decoded on first use)."""
        stat = video_path.stat()
        key = hashlib.sha1(
            f"{video_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.target_frames}".encode()
        ).hexdigest()[:16]
        folder = self.root / f"{_KEY_SAFE.sub('_', video_path.stem)[:40]}-{key}"
        done = folder / ".done"
        if done.exists():
            return done.read_text().splitlines()
        import cv2
        import decord

        reader = decord.VideoReader(str(video_path), num_threads=1)
        indices = resample_indices(len(reader), self.target_frames)
        if not indices:
            raise ValueError("video has no frames")
        batch = reader.get_batch(indices).asnumpy()
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, frame in zip(indices, batch):
            target = folder / f"{i:06d}.jpg"
            tmp = folder / f".{i:06d}.tmp.jpg"
            cv2.imwrite(str(tmp), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            os.replace(tmp, target)
            paths.append(str(target))
        tmp_done = folder / ".done.tmp"
        tmp_done.write_text("\n".join(paths))
        os.replace(tmp_done, done)
        return paths


def _media_of(
    obj: dict[str, Any],
    kind: str,
    target_frames: int,
    media_root: Path | None,
    videos: VideoFrameStore | None,
    base_dir: Path,
) -> list[str]:
    """The QA frame list of a row: first image (image pool) or resampled frames (video pool)."""
    if "images" in obj and obj["images"] is not None:
        frames = _str_list(obj["images"], "images")
    elif isinstance(obj.get("image"), str) and obj["image"]:
        frames = [obj["image"]]
    elif "image" in obj and obj["image"] is not None and not isinstance(obj["image"], str):
        frames = _str_list(obj["image"], "image")
    elif kind == "video" and obj.get("video") is not None:
        video = obj["video"]
        if isinstance(video, list):
            frames = _str_list(video, "video")
        elif isinstance(video, str) and video:
            return _decode_video(video, media_root or base_dir, videos)
        else:
            raise _Reject(S.REJECT_WRONG_TYPE, "'video' must be a path or a list of frame paths")
    else:
        raise _Reject(S.REJECT_MISSING_MEDIA, "no 'images', 'image' or 'video' field")
    if not frames:
        raise _Reject(S.REJECT_MISSING_MEDIA, "empty media list")
    # Only the frames a QA keeps are type-checked: the rest are never read.
    kept = frames[:1] if kind == "onevision" else resample_frames(frames, target_frames)
    for frame in kept:
        if type(frame) is not str:
            raise _Reject(S.REJECT_WRONG_TYPE, "media lists must hold only path strings")
    return _resolve(kept, media_root)


def _decode_video(video: str, root: Path, videos: VideoFrameStore | None) -> list[str]:
    path = Path(video) if os.path.isabs(video) else root / video
    if videos is None:
        raise _Reject(S.REJECT_UNREADABLE_VIDEO, f"{video}: no frame folder configured for video files")
    if not path.is_file():
        raise _Reject(S.REJECT_UNREADABLE_VIDEO, f"{video}: video file not found")
    try:
        return videos.frames_of(path)
    except Exception as exc:  # decord raises its own error types for corrupt files
        raise _Reject(S.REJECT_UNREADABLE_VIDEO, f"{video}: {type(exc).__name__}: {exc}"[:300]) from exc
