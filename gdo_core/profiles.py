"""Goal profiles: the published presets and user profiles, validated on load
(docs/method.md, Goal profiles).

The numbers live in one data file, `profiles.toml` beside this module. A user profile is a TOML
file in a profiles folder (argument, or `$GDO_PROFILES_DIR`) holding only the keys it changes;
`extends = "<preset>"` names the profile it starts from (default: the `custom` template).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILES_FILE = Path(__file__).with_name("profiles.toml")
PROFILES_DIR_ENV = "GDO_PROFILES_DIR"
PRESETS: tuple[str, ...] = ("minloss", "diverse", "temp", "temp_plus")
CUSTOM_TEMPLATE = "custom"
TEMPORAL_CATEGORY_VALUES = frozenset({"Temporal", "Mixed", "Static"})


class ProfileError(ValueError):
    """An unknown profile name or an invalid profile file (the message names file and key)."""


@dataclass(frozen=True)
class _Spec:
    """Type and allowed range of one profile key."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself not allowed
    negative_means_auto: bool = False  # any negative value is a sentinel (published semantics)


# Every key a profile may hold, with its range. Text keys have no range.
KEY_SPECS: dict[str, _Spec] = {
    "label": _Spec(str),
    "description": _Spec(str),
    # Budget (docs/method.md, Budget).
    "min_count": _Spec(int, 1),
    "max_count": _Spec(int, 1),
    "min_ratio": _Spec(float, 0.0, 1.0),
    "max_ratio": _Spec(float, 0.0, 1.0),
    "strata_mult": _Spec(float, 0.0, None, lo_open=True),
    "coverage_mass": _Spec(float, 0.0, 1.0, lo_open=True),
    "tail_target": _Spec(float, 0.0),
    "vds3_target_positive": _Spec(int, 0),
    "vds3_threshold": _Spec(float),
    "vds3_max_mult": _Spec(float, 1.0),
    # Hard constraints (docs/method.md, Quotas and hard constraints).
    "min_video_ratio": _Spec(float, 0.0, 1.0, negative_means_auto=True),
    "max_video_ratio": _Spec(float, 0.0, 1.0, negative_means_auto=True),
    "min_temporal_in_video_ratio": _Spec(float, 0.0, 1.0, negative_means_auto=True),
    "temporal_categories": _Spec(list),
    "source_group_floor_topk": _Spec(int, 0),
    "min_source_group_ratio": _Spec(float, 0.0, 1.0),
    "floor_frac_of_expected": _Spec(float, 0.0, 1.0),
    # Candidate pools (docs/method.md, Candidate pools and acceptance).
    "oversample": _Spec(float, 1.0),
    "video_oversample": _Spec(float, 1.0),
    "temporal_oversample": _Spec(float, 1.0),
    # Shared defaults.
    "seed": _Spec(int, 0),
    "target_frames": _Spec(int, 1),
    "max_qa_per_video": _Spec(int, 1),
    "uni_multiplier": _Spec(float, 0.0, None, lo_open=True),
    "reservoir_oversample": _Spec(float, 1.0),
}


