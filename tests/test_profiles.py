"""Goal profiles: the published presets from one data file, user profiles, validation errors."""

import pytest

from gdo_core import profiles as P

# docs/method.md, Goal profiles, column by column (MinLoss, Diverse, Temp, Temp+).
PAPER_TABLE = {
    "min_count": (12000, 14000, 15000, 16000),
    "max_count": (72000, 95000, 90000, 110000),
    "min_ratio": (0.001, 0.001, 0.001, 0.001),
    "max_ratio": (0.014, 0.016, 0.016, 0.018),
    "strata_mult": (16, 26, 20, 22),
    "coverage_mass": (0.93, 0.97, 0.95, 0.95),
    "tail_target": (3.5, 8, 10, 16),
    "vds3_target_positive": (2600, 5000, 6500, 9000),
    "vds3_threshold": (0, 0, 0, 0),
    "vds3_max_mult": (1.6, 2.4, 2.4, 3.2),
    "min_video_ratio": (0.15, 0.25, 0.35, 0.50),
    "max_video_ratio": (0.32, 0.45, 0.50, 0.64),
    "min_temporal_in_video_ratio": (0.05, 0.15, 0.20, 0.38),
    "oversample": (1.15, 1.28, 1.30, 1.35),
    "video_oversample": (1.45, 1.9, 2.2, 2.9),
    "temporal_oversample": (1.55, 2.2, 3.0, 4.2),
    "source_group_floor_topk": (14, 28, 18, 16),
    "min_source_group_ratio": (0.0015, 0.0030, 0.0022, 0.0025),
    "floor_frac_of_expected": (0.33, 0.45, 0.38, 0.38),
}


@pytest.mark.parametrize("index", range(4))
def test_presets_match_the_paper_table(index):
    profile = P.load_profile(P.PRESETS[index])
    for key, values in PAPER_TABLE.items():
        assert getattr(profile, key) == pytest.approx(values[index]), key
    assert profile.temporal_categories == ("Temporal", "Mixed")
    assert (
        profile.seed,
        profile.target_frames,
        profile.max_qa_per_video,
        profile.uni_multiplier,
    ) == (42, 32, 8, 10.0)


def test_custom_template_and_aliases():
    custom = P.load_profile("custom")
    assert (custom.min_count, custom.max_count, custom.max_ratio, custom.min_video_ratio) == (
        15000,
        120000,
        0.02,
        0.40,
    )
    assert P.load_profile("Temp+").name == "temp_plus"
    assert P.load_profile("MinLoss").name == "minloss"


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(P.ProfileError, match="unknown profile 'nope'.*temp_plus"):
        P.load_profile("nope")


def _write(path, text):
    path.write_text(text)
    return path


def test_user_profile_extends_a_preset(tmp_path):
    path = _write(
        tmp_path / "my_goal.toml",
        'extends = "temp"\nmin_video_ratio = 0.6\nmax_video_ratio = 0.7\n',
    )
    profile = P.load_profile(path)
    assert profile.name == "my_goal" and profile.extends == "temp" and profile.source == str(path)
    assert profile.min_video_ratio == 0.6 and profile.max_video_ratio == 0.7
    assert profile.temporal_oversample == P.load_profile("temp").temporal_oversample


def test_user_profiles_folder_by_argument_and_env(tmp_path, monkeypatch):
    _write(tmp_path / "long_video.toml", 'name = "long_video"\nmin_count = 100\n')
    assert "long_video" in P.available_profiles(tmp_path)
    assert P.load_profile("long_video", profiles_dir=tmp_path).min_count == 100
    monkeypatch.setenv(P.PROFILES_DIR_ENV, str(tmp_path))
    assert P.load_profile("long_video").extends == "custom"


