"""Engine: loss, evaluator, trainer, predictor."""
