"""Property-based fuzzing of run configs (`interp.training.load_run_config` + building the
model config): garbage YAML, unknown keys, wrong types in every section. Each ends in one
`TrainConfigError` naming the key, or in a config whose every value has the documented kind
(so nothing downstream meets a string where a number belongs); never a traceback from deep
inside."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from interp import training as tr
from interp.training.config import DEFAULT_TRAIN, MODEL_FIELDS, TRAIN_CHECKS

BASE = {"name": "fuzz", "model": {"preset": "vanilla", "size": "tiny", "n_layers": 1},
        "task": {"name": "modular", "p": 7}, "train": {"steps": 3, "device": "cpu"}}


def yaml_values(max_int: int = 10**6):
    """Any YAML value; `max_int` bounds integers where they size something that gets built."""
    scalars = (st.none() | st.booleans() | st.integers(-5, max_int) | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=10) | st.sampled_from(["full", "all", "auto", "cpu", "cuda:0", "true", "1e-3", "fp16"]))
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                        | st.dictionaries(st.text(max_size=6) | st.integers(0, 3), kids, max_size=3), max_leaves=6)


def refused_or_well_typed(cfg) -> dict | None:
    """The normalized config, or None after a TrainConfigError naming a key. Anything else fails."""
    try:
        out = tr.load_run_config(cfg)
    except tr.TrainConfigError as e:
        assert str(e), e
        return None
    for key, (accepts, what) in TRAIN_CHECKS.items():
        assert accepts(out["train"][key]), (key, out["train"][key], what)
    try:  # the model section builds, or is refused by name
        tr.build_model_config(out["model"])
    except tr.TrainConfigError as e:
        assert "model" in str(e)
    return out


def test_every_train_key_is_checked():
    assert set(TRAIN_CHECKS) == set(DEFAULT_TRAIN)
    assert all(accepts(DEFAULT_TRAIN[k]) for k, (accepts, _) in TRAIN_CHECKS.items())


@fuzz(200)
@given(st.sampled_from(sorted(DEFAULT_TRAIN)), yaml_values())
def test_a_train_value_of_any_kind_is_refused_by_name_or_fits(key, value):
    cfg = {**BASE, "train": {**BASE["train"], key: value}}
    out = refused_or_well_typed(cfg)
    if out is None:
        with pytest.raises(tr.TrainConfigError, match=rf"train\.{key}\b"):
            tr.load_run_config(cfg)


@fuzz(200)
@given(st.sampled_from(sorted(MODEL_FIELDS | {"preset", "size", "overrides"})), yaml_values())
def test_a_model_value_of_any_kind_is_refused_by_name_or_builds(key, value):
    cfg = {**BASE, "model": {**BASE["model"], key: value}}
    try:
        out = tr.load_run_config(cfg)
        model_cfg = tr.build_model_config(out["model"])
    except tr.TrainConfigError as e:
        assert key in str(e) or "model" in str(e), e
        return
    if key not in ("preset", "size", "overrides") and value is not None:  # built: the value as written
        got = getattr(model_cfg, key)
        assert got == value and type(got) is type(value), (key, value, got)


@fuzz(150)
@given(st.dictionaries(st.text(max_size=8) | st.integers(0, 3) | st.none(), yaml_values(), max_size=5),
       st.sampled_from(["top", "model", "task", "train"]))
def test_unknown_keys_and_odd_sections(extra, where):
    if where == "top":
        cfg = {**BASE, **extra}
    else:
        cfg = {**BASE, where: {**BASE[where], **extra}}
    refused_or_well_typed(cfg)


@fuzz(150)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 yaml_values().map(lambda v: yaml.safe_dump(v)),
                 st.sampled_from(["model: [1, 2]\ntask: {name: modular}", "task: modular", "train: 3\ntask: {name: x}",
                                  "{", "- a\n- b", "a: b: c", "task: {name: modular}\ntrain: {lr: .inf}",
                                  "task: {name: modular}\n? [1, 2]\n: 3", "!!python/object:os.system 'ls'"])))
def test_garbage_yaml_files_are_refused_by_name(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        out = tr.load_run_config(path)
    except tr.TrainConfigError as e:
        assert str(e)
        return
    refused_or_well_typed(out)


def test_set_overrides_of_every_kind_land_in_the_checks():
    for item in ["train.lr=abc", "train.steps=1.5", "train.device=gpu", "train.progress=yes please", "train.betas=[1, 2]",
                 "train.eval_split=dev", "model.d_model=64.5", "model.rope_interleaved=maybe", "task=3"]:
        with pytest.raises(tr.TrainConfigError, match=item.split("=")[0].split(".")[-1]):
            cfg = tr.load_run_config(BASE, [item])
            tr.build_model_config(cfg["model"])


def test_a_shipped_config_still_loads():
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "configs").glob("*.yaml"))[:8]:
        tr.load_run_config(path)


def like_default(value, default) -> bool:
    """An independent oracle for a task option: a value of its default's kind."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (list, str, int)) and not isinstance(value, bool)
    return True  # None default: any kind may be meant


@fuzz(300)
@given(st.sampled_from(["modular", "arithmetic", "induction"]), st.data())
def test_a_task_option_of_any_kind_is_refused_by_name_or_builds(name, data):
    import inspect

    from interp.tasks import TaskConfigError
    from interp.tasks.base import task_class

    params = {k: v for k, v in inspect.signature(task_class(name).__init__).parameters.items() if k != "self"}
    key = data.draw(st.sampled_from(sorted(params)))
    value = data.draw(yaml_values(max_int=40) | st.sampled_from(["false", "no", "3", 3.5, 0, 1]))  # 40: tasks stay small
    task = {"name": name, "p": 7} if name == "modular" else {"name": name, "n_train": 8, "n_val": 4, "n_test": 4}
    task[key] = value
    try:
        built = tr.build_task(tr.load_run_config({**BASE, "task": task})["task"])
        built.split("train")
    except (tr.TrainConfigError, TaskConfigError) as e:
        assert str(e)
        return
    assert like_default(value, params[key].default), f"task.{key}={value!r} accepted (default {params[key].default!r})"
