"""The project settings file (`gdo.toml`): the GDO_* settings in a file, under the environment.

Which file: $GDO_SETTINGS when set, else `gdo.toml` in the working directory when there is one
(no file: the environment and the defaults alone). Its keys are the GDO_* variables in lower case
without the prefix (`onevision` is GDO_ONEVISION, `data_dir` GDO_DATA_DIR, `model` GDO_MODEL);
relative paths are relative to the file's folder. Example::

    onevision = ["pool/onevision.jsonl"]     # GDO_ONEVISION; a list, or one path
    video = ["pool/video.jsonl"]             # GDO_VIDEO
    data_dir = ".gdo"                        # GDO_DATA_DIR
    model = "models/tiny"                    # GDO_MODEL (descriptors and training)
    chunk_lines = 250                        # GDO_CHUNK_LINES
    recipe = "demo"                          # GDO_RECIPE: a packaged name, or a path

An environment variable that is set (not blank) wins over the file's key. The file is read
where the variables are, when the definitions are built (dagster_project.definitions), never at
import time: `load_settings` puts the file's values under the environment, and the existing
parsers (project_from_env, descriptor_model_from_env, training_from_env, deployment_from_env)
read the merged mapping. Unknown keys and values of the wrong type are errors naming the file
and the key.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdo_assets.project import EnvError

SETTINGS_VAR = "GDO_SETTINGS"
DEFAULT_FILE = "gdo.toml"

# Value kinds of the keys.
PATH, PATHS, INT, BOOL, STR, RECIPE, GPUS, TABLE, TABLES = (
    "path", "paths", "int", "bool", "str", "recipe", "gpus", "table", "tables",
)
# key -> kind; the variable is GDO_<KEY>. Every GDO_* setting read when the definitions are built.
KEYS: dict[str, str] = {
    # the project (gdo_assets.project)
    "data_dir": PATH,
    "onevision": PATHS,
    "video": PATHS,
    "chunk_lines": INT,
    "target_frames": INT,
    "media_root": PATH,
    # descriptors (gdo_assets.descriptors); `model` is training's model too
    "model": PATH,
    "device": STR,
    "dtype": STR,
    "tnc_mode": STR,
    "sc_samples": INT,
    "batch_size": INT,
    "motion_only": BOOL,
    "torch_threads": INT,
    "descriptor_cache": PATH,
    # training (gdo_assets.training)
    "recipe": RECIPE,
    "gpus": GPUS,
    "cpu_threads": INT,
    # the deployment profile (gdo_assets.deployment) and the automation (dagster_project.definitions)
    "deployment": STR,
    "automation": BOOL,
    "gpu_lock_dir": PATH,
    "gpu_wait_s": INT,
    "gpus_per_train_step": INT,
    "k8s_pvc": STR,
    "k8s_mount_path": STR,  # a path inside the step pods: kept as written
    "k8s_gpu_node_selector": TABLE,
    "k8s_tolerations": TABLES,
}
# GDO_* variables read elsewhere than the definitions (at import time, or by gdo_core): a file cannot set them.
ENV_ONLY = {
    "settings": "it names the settings file",
    "profiles_dir": "the goal profiles are read when the code location is imported",
    "cache_dir": "`gdo build` (gdo_core) reads it",
}
EXPECTED = {
    PATH: "a path (string)",
    PATHS: "a list of paths, or one path (strings)",
    INT: "a whole number",
    BOOL: "true or false",
    STR: "a string",
    RECIPE: "a recipe name or path (string)",
    GPUS: 'GPU indices: a list like [0, 1], or a string like "0,1"',
    TABLE: 'a table of strings, e.g. {"nvidia.com/gpu.present" = "true"}',
    TABLES: "a list of tables, e.g. [{key = \"nvidia.com/gpu\", operator = \"Exists\"}]",
}


def variable(key: str) -> str:
    """The environment variable of a settings key."""
    return f"GDO_{key.upper()}"


VARIABLES = {variable(key): key for key in KEYS}


class SettingsError(EnvError):
    """A settings file gdo cannot use (the message names the file, and the key when one is at fault)."""


def _shown(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else repr(value)


def _bad(path: Path, key: str, value: Any) -> SettingsError:
    return SettingsError(f"{path}: {key} = {_shown(value)}: expected {EXPECTED[KEYS[key]]}")


def _resolve(folder: Path, value: str) -> str:
    """A path of the file, absolute: relative ones are relative to the file's folder."""
    return os.path.abspath(folder / os.path.expanduser(value))


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith((".yaml", ".yml"))


