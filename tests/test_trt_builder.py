"""The engine builder's calls, on the CPU: a recording stand-in for TensorRT's builder and parser.

TensorRT cannot run here (tests/test_tensorrt.py builds real engines on a GPU machine). What the
stand-in checks is what we ask of each TensorRT version: on 8.6 the ONNX handed to the parser is
the rewritten one (reduce axes as attributes, opset 17), the network is explicit-batch and weakly
typed, the FP16/INT8 flags follow the file, and every score-head layer (and the unnamed helper
layers the parser adds after it) is pinned to FP32 with OBEY_PRECISION_CONSTRAINTS before the
build; on 10.x the network is strongly typed and nothing is pinned. The stand-in parser makes one
layer per ONNX node named as onnx-tensorrt names them, with the node's inferred output types.
The engine check (engine vs ONNX Runtime vs the export gate) runs for real, with ONNX Runtime
standing in for the engine: a faithful one passes, one that reduces every axis as 8.6's importer
would on the unrewritten INT8 file is refused.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from skipgan_edge.errors import EngineError


class DType:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Flag:
    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def fake_tensorrt(version: str, events: list[Any]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    f32, f16, i32, i64, u8, b, i8 = (DType(n) for n in ("float32", "float16", "int32", "int64", "uint8", "bool", "int8"))
    trt.float32, trt.float16, trt.int32 = f32, f16, i32  # type: ignore[attr-defined]
    onnx_types = {1: f32, 10: f16, 6: i32, 7: i64, 2: u8, 9: b, 3: i8}

    class Logger:
        WARNING, ERROR = 2, 1

        def __init__(self, level: int) -> None:
            pass

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH, STRONGLY_TYPED = Flag("EXPLICIT_BATCH", 0), Flag("STRONGLY_TYPED", 1)  # release/10.3 NvInfer.h

    class BuilderFlag:
        FP16, INT8, OBEY_PRECISION_CONSTRAINTS, GPU_FALLBACK = (Flag(n, i) for i, n in enumerate(
            ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK")))

    class Tensor:
        def __init__(self, name: str, dtype: DType) -> None:
            self.name, self.dtype = name, dtype

    class Layer:
        def __init__(self, name: str, inputs: list[Tensor | None], outputs: list[Tensor]) -> None:
            self.name, self._in, self._out = name, inputs, outputs
            self.precision_set: DType | None = None
            self.output_types: dict[int, DType] = {}

        @property
        def num_inputs(self) -> int:
            return len(self._in)

        @property
        def num_outputs(self) -> int:
            return len(self._out)

        def get_input(self, i: int) -> Tensor | None:
            return self._in[i]

        def get_output(self, i: int) -> Tensor:
            return self._out[i]

        @property
        def precision(self) -> DType | None:
            return self.precision_set

        @precision.setter
        def precision(self, dt: DType) -> None:
            events.append(("precision", self.name))
            self.precision_set = dt

        def set_output_type(self, i: int, dt: DType) -> None:
            assert self._out[i].dtype in (f32, f16), "an output type on a shape or index tensor"
            self.output_types[i] = dt

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.layers = flags, list[Layer]()

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class OnnxParser:
        """One layer per node, named as onnx-tensorrt release/8.6-GA names them (ImporterContext.cpp registerLayer: the
        node name, unique with _N). An elementwise node's constant input becomes a constant layer named after the Constant's
        output (onnx2trt_utils.cpp convertToTensor registers it under the weights' name), and a lower-rank input gets an
        unnamed broadcast shuffle in front of the elementwise layer (elementwiseHelper → broadcastTensor: addShuffle, not
        registered), reading that input. An initializer such a node or a MatMul reads becomes a constant layer named after
        the initializer (ModelImporter.cpp names its weights so; convertToTensor), and MatMul's lower-rank input gets an
        unnamed shuffle (its rank match, builtin_op_importers.cpp MatMul), as the feature bank's constants do."""

        ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow")
        TAKES_CONSTANTS = (*ELEMENTWISE, "MatMul")

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.num_errors = 0

        def parse(self, blob: bytes) -> bool:
            events.append(("parse", blob))
            m = onnx.shape_inference.infer_shapes(onnx.load_from_string(blob))
            values = [*m.graph.input, *m.graph.value_info, *m.graph.output]
            types_of = {v.name: v.type.tensor_type.elem_type for v in values}
            rank_of = {v.name: len(v.type.tensor_type.shape.dim) for v in values}
            consts: dict[str, Any] = {}  # Constant outputs: weights, no layer until an elementwise layer uses them
            for n in m.graph.node:
                if n.op_type == "Constant":
                    t = next(a.t for a in n.attribute if a.name == "value")
                    consts[n.output[0]] = t
                    types_of[n.output[0]], rank_of[n.output[0]] = t.data_type, len(t.dims)
            for init in m.graph.initializer:
                consts[init.name] = init
                types_of[init.name], rank_of[init.name] = init.data_type, len(init.dims)
            tensors: dict[str, Tensor] = {}
            seen: dict[str, int] = {}
            layers = self.network.layers

            def unnamed(kind: str, ins: list[Tensor | None], dtype: DType) -> Tensor:
                name = f"(Unnamed Layer* {len(layers)}) [{kind}]"
                out = Tensor(f"{name}_output", dtype)
                layers.append(Layer(name, ins, [out]))
                return out

            for n in m.graph.node:
                if n.op_type == "Constant":
                    continue
                ins: list[Tensor | None] = []
                top = max((rank_of.get(t, 0) for t in n.input if t), default=0)
                for t in (t for t in n.input if t):
                    if n.op_type in self.TAKES_CONSTANTS and t in consts and t not in tensors:
                        tensors[t] = Tensor(f"(Unnamed Layer* {len(layers)}) [Constant]_output", onnx_types[consts[t].data_type])
                        layers.append(Layer(t, [], [tensors[t]]))  # named after the weights
                    x = tensors.get(t)
                    if n.op_type in self.TAKES_CONSTANTS and x is not None and rank_of.get(t, top) < top:
                        x = unnamed("Shuffle", [x], x.dtype)  # broadcast: in front of the elementwise layer
                    ins.append(x)
                outs = [Tensor(t, onnx_types.get(types_of.get(t, 1), f32)) for t in n.output]
                name = n.name if n.name not in seen else f"{n.name}_{seen[n.name]}"
                seen[n.name] = seen.get(n.name, 0) + 1
                layers.append(Layer(name, ins, outs))
                for t in outs:
                    tensors[t.name] = t
            return True

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.builder_optimization_level = 3
            self.profiling_verbosity = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            pass

        def set_flag(self, flag: Flag) -> None:
            events.append(("flag", flag.name))
            self.flags.add(flag.name)

        def add_optimization_profile(self, profile: Any) -> int:
            return 0

        def create_timing_cache(self, blob: bytes) -> bytes:
            return blob

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> bytes:
            return b""

    class Profile:
        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            events.append(("profile", name, lo, hi))

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            events.append(("network", flags))
            self.network = Network(flags)
            return self.network

        def create_builder_config(self) -> Config:
            self.config = Config()
            return self.config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            events.append(("build", network, config))
            return b"plan" * 300

    class MemoryPoolType:
        WORKSPACE = 0

    class ProfilingVerbosity:
        DETAILED = 2

    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, OnnxParser, Builder, MemoryPoolType, ProfilingVerbosity):
        setattr(trt, obj.__name__, obj)
    trt.Dims = lambda dims: tuple(dims)  # type: ignore[attr-defined]
    return trt


