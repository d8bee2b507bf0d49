"""The evaluation report's figures, on a tiny set worked out by hand, and its files."""

import json
import math
import os

import numpy as np
from PIL import Image

from tfssd.evaluation import plots, report
from tfssd.evaluation.voc_ap import DetectionEvaluator

NAMES = ["cat", "dog"]
A = [0.0, 0.0, 0.5, 0.5]  # cat, image 0: 0.25 of the image, 2500 px² at 100x100 (medium)
B = [0.5, 0.5, 1.0, 1.0]  # dog, image 0: medium
C = [0.0, 0.0, 0.2, 0.2]  # cat, image 1: 0.04, 400 px² at 100x100 (small)
FAR = [0.6, 0.6, 0.9, 0.9]  # overlaps nothing; 0.09, 900 px² (small)


def tiny_evaluator() -> DetectionEvaluator:
    """Two images, ground truth A (cat), B (dog) | C (cat); detections, by falling score:

    d1 cat 0.9 on A (true positive), d2 cat 0.8 on B (a dog: false positive for cat),
    d4 cat 0.6 on FAR (false positive), d3 dog 0.3 on B (true positive).
    """
    evaluator = DetectionEvaluator(2, iou_threshold=0.5, method="allpoint")
    evaluator.add_image([A, B, B], [0.9, 0.8, 0.3], [0, 0, 1], [A, B], [0, 1])
    evaluator.add_image([FAR], [0.6], [0], [C], [0])
    return evaluator


