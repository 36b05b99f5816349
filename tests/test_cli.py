"""The `enet-serve` console script (the boundaries between the packages: tests/test_layering.py)."""
import json

import pytest

from enet_serve.cli import main
from enet_serve.models import list_models

ARCHITECTURES = ["enet", "lenet5", "alexnet", "vgg16", "nin", "googlenet", "inception_v3", "resnet18", "resnet34",
                 "resnet50", "resnet101", "resnet152", "squeezenet1_0", "squeezenet1_1", "mobilenet_v1",
                 "mobilenet_v2", "xception"]


def test_models_table_lists_every_architecture(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] for line in out.splitlines()[1:]}
    assert set(ARCHITECTURES) <= rows
    assert "353,378" in out and "11,689,512" in out  # enet, resnet18 parameters


def test_models_json_by_task(capsys):
    assert main(["models", "--task", "segment", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models("segment") == ["enet"]
    assert rows[0]["input"] == "3x360x480" and rows[0]["gflops"] > 0


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_train_says_what_its_arguments_got_wrong(capsys, tmp_path):
    """A mistake in the arguments is one line naming it and exit code 2, not a traceback; nothing is written."""
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "history.jsonl").write_text("")
    cases = [(["--run-dir", str(tmp_path / "used")], "holds an earlier run (history.jsonl): --resume continues it"),
             (["--run-dir", str(tmp_path / "new"), "--resume"], "nothing to resume"),
             (["--run-dir", str(tmp_path / "new"), "--epochs", "3", "--encoder-epochs", "3"], "encoder_epochs must be")]
    for args, message in cases:
        assert main(["train", "enet-camvid", "--threads", "1", *args]) == 2
        out = capsys.readouterr().out
        assert out.startswith("enet-serve train: ") and message in out, out
    assert not (tmp_path / "new").exists() and (tmp_path / "used" / "history.jsonl").read_text() == ""


def test_bench_runtime_measures_a_shipped_graph(capsys):
    from enet_serve.paths import DEFAULT_REPOSITORY

    model = DEFAULT_REPOSITORY / "lenet5-fashion"
    assert main(["bench", "runtime", str(model), "--batch", "1,4", "--warmup", "1", "--runs", "3",
                 "--seconds", "0.05"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["1"], ["4"])]
    assert [r[0] for r in rows] == ["1", "4"]
    assert all(float(r[2]) > 0 for r in rows)  # ms per frame


def test_bench_architectures_exports_and_times_each_one(capsys, tmp_path):
    assert main(["bench", "architectures", "--models", "lenet5", "--batch", "1,2", "--warmup", "1", "--runs", "2",
                 "--seconds", "0.05", "--markdown", "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["arch"] == "lenet5" and row["params"] == 61_706 and row["input"] == "1x32x32"
    assert set(row["ms_per_image"]) == {"1", "2"} and all(v > 0 for v in row["ms_per_image"].values())
    assert "| lenet5 | 1x32x32 | 61,706 |" in out
    with pytest.raises(SystemExit, match="unknown architecture"):
        main(["bench", "architectures", "--models", "no-such-net"])
