"""The workflows, one module each: :mod:`~efyolo.engine.trainer` (``efyolo train``),
:mod:`~efyolo.engine.validator` (``efyolo val``), :mod:`~efyolo.engine.predictor` (``efyolo detect``,
``Detector``), :mod:`~efyolo.engine.benchmark` and :mod:`~efyolo.engine.profiler`; per-image results
and their files in :mod:`~efyolo.engine.results`."""
