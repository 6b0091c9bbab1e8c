"""Pure parts of traffic management and pipelines: the weighted choice, route shares, graph
validation, ensemble combination, switch routing, and the CLI's step syntax."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from modelport.cli.traffic import build_steps, parse_when
from modelport.engine.pipeline_graph import average, check, merge_rows, switch_rows, vote
from modelport.engine.traffic_records import TrafficState
from modelport.engine.traffic_route import WeightedChoice
from modelport.errors import InvalidInput
from modelport.types.admin import Signature, TensorSpec
from modelport.types.traffic import Condition, PipelineSpec


def _sig(inputs: dict[str, str], outputs: dict[str, str]) -> Signature:
    return Signature(
        inputs=[TensorSpec(name=n, datatype=d, shape=[-1, 4]) for n, d in inputs.items()],
        outputs=[TensorSpec(name=n, datatype=d, shape=[-1, 3]) for n, d in outputs.items()],
    )


SIGS = {
    "scaler": _sig({"input": "FP32"}, {"variable": "FP32"}),
    "clf": _sig({"input": "FP32"}, {"label": "INT64", "probabilities": "FP32"}),
    "clf2": _sig({"input": "FP32"}, {"label": "INT64", "probabilities": "FP32"}),
    "text": _sig({"text": "BYTES"}, {"embedding": "FP32"}),
}


def _check(spec: dict[str, object], children: dict[str, list[str]] | None = None) -> Signature:
    kids = children or {}
    return check(PipelineSpec.model_validate(spec), SIGS.get, lambda n: kids.get(n, []))


def test_weighted_choice_is_deterministic_under_a_seed_and_follows_weights() -> None:
    def draws(seed: int) -> list[str]:
        choice = WeightedChoice({"a": 90, "b": 10}, random.Random(seed))
        return [choice.pick() for _ in range(5000)]

    assert draws(7) == draws(7)
    share = Counter(draws(7))["b"] / 5000
    assert 0.08 < share < 0.12
    only = WeightedChoice({"a": 0, "b": 100}, random.Random(1))
    assert {only.pick() for _ in range(50)} == {"b"}
    with pytest.raises(ValueError):
        WeightedChoice({"a": 0}, random.Random(1))


def test_route_shares_and_triviality() -> None:
    state = TrafficState("iris", stable="iris", weights={"iris.v3": 10})
    assert state.shares() == {"iris": 90, "iris.v3": 10}
    assert not state.trivial()
    assert TrafficState("iris", stable="iris").trivial()
    assert not TrafficState("iris", stable="iris.v3").trivial()


def test_sequence_maps_outputs_by_name_or_declared_mapping() -> None:
    good = {
        "name": "p",
        "steps": [{"deployment": "scaler"}, {"deployment": "clf", "inputs": {"input": "variable"}}],
    }
    sig = _check(good)
    assert [t.name for t in sig.inputs] == ["input"]
    assert [t.name for t in sig.outputs] == ["label", "probabilities"]
    # two outputs (label, probabilities) and no 'input' among them: which one is unclear
    with pytest.raises(InvalidInput, match=r"step 1 \(clf2\).*'input'") as exc:
        _check({"name": "p", "steps": [{"deployment": "clf"}, {"deployment": "clf2"}]})
    assert exc.value.param == "steps[1]"
    # one output into one input: linked by itself and written into the spec as a mapping
    piped = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"deployment": "scaler"}, {"deployment": "clf"}]}
    )
    assert check(piped, SIGS.get, lambda n: []).outputs == sig.outputs
    assert piped.steps[1].inputs == {"input": "variable"}
    # ...and still refused when the datatypes cannot meet (FP32 into BYTES)
    with pytest.raises(InvalidInput, match=r"step 1 \(text\).*BYTES"):
        _check({"name": "p", "steps": [{"deployment": "scaler"}, {"deployment": "text"}]})
    with pytest.raises(InvalidInput, match=r"step 1 \(text\).*BYTES"):
        _check(
            {
                "name": "p",
                "steps": [
                    {"deployment": "scaler"},
                    {"deployment": "text", "inputs": {"text": "variable"}},
                ],
            }
        )
    with pytest.raises(InvalidInput, match=r"step 1 \(nope\).*not deployed"):
        _check({"name": "p", "steps": [{"deployment": "scaler"}, {"deployment": "nope"}]})


def test_cycles_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"step 0 \(p\)"):
        _check({"name": "p", "steps": [{"deployment": "p"}]})
    # q runs p: a new p that runs q would run itself
    with pytest.raises(InvalidInput, match=r"step 0 \(q\)"):
        _check({"name": "p", "steps": [{"deployment": "q"}]}, {"q": ["p"]})


def test_ensembles_and_switch_validation() -> None:
    avg = _check(
        {
            "name": "e",
            "kind": "ensemble-average",
            "steps": [{"deployment": "clf"}, {"deployment": "clf2"}],
        }
    )
    assert [t.name for t in avg.outputs] == ["probabilities"]
    vote_sig = _check(
        {
            "name": "e",
            "kind": "ensemble-vote",
            "steps": [{"deployment": "clf"}, {"deployment": "clf2"}],
        }
    )
    assert [t.name for t in vote_sig.outputs] == ["label"]
    with pytest.raises(InvalidInput, match=r"step 1 \(text\)"):
        _check(
            {
                "name": "e",
                "kind": "ensemble-vote",
                "steps": [{"deployment": "clf"}, {"deployment": "text"}],
            }
        )
    with pytest.raises(InvalidInput, match=r"step 0 \(clf\).*condition"):
        _check(
            {
                "name": "s",
                "kind": "switch",
                "steps": [{"deployment": "clf"}, {"deployment": "clf2"}],
            }
        )
    with pytest.raises(InvalidInput, match="no input 'x'"):
        _check(
            {
                "name": "s",
                "kind": "switch",
                "steps": [
                    {"deployment": "clf", "when": {"input": "x", "value": 1}},
                    {"deployment": "clf2"},
                ],
            }
        )
    with pytest.raises(InvalidInput, match="sequence pipelines only"):
        _check(
            {
                "name": "e",
                "kind": "ensemble-average",
                "steps": [{"deployment": "clf", "inputs": {"input": "x"}}],
            }
        )


def test_average_vote_switch_and_merge() -> None:
    a = {"p": np.array([[0.2, 0.8]], np.float32), "label": np.array([1, 0, 2])}
    b = {"p": np.array([[0.6, 0.4]], np.float32), "label": np.array([1, 2, 0])}
    c = {"p": np.array([[0.1, 0.9]], np.float32), "label": np.array([0, 2, 1])}
    np.testing.assert_allclose(average([a, b], ["p"])["p"], [[0.4, 0.6]])
    assert average([a, b], ["p"])["p"].dtype == np.float32
    # row 0: 1,1,0 → 1; row 1: 0,2,2 → 2; row 2: all differ → the first step's (2)
    assert vote([a, b, c], ["label"])["label"].tolist() == [1, 2, 2]
    rows = np.array([[1, 1, 5, 1], [1, 1, 1, 1], [1, 1, 9, 1]], np.float32)
    cond = Condition(input="input", index=2, op=">", value=4.0)
    assert switch_rows([cond], {"input": rows}, {}, 3).tolist() == [0, 1, 0]
    by_param = Condition(parameter="tier", value="cheap")
    assert switch_rows([by_param], {"input": rows}, {"tier": "cheap"}, 3).tolist() == [0, 0, 0]
    assert switch_rows([by_param], {"input": rows}, {}, 3).tolist() == [1, 1, 1]
    with pytest.raises(InvalidInput, match="column 7"):
        switch_rows([Condition(input="input", index=7, value=1.0)], {"input": rows}, {}, 3)
    merged = merge_rows(
        [(np.array([0, 2]), {"y": np.array([10, 30])}), (np.array([1]), {"y": np.array([20])})], 3
    )
    assert merged["y"].tolist() == [10, 20, 30]


def test_cli_step_syntax() -> None:
    assert parse_when("input:input[2]>4.5") == {
        "input": "input",
        "op": ">",
        "value": 4.5,
        "index": 2,
    }
    assert parse_when("parameter:tier==cheap") == {
        "parameter": "tier",
        "op": "==",
        "value": "cheap",
    }
    steps = build_steps(["scaler", "clf"], ["1:input=variable"], [])
    assert steps == [
        {"deployment": "scaler"},
        {"deployment": "clf", "inputs": {"input": "variable"}},
    ]
    with pytest.raises(InvalidInput):
        build_steps(["a", "b"], ["5:x=y"], [])
    with pytest.raises(InvalidInput):
        parse_when("tier=cheap")