def test_user_profile_may_not_shadow_a_preset(tmp_path):
    _write(tmp_path / "temp.toml", "min_count = 100\n")
    with pytest.raises(P.ProfileError, match="temp.toml.*already taken"):
        P.available_profiles(tmp_path)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("min_videoratio = 0.3\n", "unknown key 'min_videoratio'"),
        ("max_video_ratio = 1.5\n", "key 'max_video_ratio' = 1.5 is out of range"),
        ("coverage_mass = 0.0\n", "key 'coverage_mass' = 0.0 is out of range"),
        ("oversample = 0.5\n", "key 'oversample' = 0.5 is out of range"),
        ("min_count = 2.5\n", "key 'min_count' must be a whole number"),
        ('min_ratio = "a"\n', "key 'min_ratio' must be a number"),
        ('temporal_categories = ["Slow"]\n', "key 'temporal_categories' holds 'Slow'"),
        ("min_count = 500000\n", "key 'min_count' .* exceeds 'max_count'"),
        ("min_video_ratio = 0.9\nmax_video_ratio = 0.5\n", "key 'min_video_ratio' .* exceeds"),
        ('extends = "nothing"\n', "key 'extends' = 'nothing'"),
        ("min_count = \n", "not valid TOML"),
    ],
)
def test_invalid_user_profile_names_file_and_key(tmp_path, text, pattern):
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(P.ProfileError, match=pattern) as info:
        P.load_profile(path)
    assert str(path) in str(info.value)


def _constraints(profile):
    """Hard constraints of a 10-QA subset of a 40-QA pool: 10 videos, 4 of them temporal."""
    from gdo_core.budget import hard_constraints

    return hard_constraints(
        target_count=10,
        total=40,
        video_count=10,
        temporal_video_count=4,
        video_quota=5,
        group_counts_desc=[],
        profile=profile,
    )


def test_negative_ratio_means_auto():
    base = P.load_profile("custom").with_overrides(
        min_video_ratio=0.5, max_video_ratio=0.6, min_temporal_in_video_ratio=0.8
    )
    fixed = _constraints(base)
    # Given ratios: ceil(0.5 * 10) = 5 videos at least, floor(0.6 * 10) = 6 at most, and
    # ceil(0.8 * max(5, quota 5)) = 4 temporal videos.
    assert (fixed.min_video_count, fixed.max_video_count, fixed.min_temporal_video_count) == (5, 6, 4)
    auto = _constraints(
        base.with_overrides(
            min_video_ratio=-1.0, max_video_ratio=-0.5, min_temporal_in_video_ratio=-1.0
        )
    )
    # Auto: the pool's video share 10/40 -> ceil(2.5) = 3; no maximum -> all 10; the pool's
    # temporal share 4/10 -> ceil(0.4 * max(3, quota 5)) = 2.
    assert (auto.min_video_ratio_effective, auto.max_video_ratio_effective) == (0.25, 1.0)
    assert auto.min_temporal_in_video_ratio_effective == 0.4
    assert (auto.min_video_count, auto.max_video_count, auto.min_temporal_video_count) == (3, 10, 2)


def test_overrides_are_validated():
    with pytest.raises(P.ProfileError, match="unknown key 'bogus'"):
        P.load_profile("temp").with_overrides(bogus=1)
    with pytest.raises(P.ProfileError, match="'max_ratio'"):
        P.load_profile("temp").with_overrides(max_ratio=2.0)


def test_template_round_trips(tmp_path):
    path = _write(tmp_path / "starter.toml", P.template_text("temp_plus"))
    profile = P.load_profile(path)
    base = P.load_profile("temp_plus")
    assert profile.extends == "temp_plus"
    assert {k: getattr(profile, k) for k in PAPER_TABLE} == {
        k: getattr(base, k) for k in PAPER_TABLE
    }


def test_to_dict_is_json_ready():
    import json

    doc = P.load_profile("diverse").to_dict()
    assert json.loads(json.dumps(doc))["temporal_categories"] == ["Temporal", "Mixed"]
