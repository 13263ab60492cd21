"""Every embedded model card goes through the same check as model.json: a future format_version is one line, everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import model_with_card, run_cli

from skipgan_edge import FORMAT_VERSION
from skipgan_edge.contract import CARD_KEY, card_from_json
from skipgan_edge.errors import ModelFolderError
from skipgan_edge.export.engine import read_engine_file, write_engine_file


def test_card_from_json_checks_version_and_shape() -> None:
    assert card_from_json(json.dumps({"format_version": FORMAT_VERSION}), "x")["format_version"] == FORMAT_VERSION
    for bad, msg in ((json.dumps({"format_version": FORMAT_VERSION + 1}), "newer than this skipgan-edge"),
                     (json.dumps({"input": {}}), "no format_version"), ("[1, 2]", "not a JSON object"), ("{nope", "not valid JSON"),
                     (json.dumps({"format_version": True}), "no format_version")):
        with pytest.raises(ModelFolderError, match=msg):
            card_from_json(bad, "x")


def test_future_card_in_onnx_metadata_is_refused_by_every_verb(demo_onnx: Path, synth_dir: Path, tmp_path: Path) -> None:
    m = onnx.load(str(demo_onnx / "scorer.onnx"))
    for p in m.metadata_props:
        if p.key == CARD_KEY:
            card = json.loads(p.value)
            card["format_version"] = FORMAT_VERSION + 1
            p.value = json.dumps(card)
    onnx.save(m, str(tmp_path / "future.onnx"))
    for args in (["run", "--onnx", str(tmp_path / "future.onnx"), "--source", str(synth_dir / "test" / "good"), "--backend", "onnxruntime"],
                 ["eval", "--onnx", str(tmp_path / "future.onnx"), "--data", str(synth_dir)],
                 ["bench", "--onnx", str(tmp_path / "future.onnx"), "--backend", "onnxruntime", "--iterations", "2"]):
        p = run_cli(*args, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and "newer than this skipgan-edge understands" in lines[0], (args, p.stderr)


def test_future_card_in_weights_and_engine_header(tiny_model: Path, tmp_path: Path) -> None:
    folder, card = model_with_card(tiny_model, tmp_path / "m", lambda c: c.__setitem__("format_version", FORMAT_VERSION + 1))
    p = run_cli("eval", "--model", str(folder), "--data", str(folder), check=False)
    assert p.returncode == 2 and "newer than this skipgan-edge understands" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    write_engine_file(tmp_path / "e.engine", {"tensorrt": "10.3", "card": card}, b"\x00")
    with pytest.raises(ModelFolderError, match="newer than this skipgan-edge understands"):
        read_engine_file(tmp_path / "e.engine")


def test_typed_card_round_trip_and_one_line_field_errors(tiny_model: Path, tmp_path: Path) -> None:
    from skipgan_edge.card import ModelCard, load_card

    card = load_card(tiny_model)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict())), "x") == card
    d = card.to_dict()
    assert isinstance(card.input.isize, int) and isinstance(card.score.val_stats.max, float) and card.config.model.isize == 32
    for mutate, msg in ((lambda c: c["score"].pop("val_stats"), "field 'score.val_stats' is missing"),
                        (lambda c: c["input"].__setitem__("isize", "32"), "field 'input.isize' is not an integer"),
                        (lambda c: c["score"]["threshold"].__setitem__("normalized", None), "'score.threshold.normalized' is not a number"),
                        (lambda c: c.__setitem__("config", {"model": {"isize": 33}}), "'config' is invalid")):
        bad = json.loads(json.dumps(d))
        mutate(bad)
        with pytest.raises(ModelFolderError, match=msg):
            ModelCard.from_dict(bad, "x")
    # a model.json missing a field is one line in a verb
    folder, _ = model_with_card(tiny_model, tmp_path / "m", lambda c: c["score"].pop("threshold"))
    p = run_cli("eval", "--model", str(folder), "--data", str(folder), check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "field 'score.threshold' is missing" in p.stderr


def test_random_models_get_the_trainers_card(tmp_path: Path) -> None:
    """One builder: a random benchmark model's card has the score head's formulation (mode, pool, term stats)."""
    from skipgan_edge.bench.random_model import random_model_folder
    from skipgan_edge.card import load_card
    from skipgan_edge.config import ModelConfig
    from skipgan_edge.model.networks import default_score

    card = load_card(random_model_folder(tmp_path / "r", ModelConfig(isize=32, channels=3, ngf=8, ndf=8)))
    want = default_score("skipganomaly")
    assert (card.score.mode, card.score.pool, card.score.lam) == (want["mode"], want["pool"], want["lam"])
    # and the default's feature bank (random features), so that a benchmark times the graph the default ships
    assert card.score.bank is not None and card.score.bank["kind"] == want["bank_kind"] and card.score.head is not None
    assert card.score.bank["dim"] == 32 * 8  # the gaussian bank's (D, D) matrix of the encoder's 2×2 map: the default's shapes
    assert card.score.head["default"] and {"bank_mean", "bank_std"} <= set(card.score.term_stats)
    assert card.score.term_stats is not None and card.weights == "random (benchmark only)"


def test_engine_header_is_typed_and_round_trips(tiny_model: Path, tmp_path: Path) -> None:
    """The header beside the card: typed fields, the typed card inside, keys a newer writer added kept, and its JSON form
    back unchanged; a mistyped field is one line naming it."""
    from skipgan_edge.card import load_card
    from skipgan_edge.errors import EngineError
    from skipgan_edge.runtime.engine_file import EngineHeader, Profile

    card = load_card(tiny_model)
    d = {"engine_format": 1, "tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "precision": "int8",
         "profile": {"min": 1, "opt": 4, "max": 8}, "placement": {"device": "gpu"}, "network": {"typing": "strong"},
         "input": {"isize": 32}, "model_id": card.model_id, "card": card.to_dict(), "build_command": "skipgan-edge build",
         "check": {"ok": True}, "future_key": [1]}
    write_engine_file(tmp_path / "e.engine", d, b"\x00engine")
    header, blob = read_engine_file(tmp_path / "e.engine")
    assert blob == b"\x00engine" and header.profile == Profile(1, 4, 8) and header.card == card and header.precision == "int8"
    assert header.to_dict() == d and json.loads(json.dumps(header.to_dict())) == d and header.extra == {"future_key": [1]}
    assert header["profile"] == {"min": 1, "opt": 4, "max": 8} and "check" in header and "plan" not in header
    assert EngineHeader.from_dict({"tensorrt": "8.6"}, "x").to_dict() == {"tensorrt": "8.6"}  # an older, smaller header
    for bad, msg in (({"profile": {"min": 1, "opt": 2, "max": "4"}}, "'profile' is not {min, opt, max} integers"),
                     ({"placement": "gpu"}, "field 'placement' is not an object"), ({"engine_format": "1"}, "'engine_format' is not an integer")):
        with pytest.raises(EngineError, match=msg) as exc:
            EngineHeader.from_dict(bad, "e.engine")
        assert "\n" not in str(exc.value) and "rebuild it" in str(exc.value)


def test_card_sections_are_typed_and_round_trip_byte_for_byte(tiny_model: Path, demo_onnx: Path) -> None:
    """data, metrics and export are typed (DataInfo, Metrics, ExportInfo); every ONNX file's card comes back byte for
    byte, model.json's section by section; dict-style reads and {**section} still work; a mistyped field is one line."""
    from skipgan_edge.card import CARD_NAME, DataInfo, ExportInfo, Metrics, ModelCard

    raw = (tiny_model / CARD_NAME).read_text()
    card = ModelCard.from_json(raw, "x")
    assert isinstance(card.data, DataInfo) and isinstance(card.metrics, Metrics) and isinstance(card.export, ExportInfo)
    file = json.loads(raw)
    assert card.to_dict() == file and all(json.dumps(card.to_dict()[k]) == json.dumps(file[k]) for k in ("data", "metrics", "export"))
    assert isinstance(card.data.n_train, int) and card.data["n_train"] == card.data.n_train and isinstance(card.metrics.val_loss, float)
    for name in ("scorer.onnx", "scorer.fp16.onnx", "scorer.int8.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(demo_onnx / name), load_external_data=False).metadata_props}
        typed = ModelCard.from_json(meta[CARD_KEY], name)
        assert json.dumps(typed.replace(precision=json.loads(meta[CARD_KEY])["precision"]).to_dict()) == meta[CARD_KEY], name
    int8 = ModelCard.from_json(meta[CARD_KEY], "int8")
    assert int8.export.precision == "int8" and "calibration_frames" in int8.export.extra and int8.export.get("cpu_bf16") is None
    again = int8.replace(export={**int8.export, "cpu_bf16": {"gate": "passed"}})
    assert isinstance(again.export, ExportInfo) and again.export.cpu_bf16 == {"gate": "passed"}
    assert list(again.export)[-1] == "cpu_bf16" and list(again.export)[:2] == ["precision", "method"]
    bad = file
    bad["data"]["val_has_anomalies"] = "yes"
    with pytest.raises(ModelFolderError, match="field 'data.val_has_anomalies' is not true or false"):
        ModelCard.from_dict(bad, "x")
