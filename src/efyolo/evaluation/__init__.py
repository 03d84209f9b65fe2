"""Evaluation: the COCO-exact evaluator (:mod:`~efyolo.evaluation.metrics`) and COCO results files
(:mod:`~efyolo.evaluation.coco_results`: the one reader, scorer and writer)."""
