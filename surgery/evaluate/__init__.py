"""Benchmark evaluation: `python -m surgery evaluate ROOT --dataset NAME --methods ... --out DIR`.

Scores the engine's dense methods against a dataset's ground truth under the standard protocol
(SCLIP's harness, docs/evaluation.md): the dataset table (`datasets`) and class files (`classes`),
the protocol's steps on arrays (`protocol`), per-window features of every method from one pass
(`features`), one image's class maps (`predict`), SAM refinement (`sam`), mmseg's IoU metrics
(`metrics`), each paper's own settings (`presets`), and the resumable run over a dataset on one
machine or Ray (`settings`, `single`, `command`, `report`).
"""