def _env_value(path: Path, key: str, value: Any) -> str:
    """The file's value as its environment variable would spell it (paths made absolute)."""
    kind = KEYS[key]
    folder = path.parent
    if kind in (PATH, STR, RECIPE):
        if not isinstance(value, str) or (kind == PATH and not value.strip()):
            raise _bad(path, key, value)
        if kind == PATH or (kind == RECIPE and _looks_like_path(value)):
            return _resolve(folder, value)
        return value
    if kind == PATHS:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(p, str) and p.strip() for p in items):
            raise _bad(path, key, value)
        resolved = [_resolve(folder, p) for p in items]
        for p in resolved:
            if os.pathsep in p:
                raise SettingsError(f"{path}: {key}: {p!r} contains {os.pathsep!r}, which separates paths in {variable(key)}")
        return os.pathsep.join(resolved)
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(path, key, value)
        return str(value)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise _bad(path, key, value)
        return "1" if value else "0"
    if kind == GPUS:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in value):
            return ",".join(str(g) for g in value)
        raise _bad(path, key, value)
    if kind == TABLE:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise _bad(path, key, value)
        return json.dumps(value)
    if kind == TABLES:
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise _bad(path, key, value)
        try:
            return json.dumps(value)
        except TypeError:
            raise _bad(path, key, value) from None
    raise AssertionError(kind)


