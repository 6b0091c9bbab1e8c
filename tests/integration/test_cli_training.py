"""The training CLI and client against a real server: datasets → train → runs → deploy → predict.

Each command runs through Typer's ``CliRunner`` in this process, talking HTTP to a
``modelport serve`` subprocess that runs its training jobs in job-worker subprocesses. The
data is a small churn table the test writes (numeric and categorical columns, a yes/no
target that follows a linear rule), so logistic regression must learn it to pass.
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from modelport.cli.main import app
from modelport.client import AsyncClient, Client
from tests.integration.server_process import TEST_ADMIN_KEY, ServerProcess

runner = CliRunner()
CHURN_ROWS = 240


def _churned(tenure: float, monthly: float, plan: str) -> bool:
    """The rule behind the labels: short, expensive, basic-plan customers leave."""
    return monthly / 10 - tenure / 6 + (2.0 if plan == "basic" else -1.0) > 0


def write_churn(path: Path, rows: int = CHURN_ROWS, seed: int = 5) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tenure", "monthly", "plan", "churned"])
        for _ in range(rows):
            tenure, monthly = rng.randint(1, 72), round(rng.uniform(15, 120), 2)
            plan = rng.choice(["basic", "pro"])
            writer.writerow(
                [tenure, monthly, plan, "yes" if _churned(tenure, monthly, plan) else "no"]
            )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server without demo models, one training job at a time on one thread."""
    data = tmp_path_factory.mktemp("cli-training") / "data"
    env = {"MODELPORT_TRAINING_MAX_JOBS": "1", "MODELPORT_TRAINING_THREADS": "1"}
    proc = ServerProcess(data, demo=False, env=env).start()
    try:
        _wait_for_builtins(proc)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def churn(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The churn CSV, pushed once through the CLI."""
    path = write_churn(tmp_path_factory.mktemp("churn") / "churn.csv")
    pushed = ok_json(
        cli(
            server,
            "datasets",
            "push",
            str(path),
            "--name",
            "churn",
            "--target",
            "churned",
            "--json",
        )
    )
    assert isinstance(pushed, dict)
    return pushed


def _wait_for_builtins(server: ServerProcess, timeout: float = 120.0) -> None:
    """The built-in datasets register in the background on a first start: wait for them."""
    deadline = time.monotonic() + timeout
    with Client(server.url, api_key=TEST_ADMIN_KEY) as client:
        while {"iris", "digits"} - {d.name for d in client.list_datasets()}:
            assert time.monotonic() < deadline, "built-in datasets never appeared"
            time.sleep(0.2)


def cli(server: ServerProcess, *args: str) -> Result:
    return runner.invoke(app, ["--url", server.url, "--api-key", TEST_ADMIN_KEY, *args])


def ok_json(result: Result) -> Any:
    """A ``--json`` command's output: it succeeded and stdout is JSON only."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_push_list_show_preview_dataset(server: ServerProcess, churn: dict[str, Any]) -> None:
    assert (churn["name"], churn["version"], churn["rows"]) == ("churn", 1, CHURN_ROWS)
    schema = churn["schema"]
    assert (schema["kind"], schema["task"], schema["target"]) == (
        "tabular",
        "classification",
        "churned",
    )
    assert schema["classes"] == ["no", "yes"]
    assert {c["name"]: c["dtype"] for c in schema["columns"]}["plan"] == "categorical"

    listed = ok_json(cli(server, "datasets", "list", "--json"))
    by_name = {d["name"]: d for d in listed}
    assert by_name["churn"]["owner"] and not by_name["churn"]["builtin"]
    assert by_name["iris"]["builtin"] and by_name["digits"]["schema"]["kind"] == "image"
    detail = ok_json(cli(server, "datasets", "show", "churn", "--json"))
    assert [v["version"] for v in detail["versions"]] == [1]
    preview = ok_json(cli(server, "datasets", "preview", "churn", "--rows", "3", "--json"))
    assert len(preview["rows"]) == 3 and "plan" in preview["columns"]

    for args in (("list",), ("show", "churn"), ("preview", "iris", "--rows", "2")):
        table = cli(server, "datasets", *args)
        assert table.exit_code == 0, table.output
    assert "churned" in cli(server, "datasets", "show", "churn").stdout

    trainers = ok_json(cli(server, "trainers", "list", "--json"))
    logistic = next(t for t in trainers if t["name"] == "logistic_regression")
    assert "C" in logistic["params_schema"]["properties"] and not logistic["epochs"]
    assert "logistic_regression" in cli(server, "trainers", "list").stdout


def test_bad_input_is_a_clear_error(server: ServerProcess, tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n" + "1,2,x\n" * 12 + "1,2,3,4\n")
    pushed = cli(server, "datasets", "push", str(ragged), "--name", "ragged", "--target", "label")
    assert pushed.exit_code == 1 and "line" in pushed.stderr and pushed.stdout == ""
    good = write_churn(tmp_path / "good.csv", rows=30)
    missing = cli(server, "datasets", "push", str(good), "--name", "ragged", "--target", "nope")
    assert missing.exit_code == 1 and "nope" in missing.stderr and "churned" in missing.stderr
    wrong_type = cli(
        server,
        "datasets",
        "push",
        str(good),
        "--name",
        "ragged",
        "--target",
        "plan",
        "--task",
        "regression",
    )
    assert wrong_type.exit_code == 1 and "Error" in wrong_type.stderr
    assert "ragged" not in {d["name"] for d in ok_json(cli(server, "datasets", "list", "--json"))}

    bad_param = cli(
        server, "train", "--dataset", "iris", "--trainer", "logistic_regression", "--param", "C=-1"
    )
    assert bad_param.exit_code == 1 and "C" in bad_param.stderr
    clash = cli(
        server,
        "train",
        "--dataset",
        "iris",
        "--trainer",
        "mlp",
        "--epochs",
        "2",
        "--param",
        "epochs=3",
    )
    assert clash.exit_code == 1 and "--epochs" in clash.stderr
    unknown = cli(server, "runs", "show", "999999")
    assert unknown.exit_code == 1 and "Error" in unknown.stderr


def test_train_follow_compare_deploy_predict(server: ServerProcess, churn: dict[str, Any]) -> None:
    first = cli(
        server,
        "train",
        "--dataset",
        "churn",
        "--trainer",
        "logistic_regression",
        "--name",
        "churn-lr",
        "--seed",
        "3",
        "--follow",
        "--json",
    )
    run = ok_json(first)
    assert run["status"] == "succeeded", run.get("error")
    assert run["model_version"] == 1 and run["dataset"] == "churn"
    assert run["metrics"]["test"]["accuracy"] >= 0.85  # the rule is linear: learnable
    assert run["lineage"]["dataset_version"] == 1

    # A second run, followed for people: a metrics table and the registered version.
    second = cli(
        server,
        "train",
        "--dataset",
        "churn",
        "--trainer",
        "logistic_regression",
        "--name",
        "churn-lr",
        "--param",
        "C=0.05",
        "--validation",
        "0.2",
        "--follow",
    )
    assert second.exit_code == 0, second.output
    assert "Metrics" in second.stdout and "churn-lr v2" in second.stdout

    runs = ok_json(cli(server, "runs", "list", "--model", "churn-lr", "--json"))
    assert [r["model_version"] for r in runs] == [2, 1]  # newest first
    newer, older = runs[0]["id"], runs[1]["id"]
    assert runs[0]["params"]["C"] == 0.05 and runs[0]["split"]["validation"] == 0.2
    shown = ok_json(cli(server, "runs", "show", str(older), "--json"))
    assert shown["id"] == older and shown["seed"] == 3 and shown["code_version"]
    assert cli(server, "runs", "show", str(older)).exit_code == 0
    assert ok_json(cli(server, "runs", "list", "--status", "failed", "--json")) == []

    compared = ok_json(cli(server, "runs", "compare", str(older), str(newer), "--json"))
    assert [r["id"] for r in compared["runs"]] == [older, newer]
    assert compared["params"]["C"] == [1.0, 0.05]
    assert len(compared["metrics"]["test.accuracy"]) == 2
    table = cli(server, "runs", "compare", str(older), str(newer))
    assert table.exit_code == 0 and "test.accuracy" in table.stdout
    logs = cli(server, "runs", "logs", str(older))
    assert logs.exit_code == 0, logs.output

    deployed = cli(server, "deploy", "churn-lr", "--version", "1", "--json")
    assert deployed.exit_code == 0, deployed.output
    with Client(server.url, api_key=TEST_ADMIN_KEY) as client:
        client.wait_ready("churn-lr", timeout=120)
    rows = [
        {"tenure": 1, "monthly": 115.0, "plan": "basic"},
        {"tenure": 70, "monthly": 20.0, "plan": "pro"},
    ]
    predicted = ok_json(cli(server, "predict", "churn-lr", "--input", json.dumps(rows), "--json"))
    assert [p["label"] for p in predicted] == ["yes", "no"]
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in predicted)


def test_cancel_then_follow_exits_1(server: ServerProcess) -> None:
    started = ok_json(
        cli(
            server,
            "train",
            "--dataset",
            "iris",
            "--trainer",
            "mlp",
            "--epochs",
            "2000",
            "--name",
            "iris-long",
            "--no-register",
            "--json",
        )
    )
    assert started["status"] in {"queued", "running"} and started["params"]["epochs"] == 2000
    cancelled = ok_json(cli(server, "runs", "cancel", str(started["id"]), "--json"))
    assert cancelled["id"] == started["id"]
    followed = cli(server, "runs", "follow", str(started["id"]), "--json")
    assert followed.exit_code == 1  # the run did not succeed
    final = json.loads(followed.stdout)
    assert final["status"] == "cancelled" and final["model_version"] is None
    listed = ok_json(cli(server, "runs", "list", "--status", "cancelled", "--json"))
    assert started["id"] in [r["id"] for r in listed]
    shown = cli(server, "runs", "follow", str(started["id"]))
    assert shown.exit_code == 1 and "cancelled" in shown.stdout


def test_async_client_trains_and_follows(server: ServerProcess, churn: dict[str, Any]) -> None:
    async def scenario() -> tuple[list[str], Any]:
        async with AsyncClient(server.url, api_key=TEST_ADMIN_KEY) as client:
            run = await client.train(
                dataset="iris",
                trainer="logistic_regression",
                model_name="iris-async",
                register_model=False,
            )
            kinds = [str(event.type) async for event in client.follow_run(run.id)]
            return kinds, await client.wait_run(run.id, timeout=120)

    kinds, final = asyncio.run(scenario())
    assert final.status == "succeeded" and final.model_version is None  # not registered
    assert final.metrics["test"]["accuracy"] >= 0.8
    assert "done" in kinds and "metrics" in kinds
