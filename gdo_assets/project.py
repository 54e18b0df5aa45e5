"""The project resource: where the pool files are and where gdo keeps its data."""


import json
import os
from collections.abc import Mapping
from pathlib import Path

from dagster import ConfigurableResource, Failure, InitResourceContext
from pydantic import Field

from gdo_core.pool import (
    DEFAULT_CHUNK_LINES,
    DEFAULT_TARGET_FRAMES,
    ParseOptions,
    PoolFile,
    pool_files,
)
from gdo_core.pool_index import (
    IndexStats,
    PoolIndex,
    configured_files,
    content_key,
    index_pool,
    load_index,
    save_index,
)

# The project's DuckDB file inside the data folder (the one `gdo sql` reads by default).
DB_FILE = ("gdo.duckdb",)
# The pool index (gdo_core.pool_index): every live chunk's byte range and fingerprint.
INDEX_FILE = ("pool", "index.json")
# Bump when a change to the pool parser changes the QA rows it gives: every chunk goes stale.
PARSE_REVISION = 2  # 2: chunks carry answer_distinct


class GdoProject(ConfigurableResource):
    """Pool inputs and the project data folder (DuckDB file, Parquet partitions, outputs)."""

    data_dir: str = Field(default=".gdo", description="Project data folder.")
    onevision: list[str] = Field(default_factory=list, description="Image pool files (LLaVA-OneVision style).")
    video: list[str] = Field(default_factory=list, description="Video pool files (LLaVA-Video style).")
    chunk_lines: int = Field(default=DEFAULT_CHUNK_LINES, description="Lines per pool chunk partition.")
    target_frames: int = Field(default=DEFAULT_TARGET_FRAMES, description="Frames kept per video QA.")
    media_root: str | None = Field(default=None, description="Root of relative media paths (default: the pool file's folder).")
    data_mount: str | None = Field(
        default=None,
        description="k8s profile: where the shared data volume is mounted; a step fails at once when it is not mounted.",
    )
    settings: str = Field(
        default="",
        description=(
            "Where these settings came from: the settings file (gdo.toml, GDO_SETTINGS) and the GDO_* "
            "variables set in the environment (information only)."
        ),
    )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Under the k8s profile, refuse to run a step whose pod lacks the data volume: its outputs
        would land on the pod's own disk and vanish with it."""
        if self.data_mount and not is_mount_point(self.data_mount):
            raise Failure(
                f"{self.data_mount} is not a mounted volume in this pod: mount the data PVC there "
                "(GDO_K8S_PVC, GDO_K8S_MOUNT_PATH; see docs/deploy.md)"
            )

    @property
    def root(self) -> Path:
        """The data folder as an absolute path."""
        return Path(self.data_dir).resolve()

    def pool_files(self) -> list[PoolFile]:
        """The configured pool files (checked to exist)."""
        return pool_files([Path(p) for p in self.onevision], [Path(p) for p in self.video])

    def present_pool_files(self) -> tuple[list[PoolFile], list[str]]:
        """(configured pool files that exist, configured paths that do not): a deleted file's
        chunks retire instead of failing every step."""
        return configured_files(self.onevision, self.video)

    def pool_file(self, name: str) -> PoolFile:
        """The (existing) pool file whose partition-key name is `name`."""
        for pool in self.present_pool_files()[0]:
            if pool.pool_name == name:
                return pool
        raise ValueError(f"no configured pool file is named {name!r} (partition keys are <pool>-<chunk>)")

    @property
    def parse_version(self) -> str:
        """What a chunk's QA rows depend on besides its bytes: parser revision and settings."""
        fields = self.parse_options(PoolFile(Path("x"), "onevision"))
        return content_key(
            {
                "revision": PARSE_REVISION,
                "target_frames": fields.target_frames,
                "mcq_on_raw": fields.mcq_on_raw,
                "media_root": self.media_root,
                "video_frame_dir": str(fields.video_frame_dir),
            }
        )[:16]

    def saved_index(self) -> PoolIndex | None:
        """The pool index as last saved in the data folder (None: never indexed)."""
        return load_index(self.path(*INDEX_FILE))

    def pool_index(self, *, rehash: bool = False, save: bool = True) -> tuple[PoolIndex, IndexStats]:
        """The pool index, refreshed: every configured file is stat'ed, and only those whose
        size, mtime, ctime or inode changed since the saved index are read (`rehash`: all are).
        Saved back when it changed (best effort: a read-only data folder only costs speed)."""
        present, missing = self.present_pool_files()
        saved = self.saved_index()
        index, stats = index_pool(present, self.chunk_lines, saved, missing=missing, rehash=rehash)
        if save and (saved is None or saved.to_dict() != index.to_dict()):
            try:
                save_index(index, self.path(*INDEX_FILE))
            except OSError:
                pass
        return index, stats

    def parse_options(self, pool: PoolFile) -> ParseOptions:
        """Parsing settings for one pool file."""
        root = Path(self.media_root) if self.media_root else pool.path.resolve().parent
        return ParseOptions(self.target_frames, True, root, self.root / "video_frames")

    def path(self, *parts: str) -> Path:
        """A path inside the data folder."""
        return self.root.joinpath(*parts)

    def chunk_files(self, parts: tuple[str, ...], keys: list[str]) -> list[Path]:
        """The Parquet files of the given chunk keys that exist, in key order (missing ones skipped)."""
        paths = [self.path(*parts, f"{key}.parquet") for key in sorted(keys)]
        return [p for p in paths if p.exists()]