def read_settings_file(path: Path | str) -> dict[str, str]:
    """GDO_* variable -> value (as the environment would spell it) of every key the file sets."""
    path = Path(os.path.abspath(path))
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{path}: no such settings file") from None
    except IsADirectoryError:
        raise SettingsError(f"{path}: a folder, not a settings file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    out = {}
    for key, value in data.items():
        if key in ENV_ONLY:
            raise SettingsError(
                f"{path}: key {key!r}: {variable(key)} can only be set in the environment ({ENV_ONLY[key]})"
            )
        if key not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(
                f"{path}: unknown key {key!r}{hint}; known keys: {', '.join(KEYS)} (GDO_* variables "
                "in lower case, without GDO_)"
            )
        out[variable(key)] = _env_value(path, key, value)
    return out


def settings_path(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> tuple[Path | None, str]:
    """(the settings file to read or None, how it was found). $GDO_SETTINGS of `env` (os.environ)
    when set; else, only when `env` is the process environment (None), `gdo.toml` in `cwd` (the
    working directory) when it exists. A mapping given as `env` is the whole environment: only
    its GDO_SETTINGS names a file."""
    source = os.environ if env is None else env
    named = (source.get(SETTINGS_VAR) or "").strip()
    if named:
        return Path(os.path.abspath(os.path.expanduser(named))), f"from {SETTINGS_VAR}"
    if env is None:
        candidate = (cwd or Path.cwd()) / DEFAULT_FILE
        if candidate.is_file():
            return Path(os.path.abspath(candidate)), "in the working directory"
        return None, f"no {DEFAULT_FILE} in {os.path.abspath(cwd or Path.cwd())}"
    return None, f"{SETTINGS_VAR} not set"


@dataclass(frozen=True)
class Settings:
    """The GDO_* settings in effect: the environment with the settings file's values under it."""

    env: Mapping[str, str]  # what the parsers read: the environment, the file's values where it sets none
    path: Path | None = None  # the settings file read (None: none)
    found: str = ""  # how the file was found, or why there is none
    from_file: dict[str, str] = field(default_factory=dict)  # variable -> key: values taken from the file
    from_env: tuple[str, ...] = ()  # settings the environment sets (over the file where it has them too)
    overridden: tuple[str, ...] = ()  # of those, the ones the file sets too

    def origin(self, name: str) -> str:
        """Where a GDO_* setting comes from: "environment", "file" or "default"."""
        if name in self.from_env:
            return "environment"
        return "file" if name in self.from_file else "default"

    def describe(self) -> str:
        """One line for logs and the UI, e.g. `settings: /p/gdo.toml (...); GDO_VIDEO from environment`."""
        if self.path is None:
            head = f"settings: no settings file ({self.found})"
        else:
            keys = ", ".join(self.from_file.values()) or "nothing used"
            head = f"settings: {self.path} ({self.found}; from the file: {keys})"
        parts = [head]
        for name in self.from_env:
            over = f" (over the file's {VARIABLES[name]})" if name in self.overridden else ""
            parts.append(f"{name} from environment{over}")
        return "; ".join(parts)

    def explain(self, exc: EnvError) -> EnvError:
        """`exc` with the file and key named when the variable at fault came from the file."""
        message = str(exc)
        for name, key in self.from_file.items():
            if message.startswith((f"{name}=", f"{name} ")):
                return SettingsError(f"{self.path}: {key}: {message}")
        return exc


def load_settings(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """The settings in effect for `env` (os.environ): see settings_path for which file is read."""
    source = os.environ if env is None else env
    path, found = settings_path(env, cwd)
    values = read_settings_file(path) if path is not None else {}
    set_in_env = tuple(n for n in VARIABLES if (source.get(n) or "").strip())
    merged = dict(source)
    from_file = {}
    for name, value in values.items():
        if name not in set_in_env:
            merged[name] = value
            from_file[name] = VARIABLES[name]
    return Settings(
        env=merged,
        path=path,
        found=found,
        from_file=from_file,
        from_env=set_in_env,
        overridden=tuple(n for n in set_in_env if n in values),
    )


# ---- writing a settings file ------------------------------------------------------------------


def _toml_string(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)  # a TOML basic string, but for DEL
    return text.replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to a settings file")


def _relative(folder: Path, value: str) -> str:
    """A path as the file should hold it: relative to the file's folder when inside it."""
    absolute = os.path.abspath(value)
    try:
        return Path(absolute).relative_to(folder).as_posix() or "."
    except ValueError:
        return absolute


def settings_text(values: Mapping[str, Any], folder: Path, header: str = "") -> str:
    """A settings file's text for `values` (key -> value), paths relative to `folder` when inside it."""
    folder = Path(os.path.abspath(folder))
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for key, value in values.items():
        if key not in KEYS:
            raise KeyError(f"{key!r} is not a settings key")
        kind = KEYS[key]
        if kind == PATH or (kind == RECIPE and _looks_like_path(value)):
            value = _relative(folder, value)
        elif kind == PATHS:
            value = [_relative(folder, p) for p in ([value] if isinstance(value, str) else value)]
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_settings_file(path: Path, values: Mapping[str, Any], header: str = "") -> Path:
    """Write `values` (key -> value) as a settings file at `path` (atomically); checked to read back."""
    path = Path(os.path.abspath(path))
    text = settings_text(values, path.parent, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    read_settings_file(tmp)
    tmp.replace(path)
    return path


def resource_settings(project: Any, model: Any, training: Any) -> dict[str, Any]:
    """The settings keys that give these resources (GdoProject, DescriptorModel, TrainingResource),
    for a settings file: every field with a value, None ones left out (their default)."""
    if model.model_dir and training.model_dir and os.path.abspath(model.model_dir) != os.path.abspath(training.model_dir):
        raise ValueError(
            f"one settings file has one model: descriptors use {model.model_dir}, training {training.model_dir}"
        )
    values: dict[str, Any] = {
        "data_dir": project.data_dir,
        "onevision": list(project.onevision),
        "video": list(project.video),
        "chunk_lines": project.chunk_lines,
        "target_frames": project.target_frames,
        "media_root": project.media_root,
        "model": model.model_dir or training.model_dir,
        "device": model.device,
        "dtype": model.dtype,
        "tnc_mode": model.tnc_mode,
        "sc_samples": model.sc_samples,
        "batch_size": model.batch_size,
        "motion_only": model.motion_only,
        "torch_threads": model.torch_threads,
        "descriptor_cache": model.cache_dir,
        "recipe": training.recipe,
        "gpus": training.gpus,
        "cpu_threads": training.cpu_threads,
    }
    return {k: v for k, v in values.items() if v is not None}