def build_with(version: str, onnx_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[Any]]:
    from skipgan_edge.export import engine

    events: list[Any] = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, events))
    monkeypatch.setattr(engine, "gpu_info", lambda: {"gpu": "stand-in Orin", "compute_capability": "8.7"})
    meta = engine.build_engine(onnx_path, tmp_path / "e.engine", engine.BuildConfig(batch=(1, 4, 8), check=False))
    return meta, events


def _built(events: list[Any]) -> tuple[Any, Any]:
    network, config = next(e for e in events if e[0] == "build")[1:]
    return network, config


@pytest.mark.parametrize("name,precision", [("scorer.int8.onnx", "int8"), ("scorer.fp16.onnx", "fp16")])
def test_trt86_parses_the_rewrite_and_pins_the_head_fp32_before_the_build(demo_onnx: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch, name: str,
                                                                          precision: str) -> None:
    from skipgan_edge.export.onnx import is_head_node

    meta, events = build_with("8.6.2", demo_onnx / name, tmp_path, monkeypatch)
    kinds = [e[0] for e in events]
    assert kinds.index("parse") < kinds.index("flag") < kinds.index("precision") and kinds[-1] == "build"
    assert next(e[1] for e in events if e[0] == "network") == 1 << 0  # explicit batch, not strongly typed
    parsed = onnx.load_from_string(next(e[1] for e in events if e[0] == "parse"))
    assert [i.version for i in parsed.opset_import if i.domain in ("", "ai.onnx")] == [17]
    assert all(len(n.input) == 1 for n in parsed.graph.node if n.op_type in ("ReduceMean", "ReduceMax"))
    network, config = _built(events)
    want_flags = {"FP16", "OBEY_PRECISION_CONSTRAINTS"} if precision == "fp16" else {"INT8", "OBEY_PRECISION_CONSTRAINTS"}
    assert config.flags == want_flags  # INT8 alone: the file's unquantized layers are FP32 and stay so
    head = [ly for ly in network.layers if is_head_node(ly.name)]
    assert head and all(ly.precision_set is not None and ly.precision_set.name == "float32" for ly in head
                        if any(ly.get_output(i).dtype.name in ("float32", "float16") for i in range(ly.num_outputs)))
    for ly in head:  # output types are the ONNX's: FP32 in the head, FP16 where it casts into an FP16 network
        for i in range(ly.num_outputs):
            if ly.get_output(i).dtype.name in ("float32", "float16"):
                assert ly.output_types[i] is ly.get_output(i).dtype, ly.name
    casts = [ly for ly in head if ly.name.endswith("_cast_to_fp16")]
    assert bool(casts) == (precision == "fp16") and all(ly.output_types[0].name == "float16" for ly in casts)
    assert any(ly.name.startswith("/Constant") and ly.precision_set is not None for ly in head)  # the head's constants
    bank = {ly.name: ly for ly in network.layers if ly.name.startswith(("bank_", "gauss_"))}  # the feature bank's initializers
    assert set(bank) == {"gauss_whiten", "gauss_mean"}  # the default's gaussian bank
    assert all(ly.precision_set is not None and ly.precision_set.name == "float32" for ly in bank.values())
    bank_out = {ly.get_output(0).name for ly in bank.values()}
    shuffles = [ly for ly in network.layers if ly.name.startswith("(Unnamed") and ly.get_input(0).name in bank_out]
    assert shuffles and all(ly.precision_set is not None for ly in shuffles)  # the rank matches in front of MatMul, Sub, Add
    conv_weights = [ly for ly in network.layers if ly.num_inputs == 0 and not is_head_node(ly.name) and ly.name not in bank]
    assert all(ly.precision_set is None for ly in conv_weights)  # a network's constants are not the head's
    helpers = [ly for ly in network.layers if ly.name.startswith("(Unnamed") and ly.get_output(0).dtype.name == "float32"
               and ly.get_input(0).name in {ly2.get_output(0).name for ly2 in head}]
    assert helpers and all(ly.precision_set is not None for ly in helpers)  # the parser's helpers inside the head
    networks = [ly for ly in network.layers if ly.name.startswith("/") and not is_head_node(ly.name)]
    assert networks and all(ly.precision_set is None for ly in networks)  # the networks run as the flags allow
    assert meta["network"]["typing"] == "weak" and meta["network"]["fp32_layers"] >= len(head) - 5