@dataclass(frozen=True)
class GoalProfile:
    """One goal profile: budget, hard constraints and candidate-pool settings."""

    name: str
    label: str
    description: str
    min_count: int
    max_count: int
    min_ratio: float
    max_ratio: float
    strata_mult: float
    coverage_mass: float
    tail_target: float
    vds3_target_positive: int
    vds3_threshold: float
    vds3_max_mult: float
    min_video_ratio: float
    max_video_ratio: float
    min_temporal_in_video_ratio: float
    temporal_categories: tuple[str, ...]
    source_group_floor_topk: int
    min_source_group_ratio: float
    floor_frac_of_expected: float
    oversample: float
    video_oversample: float
    temporal_oversample: float
    seed: int
    target_frames: int
    max_qa_per_video: int
    uni_multiplier: float
    reservoir_oversample: float
    source: str = ""  # the file it was read from
    extends: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists instead of tuples) for profile.json."""
        out = dataclasses.asdict(self)
        out["temporal_categories"] = list(self.temporal_categories)
        return out

    def with_overrides(self, **changes: Any) -> GoalProfile:
        """A copy with some keys changed, validated like a file."""
        unknown = sorted(set(changes) - set(KEY_SPECS))
        if unknown:
            raise ProfileError(f"profile {self.name!r}: unknown key {unknown[0]!r}")
        values = {k: v for k, v in self.to_dict().items() if k in KEY_SPECS}
        values.update(changes)
        checked = validate_profile_table(
            values, f"profile {self.name!r} (overrides)", complete=True
        )
        return dataclasses.replace(self, **_as_fields(checked))


# ---- validation ---------------------------------------------------------------------------


def _check_value(key: str, value: Any, where: str) -> Any:
    spec = KEY_SPECS[key]
    if spec.kind is str:
        if not isinstance(value, str):
            raise ProfileError(f"{where}: key {key!r} must be text, got {value!r}")
        return value
    if spec.kind is list:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{where}: key {key!r} must be a non-empty list of category names")
        bad = [v for v in value if v not in TEMPORAL_CATEGORY_VALUES]
        if bad:
            raise ProfileError(
                f"{where}: key {key!r} holds {bad[0]!r}; allowed: {sorted(TEMPORAL_CATEGORY_VALUES)}"
            )
        return list(dict.fromkeys(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileError(f"{where}: key {key!r} must be a number, got {value!r}")
    if spec.kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ProfileError(f"{where}: key {key!r} must be a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ProfileError(f"{where}: key {key!r} must be finite, got {value!r}")
    if spec.negative_means_auto and value < 0:
        return value
    too_low = spec.lo is not None and (value <= spec.lo if spec.lo_open else value < spec.lo)
    too_high = spec.hi is not None and value > spec.hi
    if too_low or too_high:
        lo = "-inf" if spec.lo is None else f"{spec.lo:g}"
        hi = "inf" if spec.hi is None else f"{spec.hi:g}"
        bracket = "(" if spec.lo_open else "["
        extra = " or negative for auto" if spec.negative_means_auto else ""
        raise ProfileError(
            f"{where}: key {key!r} = {value!r} is out of range {bracket}{lo}, {hi}]{extra}"
        )
    return value


def validate_profile_table(raw: dict[str, Any], where: str, *, complete: bool) -> dict[str, Any]:
    """Check keys, types and ranges of a profile table; `complete` also requires every key."""
    unknown = sorted(set(raw) - set(KEY_SPECS))
    if unknown:
        raise ProfileError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(KEY_SPECS))})"
        )
    out = {key: _check_value(key, value, where) for key, value in raw.items()}
    if complete:
        missing = [k for k in KEY_SPECS if k not in out]
        if missing:
            raise ProfileError(f"{where}: missing key {missing[0]!r}")
        if out["min_count"] > out["max_count"]:
            raise ProfileError(
                f"{where}: key 'min_count' ({out['min_count']}) exceeds 'max_count' ({out['max_count']})"
            )
        if out["max_ratio"] > 0 and out["min_ratio"] > out["max_ratio"]:
            raise ProfileError(
                f"{where}: key 'min_ratio' ({out['min_ratio']}) exceeds 'max_ratio' ({out['max_ratio']})"
            )
        if 0 <= out["max_video_ratio"] < out["min_video_ratio"]:
            raise ProfileError(
                f"{where}: key 'min_video_ratio' ({out['min_video_ratio']}) exceeds "
                f"'max_video_ratio' ({out['max_video_ratio']})"
            )
    return out


def _as_fields(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "temporal_categories" in out:
        out["temporal_categories"] = tuple(out["temporal_categories"])
    return out


# ---- loading ------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ProfileError(f"{path}: profile file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc})") from exc


def _builtin_tables() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data = _read_toml(PROFILES_FILE)
    unknown = sorted(set(data) - {"defaults", "profiles"})
    if unknown:
        raise ProfileError(f"{PROFILES_FILE}: unknown table {unknown[0]!r}")
    defaults = validate_profile_table(
        data.get("defaults", {}), f"{PROFILES_FILE} [defaults]", complete=False
    )
    return defaults, data.get("profiles", {})


def builtin_profiles() -> dict[str, GoalProfile]:
    """The presets and the custom template from profiles.toml, validated."""
    defaults, tables = _builtin_tables()
    out: dict[str, GoalProfile] = {}
    for name, table in tables.items():
        where = f"{PROFILES_FILE} [profiles.{name}]"
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: must be a table")
        values = validate_profile_table({**defaults, **table}, where, complete=True)
        out[name] = GoalProfile(name=name, source=str(PROFILES_FILE), **_as_fields(values))
    missing = [p for p in (*PRESETS, CUSTOM_TEMPLATE) if p not in out]
    if missing:
        raise ProfileError(f"{PROFILES_FILE}: preset {missing[0]!r} is missing")
    return out


def profiles_dir_from_env(profiles_dir: Path | str | None = None) -> Path | None:
    """The user profiles folder: the argument, else $GDO_PROFILES_DIR, else none."""
    if profiles_dir is not None:
        return Path(profiles_dir)
    env = os.environ.get(PROFILES_DIR_ENV)
    return Path(env) if env else None


def load_profile_file(
    path: Path | str, builtins: dict[str, GoalProfile] | None = None
) -> GoalProfile:
    """A user profile file: its keys over the profile it `extends` (default: the custom template)."""
    path = Path(path)
    raw = _read_toml(path)
    builtins = builtins if builtins is not None else builtin_profiles()
    name = raw.pop("name", path.stem)
    extends = raw.pop("extends", CUSTOM_TEMPLATE)
    if not isinstance(name, str) or not name.strip():
        raise ProfileError(f"{path}: key 'name' must be non-empty text")
    if not isinstance(extends, str) or extends not in builtins:
        raise ProfileError(f"{path}: key 'extends' = {extends!r} is not one of {sorted(builtins)}")
    changes = validate_profile_table(raw, str(path), complete=False)
    base = builtins[extends]
    values = {k: v for k, v in base.to_dict().items() if k in KEY_SPECS}
    values.update(changes)
    if "label" not in changes:
        values["label"] = name
    checked = validate_profile_table(values, str(path), complete=True)
    return GoalProfile(name=name, source=str(path), extends=extends, **_as_fields(checked))


def available_profiles(profiles_dir: Path | str | None = None) -> dict[str, str]:
    """Profile name -> file it comes from: the presets, then user files (`*.toml`) by name."""
    out = {name: str(PROFILES_FILE) for name in PRESETS}
    folder = profiles_dir_from_env(profiles_dir)
    if folder is None or not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.toml")):
        raw_name = _read_toml(path).get("name", path.stem)
        name = raw_name if isinstance(raw_name, str) else path.stem
        if name in out or name == CUSTOM_TEMPLATE:
            raise ProfileError(
                f"{path}: profile name {name!r} is already taken by {out.get(name, PROFILES_FILE)}"
            )
        out[name] = str(path)
    return out


def _normalise_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace("+", "_plus")
    return key


def load_profile(
    name_or_path: str | Path | GoalProfile, profiles_dir: Path | str | None = None
) -> GoalProfile:
    """A profile by preset name (`temp_plus`, `Temp+`), user profile name, or TOML file path."""
    if isinstance(name_or_path, GoalProfile):
        return name_or_path
    builtins = builtin_profiles()
    text = str(name_or_path)
    path = Path(text)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or os.sep in text or path.is_file():
        if not path.is_file():
            raise ProfileError(f"{path}: profile file not found")
        return load_profile_file(path, builtins)
    key = _normalise_name(text)
    if key in builtins:
        return builtins[key]
    available = available_profiles(profiles_dir)
    for name, source in available.items():
        if name == text or _normalise_name(name) == key:
            return load_profile_file(Path(source), builtins)
    raise ProfileError(
        f"unknown profile {text!r}; available: {', '.join(available)} "
        f"(or a .toml file; user profiles go in ${PROFILES_DIR_ENV})"
    )


def template_text(extends: str = CUSTOM_TEMPLATE) -> str:
    """A starter user-profile file: every key of `extends`, commented, ready to edit."""
    base = builtin_profiles()[extends]
    lines = [
        f"# User goal profile. Keys left out come from {extends!r}; see gdo_core/profiles.toml.",
        f'extends = "{extends}"',
    ]
    for key in KEY_SPECS:
        value = getattr(base, key)
        if key in ("label", "description"):
            continue
        if isinstance(value, tuple):
            rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            rendered = repr(value)
        lines.append(f"# {key} = {rendered}")
    return "\n".join(lines) + "\n"
