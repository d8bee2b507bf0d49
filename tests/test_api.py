"""The public Python API, used as a notebook would: from another directory, in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code: str, cwd, timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


def test_bad_hyperparameters_fail_with_the_commands_messages_before_tensorflow(tmp_path):
    result = python("""
        import sys
        import tfssd
        from tfssd.config.hyperparameters import HyperparameterError
        try:
            tfssd.train(num_classes=0, num_training_samples=10, optimizer="adagrad",
                        train="/nonexistent", colour="blue")
        except HyperparameterError as e:
            print(e)
        print("tensorflow imported:", "tensorflow" in sys.modules)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    for expected in ["--num_classes='0': expected a positive integer",
                     "--optimizer='adagrad': expected one of sgd, adam, rmsprop, adadelta",
                     "--train='/nonexistent': no file matches",
                     "--colour: not a hyperparameter or option"]:
        assert expected in result.stdout, result.stdout
    assert "tensorflow imported: False" in result.stdout


def test_the_cards_module_entry_runs_and_leaves_the_api_callable(tmp_path):
    entry = subprocess.run([sys.executable, "-m", "tfssd.train", "--num_classes=0",
                            "--num_training_samples=10"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert entry.returncode != 0
    assert "--num_classes='0': expected a positive integer" in entry.stderr + entry.stdout
    api = python("""
        import tfssd.train
        import tfssd
        from tfssd.config.hyperparameters import HyperparameterError
        try:
            tfssd.train(num_classes=0, num_training_samples=10)
        except HyperparameterError as e:
            print(e)
    """, tmp_path)
    assert "--num_classes='0': expected a positive integer" in api.stdout, api.stderr


def test_python_values_read_as_sagemaker_strings():
    from tfssd.config.factory import hyperparameter_text

    assert hyperparameter_text("use_pretrained_model", False) == "0"
    assert hyperparameter_text("early_stopping", True) == "True"
    assert hyperparameter_text("lr_scheduler_step", [10, 20]) == "10, 20"
    assert hyperparameter_text("learning_rate", 0.004) == "0.004"


@pytest.mark.slow
def test_convert_train_load_detect_evaluate_from_python(shapes_voc, tmp_path):
    result = python(f"""
        import json, glob
        import numpy as np
        import tfssd

        voc = {str(shapes_voc)!r}
        for split in ("train", "val"):
            summary = tfssd.convert("voc", f"data/{{split}}", voc_dir=voc, split=split)
        run = tfssd.train(num_classes=3, num_training_samples=24, mini_batch_size=8, epochs=1,
                          use_pretrained_model=False, width_multiplier=0.0625,
                          train="data/train-*", validation="data/val-*", model_dir="run",
                          seed=1, precision="float32", log_every_steps=1)
        image = sorted(glob.glob(voc + "/JPEGImages/*.jpg"))[-1]
        exported = tfssd.load(run.export_path)
        (found,) = exported.detect(image)
        from_dir = tfssd.load("run")
        (again,) = from_dir.detect([open(image, "rb").read()])
        report = tfssd.evaluate(run.export_path, "data/val-*", metrics=["voc", "coco"])
        print(json.dumps(dict(
            written=summary.images_written, export=run.export_path, best_map=run.best_map,
            kinds=[exported.kind, from_dir.kind], boxes=found.boxes.tolist(),
            scores=found.scores.tolist(), classes=found.classes.tolist(),
            names=found.names()[:3], dir_boxes=again.boxes.tolist(),
            dir_scores=again.scores.tolist(), eval_map=report.voc.mean_ap,
            coco_images=report.num_images)))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["written"] == 8 and os.path.isdir(tmp_path / out["export"])
    assert out["kinds"] == ["saved_model", "checkpoint"]
    boxes, scores = out["boxes"], out["scores"]
    assert len(boxes) == len(scores) == len(out["classes"]) > 0
    assert all(0 <= v <= 1 for box in boxes for v in box)
    assert scores == sorted(scores, reverse=True)
    assert set(out["classes"]) <= {0, 1, 2}
    assert set(out["names"]) <= {"circle", "square", "triangle"}
    # The model directory runs the export's serving graph on the same weights.
    assert len(out["dir_boxes"]) == len(boxes)
    assert max(abs(a - b) for x, y in zip(out["dir_boxes"], boxes) for a, b in zip(x, y)) < 1e-5
    # Training's validation (in memory) and the export's evaluation agree.
    assert out["eval_map"] == pytest.approx(out["best_map"], abs=1e-4)
    assert out["coco_images"] == 8
