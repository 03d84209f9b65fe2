"""Data: dataset configs, YOLO labels, augmentations, the synthetic dataset."""