class EnvError(ValueError):
    """A GDO_* environment variable whose value gdo cannot use (the message names it)."""


def is_mount_point(path: str) -> bool:
    """Whether `path` is a mount point (bind mounts included, which os.path.ismount can miss)."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == os.path.normpath(path) for line in f if len(line.split()) > 4)
    except OSError:
        return False


def env_int(name: str, default: int | None, minimum: int = 0, env: Mapping[str, str] | None = None) -> int | None:
    """Whole number from $name (unset or blank: default), at least `minimum`; `env`: os.environ."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise EnvError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise EnvError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def env_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    """On/off from $name: 1/true/yes or 0/false/no (any case; unset or blank: off)."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if raw.lower() in ("", "0", "false", "no"):
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    raise EnvError(f"{name}={raw!r}: expected 1, true or yes (on), or 0, false or no (off)")


def env_choice(
    name: str, choices: tuple[str, ...], default: str | None, env: Mapping[str, str] | None = None
) -> str | None:
    """One of `choices` from $name (unset or blank: default)."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    if raw not in choices:
        raise EnvError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def env_json(name: str, kind: type, example: str, env: Mapping[str, str] | None = None):
    """A JSON value of type `kind` (dict or list) from $name (unset or blank: an empty one)."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EnvError(f"{name}={raw!r}: not JSON ({exc.msg}); expected e.g. {example}") from None
    if not isinstance(value, kind):
        raise EnvError(f"{name}={raw!r}: expected a JSON {'object' if kind is dict else 'list'}, e.g. {example}")
    return value


def _split_paths(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]


def project_from_env(env: Mapping[str, str] | None = None, **overrides) -> GdoProject:
    """The project resource configured from GDO_* environment variables (defaults otherwise);
    `env`: the variables (os.environ), `overrides`: fields set by the deployment profile."""
    env = os.environ if env is None else env
    fields = {
        "data_dir": env.get("GDO_DATA_DIR") or ".gdo",
        "onevision": _split_paths(env.get("GDO_ONEVISION")),
        "video": _split_paths(env.get("GDO_VIDEO")),
        "chunk_lines": env_int("GDO_CHUNK_LINES", DEFAULT_CHUNK_LINES, minimum=1, env=env),
        "target_frames": env_int("GDO_TARGET_FRAMES", DEFAULT_TARGET_FRAMES, minimum=1, env=env),
        "media_root": env.get("GDO_MEDIA_ROOT") or None,
    }
    return GdoProject(**{**fields, **overrides})
