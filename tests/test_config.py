import datetime as dt
import re

import pytest

from sidreasoner import config
from sidreasoner.config import ConfigError


def test_demo_is_the_default_and_tiny():
    cfg = config.load()
    assert cfg.data.source == "demo"
    assert cfg.sid.codebook_size == 32
    assert cfg.sid.method == "rkmeans"
    assert cfg.embed.model == "builtin:all-minilm-l6-v2"


@pytest.mark.parametrize(
    "preset, category",
    [("office", "Office_Products"), ("industrial", "Industrial_and_Scientific"), ("games", "Video_Games")],
)
def test_paper_presets(preset, category):
    cfg = config.load(preset)
    assert cfg.data.source == "amazon2018"
    assert cfg.data.category == category
    assert cfg.data.k_core == 5
    assert cfg.data.max_history == 10
    assert cfg.data.time_window.start == dt.date(2017, 10, 1)
    assert cfg.data.time_window.end == dt.date(2018, 11, 1)
    assert (cfg.sid.levels, cfg.sid.codebook_size, cfg.sid.method) == (3, 256, "rqvae")
    assert cfg.embed.model == "Qwen/Qwen3-Embedding-4B"


def test_overrides_parse_json_values_and_strings():
    cfg = config.load(
        "demo",
        [
            "data.k_core=3",
            "sid.method=rqvae",
            "data.time_window.start=2017-01-01",
            'embed.fields=["title"]',
            "data.five_core=true",
        ],
    )
    assert cfg.data.k_core == 3
    assert cfg.sid.method == "rqvae"
    assert cfg.data.time_window.start == dt.date(2017, 1, 1)
    assert cfg.embed.fields == ["title"]
    assert cfg.data.five_core is True


def test_override_keeps_rest_of_preset_section():
    cfg = config.load("office", ["data.k_core=3"])
    assert cfg.data.category == "Office_Products"
    assert cfg.data.time_window.end == dt.date(2018, 11, 1)


def test_unknown_key_names_key_allowed_and_suggestion():
    with pytest.raises(ConfigError) as err:
        config.load("demo", ["data.k_cor=3"])
    msg = str(err.value)
    assert "data.k_cor" in msg
    assert "k_core" in msg and "max_history" in msg
    assert "Did you mean 'data.k_core'?" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="'dat' is not a section"):
        config.load("demo", ["dat.k_core=3"])


def test_bad_literal_names_allowed_values():
    with pytest.raises(ConfigError) as err:
        config.load("demo", ["sid.method=vq"])
    assert str(err.value) == "invalid config:\n  sid.method: Input should be 'rqvae', 'rkmeans' or 'import' (got 'vq')"


def test_bad_number_names_key():
    with pytest.raises(ConfigError, match=r"data\.k_core: Input should be greater than or equal to 1 \(got 0\)"):
        config.load("demo", ["data.k_core=0"])
    with pytest.raises(ConfigError, match=r"data\.k_core: .*valid integer.*'five'"):
        config.load("demo", ["data.k_core=five"])


def test_split_must_sum_to_one():
    with pytest.raises(ConfigError, match=r"data\.split: .*summing to 1"):
        config.load("demo", ["data.split=[0.8,0.1,0.2]"])