def test_pr_curve_points_and_best_f1():
    curves = report.pr_curves(tiny_evaluator())
    cat = curves[0]  # 2 cats: d1 TP, d2 FP, d4 FP
    np.testing.assert_allclose(cat.thresholds, [0.9, 0.8, 0.6])
    np.testing.assert_allclose(cat.precision, [1, 1 / 2, 1 / 3])
    np.testing.assert_allclose(cat.recall, [1 / 2, 1 / 2, 1 / 2])
    # F1 = 2PR / (P + R): 2(.5)/(1.5) = 2/3; 2(.25)/1 = 1/2; 2(1/6)/(5/6) = 2/5.
    np.testing.assert_allclose(cat.f1, [2 / 3, 1 / 2, 2 / 5])
    assert cat.best()["threshold"] == 0.9 and math.isclose(cat.best()["f1"], 2 / 3)
    dog = curves[1]  # 1 dog, d3 TP: P = R = F1 = 1 at 0.3
    assert dog.best() == {"threshold": 0.3, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    overall = curves[report.OVERALL]  # 3 objects; TP, FP, FP, TP by falling score
    np.testing.assert_allclose(overall.precision, [1, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(overall.recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3])
    # F1: 2(1/3)/(4/3) = 1/2; 2(1/6)/(5/6) = 2/5; 1/3; 2(1/3)/(7/6) = 4/7, the maximum.
    np.testing.assert_allclose(overall.f1, [1 / 2, 2 / 5, 1 / 3, 4 / 7])
    assert overall.best()["threshold"] == 0.3 and math.isclose(overall.best()["f1"], 4 / 7)
    # Between scores, a threshold keeps the detections above it: at 0.7, d1 and d2.
    np.testing.assert_allclose(overall.at(0.7), (1 / 2, 1 / 3, 2 / 5))
    assert overall.at(0.95) == (0.0, 0.0, 0.0)


def test_equal_scores_enter_together():
    evaluator = DetectionEvaluator(1, 0.5)
    evaluator.add_image([A, B], [0.5, 0.5], [0, 0], [A], [0])  # one hit, one miss, same score
    curve = report.pr_curves(evaluator)[0]
    np.testing.assert_allclose(curve.thresholds, [0.5])
    np.testing.assert_allclose((curve.precision, curve.recall), [[0.5], [1.0]])


def test_confusion_matrix_with_background():
    images = tiny_evaluator().images()
    # At 0.5: d1 -> (cat, cat); d2 (cat) finds no cat, then the free dog B: (dog, cat);
    # d4 matches nothing: (background, cat); C matched by nothing: (cat, background).
    matrix, errors = report.confusion_matrix(images, 2, 0.5, 0.5)
    np.testing.assert_array_equal(matrix, [[1, 0, 1],
                                           [1, 0, 0],
                                           [1, 0, 0]])
    np.testing.assert_array_equal(errors, [[0, 0, 1], [1, 1, 0]])  # missed, false, confused
    # At 0.3 d3 takes B first (own class), so d2 is a false detection instead of a confusion.
    matrix, errors = report.confusion_matrix(images, 2, 0.5, 0.3)
    np.testing.assert_array_equal(matrix, [[1, 0, 1],
                                           [0, 1, 0],
                                           [2, 0, 0]])
    np.testing.assert_array_equal(errors, [[0, 1, 0], [1, 1, 0]])


def test_difficult_objects_count_neither_way_in_the_confusion():
    images = [(np.array([A]), np.array([0.9]), np.array([0]), np.array([A, B]),
               np.array([0, 1]), np.array([True, True]))]
    matrix, errors = report.confusion_matrix(images, 2, 0.5, 0.0)
    assert matrix.sum() == 0 and errors.sum() == 0


def test_by_size_at_the_network_input():
    np.testing.assert_array_equal(report.size_category([C, FAR, A, [0, 0, 1, 1]], 100),
                                  [0, 0, 1, 2])  # 400, 900, 2500, 10000 px²
    sizes = report.by_size(tiny_evaluator(), image_shape=100, score_threshold=0.3)
    # small: only C counts; d1 matches A (left out: counts neither way), d2 is unmatched and
    # medium (ignored), d4 is unmatched and small: a false positive. AP 0, recall 0.
    assert sizes["small"]["objects"] == 1
    assert sizes["small"]["mAP"] == 0 and sizes["small"]["recall"] == 0
    # medium: A and B; cat: d1 TP then d2 FP (AP 1), d4 small and unmatched: ignored;
    # dog: d3 TP (AP 1). mAP 1, recall 2/2.
    assert sizes["medium"] == {"objects": 2, "mAP": 1.0, "ap": [1.0, 1.0], "recall": 1.0,
                               "recall_at_threshold": 1.0}
    assert sizes["large"]["objects"] == 0 and math.isnan(sizes["large"]["mAP"])


def test_voc_result_is_unchanged_by_the_shared_matching():
    result = tiny_evaluator().result()
    # cat: precision 1 up to recall 1/2, never more recall: all-point AP 1/2; dog: 1.
    np.testing.assert_allclose(result.ap, [0.5, 1.0])
    np.testing.assert_array_equal(result.num_detections, [3, 1])


def test_report_files(tmp_path):
    out = str(tmp_path / "report")
    image = np.full((200, 100, 3), 128, np.uint8)
    figures = plots.write_report(tiny_evaluator(), out, NAMES, 100,
                                        read_images=lambda ids: {i: image for i in ids},
                                        filenames=["a.jpg", "b.jpg"])
    for name in plots.PLOTS:
        with Image.open(os.path.join(out, f"{name}.png")) as png:
            assert png.format == "PNG" and png.size == plots.FIGURE_PX
    summary = json.load(open(os.path.join(out, "report.json")))
    assert summary["best_threshold"]["overall"]["threshold"] == 0.3
    assert summary["best_threshold"]["cat"]["threshold"] == 0.9
    assert summary["at_best_overall_threshold"] == {
        "score_threshold": 0.3, "missed_objects": 1, "false_detections": 2,
        "class_confusions": 0}
    rows = open(os.path.join(out, "confusion_matrix.csv")).read().splitlines()
    assert rows == ["ground truth \\ detection,cat,dog,background", "cat,1,0,1", "dog,0,1,0",
                    "background,2,0,0"]
    f1 = open(os.path.join(out, "f1.csv")).read().splitlines()
    assert f1[0] == "threshold,cat,dog,overall" and f1[31] == "0.30,0.4,1,0.571429"
    assert json.load(open(os.path.join(out, "by_size.json")))["sizes"]["large"]["mAP"] is None
    # Image 1 has two errors (C missed, d4 false), image 0 one (d2): image 1 comes first.
    worst = open(os.path.join(out, "worst_images.csv")).read().splitlines()
    assert worst[1].startswith("worst_images/00_image1.png,1,b.jpg,1,1,0")
    with Image.open(os.path.join(out, "worst_images", "00_image1.png")) as png:
        assert png.size == (2 * 100 + 4, 200)  # ground truth | detections
    assert figures.best_threshold == 0.3


def _axes_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel of a plot's frame: the outermost long dark lines."""
    dark = pixels.astype(int).sum(axis=-1) < 150
    columns = np.flatnonzero(dark.sum(axis=0) > 0.5 * pixels.shape[0])
    rows = np.flatnonzero(dark.sum(axis=1) > 0.5 * pixels.shape[1])
    return columns[0], rows[0], columns[-1], rows[-1]


def _near(pixels: np.ndarray, x: float, y: float, colour, radius: int = 2) -> bool:
    """Whether some pixel within ``radius`` of (x, y) has ``colour`` (RGB, +-40 per channel)."""
    x, y = int(round(x)), int(round(y))
    patch = pixels[y - radius:y + radius + 1, x - radius:x + radius + 1].astype(int)
    return bool((np.abs(patch - np.array(colour)).max(axis=-1) <= 40).any())


def test_report_images_for_tensorboard():
    """The pixels say what tiny_evaluator's figures say: each class's and the overall PR curve
    through its points, in its colour, nothing where no curve runs; each confusion cell in the
    colour of its count."""
    import matplotlib

    images = plots.report_images(tiny_evaluator(), NAMES, 100)
    assert set(images) == {"pr_curves", "confusion_matrix"}
    for pixels in images.values():
        assert pixels.dtype == np.uint8 and pixels.shape == (600, 800, 3)

    pr = images["pr_curves"]
    left, top, right, bottom = _axes_box(pr)
    assert right - left > 400 and bottom - top > 300, (left, top, right, bottom)

    def at(recall, precision):  # axes limits 0..1.02 both ways
        return (left + recall / 1.02 * (right - left), bottom - precision / 1.02 * (bottom - top))

    blue, orange, black = (31, 119, 180), (255, 127, 14), (0, 0, 0)  # matplotlib's C0, C1
    # cat (C0): precision 1 to recall 1/2, then straight down to 1/3 at recall 1/2.
    assert _near(pr, *at(0.5, 0.75), blue) and _near(pr, *at(0.5, 0.45), blue)
    assert not _near(pr, *at(0.5, 0.2), blue, radius=4)  # stops at precision 1/3
    # dog (C1): precision 1 all the way to recall 1, over cat's level part (under overall's).
    assert _near(pr, *at(0.8, 1.0), orange) and _near(pr, *at(0.42, 1.0), orange)
    # overall (black, thick): 1 until recall 1/3, down to 1/3, then up to (2/3, 1/2), its best.
    assert _near(pr, *at(0.2, 1.0), black) and _near(pr, *at(1 / 3, 0.6), black)
    assert _near(pr, *at(0.5, (1 / 3 + 0.5) / 2), black) and _near(pr, *at(2 / 3, 0.5), black)
    for empty in ((0.85, 0.5), (0.15, 0.6), (0.6, 0.9), (0.75, 0.3), (0.5, 0.2)):
        for colour in (blue, orange, black):
            assert not _near(pr, *at(*empty), colour, radius=4), (empty, colour)

    # The confusion matrix at the best threshold 0.3 (test_report_files' CSV) as Blues of
    # log(1 + count), scaled to the largest count; rows ground truth, columns detections.
    confusion = images["confusion_matrix"].astype(int)
    counts = np.array([[1, 0, 1], [0, 1, 0], [2, 0, 0]])
    colours = (np.array(matplotlib.colormaps["Blues"](np.log1p(counts) / np.log1p(2)))[..., :3]
               * 255).round()
    # The darkest cell (2: background taken for a cat) locates the grid: the largest patch
    # of its colour.
    from scipy import ndimage

    patches, count = ndimage.label(np.abs(confusion - colours[2, 0]).max(axis=-1) <= 3)
    sizes = ndimage.sum(np.ones_like(patches), patches, range(1, count + 1))
    ys, xs = np.nonzero(patches == 1 + int(np.argmax(sizes)))
    height, width = ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
    assert height > 60 and width > 60 and abs(height - width) <= 2, (height, width)
    for (row, column), colour in np.ndenumerate(counts):
        # A quarter cell off the centre, clear of the count written there.
        y = ys.min() + (row - 2 + 0.25) * height
        x = xs.min() + (column + 0.25) * width
        assert 0 <= y < 600 and 0 <= x < 800, (row, column)
        np.testing.assert_allclose(confusion[int(y), int(x)], colours[row, column], atol=3,
                                   err_msg=f"cell ({row}, {column}), count {colour}")


def test_an_evaluation_without_detections_still_reports(tmp_path):
    evaluator = DetectionEvaluator(2, 0.5)
    evaluator.add_image(np.zeros((0, 4)), [], [], [A], [0])
    figures = plots.write_report(evaluator, str(tmp_path), NAMES, 300)
    assert figures.best_threshold == 0.0
    np.testing.assert_array_equal(figures.confusion, [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_worst_images_skip_images_without_errors():
    evaluator = DetectionEvaluator(1, 0.5)
    evaluator.add_image([A], [0.9], [0], [A], [0])  # perfect
    figures = report.compute(evaluator, ["cat"], 100)
    assert plots.worst_images(figures) == []
