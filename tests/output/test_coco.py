"""coco.json as pycocotools reads it: predicted instances (iscrowd 0), masks that decode to ours,
and a document that scores perfectly against itself in COCO's own evaluation."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from surgery.method.labels import parse_labels
from surgery.method.options import MapOptions
from surgery.method.results import MaskPrediction
from surgery.method.views import apply_threshold, decode_masks
from surgery.output.coco import coco_document


def _blob_predictions(height: int, width: int):
    """A different rectangle per call, so every label gets its own mask."""
    made = []

    def predict(points: np.ndarray) -> MaskPrediction:
        index = len(made)
        candidates = np.zeros((3, height, width), dtype=bool)
        candidates[:, 10 + 40 * index: 50 + 40 * index, 20:120] = True
        made.append(index)
        return MaskPrediction(candidates=candidates, scores=np.array([0.9, 0.5, 0.2], np.float32), best=0)
    return predict


@pytest.fixture(scope="module")
def document(explainer, rocket):
    maps = explainer.compute_maps(rocket, parse_labels("rocket, smoke, sky").labels, MapOptions(224, "labels"))
    decoded = decode_masks(apply_threshold(maps, None), _blob_predictions(*rocket.shape[:2]))
    return decoded, json.loads(json.dumps(coco_document(decoded, "rocket.png")))


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_pycocotools_reads_predicted_instances_with_our_masks(document):
    decoded, doc = document
    coco = _coco(doc)
    annotations = coco.loadAnns(coco.getAnnIds())
    assert len(annotations) == 3
    for annotation in annotations:
        assert annotation["iscrowd"] == 0  # a predicted instance mask, not a crowd region
        view = decoded.labels[annotation["category_id"] - 1]
        assert np.array_equal(coco.annToMask(annotation).astype(bool), view.chosen_mask)
        rle = mask_utils.frPyObjects(annotation["segmentation"], *annotation["segmentation"]["size"])
        assert mask_utils.area(rle) == annotation["area"]
        assert [round(v) for v in mask_utils.toBbox(rle)] == annotation["bbox"]


def test_the_document_scores_perfectly_against_itself(document):
    """As ground truth and as results (loadRes takes the annotations as detections). Crowd ground
    truth would be ignored by the evaluation, leaving nothing to match: AP would be -1."""
    _, doc = document
    truth = _coco(doc)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": a["score"],
                       "segmentation": truth.annToRLE(a)}  # results take compressed RLE
                      for a in doc["annotations"]]
        results = truth.loadRes(detections)
        evaluation = COCOeval(truth, results, iouType="segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