def test_trt10_is_strongly_typed_and_parses_the_file_as_exported(demo_onnx: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    meta, events = build_with("10.3.0", demo_onnx / "scorer.int8.onnx", tmp_path, monkeypatch)
    assert next(e[1] for e in events if e[0] == "parse") == (demo_onnx / "scorer.int8.onnx").read_bytes()
    assert next(e[1] for e in events if e[0] == "network") == 1 << 1
    network, config = _built(events)
    assert config.flags == set() and all(ly.precision_set is None for ly in network.layers)
    assert meta["network"] == {"typing": "strong"} and meta["tensorrt"] == "10.3.0"


def test_jetpack5_tensorrt_is_refused_in_one_line(demo_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineError, match=r"8\.5\.2.*JetPack 5.*JetPack 6\.1") as exc:
        build_with("8.5.2", demo_onnx / "scorer.onnx", tmp_path, monkeypatch)
    assert "\n" not in str(exc.value)


def test_build_without_heldout_frames_says_where_to_get_them(tmp_path: Path, demo_onnx: Path) -> None:
    from skipgan_edge.export.engine import BuildConfig, heldout_path

    assert heldout_path(demo_onnx / "scorer.int8.onnx", BuildConfig()) == demo_onnx / "heldout.npz"
    with pytest.raises(EngineError, match="heldout.npz beside the ONNX, or pass --check-frames"):
        heldout_path(tmp_path / "scorer.onnx", BuildConfig())
    assert heldout_path(tmp_path / "scorer.onnx", BuildConfig(check=False)) is None


def _ort_runner(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    from skipgan_edge.contract import ScoreBatch

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: ScoreBatch(*sess.run(["score", "anomaly_map", "normalized_score"], {"images": x}))


def test_engine_check_passes_a_faithful_engine_and_refuses_what_trt86_would_build_unrewritten(demo_onnx: Path) -> None:
    from skipgan_edge.export.engine import check_engine_outputs, load_heldout

    held = load_heldout(demo_onnx / "heldout.npz")
    assert held["images"].dtype == np.uint8 and 0 < held["labels"].sum() < len(held["labels"]) and held["max_drop"] == 0.01
    int8 = onnx.load(str(demo_onnx / "scorer.int8.onnx"))
    ok = check_engine_outputs(_ort_runner(int8), demo_onnx / "scorer.int8.onnx", held)
    assert ok["ok"] and ok["outputs"]["score"]["max_abs"] < 1e-4 and abs(ok["auroc_drop"]) <= 0.01, ok
    assert ok["alarms"]["disagree"] == 0 and 0 < ok["alarms"]["engine"] < len(held["labels"]), ok["alarms"]
    # TensorRT 8.6's importer ignores the axes input of ReduceMean/ReduceMax: every axis is reduced, the batch axis
    # too (the reductions that make the scores from the map and the features; the map's own one would stop ORT)
    collapsed = onnx.ModelProto()
    collapsed.CopyFrom(int8)
    producers = {o: n for n in collapsed.graph.node for o in n.output}
    map_reduce = producers[next(n.input[0] for n in collapsed.graph.node if n.op_type == "AveragePool")]
    cut = [n for n in collapsed.graph.node if n.op_type in ("ReduceMean", "ReduceMax") and n is not map_reduce]
    assert cut
    for n in cut:
        del n.input[1:]
    bad = check_engine_outputs(_ort_runner(collapsed), demo_onnx / "scorer.int8.onnx", held)
    # the default's bank term still ranks the frames, so the AUROC may hold: the alarms at the card's threshold do not
    assert not bad["ok"] and (bad["auroc_drop"] > 0.01 or not all(o["ok"] for o in bad["outputs"].values())
                              or not bad["alarms"]["ok"]), bad


def test_engine_check_refuses_an_engine_that_ranks_as_onnxruntime_but_shifts_the_alarms(demo_onnx: Path) -> None:
    """Every score moved by the same amount keeps the AUROC exactly, but the line sees the alarms: at the card's
    threshold they differ from ONNX Runtime's, and the check says so."""
    from skipgan_edge.contract import ScoreBatch
    from skipgan_edge.export.engine import check_engine_outputs, load_heldout

    held = load_heldout(demo_onnx / "heldout.npz")
    ort_run = _ort_runner(onnx.load(str(demo_onnx / "scorer.fp16.onnx")))

    def shifted(x: np.ndarray) -> Any:
        b = ort_run(x)
        return ScoreBatch(b.score + 1.0, b.anomaly_map, b.normalized_score + 0.5)

    got = check_engine_outputs(shifted, demo_onnx / "scorer.fp16.onnx", held)
    assert abs(got["auroc_drop"]) <= 1e-9 and all(o["ok"] for o in got["outputs"].values())  # ranks as ORT does
    assert not got["ok"] and not got["alarms"]["ok"] and got["alarms"]["engine"] > got["alarms"]["onnxruntime"], got["alarms"]
    assert got["alarms"]["disagree"] > got["alarms"]["max_disagree"] >= 1
