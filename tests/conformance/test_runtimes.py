"""One contract, run over every runtime and artifact format.

For each case (tests/fixtures/models.py): ``check_artifact`` accepts the artifact, ``load``
returns the expected signature, and ``predict`` on batches of 1 and 7 returns exactly the
outputs of the original model run in this process. Then the refusals: pickles without
``trusted``, torch.save() checkpoints, files of the wrong format, ZipMap ONNX graphs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

from modelport.engine.demo import build_demo_models
from modelport.errors import InvalidInput, ModelLoadError, UnsafeArtifact
from modelport.runtimes import inspect, runtime_class, validate_inputs
from modelport.runtimes.base import LoadSpec, Runtime
from modelport.types.admin import TensorSpec
from tests.fixtures import models
from tests.fixtures.models import CASES, ModelCase


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def build(model_dir: Path) -> Callable[[Callable[[Path], object]], object]:
    """Build each artifact once per module, whichever test asks first."""
    cache: dict[str, object] = {}

    def get(builder: Callable[[Path], object]) -> object:
        if builder.__name__ not in cache:
            cache[builder.__name__] = builder(model_dir)
        return cache[builder.__name__]

    return get


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, build: Callable[..., ModelCase]) -> ModelCase:
    return build(CASES[request.param])


@pytest.fixture
def loaded(case: ModelCase) -> Iterator[Runtime]:
    runtime = runtime_class(case.runtime)(case.load_spec())
    runtime.load()
    yield runtime
    runtime.unload()


def test_check_artifact_accepts(case: ModelCase) -> None:
    cls = runtime_class(case.runtime)
    assert cls.name == case.runtime
    cls.check_artifact(case.path, case.artifact_name, trusted=case.trusted)


def test_load_returns_the_signature(case: ModelCase, loaded: Runtime) -> None:
    assert loaded.signature == case.signature
    assert inspect(case.load_spec()) == case.signature


@pytest.mark.parametrize("batch", [1, 7])
def test_predict_matches_the_original_model(case: ModelCase, loaded: Runtime, batch: int) -> None:
    inputs = validate_inputs(loaded.signature, case.make_inputs(batch))
    got = loaded.predict(inputs)
    want = case.reference(inputs)
    assert list(got) == [t.name for t in case.signature.outputs]
    for spec in case.signature.outputs:
        value = got[spec.name]
        assert value.shape[0] == batch, spec.name
        assert value.shape[1:] == want[spec.name].shape[1:], spec.name
        if value.dtype.kind == "f":
            assert value.dtype == want[spec.name].dtype, spec.name
            np.testing.assert_allclose(value, want[spec.name], rtol=case.rtol, atol=1e-6)
        else:
            assert np.array_equal(value, want[spec.name]), spec.name


def test_predict_reads_readonly_buffers(case: ModelCase, loaded: Runtime) -> None:
    """V2 binary tensors arrive as read-only views of the request body."""
    inputs = case.make_inputs(3)
    for array in inputs.values():
        array.flags.writeable = False
    got = loaded.predict(validate_inputs(loaded.signature, inputs))
    assert set(got) == {t.name for t in case.signature.outputs}


# --- refusals ---------------------------------------------------------------------------


def test_pickle_without_trusted_is_refused_at_check_and_at_load(build: Callable) -> None:
    case: ModelCase = build(models.build_iris_joblib)
    cls = runtime_class("sklearn")
    with pytest.raises(UnsafeArtifact, match=r"is a pickle.*trusted=True.*skops/ONNX"):
        cls.check_artifact(case.path, case.artifact_name, trusted=False)
    spec = LoadSpec("sklearn", case.path, case.artifact_name, "0" * 64, trusted=False)
    with pytest.raises(UnsafeArtifact, match=r"iris\.joblib"):
        cls(spec).load()


@pytest.mark.parametrize("runtime", ["sklearn", "onnx", "torch"])
def test_every_runtime_refuses_untrusted_pickles(build: Callable, runtime: str) -> None:
    path: Path = build(models.build_crashy_joblib)
    with pytest.raises(UnsafeArtifact):
        runtime_class(runtime).check_artifact(path, path.name, trusted=False)


def test_torch_save_pickle_is_refused_even_when_trusted(build: Callable) -> None:
    path: Path = build(models.build_torch_save)
    cls = runtime_class("torch")
    with pytest.raises(UnsafeArtifact, match=r"torch\.save\(\)"):
        cls.check_artifact(path, path.name, trusted=False)
    with pytest.raises(InvalidInput, match="never unpickles"):
        cls.check_artifact(path, path.name, trusted=True)
    with pytest.raises(InvalidInput, match="never unpickles"):
        cls(LoadSpec("torch", path, path.name, "0" * 64, trusted=True)).load()


def test_text_file_as_onnx_is_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("this is not a model\n")
    with pytest.raises(InvalidInput, match=r"onnx runtime.*'text'") as info:
        runtime_class("onnx").check_artifact(path, path.name, trusted=False)
    assert not isinstance(info.value, UnsafeArtifact)
    with pytest.raises(InvalidInput, match="'text'"):
        runtime_class("onnx")(LoadSpec("onnx", path, path.name, "0" * 64)).load()


@pytest.mark.parametrize(
    ("runtime", "builder"),
    [("onnx", models.build_iris_skops), ("sklearn", models.build_digits_onnx),
     ("torch", models.build_digits_onnx), ("sklearn", models.build_torchscript)],
)  # fmt: skip
def test_runtimes_refuse_other_formats(build: Callable, runtime: str, builder: Callable) -> None:
    built = build(builder)
    path = built.path if isinstance(built, ModelCase) else built
    with pytest.raises(InvalidInput, match=f"the {runtime} runtime loads"):
        runtime_class(runtime).check_artifact(path, path.name, trusted=True)


def test_zipmap_onnx_is_a_load_error_with_a_hint(build: Callable) -> None:
    path: Path = build(models.build_zipmap_onnx)
    runtime_class("onnx").check_artifact(path, path.name, trusted=False)  # bytes are fine
    runtime = runtime_class("onnx")(LoadSpec("onnx", path, path.name, "0" * 64))
    with pytest.raises(ModelLoadError, match=r"seq\(map.*zipmap=False"):
        runtime.load()


def test_torchscript_without_a_signature_is_a_load_error(build: Callable) -> None:
    case: ModelCase = build(models.build_torchscript)
    spec = LoadSpec("torch", case.path, case.artifact_name, "0" * 64)
    with pytest.raises(ModelLoadError, match="need a signature: pass --signature"):
        runtime_class("torch")(spec).load()


def test_declared_signature_must_fit_the_model(build: Callable) -> None:
    case: ModelCase = build(models.build_digits_onnx)
    wrong = case.signature.model_copy(deep=True)
    wrong.inputs[0].datatype = "FP64"
    spec = LoadSpec("onnx", case.path, case.artifact_name, "0" * 64, signature=wrong)
    with pytest.raises(ModelLoadError, match="'input' FP64"):
        runtime_class("onnx")(spec).load()


def test_declared_signature_may_narrow_outputs(build: Callable) -> None:
    case: ModelCase = build(models.build_iris_skops)
    narrow = case.signature.model_copy(update={"outputs": case.signature.outputs[:1]})
    spec = LoadSpec("sklearn", case.path, case.artifact_name, "0" * 64, signature=narrow)
    runtime = runtime_class("sklearn")(spec)
    assert runtime.load() == narrow
    assert list(runtime.predict(case.make_inputs(2))) == ["label"]


def test_export_with_a_narrowed_signature_and_mismatched_inputs(build: Callable) -> None:
    case: ModelCase = build(models.build_torch_export)
    narrow = case.signature.model_copy(update={"outputs": case.signature.outputs[1:]})
    spec = LoadSpec("torch", case.path, case.artifact_name, "0" * 64, signature=narrow)
    runtime = runtime_class("torch")(spec)
    assert runtime.load() == narrow
    inputs = case.make_inputs(4)
    got = runtime.predict(inputs)
    assert list(got) == ["output__1"]
    assert np.array_equal(got["output__1"], case.reference(inputs)["output__1"])
    # both inputs share the batch dimension; the program checks it, we report bad input
    inputs["input__1"] = inputs["input__1"][:3]
    with pytest.raises(InvalidInput, match="do not fit the exported program"):
        runtime.predict(inputs)


def test_crashy_classifier_segfaults_its_process(build: Callable) -> None:
    """The crash fixture really dies by SIGSEGV when loaded by the sklearn runtime."""
    path: Path = build(models.build_crashy_joblib)
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from modelport.runtimes.base import LoadSpec\n"
        "from modelport.runtimes.sklearn import SklearnRuntime\n"
        "rt = SklearnRuntime(LoadSpec('sklearn', Path(sys.argv[1]), 'c.joblib', '0', True))\n"
        "print(rt.load().outputs[0].name, flush=True)\n"
        "x = np.zeros((2, 4), np.float32)\n"
        "print(int(rt.predict({'input': x})['label'].sum()), flush=True)\n"
        "x[1, 0] = -999\n"
        "rt.predict({'input': x})\n"
        "print('survived')\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True, text=True, timeout=60, cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.stdout.split() == ["label", "0"], proc.stderr
    assert proc.returncode == -11  # SIGSEGV


def test_skops_types_outside_the_default_trust_need_trusted(tmp_path: Path) -> None:
    """skops refuses to build unknown classes; the runtime names them and asks for trust."""
    from tests.fixtures.crashy import CrashyClassifier

    path = tmp_path / "custom.skops"
    sio.dump(CrashyClassifier(), path)
    cls = runtime_class("sklearn")
    cls.check_artifact(path, path.name, trusted=False)  # the bytes are not a pickle
    untrusted = LoadSpec("sklearn", path, path.name, "0" * 64, trusted=False)
    with pytest.raises(UnsafeArtifact, match=r"tests\.fixtures\.crashy\.CrashyClassifier"):
        cls(untrusted).load()
    trusted = cls(LoadSpec("sklearn", path, path.name, "0" * 64, trusted=True))
    assert [t.name for t in trusted.load().outputs] == ["label", "probabilities"]
    assert trusted.predict({"input": np.ones((2, 4), np.float32)})["label"].tolist() == [0, 0]


def test_demo_models_serve_what_they_promise(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits, load_iris

    demos = {demo.name: demo for demo in build_demo_models(tmp_path)}
    assert sorted(demos) == ["digits", "iris"]
    datasets = {"iris": load_iris(), "digits": load_digits()}
    for name, demo in demos.items():
        assert demo.path.parent == tmp_path and demo.artifact_name == demo.path.name
        assert demo.metadata["accuracy"] > 0.9 and demo.description
        spec = LoadSpec(demo.runtime, demo.path, demo.artifact_name, "0" * 64)
        runtime_class(demo.runtime).check_artifact(demo.path, demo.artifact_name, trusted=False)
        runtime = runtime_class(demo.runtime)(spec)
        signature = runtime.load()
        n_features = datasets[name].data.shape[1]
        n_classes = len(datasets[name].target_names)
        assert signature.inputs == [
            TensorSpec(name="input", datatype="FP32", shape=[-1, n_features])
        ]
        assert signature.outputs == [
            TensorSpec(name="label", datatype="INT64", shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, n_classes]),
        ]
        out = runtime.predict({"input": datasets[name].data.astype(np.float32)})
        assert (out["label"] == datasets[name].target).mean() > 0.9
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    # deterministic: a second build gives byte-identical ONNX and the same metadata
    again = {demo.name: demo for demo in build_demo_models(tmp_path / "again")}
    assert again["digits"].path.read_bytes() == demos["digits"].path.read_bytes()
    assert again["iris"].metadata == demos["iris"].metadata
