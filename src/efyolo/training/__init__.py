"""Training-only pieces the trainer (:mod:`efyolo.engine.trainer`) is built from: the options
(:mod:`~efyolo.training.config`), loss, optimizer and schedules, EMA, AutoAnchor, the time budget,
DDP helpers and the callbacks."""