def test_time_window_order():
    with pytest.raises(ConfigError, match="data.time_window: .*after end"):
        config.load("demo", ["data.time_window.start=2018-01-01", "data.time_window.end=2017-01-01"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load("demo", ["data.k_core"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'book'. Allowed: demo, office, industrial, games"):
        config.load("book")


def test_extra_key_in_a_file_names_allowed():
    with pytest.raises(ConfigError) as err:
        config.load_from({"data": {"time_window": {"begin": "2017-01-01"}}})
    assert "data.time_window.begin: unknown key. Allowed here: end, start" in str(err.value)


def test_step_config_holds_only_its_sections_and_round_trips():
    cfg = config.load("office")
    sliced = config.step_config(cfg, "quantize-sids")
    assert set(sliced) == {"seed", "sid"}
    assert config.from_step_config(sliced).sid == cfg.sid
    data_slice = config.step_config(cfg, "preprocess")
    assert data_slice["data"]["time_window"] == {"start": "2017-10-01", "end": "2018-11-01"}
    assert config.from_step_config(data_slice).data == cfg.data


def test_params_leave_out_nulls():
    params = config.to_params(config.load("demo"))
    assert params["data"]["time_window"] == {}
    assert config.validate(params) == config.load("demo")


def test_one_steps_resources_by_dotted_key_keep_the_rest():
    cfg = config.load("office", ["cluster.resources.rl-stage3.gpus=0", "cluster.resources.merge-checkpoint.cpu=4"])
    stage3 = cfg.cluster.resources["rl-stage3"]
    assert (stage3.gpus, stage3.cpu, stage3.memory) == (0, "16", "128Gi")
    assert cfg.cluster.resources["merge-checkpoint"].cpu == "4"
    assert cfg.cluster.resources["sft-stage1"].gpus == 8
    with pytest.raises(
        config.ConfigError,
        match=r"cluster.resources.rl-stage3.gpu'.*Did you mean "
        r"'cluster.resources.rl-stage3.gpus'",
    ):
        config.load("office", ["cluster.resources.rl-stage3.gpu=1"])
    with pytest.raises(config.ConfigError, match=r"unknown step\(s\) sft-stage9"):
        config.load("office", ["cluster.resources.sft-stage9.gpus=1"])
    with pytest.raises(config.ConfigError, match="'cluster.resources' is not a section"):
        config.load("office", ["cluster.resources.x=1"])


def test_booleans_are_not_numbers():
    with pytest.raises(ConfigError) as err:
        config.load("demo", ["data.k_core=true"])
    assert str(err.value) == "invalid config:\n  data.k_core: must be a number, not a boolean (got True)"
    for item in (
        "seed=false",
        "sid.rqvae.lr=true",
        "data.split=[0.8,0.1,true]",
        "teacher.item_words=[true,5]",
        "cluster.resources.rl-stage3.gpus=true",
    ):
        key = item.split("=")[0]
        with pytest.raises(ConfigError, match=rf"  {re.escape(key)}: must be a number, not a boolean"):
            config.load("demo", [item])
    with pytest.raises(ConfigError, match=r"data\.max_history: must be a number, not a boolean"):
        config.load_from({"data": {"max_history": True}})
    # numbers from overrides and files stay numbers
    cfg = config.load("demo", ["data.k_core=5", "sid.rqvae.lr=1", "data.five_core=true"])
    assert (cfg.data.k_core, type(cfg.data.k_core)) == (5, int)
    assert (cfg.sid.rqvae.lr, type(cfg.sid.rqvae.lr)) == (1.0, float)
    assert cfg.data.five_core is True  # a boolean field still takes a boolean
    assert config.load_from({"data": {"k_core": 7}}).data.k_core == 7


def test_category_must_be_a_file_name():
    from sidreasoner.data.download import AMAZON2018_CATEGORIES, AMAZON2023_CATEGORIES

    for name in ("../../../x", "a/b", "..", ".hidden", "Office Products", "Office*", "", "C:\\x"):
        with pytest.raises(ConfigError) as err:
            config.load("demo", [f"data.category={name}"])
        assert str(err.value) == (
            "invalid config:\n  data.category: names the dataset's files, so it must be 1-100 letters, digits, '_', "
            f"'-' or '.', starting with a letter or digit (got {name!r})"
        )
    for name in (*AMAZON2018_CATEGORIES, *AMAZON2023_CATEGORIES, "Demo", "Tiny.v2", "Office_Products-2018"):
        assert config.load("demo", [f"data.category={name}"]).data.category == name


def test_a_text_field_takes_the_override_text_as_it_is():
    cfg = config.load(
        "demo",
        ["model.revision=2024", "data.category=2018", "teacher.model=null", 'embed.model="builtin:all-minilm-l6-v2"'],
    )
    assert (cfg.model.revision, cfg.data.category, cfg.teacher.model) == ("2024", "2018", "null")
    assert cfg.embed.model == "builtin:all-minilm-l6-v2"  # a JSON string is still read as JSON
    assert config.load("demo", ["data.k_core=3"]).data.k_core == 3


SEED_BOUND = "must be a whole number with 0 <= seed < 2**32 = 4294967296 (numpy's and torch's seeds)"


@pytest.mark.parametrize(
    "item, message",
    [
        ("seed=-1", f"seed: {SEED_BOUND} (got -1)"),
        ("seed=4294967296", f"seed: {SEED_BOUND} (got 4294967296)"),
        ("seed=1e23", f"seed: {SEED_BOUND} (got 1e+23)"),
        ("stage1.lr=Infinity", "stage1.lr: Input should be a finite number (got inf)"),
        ("stage1.lr=1e30", "stage1.lr: Input should be less than or equal to 1 (got 1e+30)"),
        ("stage3.lr=NaN", "stage3.lr: Input should be a finite number (got nan)"),
        ("sid.rqvae.lr=2", "sid.rqvae.lr: Input should be less than or equal to 1 (got 2)"),
        ("sid.balance=1e400", "sid.balance: Input should be a finite number (got inf)"),
        ("data.split=[0.8,0.1,NaN]", "data.split.2: Input should be a finite number (got nan)"),
        ("teacher.backoff_s=-Infinity", "teacher.backoff_s: Input should be a finite number (got -inf)"),
        (
            "teacher.timeout_s=1e12",
            "teacher.timeout_s: Input should be less than or equal to 604800 (got 1000000000000.0)",
        ),
        (
            "data.k_core=1e20",
            "data.k_core: must be a whole number within ±2**53 = 9007199254740992 (a KFP run parameter "
            "is a 64-bit float) (got 1e+20)",
        ),
        (
            "data.window_earliest_start_year=10000",
            "data.window_earliest_start_year: Input should be less than or equal to 9999 (got 10000)",
        ),
        ("sid.rqvae.hidden_dims=[64,0]", "sid.rqvae.hidden_dims: every width must be >= 1 (got [64, 0])"),
    ],
)
def test_out_of_range_numbers_fail_naming_key_value_and_bound(item, message):
    with pytest.raises(ConfigError) as err:
        config.load("demo", [item])
    assert str(err.value) == f"invalid config:\n  {message}"


def test_a_compiled_whole_number_arrives_as_a_float_and_stays_whole():
    """KFP hands a step its run parameters as 64-bit floats: 3.0 is 3, 1e23 is no seed."""
    cfg = config.from_step_config({"seed": 4294967295.0, "sid": {"levels": 3.0}})
    assert (cfg.seed, type(cfg.seed), cfg.sid.levels) == (4294967295, int, 3)
    with pytest.raises(ConfigError, match=re.escape(f"seed: {SEED_BOUND} (got 1e+23)")):
        config.from_step_config({"seed": 1e23})
    with pytest.raises(ConfigError, match=r"seed: Input should be a valid integer, got a number with a fractional"):
        config.from_step_config({"seed": 2.5})
